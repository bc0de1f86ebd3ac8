"""FHIR written by others loads end to end through ``ingest``: Synthea bundles, the official R4 examples, Bulk
ndjson; hostile FHIR inputs end as quarantine rows, never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from _fhir_example_defects import LOAD_DEFECTS

from ingestion.batch import ingest

FIXTURES = Path(__file__).parents[2] / "fixtures" / "fhir"
EXAMPLES = FIXTURES / "r4-examples"
JOHNNIE = "Johnnie679_Hermiston71_2cd30bd6-3a87-4191-af90-6daa70f58f55.json"
LUNA = "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json"
MAPPED = ("Patient", "Encounter", "Observation", "Condition", "MedicationRequest", "MedicationStatement",
          "MedicationDispense", "Procedure", "Immunization", "AllergyIntolerance", "DiagnosticReport")


def _quarantine(plake) -> list[dict]:
    if not plake.lake.exists("quarantine", "records"):
        return []
    return plake.read("quarantine", "records", decrypt=True).to_pylist()


def _check(report) -> None:
    for name, counts in report.tables.items():
        assert counts.rows_in == counts.accepted + counts.quarantined, name


# Synthea: per bundle, the rows of each table (an observation with components is a row per component; a child's
# heights and weights included) and the records quarantined for a true defect of the file.
SYNTHEA = {
    JOHNNIE: {"encounters": 22, "conditions": 4, "medications": 4, "observations": 123, "immunizations": 35,
              "procedures": 10, "diagnostic_reports": 1, "resources": 54},
    LUNA: {"encounters": 23, "conditions": 8, "medications": 6, "observations": 112, "immunizations": 27,
           "procedures": 6, "diagnostic_reports": 1, "resources": 54},
}
SYNTHEA_DEFECTS = {  # cql-exec-fhir's test bundle carries two deliberate defects
    (LUNA, "conditions"): "category (list_type)",  # Condition.category is 0..*: an object where a list must be
    (LUNA, "observations"): "valueTime (value_error)",  # FHIR time has no UTC offset: 18:23:47.376-05:00
}


@pytest.mark.parametrize("name", [JOHNNIE, LUNA], ids=["johnnie", "luna"])
def test_when_a_synthea_bundle_is_ingested_then_one_patient_and_all_its_records_load(
        tmp_path: Path, ing_settings, plake, name: str) -> None:
    path = tmp_path / name
    shutil.copy(FIXTURES / "synthea" / name, path)
    report = ingest(ing_settings, source="fhir", path=path, plake=plake, docs=False)
    _check(report)
    assert (report.tables["bundles"].accepted, report.tables["patients"].accepted) == (1, 1)
    (patient,) = plake.read("raw", "patients", decrypt=True).to_pylist()
    assert (patient["race"], patient["ethnicity"], patient["birth_sex"]) == ("White", "Not Hispanic or Latino", "F")
    for table, entries in SYNTHEA[name].items():
        counts = report.tables[table]
        defect = SYNTHEA_DEFECTS.get((name, table))
        assert (counts.rows_in, counts.accepted) == (entries, entries - (1 if defect else 0)), table
    rejected = _quarantine(plake)
    assert sorted((r["table_name"], r["rules"][0]) for r in rejected) == sorted(
        (table, "fhir:model") for (file, table) in SYNTHEA_DEFECTS if file == name)
    for row in rejected:
        assert SYNTHEA_DEFECTS[(name, row["table_name"])] in row["reason"]
        # sealed under the patient's key, so shredding the patient reaches the quarantined record too
        assert row["patient_pseudonym"] == plake.pseudonymizer("patient").pseudonym(patient["patient_id"])
    # every encounter a child row names was loaded
    encounters = {r["encounter_id"] for r in plake.read("raw", "encounters").to_pylist()}
    for table in ("conditions", "medications", "procedures", "immunizations"):
        named = {r["encounter_id"] for r in plake.read("raw", table).to_pylist()} - {None}
        assert named <= encounters, table


# The official examples of every mapped type, one folder, one batch: files accepted of files per type (a file is
# accepted when nothing of it is quarantined). Each quarantined file is in LOAD_DEFECTS with its rule and defect.
def test_when_every_official_example_of_a_mapped_type_is_ingested_then_each_loads_or_names_its_defect(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    folder = tmp_path / "examples"
    folder.mkdir()
    files = [p for p in EXAMPLES.iterdir() if p.name.split("-")[0] in MAPPED]
    for path in files:
        shutil.copy(path, folder / path.name)
    report = ingest(ing_settings, source="fhir", path=folder, plake=plake, docs=False)
    _check(report)
    quarantined = {unlabel(row["position"], folder).split(" ")[0]: row["rules"][0] for row in _quarantine(plake)}
    assert quarantined == LOAD_DEFECTS
    per_type = Counter(p.name.split("-")[0] for p in files)
    bad_per_type = Counter(name.split("-")[0] for name in quarantined)
    accepted = {kind: (per_type[kind] - bad_per_type[kind], per_type[kind]) for kind in MAPPED}
    assert accepted == {"Patient": (22, 22), "Encounter": (10, 10), "Observation": (58, 64), "Condition": (11, 12),
                        "MedicationRequest": (39, 40), "MedicationStatement": (7, 7), "MedicationDispense": (30, 31),
                        "Procedure": (14, 16), "Immunization": (5, 5), "AllergyIntolerance": (6, 6),
                        "DiagnosticReport": (5, 5)}
    # the herd observation (a Group's) and the contained Medications' requests: kept whole or loaded, sealed
    kept = plake.read("raw", "resources", decrypt=True).to_pylist()
    assert [(r["resource_type"], r["resource_id"]) for r in kept] == [("Observation", "herd1")]
    assert plake.lake.read_arrow("raw", "resources").schema.field("resource_json").type == "binary"
    rows = {t: plake.lake.read_arrow("raw", t).num_rows for t in ("patients", "allergies", "diagnostic_reports")}
    assert rows == {"patients": 22 + 5, "allergies": 6, "diagnostic_reports": 5}  # + 5 contained newborns


def test_when_the_example_bundles_are_ingested_then_records_sharing_one_url_load_per_patient(
        tmp_path: Path, ing_settings, plake) -> None:
    folder = tmp_path / "bundles"
    folder.mkdir()
    for path in EXAMPLES.glob("Bundle-*.json"):
        shutil.copy(path, folder / path.name)
    report = ingest(ing_settings, source="fhir", path=folder, plake=plake, docs=False)
    _check(report)
    assert report.tables["bundles"].accepted == 32
    rules = Counter(row["rules"][0] for row in _quarantine(plake))
    # Bundle-ghp and Bundle-report both hold https://example.com/base/Observation/o1..o11 with different content,
    # as Bundle-f202 and Bundle-micro hold ServiceRequest/req, and Bundle-bundle-references two Observation/14 from
    # two servers: each pair belongs to two different patients, and a patient's record is keyed within its patient,
    # so both of each pair load.
    assert rules["observation_id:unique"] == 0 and rules["resource_key:unique"] == 0
    assert rules["fhir:request"] == 2  # Bundle-bundle-transaction's two DELETEs


def test_when_bulk_export_ndjson_gz_is_ingested_then_rows_tie_to_patients_by_id(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    patient = json.loads((EXAMPLES / "Patient-example.json").read_text())
    observation = json.loads((EXAMPLES / "Observation-blood-pressure.json").read_text())
    export = tmp_path / "export"  # apart from the test's keyring.json
    export.mkdir()
    (export / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    with gzip.open(export / "Observation.000.ndjson.gz", "wt") as handle:
        handle.write(json.dumps(observation) + "\n" + "{not json\n")
    report = ingest(ing_settings, source="fhir", path=export, plake=plake, docs=False)
    _check(report)
    assert "bundles" not in report.tables
    assert (report.tables["observations"].accepted, report.tables["observations"].quarantined) == (2, 1)
    rows = plake.read("raw", "observations", decrypt=True).to_pylist()
    assert {(r["observation_id"], r["patient_id"]) for r in rows} == {("blood-pressure:1", "example"),
                                                                     ("blood-pressure:2", "example")}
    (bad,) = _quarantine(plake)
    assert (unlabel(bad["position"], export), bad["rules"]) == ("Observation.000.ndjson.gz line 2", ["record:parse"])


def test_when_fhir_input_is_hostile_then_each_bad_file_or_line_is_a_quarantine_row_and_the_rest_loads(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    secret = tmp_path / "root-token.json"
    secret.write_text(json.dumps({"resourceType": "Patient", "id": "leaked"}))
    folder = tmp_path / "in"
    folder.mkdir()
    bomb = '{"resourceType": "Patient", "extension": ' + "[" * 20_000 + "]" * 20_000 + "}"
    (folder / "Patient.ndjson").write_text(bomb + "\n" + json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    (folder / "deep.json").write_text(bomb)
    (folder / "latin1.json").write_bytes('{"resourceType": "Patient", "id": "Jos\u00e9"}'.encode("latin-1"))
    os.symlink(secret, folder / "token.json")
    report = ingest(ing_settings, source="fhir", path=folder, plake=plake, docs=False)
    _check(report)
    rows = {unlabel(row["position"], folder): (row["table_name"], row["rules"][0]) for row in _quarantine(plake)}
    assert rows == {"Patient.ndjson line 1": ("patients", "record:depth"), "deep.json": ("bundles", "record:depth"),
                    "latin1.json": ("bundles", "record:encoding"), "token.json": ("files", "file:symlink")}
    assert [r["patient_id"] for r in plake.read("raw", "patients", decrypt=True).to_pylist()] == ["p1"]
    assert not any("leaked" in (r["payload"] or "") for r in _quarantine(plake))
