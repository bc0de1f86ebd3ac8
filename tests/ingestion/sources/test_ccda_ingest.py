"""C-CDA documents end to end through ``ingest(..., source="ccda")`` and ``medguard ingest --source ccda``: what
lands in ``raw`` and what is quarantined, with the rule, for each of the eleven vendor documents in
tests/fixtures/ccda (written by others, MIT)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingestion.batch import ingest
from pipeline.cli import app

FIXTURES = Path(__file__).parents[2] / "fixtures" / "ccda"

# Accepted rows per table, and quarantined rows per rule, for each document loaded as its own batch. Every
# quarantine names a real defect of the file or a rule of the contracts:
#   ccda:negated          Athena's pending imaging results, recorded as "not done" with no code
#   code:required         a vital sign or result whose code is nullFlavor (Cerner's BMI and mean arterial pressure)
#   loinc_code:code_system  Cerner's body surface area 3139-2, whose LOINC check digit is wrong
#   ssn:pattern           NIST's SSN 123-101-5230 is not nine digits
#   encounter_id:pattern  Partners' visit id "20130307_100^INTERNAL MEDICINE" has characters ids may not carry
LANDS = [
    ("agastha_ccd.xml", {"patients": 1, "encounters": 1, "conditions": 5, "medications": 3, "observations": 18,
                         "diagnostic_reports": 1, "allergies": 2, "immunizations": 3, "procedures": 2,
                         "resources": 1}, {}),
    ("athena_ccd.xml", {"patients": 1, "encounters": 2, "conditions": 2, "medications": 12, "observations": 12,
                        "allergies": 2, "procedures": 3, "resources": 1},
     {"observations": {"ccda:negated": 3}}),
    ("athena_ccd_pq_translation.xml", {"patients": 1, "encounters": 1, "observations": 10, "diagnostic_reports": 2},
     {}),
    ("athena_ccd_real_world.xml", {"patients": 1, "encounters": 2, "conditions": 25, "medications": 30,
                                   "observations": 15, "allergies": 1, "immunizations": 6, "procedures": 14,
                                   "resources": 1},
     {"observations": {"code:required": 1, "code_system:required": 1}}),
    ("careteam_example.xml", {"patients": 1, "resources": 1}, {}),
    ("cerner_toc.xml", {"patients": 1, "encounters": 1, "conditions": 5, "medications": 4, "observations": 13,
                        "diagnostic_reports": 2, "allergies": 2, "immunizations": 1, "procedures": 2, "resources": 1},
     {"observations": {"code:required": 2, "code_system:required": 2, "loinc_code:code_system": 1}}),
    ("lab_reference_ranges.xml", {"patients": 1, "observations": 1, "diagnostic_reports": 1}, {}),
    ("nist_ambulatory.xml", {"patients": 0, "encounters": 2, "conditions": 2, "medications": 1, "observations": 12,
                             "diagnostic_reports": 1, "allergies": 3, "immunizations": 2, "procedures": 1,
                             "resources": 1},
     {"patients": {"ssn:pattern": 1}}),
    ("partners_epic.xml", {"patients": 1, "encounters": 1, "conditions": 3, "medications": 2, "observations": 22,
                           "diagnostic_reports": 11, "allergies": 3}, {}),
    ("practice_fusion_alice_newman.xml", {"patients": 1, "encounters": 2, "conditions": 5, "medications": 3,
                                          "observations": 18, "diagnostic_reports": 7, "allergies": 2,
                                          "immunizations": 3, "procedures": 2, "resources": 1}, {}),
    ("practice_fusion_jeremy_bates.xml", {"patients": 1, "encounters": 3, "conditions": 1, "medications": 1,
                                          "observations": 6, "allergies": 1, "immunizations": 1, "resources": 1}, {}),
]


@pytest.mark.parametrize(("name", "accepted", "quarantined"), LANDS, ids=[entry[0] for entry in LANDS])
def test_when_a_vendor_document_is_ingested_then_its_records_land_or_are_quarantined_with_the_rule(
        ing_settings, plake, name: str, accepted: dict[str, int], quarantined: dict[str, dict[str, int]]) -> None:
    report = ingest(ing_settings, source="ccda", path=FIXTURES / name, plake=plake, docs=False)

    report.check_invariant()
    assert report.tables["documents"].to_dict()["accepted"] == 1
    assert {t: c.accepted for t, c in report.tables.items() if t != "documents"} == accepted
    assert {t: dict(c.by_rule) for t, c in report.tables.items() if c.by_rule} == quarantined
    for table, count in accepted.items():
        if count:
            assert plake.read("raw", table).num_rows == count, table


def test_when_cerner_is_ingested_then_conformed_values_and_sealed_phi_read_back(ing_settings, plake,
                                                                                unlabel) -> None:
    ingest(ing_settings, source="ccda", path=FIXTURES / "cerner_toc.xml", plake=plake, docs=False)

    patient = plake.read("raw", "patients", decrypt=True).to_pylist()[0]
    assert (patient["patient_id"], patient["last_name"], str(patient["birth_date"])) == ("106", "Williamson",
                                                                                          "1947-04-07")
    assert plake.lake.read_arrow("raw", "patients").schema.field("last_name").type == "binary"  # sealed at rest
    angina = [r for r in plake.read("raw", "conditions", decrypt=True).to_pylist() if r["code"] == "194828000"]
    assert sorted(str(r["onset_date"]) for r in angina) == ["2013-07-10", "2013-07-11", "2013-07-17"]  # 3 entries
    assert {r["code_system"] for r in angina} == {"snomed"}  # the OID 2.16.840.1.113883.6.96, named at conform
    systolic = next(r for r in plake.read("raw", "observations", decrypt=True).to_pylist() if r["code"] == "8480-6")
    assert (systolic["code_system"], systolic["value"], systolic["unit"]) == ("loinc", 150.0, "mm[Hg]")
    assert str(systolic["effective_time"]) == "2013-07-11T03:00:00Z"  # the TS 20130710220000.000-0500, in UTC
    rejects = {unlabel(r["position"], FIXTURES / "cerner_toc.xml"): r
               for r in plake.read("quarantine", "records", decrypt=True).to_pylist()}
    bmi = rejects["cerner_toc.xml vitals (section 2) entry 1 observation 1"]
    assert bmi["rules"] == ["code:required", "code_system:required"]
    assert "Body Mass Index Measured" in bmi["payload"]  # the row as read, kept (sealed) for the engineer


def test_when_a_folder_mixes_good_and_hostile_documents_then_the_good_load_and_each_bad_is_one_quarantine_row(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    folder = tmp_path / "ccda"
    folder.mkdir()
    shutil.copy(FIXTURES / "cerner_toc.xml", folder / "cerner_toc.xml")
    shutil.copy(FIXTURES / "lab_reference_ranges.xml", folder / "lab_reference_ranges.xml")
    (folder / "bomb.xml").write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(b'<!ENTITY %c "%s">' % (c, b"&%c;" % (c - 1) * 10) for c in range(ord("b"), ord("k")))
        + b']><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&j;</title></ClinicalDocument>')
    (folder / "truncated.xml").write_bytes((FIXTURES / "careteam_example.xml").read_bytes()[:5000])
    (folder / "passwd.xml").symlink_to("/etc/passwd")
    (folder / "notes.txt").write_text("not an input of --source ccda")

    report = ingest(ing_settings, source="ccda", path=folder, plake=plake, docs=False)

    report.check_invariant()
    assert report.tables["documents"].to_dict() == {"in": 4, "accepted": 2, "quarantined": 2, "duplicates": 0,
                                                    "by_rule": {"record:entities": 1, "record:parse": 1}}
    assert report.tables["files"].to_dict()["by_rule"] == {"file:symlink": 1}
    assert report.tables["patients"].accepted == 2
    rejects = {unlabel(r["position"], folder): r for r in plake.read("quarantine", "records", decrypt=True).to_pylist()}
    assert rejects["bomb.xml"]["rules"] == ["record:entities"]
    assert len(rejects["bomb.xml"]["payload"]) < 2000  # the document as sent, its entities never expanded
    assert rejects["truncated.xml"]["rules"] == ["record:parse"]
    assert "line" in rejects["truncated.xml"]["reason"]
    root_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert all(root_line not in (r["payload"] or "") for r in rejects.values())


def test_when_medguard_ingest_is_given_a_ccda_folder_then_json_reports_documents_and_tables(
        tmp_path: Path, monkeypatch, keyring_env) -> None:
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    result = CliRunner().invoke(app, ["ingest", "--source", "ccda", "--path", str(FIXTURES), "--json"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["tables"]["documents"] == {"in": 11, "accepted": 11, "quarantined": 0}
    assert out["tables"]["patients"]["in"] == 11
    assert all(c["in"] == c["accepted"] + c["quarantined"] for c in out["tables"].values())


def test_when_the_same_document_arrives_twice_under_two_names_then_each_record_is_stored_once(
        tmp_path: Path, ing_settings, plake) -> None:
    folder = tmp_path / "ccda"
    folder.mkdir()
    shutil.copy(FIXTURES / "cerner_toc.xml", folder / "a.xml")
    shutil.copy(FIXTURES / "cerner_toc.xml", folder / "b.xml")

    report = ingest(ing_settings, source="ccda", path=folder, plake=plake, docs=False)

    assert {t: (c.rows_in, c.duplicates, c.quarantined) for t, c in report.tables.items()
            if t in ("patients", "conditions", "resources")} == {
        "patients": (2, 1, 0), "conditions": (10, 5, 0), "resources": (2, 1, 0)}
    assert plake.read("raw", "resources").num_rows == 1


def test_when_two_vendors_reuse_an_entry_id_for_different_patients_then_both_records_load(
        ing_settings, plake) -> None:
    # NIST, Athena and the lab-ranges sample reuse entry ids across their (different) patients.
    report = ingest(ing_settings, source="ccda", path=FIXTURES, plake=plake, docs=False)

    unique = {t: {r: n for r, n in c.by_rule.items() if r.endswith(":unique")} for t, c in report.tables.items()}
    assert not any(unique.values()), unique
    assert report.tables["observations"].accepted > 0


def test_when_an_extract_folder_holds_ccda_then_ingest_extract_loads_it(tmp_path: Path, ing_settings, plake) -> None:
    from ingestion.batch import ingest_extract

    shutil.copytree(FIXTURES, tmp_path / "ccda", ignore=shutil.ignore_patterns("*.md"))

    loaded = ingest_extract(ing_settings, source="ccda", sources_dir=tmp_path, plake=plake)

    assert loaded["tables"]["documents"]["accepted"] == 11
