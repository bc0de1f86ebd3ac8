"""FHIR R4 resources (JSON dicts that passed the resource model) flattened into rows of the conformed tables.

Values are taken AS FOUND in the JSON, strings unchanged (dates, times with their offsets, code-system URIs, phones),
because the conform step normalises centrally; the parsed model is used to check the resource, not to read it
(it rewrites times and decimals). A resource's patient is its ``subject`` (``patient`` for Immunization and
AllergyIntolerance) resolved by :mod:`._refs`:

- a Patient in the bundle, contained, or named by ``Patient/<id>`` / an absolute URL: that patient's id (our
  generator's ``urn:medguard:source-patient-id`` identifier when present, else the resource id; a contained
  Patient is keyed by its container, ``Observation/x/p1``, and gets a patients row of its own);
- a Group, Device, Location…: not one patient's record; the resource is kept whole in ``resources``;
- nothing to follow (no subject, a display alone, a ``urn:uuid`` matching no entry): :class:`Unmappable`,
  quarantined with rule ``fhir:reference``.

A required code (observations, conditions, immunizations, diagnostic_reports) that is text only, or a coding
without its system, is ``fhir:code``: the record cannot be joined to any terminology.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ingestion.sources.fhir._datatypes import (
    as_dict,
    as_dicts,
    as_str,
    code_in,
    coded,
    first_code,
    number,
    quantity_text,
    range_text,
    when,
)
from ingestion.sources.fhir._refs import Item, Scope, own_id, resource_key

__all__ = ["CONFORMED", "Context", "NotAboutAPatient", "Unmappable", "map_resource", "patient_key"]

_SOURCE_PATIENT_ID = "urn:medguard:source-patient-id"
_SSN = {"http://hl7.org/fhir/sid/us-ssn", "urn:oid:2.16.840.1.113883.4.1"}
_NPI = {"http://hl7.org/fhir/sid/us-npi", "urn:oid:2.16.840.1.113883.4.6"}
_ICD10CM = {"http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:2.16.840.1.113883.6.90"}
_LOINC = {"http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"}
_NDC = {"http://hl7.org/fhir/sid/ndc", "urn:oid:2.16.840.1.113883.6.69"}
_RXNORM = {"http://www.nlm.nih.gov/research/umls/rxnorm", "urn:oid:2.16.840.1.113883.6.88"}
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_MEMBER_TYPES = {"MB", "MC", "SN"}
_MEMBER_SYSTEM_SUFFIX = ".3.9999.2"  # the generator's member-id namespace
_GENDER = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
# Encounter.class as Synthea before v2.5 writes it (a word, no system): the ActEncounterCode later Synthea versions
# write for the same encounter type. Any other code is passed as found.
_CLASS_WORDS = {"wellness": "AMB", "ambulatory": "AMB", "outpatient": "AMB", "urgentcare": "AMB", "emergency": "EMER",
                "inpatient": "IMP", "snf": "IMP", "home": "HH", "hospice": "HH", "telemedicine": "VR",
                "virtual": "VR"}
_NPI_FORMAT = re.compile(r"^\d{10}$")
_MEDICATION_KIND = {"MedicationRequest": "request", "MedicationStatement": "statement",
                    "MedicationDispense": "dispense", "MedicationAdministration": "administration"}
CONFORMED = {"Patient": "patients", "Encounter": "encounters", "Observation": "observations",
             "Condition": "conditions", "Procedure": "procedures", "Immunization": "immunizations",
             "AllergyIntolerance": "allergies", "DiagnosticReport": "diagnostic_reports",
             **dict.fromkeys(_MEDICATION_KIND, "medications")}


class Unmappable(Exception):
    """A resource of a mapped type that cannot become a row: ``rule`` and a reason naming no value."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule, self.reason = rule, reason


class NotAboutAPatient(Exception):
    """The resource's subject is not a patient (a Group, Device, Location): it is kept whole in ``resources``."""


