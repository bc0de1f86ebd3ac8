"""The C-CDA reader on the eleven vendor sample documents in tests/fixtures/ccda (written by others, MIT; see
SOURCE.md there): what each document yields per table, and values a data engineer would check by hand."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ingestion.sources.ccda import DOCUMENTS, read_ccda

FIXTURES = Path(__file__).parents[2] / "fixtures" / "ccda"


def read(path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[Any], Counter[str]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    rejected: list[Any] = []
    units: Counter[str] = Counter()
    for chunk in read_ccda(path, chunk_rows=50_000, max_record_bytes=4 * 2**20):
        for table, table_rows in chunk.tables.items():
            rows.setdefault(table, []).extend(table_rows.rows)
        rejected.extend(chunk.rejected)
        units.update(chunk.units)
    return rows, rejected, units


def one(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, len(found))
    return found[0]


# Every table each document fills, counted by hand against its sections' entries.
EXPECTED = [
    ("agastha_ccd.xml", {"patients": 1, "encounters": 1, "conditions": 5, "medications": 3, "observations": 18,
                         "diagnostic_reports": 1, "allergies": 2, "immunizations": 3, "procedures": 2,
                         "resources": 1}, {}),
    ("athena_ccd.xml", {"patients": 1, "encounters": 2, "conditions": 2, "medications": 12, "observations": 12,
                        "allergies": 2, "procedures": 3, "resources": 1},
     {("observations", "ccda:negated"): 3}),  # three pending imaging results, each coded "not done", no code
    ("athena_ccd_pq_translation.xml", {"patients": 1, "encounters": 1, "observations": 10, "diagnostic_reports": 2},
     {}),
    ("athena_ccd_real_world.xml", {"patients": 1, "encounters": 2, "conditions": 25, "medications": 30,
                                   "observations": 16, "allergies": 1, "immunizations": 6, "procedures": 14,
                                   "resources": 1}, {}),
    ("careteam_example.xml", {"patients": 1, "resources": 1}, {}),  # a care-team section only: kept whole
    ("cerner_toc.xml", {"patients": 1, "encounters": 1, "conditions": 5, "medications": 4, "observations": 16,
                        "diagnostic_reports": 2, "allergies": 2, "immunizations": 1, "procedures": 2,
                        "resources": 1}, {}),
    ("lab_reference_ranges.xml", {"patients": 1, "observations": 1, "diagnostic_reports": 1}, {}),
    ("nist_ambulatory.xml", {"patients": 1, "encounters": 2, "conditions": 2, "medications": 1, "observations": 12,
                             "diagnostic_reports": 1, "allergies": 3, "immunizations": 2, "procedures": 1,
                             "resources": 1}, {}),
    ("partners_epic.xml", {"patients": 1, "encounters": 1, "conditions": 3, "medications": 2, "observations": 22,
                           "diagnostic_reports": 11, "allergies": 3}, {}),
    ("practice_fusion_alice_newman.xml", {"patients": 1, "encounters": 2, "conditions": 5, "medications": 3,
                                          "observations": 18, "diagnostic_reports": 7, "allergies": 2,
                                          "immunizations": 3, "procedures": 2, "resources": 1}, {}),
    ("practice_fusion_jeremy_bates.xml", {"patients": 1, "encounters": 3, "conditions": 1, "medications": 1,
                                          "observations": 6, "allergies": 1, "immunizations": 1, "resources": 1}, {}),
]


def test_when_the_fixture_folder_is_read_then_it_holds_the_eleven_documents() -> None:
    rows, rejected, units = read(FIXTURES)
    assert units[DOCUMENTS] == 11
    assert len(rows["patients"]) == 11
    assert not [r for r in rejected if r.table == DOCUMENTS]


@pytest.mark.parametrize(("name", "tables", "rejects"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_when_a_vendor_document_is_read_then_each_table_gets_its_entries(name: str, tables: dict[str, int],
                                                                         rejects: dict[tuple[str, str], int]) -> None:
    rows, rejected, units = read(FIXTURES / name)
    assert units[DOCUMENTS] == 1
    assert {t: len(r) for t, r in rows.items()} == tables
    assert Counter((r.table, r.rule) for r in rejected) == Counter(rejects)
    patient_id = rows["patients"][0]["patient_id"]
    for table, table_rows in rows.items():
        assert {r["patient_id"] for r in table_rows} == {patient_id}, table
        key = {"patients": "patient_id", "encounters": "encounter_id", "conditions": "condition_id",
               "medications": "medication_id", "observations": "observation_id", "diagnostic_reports": "report_id",
               "allergies": "allergy_id", "immunizations": "immunization_id", "procedures": "procedure_id",
               "resources": "resource_key"}[table]
        keys = [r[key] for r in table_rows]
        assert all(keys) and len(set(keys)) == len(keys), table  # every record has a key of its own


def test_when_cerner_sends_a_transition_of_care_then_demographics_problems_and_vitals_land_as_found() -> None:
    rows, _, _ = read(FIXTURES / "cerner_toc.xml")
    patient = rows["patients"][0]
    assert (patient["patient_id"], patient["sex"], patient["birth_date"]) == ("106", "M", "19470407")
    assert (patient["race"], patient["ethnicity"]) == ("Black or African American", "Not Hispanic or Latino")
    assert patient["phone"] == "(503) 325-7464"  # as written: the conform step normalises phones
    angina = one(rows["conditions"], condition_id="0D1159C0-FF39-483F-868A-F8A69595025B")
    assert (angina["code"], angina["code_system"], angina["description"]) == (
        "194828000", "2.16.840.1.113883.6.96", "Angina (disorder)")
    assert (angina["onset_date"], angina["clinical_status"]) == ("20130710", "active")
    systolic = one(rows["observations"], code="8480-6")
    assert (systolic["category"], systolic["value"], systolic["unit"]) == ("vital-signs", 150.0, "mm[Hg]")
    assert (systolic["reference_range"], systolic["interpretation"]) == ("90-140 mmHg", "H")
    assert systolic["effective_time"] == "20130710220000.000-0500"  # an HL7 TS, passed through unchanged
    smoking = one(rows["observations"], category="social-history")
    assert (smoking["code"], smoking["value_text"]) == ("72166-2", "Never smoked tobacco (finding)")
    codeine = one(rows["allergies"], code="2670")
    assert (codeine["description"], codeine["category"], codeine["reaction"]) == (
        "Codeine", "medication", "Nausea (finding)")
    insulin = one(rows["medications"], rxnorm_code="311041")
    assert (insulin["kind"], insulin["dosage"]) == ("request", "30.0; Subcutaneous")  # moodCode INT
    assert one(rows["immunizations"], code="88")["status"] == "completed"
    ecg = one(rows["procedures"], code="29303009")
    assert ecg["encounter_id"] == "162"  # linked to the encounter through its entryRelationship


def test_when_a_lab_value_is_in_a_non_ucum_unit_then_the_translation_gives_value_and_unit() -> None:
    rows, _, _ = read(FIXTURES / "athena_ccd_pq_translation.xml")
    wbc = one(rows["observations"], code="6690-2")
    assert (wbc["value"], wbc["unit"], wbc["reference_range"], wbc["interpretation"]) == (
        11.5, "x10e3/uL", "3.4-10.8", "H")
    assert rows["patients"][0]["race"] is None  # raceCode nullFlavor="NI": missing, not an error
    assert rows["patients"][0]["ethnicity"] == "Hispanic or Latino"


def test_when_a_problem_carries_an_icd10_translation_then_the_snomed_code_leads_and_icd10_is_kept() -> None:
    rows, _, _ = read(FIXTURES / "athena_ccd.xml")
    pain = one(rows["conditions"], code="278862001")
    assert (pain["code_system"], pain["icd10_code"], pain["description"]) == (
        "2.16.840.1.113883.6.96", "M54.50", "Acute low back pain")
    assert rows["patients"][0]["birth_sex"] == "UNK"  # Birth Sex Observation, value nullFlavor UNK


def test_when_no_known_allergy_or_medication_is_recorded_then_negation_is_kept_not_reversed() -> None:
    rows, _, _ = read(FIXTURES / "practice_fusion_jeremy_bates.xml")
    nkda = rows["allergies"][0]
    assert (nkda["code"], nkda["description"], nkda["category"]) == ("409137002", "No known drug allergy", None)
    none_taken = rows["medications"][0]
    assert (none_taken["code"], none_taken["status"], none_taken["kind"]) == ("410942007", "not-taken", "statement")
    not_given = rows["immunizations"][0]
    assert (not_given["status"], not_given["immunization_id"][:5]) == ("not-done", "hmac:")  # id nullFlavor NA
    assert rows["patients"][0]["birth_sex"] == "M"


def test_when_the_only_patient_id_is_an_empty_ssn_root_then_the_document_id_stands_in() -> None:
    rows, _, _ = read(FIXTURES / "agastha_ccd.xml")
    patient = rows["patients"][0]
    assert (patient["patient_id"], patient["ssn"]) == ("ccda-document:TT988", None)
    assert (patient["race"], patient["birth_sex"], patient["facility_id"]) == ("White", "F", "1298765654")
    assert one(rows["immunizations"], code="166")["status"] == "not-done"  # negationInd="true"


def test_when_a_vendor_reuses_one_id_for_different_entries_then_each_gets_a_numbered_key() -> None:
    rows, _, _ = read(FIXTURES / "nist_ambulatory.xml")
    assert sorted(r["allergy_id"] for r in rows["allergies"]) == [
        "4adc1020-7b14-11db-9fe1-0800200c9a66", "4adc1020-7b14-11db-9fe1-0800200c9a66:2",
        "4adc1020-7b14-11db-9fe1-0800200c9a66:3"]
    patient = rows["patients"][0]
    assert (patient["patient_id"], patient["ssn"]) == ("1", "123-101-5230")  # SSN root goes to ssn, as written
    assert {r["code_system"] for r in rows["immunizations"]} == {"2.16.840.1.113883.6.59"}  # CVX's older OID


def test_when_a_result_is_a_titer_then_value_and_range_are_text() -> None:
    rows, _, _ = read(FIXTURES / "lab_reference_ranges.xml")
    titer = rows["observations"][0]
    assert (titer["value"], titer["value_text"], titer["reference_range"]) == (
        None, "Borderline, equal to 1:80", "Negative, less than 1:80")
    report = rows["diagnostic_reports"][0]
    assert (report["code"], report["category"], report["status"]) == ("5048-4", "LAB", "completed")


def test_when_the_patient_has_email_and_coverage_then_they_land_without_the_mailto_scheme() -> None:
    rows, _, _ = read(FIXTURES / "athena_ccd_real_world.xml")
    patient = rows["patients"][0]
    assert (patient["email"], patient["insurance_member_id"]) == ("mthompson49@example.com", "H68478074")


def test_when_a_document_has_sections_no_table_maps_then_it_is_kept_whole_once() -> None:
    rows, _, _ = read(FIXTURES / "careteam_example.xml")
    (kept,) = rows["resources"]
    assert (kept["resource_type"], kept["patient_id"]) == ("ClinicalDocument", "patient-12345")
    whole = json.loads(kept["resource_json"])
    assert [s["code"] for s in whole["unmapped_sections"]] == ["85847-2"]  # the care team section
    assert whole["document"].startswith("<ClinicalDocument") and "Care Team" in whole["document"]
    assert "resources" not in read(FIXTURES / "partners_epic.xml")[0]  # every section mapped: nothing extra
