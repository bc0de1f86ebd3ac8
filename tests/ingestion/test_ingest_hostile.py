"""Hostile inputs become quarantined records with a reason and a position: never a crash, never a silent drop."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ingestion.batch import ingest
from ingestion.sources.tabular import CELLS_PER_CHUNK, chunk_rows_for, safe_names

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


WIDE = 10_000


def _wide_csv(path: Path, columns: int, rows: int) -> Path:
    with path.open("w") as handle:
        handle.write(",".join(f"c{i}" for i in range(columns)) + "\n")
        for row in range(rows):
            handle.write(",".join(str((row * 31 + i) % 97) for i in range(columns)) + "\n")
    return path


def test_when_a_csv_has_10000_columns_then_it_is_refused_at_once_naming_the_limit(tmp_path: Path, ing_settings,
                                                                                   plake) -> None:
    path = _wide_csv(tmp_path / "wide.csv", WIDE, 200)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"10,000 columns, over the limit of 2,000 .*ingestion\.max_columns"):
        ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)
    # Against a contract (the file claims to be an outcomes extract): one quarantined record, no row read.
    report = ingest(ing_settings, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    elapsed = time.monotonic() - started

    _check(report)
    assert (report.tables["outcomes"].rows_in, report.tables["outcomes"].quarantined) == (1, 1)
    (row,) = _rejects(plake)
    assert row["rules"] == ["schema:columns"] and row["position"] == "file"
    assert "10,000 columns" in row["reason"] and len(row["reason"]) < 300
    assert not plake.exists("raw", "outcomes")
    assert elapsed < 20, f"refusing a 10,000-column file took {elapsed:.1f} s"


def test_when_a_parquet_file_has_10000_columns_then_it_is_refused_the_same_way(tmp_path: Path, ing_settings,
                                                                               plake) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [i] for i in range(WIDE)}), path)
    with pytest.raises(ValueError, match="10,000 columns, over the limit"):
        ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)
    report = ingest(ing_settings, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    assert (report.tables["outcomes"].rows_in, report.tables["outcomes"].quarantined) == (1, 1)
    assert _rejects(plake)[0]["position"] == "file"


def test_when_a_header_repeats_one_name_2000_times_then_the_names_are_numbered(tmp_path: Path) -> None:
    assert safe_names(["x"] * 2_000)[-3:] == ["x_1998", "x_1999", "x_2000"]
    assert safe_names(["a", "a_2", "a", "A"]) == ["a", "a_2", "a_3", "a_4"]


def test_when_a_jsonl_record_has_10000_fields_then_only_that_line_is_quarantined_with_a_short_reason(
        tmp_path: Path, ing_settings, plake) -> None:
    wide = json.dumps({f"f{i}": i for i in range(WIDE)})
    good = json.dumps({"patient_id": "PAT1", "index_date": "2025-01-01", "prevalent_t2d": False})
    path = _write(tmp_path / "outcomes.jsonl", good + "\n" + wide + "\n")
    report = ingest(ing_settings, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    _check(report)
    assert (report.tables["outcomes"].accepted, report.tables["outcomes"].quarantined) == (1, 1)
    (row,) = _rejects(plake)
    assert row["rules"] == ["schema:columns"] and row["position"] == "line 2" and len(row["reason"]) < 300


def test_when_a_csv_is_wide_but_under_the_limit_then_it_loads_with_chunks_bounded_by_values(
        tmp_path: Path, ing_settings, plake) -> None:
    assert chunk_rows_for(50_000, 20) == 50_000
    assert chunk_rows_for(50_000, 2_000) * 2_000 <= CELLS_PER_CHUNK
    path = _wide_csv(tmp_path / "wide.csv", 1_500, 300)
    started = time.monotonic()
    report = ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)
    elapsed = time.monotonic() - started
    _check(report)
    assert report.tables["wide"].accepted == 300
    assert plake.read("raw", "wide", decrypt=True).num_columns >= 1_500
    assert elapsed < 120, f"1,500 columns x 300 rows took {elapsed:.1f} s"


UTF16_CSV = (HEADER + GOOD).encode("utf-16")
UTF16_JSONL = (json.dumps({"patient_id": "PAT1", "index_date": "2025-01-01"}) + "\n").encode("utf-16")


@pytest.mark.parametrize(("filename", "content"), [("outcomes.csv", UTF16_CSV), ("outcomes.jsonl", UTF16_JSONL),
                                                   ("outcomes.csv", (HEADER + GOOD).encode("utf-32"))],
                         ids=["utf16_csv", "utf16_jsonl", "utf32_csv"])
def test_when_an_extract_is_utf16_then_the_whole_file_is_refused_naming_the_encoding(
        tmp_path: Path, ing_settings, plake, filename: str, content: bytes) -> None:
    path = _write(tmp_path / filename, content)
    with pytest.raises(ValueError, match=r"byte-order mark: the file is UTF-(16|32), not UTF-8"):
        ingest(ing_settings, source="tabular", path=path, table="new_table", plake=plake, docs=False)
    report = ingest(ing_settings, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    _check(report)
    assert (report.tables["outcomes"].rows_in, report.tables["outcomes"].quarantined) == (1, 1)
    (row,) = _rejects(plake)
    assert row["rules"] == ["record:encoding"] and row["position"] == "file" and "iconv" in row["reason"]


def test_when_an_extract_has_a_utf8_bom_or_a_latin1_line_then_the_good_lines_load(tmp_path: Path, ing_settings,
                                                                                  plake) -> None:
    csv_path = _write(tmp_path / "outcomes.csv", b"\xef\xbb\xbf" + (HEADER + GOOD).encode())
    jsonl_path = _write(tmp_path / "outcomes.jsonl", b"\xef\xbb\xbf" + json.dumps(
        {"patient_id": "PAT1", "index_date": "2025-01-01", "prevalent_t2d": False}).encode() + b"\n" + json.dumps(
        {"patient_id": "JOS\u00c9", "index_date": "2025-01-01"}, ensure_ascii=False).encode("latin-1") + b"\n")
    first = ingest(ing_settings, source="tabular", path=csv_path, table="outcomes", plake=plake, docs=False)
    second = ingest(ing_settings, source="tabular", path=jsonl_path, table="outcomes", plake=plake, docs=False)
    assert first.tables["outcomes"].accepted == 1
    assert (second.tables["outcomes"].accepted, second.tables["outcomes"].quarantined) == (1, 1)
    (row,) = _rejects(plake)
    assert row["rules"] == ["record:encoding"] and row["position"] == "line 2" and "JOS" not in row["reason"]


NOTE = "patient_id: PAT1\nencounter_id: ENC1\n\nSeen today.\n"
SECRET = "patient_id: PAT9\n\nhvs.ROOT-TOKEN-THAT-MUST-NEVER-BE-READ\n"


def _everything_stored(plake) -> str:
    stored = [plake.read("quarantine", "records", decrypt=True).to_pylist()]
    if plake.exists("raw", "notes"):
        stored.append(plake.read("raw", "notes", decrypt=True).to_pylist())
    return json.dumps(stored, default=str)


def test_when_a_notes_folder_holds_a_symlink_to_a_secret_then_it_is_refused_and_never_read(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    secret = _write(tmp_path / "openbao-root-token.txt", SECRET)
    notes = tmp_path / "notes"
    notes.mkdir()
    _write(notes / "N-1.txt", NOTE)
    (notes / "N-2.txt").symlink_to(secret)
    (notes / "N-3.txt").symlink_to(tmp_path)  # a link to a folder
    os.mkfifo(notes / "N-4.txt")  # would block a reader that opened it

    report = ingest(ing_settings, source="notes", path=notes, plake=plake, docs=False)

    _check(report)
    assert (report.tables["notes"].rows_in, report.tables["notes"].accepted) == (1, 1)
    assert (report.tables["files"].rows_in, report.tables["files"].quarantined) == (3, 3)
    rules = {unlabel(row["position"], notes): row["rules"] for row in _rejects(plake)}
    assert rules == {"N-2.txt": ["file:symlink"], "N-3.txt": ["file:symlink"], "N-4.txt": ["file:special"]}
    assert "ROOT-TOKEN" not in _everything_stored(plake) and "PAT9" not in _everything_stored(plake)


def test_when_a_folder_holds_only_links_then_the_run_says_so_and_reads_nothing(tmp_path: Path, ing_settings,
                                                                              plake) -> None:
    secret = _write(tmp_path / "token.txt", SECRET)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "N-1.txt").symlink_to(secret)
    with pytest.raises(ValueError, match="holds no notes files"):
        ingest(ing_settings, source="notes", path=notes, plake=plake, docs=False)


def test_when_a_symlinked_file_is_given_directly_then_it_is_read_as_the_users_choice(tmp_path: Path, ing_settings,
                                                                                      plake) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    note = _write(real / "N-1.txt", NOTE)
    extract = _write(real / "outcomes.csv", HEADER + GOOD)
    (tmp_path / "note-link.txt").symlink_to(note)
    (tmp_path / "extract-link.csv").symlink_to(extract)

    notes = ingest(ing_settings, source="notes", path=tmp_path / "note-link.txt", plake=plake, docs=False)
    outcomes = ingest(ing_settings, source="tabular", path=tmp_path / "extract-link.csv", table="outcomes",
                      plake=plake, docs=False)

    assert notes.tables["notes"].accepted == 1 and outcomes.tables["outcomes"].accepted == 1


def test_when_a_note_file_is_in_the_wrong_encoding_then_it_is_quarantined_naming_it(tmp_path: Path, ing_settings,
                                                                                     plake, unlabel) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    _write(notes / "utf16.txt", NOTE.encode("utf-16"))
    _write(notes / "latin1.txt", "patient_id: PAT2\n\nJos\u00e9 seen.\n".encode("latin-1"))
    _write(notes / "bom.txt", b"\xef\xbb\xbf" + NOTE.encode())

    report = ingest(ing_settings, source="notes", path=notes, plake=plake, docs=False)

    _check(report)
    assert (report.tables["notes"].accepted, report.tables["notes"].quarantined) == (1, 2)
    rejects = {unlabel(row["position"], notes): row for row in _rejects(plake)}
    assert rejects["file utf16.txt"]["rules"] == ["record:encoding"] and "UTF-16" in rejects["file utf16.txt"]["reason"]
    assert rejects["file latin1.txt"]["rules"] == ["record:encoding"]
    assert plake.read("raw", "notes", decrypt=True).column("patient_id").to_pylist() == ["PAT1"]


def test_when_a_research_csv_has_a_10mb_line_then_the_draft_skips_it_and_the_line_is_quarantined(
        tmp_path: Path, ing_settings, plake) -> None:
    path = _write(tmp_path / "cohort.csv", "subject,score\nS1,1\nS2," + "9" * (10 * 2**20) + "\nS3,3\n")
    report = ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)
    _check(report)
    assert (report.tables["cohort"].accepted, report.tables["cohort"].quarantined) == (2, 1)
    assert _rejects(plake)[0]["rules"] == ["record:size"]


def test_when_an_extract_path_is_a_fifo_then_it_is_refused_without_blocking(tmp_path: Path, ing_settings,
                                                                           plake) -> None:
    os.mkfifo(tmp_path / "outcomes.csv")
    with pytest.raises(ValueError, match="not a regular file"):
        ingest(ing_settings, source="tabular", path=tmp_path / "outcomes.csv", plake=plake, docs=False)


def test_when_a_jsonl_line_nests_20000_levels_then_only_that_line_is_quarantined(tmp_path: Path, ing_settings,
                                                                                 plake) -> None:
    good = json.dumps({"patient_id": "PAT1", "index_date": "2025-01-01", "prevalent_t2d": False})
    deep = '{"patient_id": ' + "[" * 20_000 + "]" * 20_000 + "}"
    path = _write(tmp_path / "outcomes.jsonl", deep + "\n" + good + "\n")
    report = ingest(ing_settings, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    _check(report)
    assert (report.tables["outcomes"].accepted, report.tables["outcomes"].quarantined) == (1, 1)
    (row,) = _rejects(plake)
    assert row["rules"] == ["record:parse"] and row["position"] == "line 1"


def test_when_an_extract_folder_holds_a_symlinked_input_then_the_run_refuses_it(tmp_path: Path, ing_settings,
                                                                               plake) -> None:
    from ingestion.batch import ingest_extract

    secret = _write(tmp_path / "root-token", "patient_id,x\nhvs.ROOT-TOKEN,1\n")
    extract = tmp_path / "sources"
    extract.mkdir()
    (extract / "patients.csv").symlink_to(secret)
    (extract / "notes.jsonl").symlink_to(secret)
    for source in ("tabular", "notes"):
        with pytest.raises(ValueError, match="is a symbolic link; links in an extract folder are not followed"):
            ingest_extract(ing_settings, source=source, sources_dir=extract, tabular_format="csv", plake=plake)
    assert not plake.exists("quarantine", "records") and not plake.exists("raw", "patients")


def _bundle(*resources: dict) -> str:
    return json.dumps({"resourceType": "Bundle", "id": "b1", "type": "collection",
                       "entry": [{"fullUrl": f"urn:uuid:{r.get('id', 'x')}", "resource": r} for r in resources]})


PATIENT = {"resourceType": "Patient", "id": "11111111-1111-4111-8111-111111111111", "gender": "female",
           "birthDate": "1970-01-02", "identifier": [{"system": "urn:medguard:source-patient-id", "value": "PATX"},
                          {"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn", "value": "0012345"}],
           "managingOrganization": {"identifier": {"value": "FAC-EAST"}},
           "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}]}


def test_when_a_fhir_bundle_has_an_unknown_resource_type_then_only_that_entry_is_quarantined(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
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
    reasons = {unlabel(r["position"], path): r["reason"] for r in _rejects(plake)}
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
        tmp_path: Path, ing_settings, plake, unlabel, name: str, message: str, rule: str) -> None:
    path = _write(tmp_path / "m.hl7", ADT + "\n" + message + "\n")
    report = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    _check(report)
    assert report.tables["messages"].rows_in == 2 and report.tables["messages"].quarantined == 1
    assert report.tables["patients"].accepted == 1
    (row,) = _rejects(plake)
    assert row["rules"] == [rule] and unlabel(row["position"], path) == "message 2 (m.hl7 line 2)"
    assert "Doe" not in row["reason"] and "123-45-6789" not in row["reason"]
