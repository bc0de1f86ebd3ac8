"""FHIR R4 bundles (one Bundle per line of ``*.ndjson``) flattened into the conformed tables.

Each entry's resource is parsed with ``fhir.resources`` (its R4B models: R4's technical-correction release,
structurally the same for these resources, and what the generator validates against); fields are read from the
parsed model, not by walking dicts. Patient, Encounter, Observation, Condition and MedicationRequest map onto
patients, encounters, observations, conditions and medications. Any other known resource type (Immunization,
Claim, ExplanationOfBenefit…) is kept whole as JSON in ``resources``. An unknown resource type or a resource
that fails the model is one rejected entry (``line L entry E``); a line that is not a JSON Bundle (truncated,
wrong encoding, too long) is one rejected ``bundles`` record. Pydantic's messages are reduced to field paths
and error types, so no PHI value reaches a reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ingestion.sources._base import Chunker, Rejected, SourceChunk, decode_line, iter_lines, lossy

__all__ = ["BUNDLES", "read_fhir"]

BUNDLES = "bundles"
_SOURCE_PATIENT_ID = "urn:medguard:source-patient-id"
_SSN = "http://hl7.org/fhir/sid/us-ssn"
_ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
_NDC = "http://hl7.org/fhir/sid/ndc"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_MEMBER_TYPES = {"MB", "MC", "SN"}
_GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
_CONFORMED = {"Patient": "patients", "Encounter": "encounters", "Observation": "observations",
              "Condition": "conditions", "MedicationRequest": "medications"}


def fhir_files(path: Path) -> list[Path]:
    """The bundle files under ``path`` (a file, or a directory of ``*.ndjson``), in name order."""
    if path.is_dir():
        return sorted([*path.glob("*.ndjson"), *path.glob("*.jsonl")])
    return [path]


def read_fhir(path: Path, *, chunk_rows: int, max_record_bytes: int) -> Iterator[SourceChunk]:
    """Chunks of flattened records from the bundles under ``path`` (about ``chunk_rows`` records each)."""
    from fhir.resources.R4B import get_fhir_model_class

    chunks = Chunker(chunk_rows)
    for file in fhir_files(path):
        label = file.name
        with file.open("rb") as handle:
            for number, raw, too_long in iter_lines(handle, max_record_bytes):
                if not raw.strip():
                    continue
                position = f"{label} line {number}"
                chunk = chunks.chunk
                chunk.units[BUNDLES] = chunk.units.get(BUNDLES, 0) + 1
                _bundle(chunk, raw, too_long, position, max_record_bytes, get_fhir_model_class)
                yield from chunks.full()
    yield from chunks.rest()


def _bundle(chunk: SourceChunk, raw: bytes, too_long: bool, position: str, max_bytes: int, model_class) -> None:
    if too_long:
        chunk.rejected.append(Rejected(BUNDLES, position, "record:size",
                                       f"{position} is longer than the {max_bytes:,}-byte record limit",
                                       lossy(raw), payload_truncated=True))
        return
    text, problem = decode_line(raw)
    if problem:
        chunk.rejected.append(Rejected(BUNDLES, position, "record:encoding", f"{position} {problem}", lossy(raw)))
        return
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        chunk.rejected.append(Rejected(BUNDLES, position, "record:parse",
                                       f"{position} is not a complete JSON bundle ({exc.msg} at column "
                                       f"{exc.colno}); truncated?", text))
        return
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or not isinstance(entries or [], list):
        chunk.rejected.append(Rejected(BUNDLES, position, "record:parse",
                                       f"{position} is not a FHIR Bundle with a list of entries", text))
        return
    bundle_id = bundle.get("id") if isinstance(bundle.get("id"), str) else None
    parsed: list[tuple[str, str, Any, dict[str, Any]]] = []
    for number, entry in enumerate(entries or [], start=1):
        where = f"{position} entry {number}"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        table = _CONFORMED.get(kind, "resources") if isinstance(kind, str) else "resources"
        payload = json.dumps(entry, ensure_ascii=False) if entry is not None else "null"
        if not isinstance(kind, str):
            chunk.rejected.append(Rejected("resources", where, "fhir:resource_type",
                                           f"{where} has no resource with a resourceType", payload))
            continue
        try:
            cls = model_class(kind)
        except (KeyError, ValueError):
            chunk.rejected.append(Rejected("resources", where, "fhir:resource_type",
                                           f"{where}: unknown FHIR resource type {kind[:64]!r}", payload))
            continue
        try:
            model = cls.model_validate(resource)
        except Exception as exc:  # pydantic's ValidationError and the library's own checks
            chunk.rejected.append(Rejected(table, where, "fhir:model", f"{where}: {kind} {_model_errors(exc)}",
                                           payload))
            continue
        parsed.append((where, kind, model, resource))
    patients = {_full_url(kind, model): _patient_id(model) for _, kind, model, _ in parsed if kind == "Patient"}
    encounters = {_full_url(kind, model): _identifier(model, "urn:medguard:encounter-id") or model.id
                  for _, kind, model, _ in parsed if kind == "Encounter"}
    for where, kind, model, resource in parsed:
        table = _CONFORMED.get(kind, "resources")
        if table == "resources":
            row = _resource(kind, model, resource, bundle_id, patients)
        else:
            row = _FLATTEN[kind](model, patients, encounters)
        chunk.rows(table).add(row, where)


def _model_errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'resource'} ({e.get('type', 'invalid')})"
                 for e in errors()[:5]]
        return "fails the FHIR model at " + ", ".join(parts)
    return f"fails the FHIR model ({type(exc).__name__})"


def _full_url(kind: str, model: Any) -> str:
    return f"urn:uuid:{model.id}"


def _ref(reference: Any) -> str | None:
    return getattr(reference, "reference", None) if reference is not None else None


def _identifier(model: Any, system: str) -> str | None:
    for ident in model.identifier or []:
        if ident.system == system:
            return ident.value
    return None


def _patient_id(patient: Any) -> str | None:
    # The source system's own id when the bundle carries it; else the MRN; else the resource id.
    source = _identifier(patient, _SOURCE_PATIENT_ID)
    return source or _mrn(patient) or patient.id


def _mrn(patient: Any) -> str | None:
    for ident in patient.identifier or []:
        codes = {c.code for c in (ident.type.coding or [])} if ident.type else set()
        if "MR" in codes:
            return ident.value
    return None


def _when(value: Any, *, date_only: bool = False) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if date_only:
            return value.date().isoformat()
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _coding(concept: Any, system: str | None = None) -> Any:
    for coding in (concept.coding or []) if concept is not None else []:
        if system is None or coding.system == system:
            return coding
    return None


def _patient(model: Any, patients: dict[str, str | None], encounters: dict[str, str]) -> dict[str, Any]:
    name = next((n for n in model.name or [] if n.use == "official"), (model.name or [None])[0])
    address = (model.address or [None])[0]
    telecom = {t.system: t.value for t in reversed(model.telecom or [])}
    member = next((i.value for i in model.identifier or [] if i.type and
                   {c.code for c in i.type.coding or []} & _MEMBER_TYPES), None)
    member = member or next((i.value for i in model.identifier or []
                             if i.system and i.system.endswith(".3.9999.2")), None)
    organization = model.managingOrganization
    return {
        "patient_id": _patient_id(model), "mrn": _mrn(model),
        "first_name": (name.given or [None])[0] if name else None, "last_name": name.family if name else None,
        "sex": _GENDER.get(model.gender) if model.gender else None, "birth_date": _when(model.birthDate),
        "ssn": _identifier(model, _SSN),
        "address": (address.line or [None])[0] if address else None, "city": address.city if address else None,
        "state": address.state if address else None, "zip": address.postalCode if address else None,
        "phone": telecom.get("phone"), "email": telecom.get("email"), "insurance_member_id": member,
        "facility_id": organization.identifier.value if organization and organization.identifier else None,
        "consent_research": None,
    }


def _encounter(model: Any, patients: dict[str, str | None], encounters: dict[str, str]) -> dict[str, Any]:
    period = model.period
    participant = (model.participant or [None])[0]
    npi = None
    if participant is not None and participant.individual is not None and participant.individual.identifier:
        npi = participant.individual.identifier.value
    provider = model.serviceProvider
    return {
        "encounter_id": _identifier(model, "urn:medguard:encounter-id") or model.id,
        "patient_id": patients.get(_ref(model.subject)),
        "facility_id": provider.identifier.value if provider and provider.identifier else None,
        "encounter_type": model.class_fhir.code if model.class_fhir else None,
        "admit_time": _when(period.start) if period else None, "discharge_time": _when(period.end) if period else None,
        "provider_npi": npi,
    }


def _observation(model: Any, patients: dict[str, str | None], encounters: dict[str, str]) -> dict[str, Any]:
    code = _coding(model.code)
    category = _coding((model.category or [None])[0])
    quantity = model.valueQuantity
    return {
        "observation_id": _identifier(model, "urn:medguard:observation-id") or model.id,
        "patient_id": patients.get(_ref(model.subject)), "encounter_id": encounters.get(_ref(model.encounter)),
        "category": category.code if category else None, "loinc_code": code.code if code else None,
        "display": code.display if code else None,
        "value": float(quantity.value) if quantity is not None and quantity.value is not None else None,
        "unit": (quantity.code or quantity.unit) if quantity is not None else None,
        "effective_time": _when(model.effectiveDateTime),
    }


def _condition(model: Any, patients: dict[str, str | None], encounters: dict[str, str]) -> dict[str, Any]:
    code = _coding(model.code, _ICD10) or _coding(model.code)
    status = _coding(model.clinicalStatus)
    return {
        "condition_id": _identifier(model, "urn:medguard:condition-id") or model.id,
        "patient_id": patients.get(_ref(model.subject)), "encounter_id": encounters.get(_ref(model.encounter)),
        "icd10_code": code.code if code else None, "description": code.display if code else None,
        "onset_date": _when(model.onsetDateTime, date_only=True), "clinical_status": status.code if status else None,
    }


def _medication(model: Any, patients: dict[str, str | None], encounters: dict[str, str]) -> dict[str, Any]:
    concept = model.medicationCodeableConcept
    ndc, rxnorm = _coding(concept, _NDC), _coding(concept, _RXNORM)
    dosage = (model.dosageInstruction or [None])[0]
    return {
        "medication_id": _identifier(model, "urn:medguard:medication-id") or model.id,
        "patient_id": patients.get(_ref(model.subject)), "encounter_id": encounters.get(_ref(model.encounter)),
        "ndc_code": ndc.code if ndc else None, "rxnorm_code": rxnorm.code if rxnorm else None,
        "medication": ndc.display if ndc else (concept.text if concept else None),
        "dosage": dosage.text if dosage else None, "start_date": _when(model.authoredOn, date_only=True),
        "status": model.status,
    }


def _resource(kind: str, model: Any, resource: dict[str, Any], bundle_id: str | None,
              patients: dict[str, str | None]) -> dict[str, Any]:
    subject = getattr(model, "patient", None) or getattr(model, "subject", None) or getattr(model, "beneficiary", None)
    text = model.model_dump_json(exclude_none=True)
    # A resource without an id is keyed by its content, so the same resource sent twice is one record.
    key = f"{kind}/{model.id}" if model.id else f"{kind}/sha256:{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    return {"resource_key": key, "resource_type": kind,
            "resource_id": model.id, "bundle_id": bundle_id, "patient_id": patients.get(_ref(subject)),
            "resource_json": text}


_FLATTEN = {"Patient": _patient, "Encounter": _encounter, "Observation": _observation, "Condition": _condition,
            "MedicationRequest": _medication}