@dataclass
class Context:
    """What mapping needs beyond the resource: its bundle's scope and the patient ids met in earlier files.

    ``patient_ids`` maps a Patient resource id to the patient id it was given when the two differ (our generator's
    source-patient-id identifier), so a Bulk export's ``Patient/<id>`` in another file resolves alike.
    """

    scope: Scope
    patient_ids: dict[str, str] = field(default_factory=dict)
    reported_in: dict[int, Item] = field(default_factory=dict)  # id(result resource) -> its DiagnosticReport

    def link_results(self, items: list[Item]) -> None:
        """Remember which DiagnosticReport (``result``) or panel Observation (``hasMember``) lists each result, so a
        result without a subject of its own is about the patient of the report that lists it."""
        for item in items:
            for reference in as_dicts(item.resource.get("result")) + as_dicts(item.resource.get("hasMember")):
                target = self.scope.resolve(reference, item)
                if target is not None and target.item is not None and target.item is not item:
                    self.reported_in.setdefault(id(target.item.resource), item)


Rows = list[tuple[str, dict[str, Any], str]]  # (table, row, position)
Mapped = Iterator[tuple[dict[str, Any], str]]  # a mapper's (row, position) pairs


def map_resource(item: Item, ctx: Context) -> Rows:
    """The rows ``item`` maps to (a resource of a type in :data:`CONFORMED`).

    Raises:
        Unmappable: the resource cannot be tied to a patient, or lacks a required code.
        NotAboutAPatient: its subject is not a patient; the caller keeps it whole.
    """
    kind = item.resource["resourceType"]
    rows: Rows = []
    if kind == "Patient":
        row = _patient_row(item, ctx)
        if own_id(item) and row["patient_id"] != own_id(item):
            ctx.patient_ids[own_id(item)] = row["patient_id"]
        return [("patients", row, item.position)]
    field_name = "patient" if kind in ("Immunization", "AllergyIntolerance") else "subject"
    patient_id = _patient_of(item, field_name, ctx, rows)
    mapper = _MAPPERS[kind]
    for row, position in mapper(item, ctx, patient_id):
        rows.append((CONFORMED[kind], row, position))
    return rows


# identities and references ------------------------------------------------------------------------------------


def patient_key(item: Item) -> str:
    """A Patient's id in the lake: the source system's own id when the generator declared it, else the FHIR id."""
    for ident in as_dicts(item.resource.get("identifier")):
        if ident.get("system") == _SOURCE_PATIENT_ID and as_str(ident.get("value")):
            return ident["value"]
    if item.container is not None:
        return resource_key(item)
    return own_id(item) or resource_key(item)


def _record_id(item: Item, system: str) -> str:
    """A record's id: the generator's own identifier when present, else the FHIR id, else a content digest."""
    for ident in as_dicts(item.resource.get("identifier")):
        if ident.get("system") == system and as_str(ident.get("value")):
            return ident["value"]
    return own_id(item) or resource_key(item)


def _patient_of(item: Item, field_name: str, ctx: Context, rows: Rows, seen: frozenset[int] = frozenset()) -> str:
    kind = item.resource["resourceType"]
    reference = item.resource.get(field_name)
    report = ctx.reported_in.get(id(item.resource))
    if reference is None and report is not None and id(report.resource) not in seen:  # a cycle of panels ends
        return _patient_of(report, "subject", ctx, rows, seen | {id(item.resource)})
    if not isinstance(reference, dict):
        raise Unmappable("fhir:reference", f"{kind} has no {field_name}: nothing ties it to a patient")
    target = ctx.scope.resolve(reference, item)
    if target is None or (target.kind is None and target.ident is None):
        raise Unmappable("fhir:reference", f"{kind}.{field_name} has nothing to follow (no reference, or a "
                                           "display text alone): it cannot be tied to a patient")
    if target.kind is None:
        raise Unmappable("fhir:reference", f"{kind}.{field_name} is a urn reference that matches no entry of its "
                                           "bundle and names no type: its patient is unknown")
    if target.kind != "Patient":
        raise NotAboutAPatient(target.kind)
    if target.item is not None:
        if target.item.container is not None:
            rows.append(("patients", _patient_row(target.item, ctx), target.item.position))
        return patient_key(target.item)
    if not target.ident:
        raise Unmappable("fhir:reference", f"{kind}.{field_name} names a patient only by an identifier that no "
                                           "Patient in its bundle carries: its patient is unknown")
    return ctx.patient_ids.get(target.ident, target.ident)


def _encounter_of(item: Item, ctx: Context, *fields: str) -> str | None:
    for name in fields:
        target = ctx.scope.resolve(item.resource.get(name), item)
        if target is None or target.kind not in ("Encounter", None):
            continue
        if target.item is not None:
            return _record_id(target.item, "urn:medguard:encounter-id")
        if target.ident:
            return target.ident
    return None


