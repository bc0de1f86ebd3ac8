"""Hostile inputs become quarantined records with a reason and a position: never a crash, never a silent drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestion.batch import ingest

HEADER = '"patient_id","index_date","prevalent_t2d","t2d_within_1y"\n'
GOOD = '"PAT1","2025-01-01",false,true\n'
INJECTION = "=cmd|'/c calc'!A1"


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _rejects(plake) -> list[dict]:
    return plake.read("quarantine", "records", decrypt=True).to_pylist()


def _check(report) -> None:
    for counts in report.tables.values():
        assert counts.rows_in == counts.accepted + counts.quarantined


TABULAR = [
    ("truncated_csv", "outcomes.csv", HEADER + GOOD + '"PAT2","2025-01-01",fal', "outcomes", 2, 1, "schema:columns"
     ),
    ("unterminated_quote", "outcomes.csv", HEADER + GOOD + '"PAT2,"2025-01-01",false,true\n', "outcomes", 2, 1,
     "record:parse"),
    ("latin1_csv", "outcomes.csv", (HEADER + GOOD).encode() + '"JOSÉ","2025-01-01",false,true\n'.encode("latin-1"),
     "outcomes", 2, 1, "record:encoding"),
    ("wrong_header", "outcomes.csv", '"patient","index_date","prevalent_t2d","t2d_within_1y"\n' + GOOD * 3,
     "outcomes", 3, 3, "schema:columns"),
    ("ten_mb_line_csv", "outcomes.csv", HEADER + GOOD + '"PAT2","' + "x" * (10 * 2**20) + '",false,true\n' + GOOD,
     "outcomes", 3, 1, "record:size"),
    ("ten_mb_line_jsonl", "outcomes.jsonl", json.dumps({"patient_id": "P" * (10 * 2**20)}) + "\n"
     + json.dumps({"patient_id": "PAT1", "index_date": "2025-01-01", "prevalent_t2d": False}) + "\n",
     "outcomes", 2, 1, "record:size"),
    ("truncated_jsonl", "outcomes.jsonl", '{"patient_id": "PAT1", "index_da', "outcomes", 1, 1, "record:parse"),
    ("extra_column_jsonl", "outcomes.jsonl", json.dumps({"patient_id": "PAT1", "index_date": "2025-01-01",
                                                        "prevalent_t2d": False, "ssn": "123-45-6789"}) + "\n",
     "outcomes", 1, 1, "schema:columns"),
]


@pytest.mark.parametrize(("name", "filename", "content", "table", "rows_in", "quarantined", "rule"), TABULAR,
                         ids=[c[0] for c in TABULAR])
def test_when_a_tabular_extract_is_hostile_then_bad_records_are_quarantined_with_reason_and_position(
        tmp_path: Path, ing_settings, plake, name, filename, content, table, rows_in, quarantined, rule) -> None:
    path = _write(tmp_path / filename, content)
    report = ingest(ing_settings, source="tabular", path=path, table=table, plake=plake, docs=False)
    _check(report)
    counts = report.tables[table]
    assert (counts.rows_in, counts.quarantined) == (rows_in, quarantined)
    rejects = _rejects(plake)
    assert rule in {r for row in rejects for r in row["rules"]}
    assert all(row["position"].startswith(("line ", "row ")) and row["reason"] for row in rejects)
    if name.startswith("ten_mb"):
        big = next(row for row in rejects if "record:size" in row["rules"])
        assert big["payload_truncated"] and len(big["payload"]) <= 64 * 1024


def test_when_csv_cells_hold_injection_strings_then_they_are_stored_verbatim(tmp_path: Path, ing_settings,
                                                                              plake) -> None:
    lines = ['"note_id","patient_id","encounter_id","note_time","text","spans"']
    for i, text in enumerate([INJECTION, "@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3", "'; DROP TABLE raw; --"]):
        lines.append(f'"N{i}","PAT{i}","E{i}","2024-01-01T00:00:00Z","{text.replace(chr(34), chr(34) * 2)}",')
    path = _write(tmp_path / "notes.csv", "\n".join(lines) + "\n")
    report = ingest(ing_settings, source="notes", path=path, plake=plake, docs=False)
    _check(report)
    assert report.tables["notes"].accepted == 5
    texts = {r["note_id"]: r["text"] for r in plake.read("raw", "notes", decrypt=True).to_pylist()}
    assert texts["N0"] == INJECTION and texts["N4"] == "'; DROP TABLE raw; --"


def _bundle(*resources: dict) -> str:
    return json.dumps({"resourceType": "Bundle", "id": "b1", "type": "collection",
                       "entry": [{"fullUrl": f"urn:uuid:{r.get('id', 'x')}", "resource": r} for r in resources]})


PATIENT = {"resourceType": "Patient", "id": "11111111-1111-4111-8111-111111111111", "gender": "female",
           "birthDate": "1970-01-02", "identifier": [{"system": "urn:medguard:source-patient-id", "value": "PATX"},
                          {"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn", "value": "0012345"}],
           "managingOrganization": {"identifier": {"value": "FAC-EAST"}},
           "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}]}


def test_when_a_fhir_bundle_has_an_unknown_resource_type_then_only_that_entry_is_quarantined(
        tmp_path: Path, ing_settings, plake) -> None:
    claim = {"resourceType": "Claim", "id": "c1", "status": "active", "use": "claim", "created": "2024-01-01",
             "type": {"coding": [{"code": "professional"}]}, "patient": {"reference": f"urn:uuid:{PATIENT['id']}"},
             "provider": {"display": "x"}, "priority": {"coding": [{"code": "normal"}]},
             "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "c"}}]}
    path = _write(tmp_path / "b.ndjson", _bundle(PATIENT, {"resourceType": "FooBarResource", "id": "f1"}, claim)
                  + "\n" + _bundle(PATIENT)[:-40] + "\n")
    report = ingest(ing_settings, source="fhir", path=path, plake=plake, docs=False)
    _check(report)
    assert report.tables["patients"].accepted == 1 and report.tables["bundles"].quarantined == 1
    assert report.tables["resources"].accepted == 1 and report.tables["resources"].quarantined == 1
    reasons = {r["position"]: r["reason"] for r in _rejects(plake)}
    assert "unknown FHIR resource type 'FooBarResource'" in reasons["b.ndjson line 1 entry 2"]
    assert "truncated" in reasons["b.ndjson line 2"]
    assert plake.read("raw", "resources", decrypt=True).column("resource_type").to_pylist() == ["Claim"]


def test_when_a_fhir_resource_fails_the_model_then_the_reason_names_the_field_but_not_the_value(
        tmp_path: Path, ing_settings, plake) -> None:
    bad = dict(PATIENT, birthDate="1970-02-30")
    path = _write(tmp_path / "b.ndjson", _bundle(bad) + "\n")
    report = ingest(ing_settings, source="fhir", path=path, plake=plake, docs=False)
    _check(report)
    (row,) = _rejects(plake)
    assert "birthDate" in row["reason"] and "1970-02-30" not in row["reason"] and row["rules"] == ["fhir:model"]


ADT = ("MSH|^~\\&|APP|FAC-EAST|MEDGUARD|MEDGUARD|20240101120000||ADT^A01^ADT_A01|A1|P|2.5.1\r"
       "EVN|A01|20240101120000\r"
       "PID|1||00001234^^^FAC-EAST^MR~PATH1^^^MEDGUARD^PI||Doe^Jane||19700102|F|||1 Main St^^Town^OR^97201^USA"
       "||^PRN^PH^^1^503^5550101~^NET^Internet^jane@example.com|||||H123456789|123-45-6789\r"
       "PV1|1|O|AMB^^^FAC-EAST||||1234567890^^^^^^^^NPI||||||||||||ENCH1" + "|" * 25
       + "20240101120000|20240101130000\r")


@pytest.mark.parametrize(("name", "message", "rule"), [
    ("wrong_segment_order", ADT.replace("EVN|A01|20240101120000\r", "") .replace("PV1|", "EVN|A01|2024\rPV1|"),
     "hl7:segment_order"),
    ("pv1_before_pid", "\r".join([ADT.split("\r")[i] for i in (0, 1, 3, 2)]) + "\r", "hl7:segment_order"),
    ("garbled_segment", ADT.replace("PID|1||", "PID#1##"), "hl7:garbled"),
    ("unsupported_type", ADT.replace("ADT^A01^ADT_A01", "MFN^M01^MFN_M01"), "hl7:type"),
    ("no_msh", ADT[4:], "hl7:structure"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "")
def test_when_an_hl7_message_is_malformed_then_the_whole_message_is_quarantined(
        tmp_path: Path, ing_settings, plake, name: str, message: str, rule: str) -> None:
    path = _write(tmp_path / "m.hl7", ADT + "\n" + message + "\n")
    report = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    _check(report)
    assert report.tables["messages"].rows_in == 2 and report.tables["messages"].quarantined == 1
    assert report.tables["patients"].accepted == 1
    (row,) = _rejects(plake)
    assert row["rules"] == [rule] and row["position"] == "message 2 (m.hl7 line 2)"
    assert "Doe" not in row["reason"] and "123-45-6789" not in row["reason"]
