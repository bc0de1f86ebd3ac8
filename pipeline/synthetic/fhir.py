"""FHIR R4 export: one ``collection`` Bundle per patient, built and validated with ``fhir.resources``.

``fhir.resources`` models R4B, the technical-correction release of R4; the resources used here (Patient,
Encounter, Observation, Condition, MedicationRequest, Immunization) have the same structure in R4 and R4B.
Every bundle is validated by the library's model before it is written, so the output is valid by construction.
Some patients get an Immunization (CVX-coded), which ingestion maps into the immunizations table.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fhir.resources.R4B.bundle import Bundle

from pipeline.synthetic.reference import ENCOUNTER_TYPES, MEASURES

SYSTEM_MRN = "urn:oid:2.16.840.1.113883.3.9999.1"  # the simulated hospital's MRN namespace
SYSTEM_SSN = "http://hl7.org/fhir/sid/us-ssn"
SYSTEM_NPI = "http://hl7.org/fhir/sid/us-npi"
SYSTEM_MEMBER = "urn:oid:2.16.840.1.113883.3.9999.2"
SYSTEM_LOINC = "http://loinc.org"
SYSTEM_ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SYSTEM_NDC = "http://hl7.org/fhir/sid/ndc"
SYSTEM_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYSTEM_CVX = "http://hl7.org/fhir/sid/cvx"
SYSTEM_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SYSTEM_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SYSTEM_COND_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_UCUM = "http://unitsofmeasure.org"
_LOINC_UNITS = {m.loinc: m.unit for m in MEASURES.values()}


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def _ref(kind: str, ident: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{ident}", "type": kind}


def _uuid(kind: str, key: str) -> str:
    # Deterministic, syntactically valid UUIDs derived from the record key (no randomness, no clock).
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"medguard:{kind}:{key}"))


def patient_bundle(patient: dict[str, Any], encounters: list[dict[str, Any]], observations: list[dict[str, Any]],
                   conditions: list[dict[str, Any]], medications: list[dict[str, Any]],
                   immunized_on: str | None) -> dict[str, Any]:
    """The Bundle (as a JSON-ready dict) for one patient and their records."""
    pid = _uuid("Patient", patient["patient_id"])
    entries = [_entry({
        "resourceType": "Patient", "id": pid,
        "identifier": [
            {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                  "code": "MR"}]},
             "system": SYSTEM_MRN, "value": patient["mrn"]},
            {"system": SYSTEM_SSN, "value": patient["ssn"]},
            {"system": SYSTEM_MEMBER, "value": patient["insurance_member_id"]},
            {"system": "urn:medguard:source-patient-id", "value": patient["patient_id"]},
        ],
        "name": [{"use": "official", "family": patient["last_name"], "given": [patient["first_name"]]}],
        "telecom": [{"system": "phone", "value": patient["phone"], "use": "home"},
                    {"system": "email", "value": patient["email"]}],
        "gender": "female" if patient["sex"] == "F" else "male",
        "birthDate": patient["birth_date"],
        "address": [{"line": [patient["address"]], "city": patient["city"], "state": patient["state"],
                     "postalCode": patient["zip"], "country": "US"}],
        "managingOrganization": {"identifier": {"value": patient["facility_id"]}},
    })]
    enc_uuid = {}
    for enc in encounters:
        eid = enc_uuid[enc["encounter_id"]] = _uuid("Encounter", enc["encounter_id"])
        entries.append(_entry({
            "resourceType": "Encounter", "id": eid, "status": "finished",
            "identifier": [{"system": "urn:medguard:encounter-id", "value": enc["encounter_id"]}],
            "class": {"system": SYSTEM_ACT, "code": enc["encounter_type"],
                      "display": ENCOUNTER_TYPES[enc["encounter_type"]]},
            "subject": _ref("Patient", pid),
            "participant": [{"individual": {"identifier": {"system": SYSTEM_NPI, "value": enc["provider_npi"]}}}],
            "period": {"start": enc["admit_time"], "end": enc["discharge_time"]},
            "serviceProvider": {"identifier": {"value": enc["facility_id"]}},
        }))
    for obs in observations:
        entries.append(_entry({
            "resourceType": "Observation", "id": _uuid("Observation", obs["observation_id"]), "status": "final",
            "identifier": [{"system": "urn:medguard:observation-id", "value": obs["observation_id"]}],
            "category": [{"coding": [{"system": SYSTEM_OBS_CATEGORY, "code": obs["category"]}]}],
            "code": {"coding": [{"system": SYSTEM_LOINC, "code": obs["loinc_code"], "display": obs["display"]}]},
            "subject": _ref("Patient", pid), "encounter": _ref("Encounter", enc_uuid[obs["encounter_id"]]),
            "effectiveDateTime": obs["effective_time"],
            "valueQuantity": {"value": obs["value"], "unit": obs["unit"], "system": _UCUM, "code": obs["unit"]},
        }))
    for cond in conditions:
        entries.append(_entry({
            "resourceType": "Condition", "id": _uuid("Condition", cond["condition_id"]),
            "identifier": [{"system": "urn:medguard:condition-id", "value": cond["condition_id"]}],
            "clinicalStatus": {"coding": [{"system": SYSTEM_COND_STATUS, "code": cond["clinical_status"]}]},
            "code": {"coding": [{"system": SYSTEM_ICD10, "code": cond["icd10_code"],
                                 "display": cond["description"]}]},
            "subject": _ref("Patient", pid), "encounter": _ref("Encounter", enc_uuid[cond["encounter_id"]]),
            "onsetDateTime": cond["onset_date"],
        }))
    for med in medications:
        entries.append(_entry({
            "resourceType": "MedicationRequest", "id": _uuid("MedicationRequest", med["medication_id"]),
            "identifier": [{"system": "urn:medguard:medication-id", "value": med["medication_id"]}],
            "status": med["status"], "intent": "order",
            "medicationCodeableConcept": {"coding": [
                {"system": SYSTEM_NDC, "code": med["ndc_code"], "display": med["medication"]},
                {"system": SYSTEM_RXNORM, "code": med["rxnorm_code"]}]},
            "subject": _ref("Patient", pid), "encounter": _ref("Encounter", enc_uuid[med["encounter_id"]]),
            "authoredOn": med["start_date"], "dosageInstruction": [{"text": med["dosage"]}],
        }))
    if immunized_on:
        entries.append(_entry({
            "resourceType": "Immunization", "id": _uuid("Immunization", patient["patient_id"]),
            "status": "completed",
            "vaccineCode": {"coding": [{"system": SYSTEM_CVX, "code": "141", "display": "Influenza, seasonal"}]},
            "patient": _ref("Patient", pid), "occurrenceDateTime": immunized_on,
        }))
    return {"resourceType": "Bundle", "id": _uuid("Bundle", patient["patient_id"]), "type": "collection",
            "entry": entries}


def _records(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in frame.to_dict("records"):
        grouped.setdefault(record["patient_id"], []).append(record)
    return grouped


def bundles(seed: int, chunk_index: int, tables: dict[str, pd.DataFrame], *,
            progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One Bundle per patient of the chunk, each validated against the FHIR resource model.

    ``progress`` is called with 1 after each patient's bundle: the slowest part of generation, so a progress bar
    advances patient by patient instead of once per chunk.
    """
    rng = np.random.default_rng([seed, chunk_index, 0xF41])
    groups = {name: _records(tables[name]) for name in ("encounters", "observations", "conditions", "medications")}
    result = []
    for patient in tables["patients"].to_dict("records"):
        pid = patient["patient_id"]
        immunized = f"2024-10-{rng.integers(1, 29):02d}" if rng.random() < 0.3 else None
        bundle = patient_bundle(patient, *(groups[name].get(pid, []) for name in groups), immunized_on=immunized)
        Bundle.model_validate(bundle)  # raises if the bundle is not valid against the resource model
        result.append(bundle)
        if progress is not None:
            progress(1)
    return result