def _target_id(item: Item, ctx: Context, reference: Any) -> str | None:
    """An organization's or practitioner's id: its identifier's value when the reference carries one, else the
    id of what the reference points at."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and as_str(identifier.get("value")):
        return identifier["value"]
    target = ctx.scope.resolve(reference, item)
    if target is not None and target.item is None and target.identifier is not None:
        return target.identifier[1]
    return target.ident if target is not None else None


def _required_code(item: Item, element: str) -> tuple[str, str, str | None]:
    code, system, display = coded(item.resource.get(element))
    kind = item.resource["resourceType"]
    if code is None:
        raise Unmappable("fhir:code", f"{kind}.{element} has no coding with a code (text only, or absent): the "
                                      "record cannot be joined to a terminology")
    if system is None:
        raise Unmappable("fhir:code", f"{kind}.{element} has a code without its system: the code cannot be read")
    return code, system, display


# mappers ------------------------------------------------------------------------------------------------------


def _patient_row(item: Item, ctx: Context) -> dict[str, Any]:
    res = item.resource
    names = as_dicts(res.get("name"))
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    given = name.get("given") if isinstance(name.get("given"), list) else []
    addresses = as_dicts(res.get("address"))
    address = next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})
    lines = [x for x in address.get("line") or [] if isinstance(x, str)]
    telecom = as_dicts(res.get("telecom"))
    identifiers = as_dicts(res.get("identifier"))
    mrn = next((i.get("value") for i in identifiers if "MR" in _type_codes(i)), None)
    ssn = next((i.get("value") for i in identifiers if i.get("system") in _SSN or "SS" in _type_codes(i)), None)
    member = next((i.get("value") for i in identifiers if _type_codes(i) & _MEMBER_TYPES
                   or str(i.get("system", "")).endswith(_MEMBER_SYSTEM_SUFFIX)), None)
    extensions = {e.get("url"): e for e in as_dicts(res.get("extension"))}
    return {
        "patient_id": patient_key(item), "mrn": as_str(mrn),
        "first_name": given[0] if given and isinstance(given[0], str) else None,
        "last_name": as_str(name.get("family")),
        "sex": _GENDER.get(res.get("gender")) if res.get("gender") else None,
        "birth_date": as_str(res.get("birthDate")), "ssn": as_str(ssn),
        "address": ", ".join(lines) or None, "city": as_str(address.get("city")),
        "state": as_str(address.get("state")), "zip": as_str(address.get("postalCode")),
        "phone": _telecom(telecom, "phone"), "email": _telecom(telecom, "email"),
        "insurance_member_id": as_str(member),
        "facility_id": _target_id(item, ctx, res.get("managingOrganization")),
        "consent_research": None,
        "race": _omb(extensions.get(_US_CORE + "us-core-race")),
        "ethnicity": _omb(extensions.get(_US_CORE + "us-core-ethnicity")),
        "birth_sex": as_str(as_dict(extensions.get(_US_CORE + "us-core-birthsex")).get("valueCode")),
    }


def _telecom(telecom: list[dict[str, Any]], system: str) -> str | None:
    return next((t["value"] for t in telecom if t.get("system") == system and as_str(t.get("value"))), None)


def _type_codes(identifier: dict[str, Any]) -> set[str]:
    return {c.get("code") for c in as_dicts(as_dict(identifier.get("type")).get("coding"))}


def _omb(extension: dict[str, Any] | None) -> str | None:
    """US Core race/ethnicity: the OMB categories' display text (``; ``-joined), else the ``text`` sub-extension."""
    if not extension:
        return None
    parts = as_dicts(extension.get("extension"))
    categories = [as_str(c.get("display")) or as_str(c.get("code")) for p in parts if p.get("url") == "ombCategory"
                  for c in [as_dict(p.get("valueCoding"))]]
    categories = [c for c in categories if c]
    if categories:
        return "; ".join(categories)
    return next((as_str(p.get("valueString")) for p in parts if p.get("url") == "text"), None)


