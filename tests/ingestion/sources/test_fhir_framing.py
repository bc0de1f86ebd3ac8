"""The FHIR reader takes every framing people send (Bundle or bare resource per .json file, Bulk ndjson, gzip, one
Bundle a line, a mixed folder) and turns hostile files (a nesting bomb, a bad gzip, a link) into rejected records."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from ingestion.sources.fhir import fhir_files, read_fhir

EXAMPLES = Path(__file__).parents[2] / "fixtures" / "fhir" / "r4-examples"
SYNTHEA = Path(__file__).parents[2] / "fixtures" / "fhir" / "synthea"
LIMIT = 1 << 20

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-02"}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def _read(path: Path, limit: int = LIMIT):
    """Rows per table (position -> row), rejected records (position -> record) and units of everything read."""
    rows: dict[str, dict[str, dict]] = {}
    rejected = {}
    units: Counter = Counter()
    for chunk in read_fhir(path, chunk_rows=1000, max_record_bytes=limit):
        for table, found in chunk.tables.items():
            rows.setdefault(table, {}).update(zip(found.positions, found.rows, strict=True))
        rejected.update({r.position: r for r in chunk.rejected})
        units.update(chunk.units)
    return rows, rejected, units


def _lines(*resources: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


def test_when_a_pretty_printed_synthea_bundle_is_read_then_it_is_one_bundle_of_mapped_rows() -> None:
    rows, rejected, units = _read(SYNTHEA / "Johnnie679_Hermiston71_2cd30bd6-3a87-4191-af90-6daa70f58f55.json")
    assert units == {"bundles": 1} and not rejected
    assert len(rows["patients"]) == 1 and len(rows["encounters"]) == 22 and len(rows["conditions"]) == 4
    assert len(rows["medications"]) == 4 and len(rows["immunizations"]) == 35 and len(rows["procedures"]) == 10
    assert {r["patient_id"] for t in rows.values() for r in t.values() if r.get("patient_id")} == \
        {"ea877536-55b1-4ec8-a12b-e95594214c01"}


def test_when_a_file_holds_one_bare_resource_then_it_is_read_as_that_resource() -> None:
    rows, rejected, units = _read(EXAMPLES / "Condition-f201.json")
    assert not rejected and not units
    (condition,) = rows["conditions"].values()
    assert condition["condition_id"] == "f201" and condition["patient_id"] == "f201"
    assert (condition["code"], condition["code_system"]) == ("386661006", "http://snomed.info/sct")


def test_when_bulk_export_ndjson_and_gzip_are_read_then_references_by_id_tie_rows_to_the_patient(
        tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_text(_lines(PATIENT, dict(PATIENT, id="p2")))
    with gzip.open(tmp_path / "Observation.000.ndjson.gz", "wt") as handle:
        handle.write(_lines(OBSERVATION, dict(OBSERVATION, id="o2", subject={"reference": "Patient/p2"})))
    (tmp_path / "Observation.001.ndjson").write_text(_lines(dict(OBSERVATION, id="o3")) + '{"resourceType": "Obs\n')
    rows, rejected, units = _read(tmp_path)
    assert sorted(r["patient_id"] for r in rows["patients"].values()) == ["p1", "p2"]
    assert {p: r["patient_id"] for p, r in rows["observations"].items()} == {
        "Observation.000.ndjson.gz line 1": "p1", "Observation.000.ndjson.gz line 2": "p2",
        "Observation.001.ndjson line 1": "p1"}
    # A broken line of a Bulk file counts against the table the file's name announces, not a bundle.
    bad = rejected["Observation.001.ndjson line 2"]
    assert (bad.table, bad.rule) == ("observations", "record:parse") and not units


def test_when_a_gzip_line_decompresses_past_the_record_limit_then_only_that_line_is_rejected(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "Observation.ndjson.gz", "wt") as handle:
        handle.write(json.dumps(dict(OBSERVATION, note=[{"text": "x" * (3 * LIMIT)}])) + "\n" + _lines(OBSERVATION))
    assert (tmp_path / "Observation.ndjson.gz").stat().st_size < LIMIT // 10  # small on disk, big inflated
    rows, rejected, _ = _read(tmp_path)
    big = rejected["Observation.ndjson.gz line 1"]
    assert big.rule == "record:size" and big.payload_truncated and len(big.payload) <= 64 * 1024
    assert list(rows["observations"]) == ["Observation.ndjson.gz line 2"]


def test_when_a_gzip_file_is_corrupt_then_it_is_rejected_after_the_lines_that_were_read(tmp_path: Path) -> None:
    data = gzip.compress(_lines(OBSERVATION, dict(OBSERVATION, id="o2")).encode())
    (tmp_path / "Observation.ndjson.gz").write_bytes(data[:-12])  # the end of the stream cut off
    (tmp_path / "Patient.ndjson.gz").write_bytes(b"not gzip at all\n")
    _, rejected, _ = _read(tmp_path)
    assert {r.rule for r in rejected.values()} == {"record:parse"}
    assert any(p.startswith("Patient.ndjson.gz") for p in rejected)
    assert any(p.startswith("Observation.ndjson.gz") for p in rejected)
    assert all("compressed stream" in r.reason for r in rejected.values())


def test_when_one_bundle_a_line_is_read_then_each_line_is_a_bundle(tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1b4e5c1a-0000-4000-8000-000000000001", "resource": PATIENT},
                        {"resource": OBSERVATION}]}
    (tmp_path / "bundles.ndjson").write_text(_lines(bundle, bundle) + '{"resourceType": "Bundle", "entry": [\n')
    rows, rejected, units = _read(tmp_path)
    assert units == {"bundles": 3} and list(rejected) == ["bundles.ndjson line 3"]
    assert rejected["bundles.ndjson line 3"].table == "bundles"
    assert sorted(rows["observations"]) == ["bundles.ndjson line 1 entry 2", "bundles.ndjson line 2 entry 2"]


def test_when_a_folder_mixes_every_framing_then_all_are_read_and_other_files_ignored(tmp_path: Path) -> None:
    shutil.copy(SYNTHEA / "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json", tmp_path / "luna.json")
    shutil.copy(EXAMPLES / "Patient-example.json", tmp_path / "patient-example.json")
    (tmp_path / "Observation.ndjson").write_text(_lines(dict(OBSERVATION, subject={"reference": "Patient/example"})))
    (tmp_path / "bulk-as.json").write_text(_lines(dict(OBSERVATION, id="o9")) * 2)  # ndjson saved as .json
    (tmp_path / "notes.txt").write_text("not FHIR")
    assert [f.name for f in fhir_files(tmp_path)] == ["Observation.ndjson", "bulk-as.json", "luna.json",
                                                      "patient-example.json"]
    rows, rejected, units = _read(tmp_path)
    assert units == {"bundles": 1}
    assert "example" in {r["patient_id"] for r in rows["patients"].values()}
    assert rows["observations"]["Observation.ndjson line 1"]["patient_id"] == "example"
    assert {"bulk-as.json line 1", "bulk-as.json line 2"} <= set(rows["observations"])
    assert {r.rule for r in rejected.values()} == {"fhir:model"}  # Luna's two defects, nothing else


def test_when_a_folder_holds_a_symlink_then_it_is_refused_as_a_files_record_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "root-token.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps(dict(PATIENT, id="leaked")))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(_lines(PATIENT))
    os.symlink(secret, folder / "linked.json")
    rows, rejected, units = _read(folder)
    assert units == {"files": 1}
    assert (rejected["linked.json"].table, rejected["linked.json"].rule) == ("files", "file:symlink")
    assert [r["patient_id"] for r in rows["patients"].values()] == ["p1"]


@pytest.mark.parametrize("name", ["deep.ndjson", "deep.json"])
def test_when_json_is_nested_20000_levels_deep_then_it_is_one_depth_rejection_in_bounded_time(
        tmp_path: Path, name: str) -> None:
    bomb = '{"resourceType": "Observation", "extension": ' + "[" * 20_000 + "]" * 20_000 + "}"
    (tmp_path / name).write_text(bomb + ("\n" + json.dumps(PATIENT) if name.endswith("ndjson") else ""))
    started = time.perf_counter()
    rows, rejected, _ = _read(tmp_path)
    assert time.perf_counter() - started < 5
    (rule,) = {r.rule for r in rejected.values()}
    assert rule == "record:depth" and "20,001 levels" in next(iter(rejected.values())).reason
    if name.endswith("ndjson"):
        assert [r["patient_id"] for r in rows["patients"].values()] == ["p1"]


def test_when_brackets_sit_inside_strings_then_they_do_not_count_as_depth(tmp_path: Path) -> None:
    text = '[[[{{"\\"' * 200
    (tmp_path / "Patient.ndjson").write_text(_lines(dict(PATIENT, name=[{"text": text}])))
    rows, rejected, _ = _read(tmp_path)
    assert not rejected and rows["patients"]["Patient.ndjson line 1"]["patient_id"] == "p1"


def test_when_files_are_in_other_encodings_or_carry_a_bom_then_only_the_undecodable_are_rejected(
        tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(PATIENT).encode())
    (tmp_path / "b.json").write_bytes(json.dumps(dict(PATIENT, id="p2", name=[{"family": "Mu\u00f1oz"}]),
                                                 ensure_ascii=False).encode("latin-1"))
    (tmp_path / "c.json").write_bytes(json.dumps(PATIENT).encode("utf-16"))
    rows, rejected, units = _read(tmp_path)
    assert [r["patient_id"] for r in rows["patients"].values()] == ["p1"]
    assert {p: r.rule for p, r in rejected.items()} == {"b.json": "record:encoding", "c.json": "record:encoding"}
    assert all("Mu" not in r.reason for r in rejected.values()) and units == {"bundles": 2}


def test_when_a_json_document_is_larger_than_the_document_bound_then_it_is_rejected_unread(tmp_path: Path) -> None:
    from ingestion.sources.fhir._framing import MAX_DOCUMENT_BYTES

    with (tmp_path / "huge.json").open("wb") as handle:
        handle.write(b'{"resourceType": "Bundle", "entry": [')
        handle.truncate(MAX_DOCUMENT_BYTES + 10)  # sparse: no disk used for the zeros
    _, rejected, units = _read(tmp_path)
    assert rejected["huge.json"].rule == "record:size" and rejected["huge.json"].payload_truncated
    assert units == {"bundles": 1}


def test_when_json_is_not_a_fhir_resource_then_it_is_rejected_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "x.ndjson").write_text('"just text"\n{"id": "no-type"}\n' + json.dumps(
        {"resourceType": "FooBar", "id": "f"}) + "\n")
    _, rejected, units = _read(tmp_path)
    assert {p: r.rule for p, r in rejected.items()} == {
        "x.ndjson line 1": "record:parse", "x.ndjson line 2": "record:parse", "x.ndjson line 3": "fhir:resource_type"}
    assert units == {"bundles": 2}


def test_when_numbers_are_too_long_then_the_line_is_rejected_or_the_value_kept_as_text(tmp_path: Path) -> None:
    huge = json.dumps(OBSERVATION)[:-1] + ', "valueInteger": ' + "9" * 5000 + "}"  # past Python's 4,300 digits
    big = json.dumps({k: v for k, v in OBSERVATION.items() if k != "valueQuantity"})[:-1] + \
        ', "valueQuantity": {"value": ' + "9" * 400 + "}}"  # past a double's range
    (tmp_path / "Observation.ndjson").write_text(huge + "\n" + big + "\n")
    rows, rejected, _ = _read(tmp_path)
    assert rejected["Observation.ndjson line 1"].rule == "record:parse"
    row = rows["observations"]["Observation.ndjson line 2"]
    assert row["value"] is None and row["value_text"] == "9" * 400


def test_when_a_gzip_file_is_a_decompression_bomb_then_reading_stops_at_its_inflation_budget(tmp_path: Path) -> None:
    from ingestion.sources.fhir._framing import MAX_DOCUMENT_BYTES

    with gzip.open(tmp_path / "Observation.ndjson.gz", "wb", compresslevel=9) as handle:
        for _ in range(MAX_DOCUMENT_BYTES // 2**20 + 40):  # 104 MiB of one line, about 100 KiB on disk
            handle.write(b"0" * 2**20)
    started = time.perf_counter()
    _, rejected, _ = _read(tmp_path)
    assert time.perf_counter() - started < 20
    (bomb,) = rejected.values()
    assert (bomb.position, bomb.rule) == ("Observation.ndjson.gz line 1", "record:size")
    assert "decompression bomb" in bomb.reason


def test_when_a_bulk_export_keeps_its_manifest_beside_the_files_then_the_manifest_is_not_a_record(
        tmp_path: Path) -> None:
    manifest = {"transactionTime": "2024-05-01T00:00:00Z", "request": "https://x/fhir/$export", "requiresAccessToken":
                True, "output": [{"type": "Patient", "url": "https://x/files/Patient.ndjson"}], "error": []}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "Patient.ndjson").write_text(_lines(PATIENT))
    rows, rejected, units = _read(tmp_path)
    assert not rejected and not units and list(rows) == ["patients"]


def test_when_a_file_holds_a_json_array_of_resources_then_each_element_is_read(tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text(json.dumps([PATIENT, OBSERVATION, [PATIENT], 7], indent=2))
    rows, rejected, units = _read(tmp_path)
    assert list(rows["patients"]) == ["export.json item 1"] and list(rows["observations"]) == ["export.json item 2"]
    assert {p: r.rule for p, r in rejected.items()} == {"export.json item 3": "record:parse",
                                                        "export.json item 4": "record:parse"}
    assert units == {"bundles": 2}


def test_when_a_bundle_is_malformed_then_the_bundle_or_its_bad_entries_are_rejected_with_positions(
        tmp_path: Path) -> None:
    broken = {"resourceType": "Bundle", "type": "collection", "entry": {"resource": PATIENT}}
    mixed = {"resourceType": "Bundle", "type": "collection",
             "entry": [7, {"resource": {"id": "no-type"}}, {"fullUrl": "urn:uuid:x"}, {"resource": PATIENT},
                       {"resource": {"resourceType": "Bundle", "entry": "nested, not a list"}}]}
    (tmp_path / "b.ndjson").write_text(_lines(broken, mixed))
    rows, rejected, units = _read(tmp_path)
    assert {p: (r.table, r.rule) for p, r in rejected.items()} == {
        "b.ndjson line 1": ("bundles", "record:parse"),
        "b.ndjson line 2 entry 1": ("resources", "fhir:resource_type"),
        "b.ndjson line 2 entry 2": ("resources", "fhir:resource_type"),
        "b.ndjson line 2 entry 3": ("resources", "fhir:resource_type"),
        "b.ndjson line 2 entry 5": ("resources", "record:parse")}
    assert list(rows["patients"]) == ["b.ndjson line 2 entry 4"] and units == {"bundles": 2}
