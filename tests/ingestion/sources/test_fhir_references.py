"""A FHIR resource's patient is found whatever form its reference takes; what cannot be followed is quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestion.sources.fhir import read_fhir

EXAMPLES = Path(__file__).parents[2] / "fixtures" / "fhir" / "r4-examples"
UUID = "urn:uuid:7d3c2f4e-0000-4000-8000-00000000000a"
CODE = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}


def _read(path: Path):
    rows: dict[str, dict[str, dict]] = {}
    rejected = {}
    for chunk in read_fhir(path, chunk_rows=1000, max_record_bytes=1 << 20):
        for table, found in chunk.tables.items():
            rows.setdefault(table, {}).update(zip(found.positions, found.rows, strict=True))
        rejected.update({r.position: r for r in chunk.rejected})
    return rows, rejected


def _bundle(tmp_path: Path, *entries: dict, kind: str = "transaction") -> Path:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}, indent=2))
    return path


def _observation(subject: dict, **more) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": CODE, "subject": subject,
            "valueQuantity": {"value": 60}, **more}


def test_when_the_official_references_bundle_is_read_then_every_form_resolves_as_fhir_says() -> None:
    rows, rejected = _read(EXAMPLES / "Bundle-bundle-references.json")
    patients = {r["observation_id"]: r["patient_id"] for r in rows["observations"].values()}
    assert not rejected
    assert [patients[p] for p in ("123", "124", "12", "47", "48")] == [
        "23",  # Patient/23, relative to the entry's server base
        "23",  # http://example.org/fhir/Patient/23, absolute
        "04121321-4af5-424c-a0e1-ed3aab1c349d",  # urn:uuid fullUrl of a Patient with no id
        "45",  # Patient/45/_history/2: the version dropped
        "23"]  # a logical reference: the Patient carrying identifier 1234567
    # Observation/14 on two servers: fhir-2/Patient/1 is not in the bundle (its id is taken from the URL)
    assert sorted(r["patient_id"] for r in rows["observations"].values() if r["observation_id"] == "14") == \
        ["1", "23"]


@pytest.mark.parametrize(("reference", "patient_id"), [
    ({"reference": UUID}, "p-uuid"),
    ({"reference": "Patient/p-rel"}, "p-rel"),
    ({"reference": "http://x/fhir/Patient/p-abs/_history/2"}, "p-abs"),
    ({"reference": "https://ehr.example.org/R4/Patient/p-ext"}, "p-ext"),
    ({"reference": "urn:uuid:55555555-0000-4000-8000-000000000000", "type": "Patient"},
     "55555555-0000-4000-8000-000000000000"),
], ids=["urn-uuid", "relative", "absolute-history", "absolute-elsewhere", "typed-urn-outside"])
def test_when_a_subject_is_referenced_in_any_form_then_the_row_has_that_patients_id(
        tmp_path: Path, reference: dict, patient_id: str) -> None:
    path = _bundle(tmp_path, {"fullUrl": UUID, "resource": {"resourceType": "Patient", "id": "p-uuid"}},
                   {"resource": _observation(reference, id="o1")})
    rows, rejected = _read(path)
    assert not rejected and rows["observations"]["b.json entry 2"]["patient_id"] == patient_id


def test_when_the_patient_is_contained_then_it_is_keyed_by_its_container_and_gets_a_row() -> None:
    rows, rejected = _read(EXAMPLES / "Observation-1minute-apgar-score.json")
    assert not rejected
    key = "Observation/1minute-apgar-score/newborn"
    assert {r["patient_id"] for r in rows["observations"].values()} == {key}
    assert [r["patient_id"] for r in rows["patients"].values()] == [key]


def test_when_a_medication_is_contained_or_in_the_bundle_then_its_code_is_the_rows_code(tmp_path: Path) -> None:
    rows, _ = _read(EXAMPLES / "MedicationDispense-meddisp0301.json")
    (dispense,) = rows["medications"].values()
    assert (dispense["kind"], dispense["patient_id"]) == ("dispense", "pat1")
    assert dispense["code"] and dispense["code_system"].startswith("http")
    medication = {"resourceType": "Medication", "id": "m1", "code": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361", "display": "amlodipine 5 MG"}]}}
    request = {"resourceType": "MedicationRequest", "id": "r1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/m1"}}
    rows, _ = _read(_bundle(tmp_path, {"fullUrl": "http://x/fhir/Medication/m1", "resource": medication},
                            {"fullUrl": "http://x/fhir/MedicationRequest/r1", "resource": request}))
    (row,) = rows["medications"].values()
    assert (row["kind"], row["code"], row["rxnorm_code"], row["medication"]) == (
        "request", "197361", "197361", "amlodipine 5 MG")
    assert row["code_system"] == "http://www.nlm.nih.gov/research/umls/rxnorm" and row["ndc_code"] is None
    assert [r["resource_type"] for r in rows["resources"].values()] == ["Medication"]


def test_when_a_result_has_no_subject_then_it_takes_the_patient_of_the_report_listing_it() -> None:
    rows, rejected = _read(EXAMPLES / "Bundle-report.json")
    patients = {r["patient_id"] for r in rows["observations"].values()}
    assert patients == {"genetics-example1"}
    # what stays rejected there is uncoded: the report's own code and two results are text only
    assert {r.rule for r in rejected.values()} == {"fhir:code"} and len(rejected) == 3


@pytest.mark.parametrize(("subject", "rule"), [
    (None, "fhir:reference"),
    ({"display": "Jane Doe"}, "fhir:reference"),
    ({"reference": "urn:uuid:99999999-0000-4000-8000-000000000000"}, "fhir:reference"),
    ({"reference": "#missing"}, "fhir:reference"),
    ({"identifier": {"system": "urn:mrn", "value": "404"}}, "fhir:reference"),
], ids=["none", "display-only", "dangling-urn", "dangling-contained", "unknown-identifier"])
def test_when_the_patient_cannot_be_followed_then_the_record_is_quarantined_naming_no_value(
        tmp_path: Path, subject: dict | None, rule: str) -> None:
    observation = _observation(subject, id="o1") if subject else {
        k: v for k, v in _observation({}, id="o1").items() if k != "subject"}
    rows, rejected = _read(_bundle(tmp_path, {"resource": observation}))
    (bad,) = rejected.values()
    assert (bad.table, bad.rule, bad.position) == ("observations", rule, "b.json entry 1")
    assert "Jane" not in bad.reason and "404" not in bad.reason and "99999999" not in bad.reason
    assert "observations" not in rows


def test_when_the_subject_is_a_group_then_the_resource_is_kept_whole_in_resources() -> None:
    rows, rejected = _read(EXAMPLES / "Observation-herd1.json")
    assert not rejected and "observations" not in rows
    (kept,) = rows["resources"].values()
    assert kept["resource_type"] == "Observation" and kept["patient_id"] is None
    assert json.loads(kept["resource_json"])["subject"] == {"reference": "Group/herd1"}


def test_when_a_transaction_deletes_then_the_entry_is_quarantined_and_read_requests_are_not_records() -> None:
    rows, rejected = _read(EXAMPLES / "Bundle-bundle-transaction.json")
    assert {r.rule for r in rejected.values()} == {"fhir:request"}
    assert all("DELETE" in r.reason for r in rejected.values())
    rows, rejected = _read(EXAMPLES / "Bundle-bundle-request-medsallergies.json")  # a batch of GETs only
    assert not rows and not rejected


def test_when_a_bulk_patient_carries_a_source_id_then_other_files_naming_it_by_fhir_id_get_that_id(
        tmp_path: Path) -> None:
    # Patient.ndjson sorts after Observation.ndjson, yet is read first: its patients are known to the other files.
    patient = {"resourceType": "Patient", "id": "0f6c4a7e-uuid",
               "identifier": [{"system": "urn:medguard:source-patient-id", "value": "PAT000001"}]}
    (tmp_path / "Observation.ndjson").write_text(json.dumps(_observation({"reference": "Patient/0f6c4a7e-uuid"},
                                                                         id="o1")) + "\n")
    (tmp_path / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    rows, rejected = _read(tmp_path)
    assert not rejected
    assert [r["patient_id"] for r in rows["patients"].values()] == ["PAT000001"]
    assert [r["patient_id"] for r in rows["observations"].values()] == ["PAT000001"]


def test_when_results_nest_through_panels_then_each_takes_the_reports_patient_and_a_cycle_ends(
        tmp_path: Path) -> None:
    def result(ident: str, *members: str) -> dict:
        observation = {k: v for k, v in _observation({}, id=ident).items() if k != "subject"}
        return dict(observation, hasMember=[{"reference": f"Observation/{m}"} for m in members])

    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final", "code": CODE,
              "subject": {"reference": "Patient/p1"}, "result": [{"reference": "Observation/a"}]}
    path = _bundle(tmp_path, {"resource": result("b")}, {"resource": result("a", "b")}, {"resource": report},
                   {"resource": result("x", "y")}, {"resource": result("y", "x")})
    rows, rejected = _read(path)
    assert {r["observation_id"]: r["patient_id"] for r in rows["observations"].values()} == {"a": "p1", "b": "p1"}
    assert {r.position: r.rule for r in rejected.values()} == {"b.json entry 4": "fhir:reference",
                                                              "b.json entry 5": "fhir:reference"}


def test_when_references_are_conditional_then_they_resolve_by_identifier_in_the_bundle_or_name_it(
        tmp_path: Path) -> None:
    # Synthea 3 names shared practitioners and organizations by identifier in its transaction bundles.
    patient = {"resourceType": "Patient", "id": "p9",
               "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "S-9"}]}
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": "Patient?identifier=https://github.com/synthetichealth/synthea|S-9"},
                 "participant": [{"individual": {
                     "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999994392"}}],
                 "serviceProvider": {"reference": "Organization?identifier=https://github.com/synthetichealth/"
                                                  "synthea|ef58ea08-d883-3957-8300-150554edc8fb"}}
    lost = _observation({"reference": "Patient?identifier=https://github.com/synthetichealth/synthea|S-404"}, id="o1")
    rows, rejected = _read(_bundle(tmp_path, {"fullUrl": UUID, "resource": patient}, {"resource": encounter},
                                   {"resource": lost}))
    (row,) = rows["encounters"].values()
    assert (row["patient_id"], row["provider_npi"], row["facility_id"]) == (
        "p9", "9999994392", "ef58ea08-d883-3957-8300-150554edc8fb")
    assert {p: r.rule for p, r in rejected.items()} == {"b.json entry 3": "fhir:reference"}
    assert "S-404" not in rejected["b.json entry 3"].reason


def test_when_an_r4_type_that_r4b_replaced_arrives_then_it_is_kept_whole_not_called_unknown(tmp_path: Path) -> None:
    product = {"resourceType": "MedicinalProduct", "id": "mp1", "name": [{"productName": "Equilidem 2.5 mg"}]}
    rows, rejected = _read(_bundle(tmp_path, {"resource": product}, {"resource": {"resourceType": "NoSuchThing"}}))
    assert [r["resource_type"] for r in rows["resources"].values()] == ["MedicinalProduct"]
    assert [r.rule for r in rejected.values()] == ["fhir:resource_type"]