def _encounter(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    period = as_dict(res.get("period"))
    npi = None
    for participant in as_dicts(res.get("participant")):
        individual = participant.get("individual")
        identifiers = [as_dict(as_dict(individual).get("identifier"))]
        target = ctx.scope.resolve(individual, item)
        if target is not None and target.item is not None:
            identifiers += as_dicts(target.item.resource.get("identifier"))
        elif target is not None and target.identifier is not None:
            identifiers.append({"system": target.identifier[0], "value": target.identifier[1]})
        # An NPI is ten digits; a counter under the NPI system (Synthea writes "110") names no one: the
        # Practitioner itself stays whole in resources.
        npi = next((i["value"] for i in identifiers if i.get("system") in _NPI
                    and _NPI_FORMAT.match(str(i.get("value", "")))), None)
        if npi:
            break
    encounter_class = as_dict(res.get("class"))
    code = as_str(encounter_class.get("code"))
    if code and not encounter_class.get("system"):
        code = _CLASS_WORDS.get(code.lower(), code)
    yield {
        "encounter_id": _record_id(item, "urn:medguard:encounter-id"), "patient_id": patient_id,
        "facility_id": _target_id(item, ctx, res.get("serviceProvider")),
        "encounter_type": code,
        "admit_time": as_str(period.get("start")), "discharge_time": as_str(period.get("end")),
        "provider_npi": npi,
    }, item.position


def _observation(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = _required_code(item, "code")
    categories = as_dicts(res.get("category"))
    category = next((c.get("code") for concept in categories for c in as_dicts(concept.get("coding"))
                     if c.get("system") == _OBS_CATEGORY and as_str(c.get("code"))), None) or first_code(categories)
    base = {"patient_id": patient_id, "encounter_id": _encounter_of(item, ctx, "encounter"), "category": category,
            "effective_time": when(res, "effective") or as_str(res.get("issued"))}
    own = _observed(res)
    parent_id = _record_id(item, "urn:medguard:observation-id")
    components = as_dicts(res.get("component"))
    has_value = own["value"] is not None or own["value_text"] is not None
    if has_value or not components:
        yield {"observation_id": parent_id, **base, "code": code, "code_system": system,
               "loinc_code": code_in(res.get("code"), _LOINC), "display": display, **own}, item.position
    for index, component in enumerate(components, start=1):
        c_code, c_system, c_display = coded(component.get("code"))
        yield {"observation_id": f"{parent_id}:{index}", **base, "code": c_code, "code_system": c_system,
               "loinc_code": code_in(component.get("code"), _LOINC), "display": c_display,
               **_observed(component)}, f"{item.position} component {index}"


def _observed(element: dict[str, Any]) -> dict[str, Any]:
    """value, value_text, unit, reference_range and interpretation of an Observation or one of its components."""
    value = value_text = unit = None
    quantity = element.get("valueQuantity")
    if isinstance(quantity, dict):
        value = number(quantity.get("value"))
        if value is None and quantity.get("value") is not None:
            value_text = str(quantity["value"])
        unit = as_str(quantity.get("code")) or as_str(quantity.get("unit"))
        if as_str(quantity.get("comparator")):
            value_text = quantity_text(quantity)  # "<5" is not the number 5
            value = None
    elif "valueInteger" in element:
        value = number(element["valueInteger"])
        value_text = None if value is not None else str(element["valueInteger"])
    elif "valueCodeableConcept" in element:
        code, _, display = coded(element["valueCodeableConcept"])
        value_text = display or code
    elif "valueRatio" in element:
        ratio = as_dict(element["valueRatio"])
        numerator, denominator = quantity_text(ratio.get("numerator")), quantity_text(ratio.get("denominator"))
        value_text = f"{numerator or ''}/{denominator or ''}" if numerator or denominator else None
    elif "valueRange" in element:
        low, high = (quantity_text(as_dict(element["valueRange"]).get(k)) for k in ("low", "high"))
        value_text = f"{low or ''}-{high or ''}" if low or high else None
    elif "valueBoolean" in element:
        value_text = "true" if element["valueBoolean"] else "false"
    else:
        value_text = next((str(element[k]) for k in ("valueString", "valueDateTime", "valueTime") if k in element),
                          None)
        if value_text is None and isinstance(element.get("valuePeriod"), dict):
            period = element["valuePeriod"]
            value_text = f"{period.get('start', '')}/{period.get('end', '')}"
    ranges = as_dicts(element.get("referenceRange"))
    return {"value": value, "value_text": value_text, "unit": unit,
            "reference_range": range_text(ranges[0]) if ranges else None,
            "interpretation": first_code(element.get("interpretation"))}


def _condition(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = _required_code(item, "code")
    yield {"condition_id": _record_id(item, "urn:medguard:condition-id"), "patient_id": patient_id,
           "encounter_id": _encounter_of(item, ctx, "encounter", "context"), "code": code, "code_system": system,
           "icd10_code": code_in(res.get("code"), _ICD10CM), "description": display,
           "onset_date": when(res, "onset"), "clinical_status": first_code(res.get("clinicalStatus"))}, item.position


def _medication(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    kind = res["resourceType"]
    concept = res.get("medicationCodeableConcept")
    if concept is None:
        reference = res.get("medicationReference")
        target = ctx.scope.resolve(reference, item)
        medication = target.item.resource if target is not None and target.item is not None else {}
        concept = medication.get("code") or {"text": as_dict(reference).get("display")}
    code, system, display = coded(concept)
    if kind == "MedicationAdministration":
        dosages = [as_dict(res.get("dosage"))]
    else:
        dosages = as_dicts(res.get("dosage") if kind == "MedicationStatement" else res.get("dosageInstruction"))
    start = {"MedicationRequest": as_str(res.get("authoredOn")),
             "MedicationDispense": as_str(res.get("whenHandedOver")) or as_str(res.get("whenPrepared"))}.get(kind)
    yield {"medication_id": _record_id(item, "urn:medguard:medication-id"), "patient_id": patient_id,
           "encounter_id": _encounter_of(item, ctx, "encounter", "context"), "kind": _MEDICATION_KIND[kind],
           "code": code, "code_system": system, "ndc_code": code_in(concept, _NDC),
           "rxnorm_code": code_in(concept, _RXNORM), "medication": as_str(as_dict(concept).get("text")) or display,
           "dosage": next((as_str(d.get("text")) for d in dosages if as_str(d.get("text"))), None),
           "start_date": start or when(res, "effective"), "status": as_str(res.get("status"))}, item.position


def _procedure(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = coded(res.get("code"))
    yield {"procedure_id": own_id(item) or resource_key(item), "patient_id": patient_id,
           "encounter_id": _encounter_of(item, ctx, "encounter", "context"), "code": code, "code_system": system,
           "description": display, "status": as_str(res.get("status")),
           "performed_time": when(res, "performed")}, item.position


def _immunization(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = _required_code(item, "vaccineCode")
    yield {"immunization_id": own_id(item) or resource_key(item), "patient_id": patient_id,
           "encounter_id": _encounter_of(item, ctx, "encounter"), "code": code, "code_system": system,
           "description": display, "status": as_str(res.get("status")),
           "occurrence_time": when(res, "occurrence")}, item.position


def _allergy(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = coded(res.get("code"))
    categories = res.get("category") if isinstance(res.get("category"), list) else []
    reactions = []
    for reaction in as_dicts(res.get("reaction")):
        text = as_str(reaction.get("description")) or "; ".join(
            t for t in (coded(m)[2] or coded(m)[0] for m in as_dicts(reaction.get("manifestation"))) if t)
        if text:
            reactions.append(text)
    yield {"allergy_id": own_id(item) or resource_key(item), "patient_id": patient_id, "code": code,
           "code_system": system, "description": display,
           "category": next((c for c in categories if isinstance(c, str)), None),
           "criticality": as_str(res.get("criticality")), "clinical_status": first_code(res.get("clinicalStatus")),
           "onset_date": when(res, "onset"), "reaction": "; ".join(reactions) or None}, item.position


def _diagnostic_report(item: Item, ctx: Context, patient_id: str) -> Mapped:
    res = item.resource
    code, system, display = _required_code(item, "code")
    yield {"report_id": own_id(item) or resource_key(item), "patient_id": patient_id,
           "encounter_id": _encounter_of(item, ctx, "encounter", "context"), "code": code, "code_system": system,
           "description": display, "category": first_code(res.get("category")), "status": as_str(res.get("status")),
           "effective_time": when(res, "effective") or as_str(res.get("issued")),
           "conclusion": as_str(res.get("conclusion"))}, item.position


_MAPPERS: dict[str, Callable[[Item, Context, str], Mapped]] = {
    "Encounter": _encounter, "Observation": _observation, "Condition": _condition, "Procedure": _procedure,
    "Immunization": _immunization, "AllergyIntolerance": _allergy, "DiagnosticReport": _diagnostic_report,
    **dict.fromkeys(_MEDICATION_KIND, _medication),
}
