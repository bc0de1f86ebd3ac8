"""FHIR R4 for the CDS Hooks service: prefetch templates, prefetch → :class:`EncounterIn`, a diagnosis → cards.

**Prefetch** (:func:`prefetch_templates`): ``patient`` is ``Patient/{{context.patientId}}``; one key
``obs-<LOINC>`` per code the current model reads, each the patient's most recent Observations of that code
(``_sort=-date``, ``_count`` = ``cds_hooks.observation_count``) — one search per code, so that frequent vital signs
cannot push a yearly HbA1c out of a shared page — plus ``obs-85354-9``, the blood-pressure panel, when the model
reads systolic or diastolic pressure (FHIR vital signs carry them as the panel's components); ``conditions`` the
patient's Conditions.

**Mapping** (:func:`encounter_from_prefetch`). Every resource is first checked with ``fhir.resources``' R4B models
(R4's technical-correction release, as ingestion does) and must be about the hook's patient (``Patient.id``, each
``subject``): a resource about anyone else refuses the whole call, since mixing patients is worse than no answer.

- Patient: ``birthDate`` → age in years at the hook's time (a year alone counts from 1 July, a year and month from
  the 15th); ``gender`` ``male``/``female``/``other`` → ``M``/``F``/``O`` when the model knows that level, else
  unknown (reported).
- Observations with status ``final``, ``amended`` or ``corrected``; a LOINC code the model reads (a panel's
  components each count as their own observation at the panel's time); ``valueQuantity.value`` with its UCUM code
  (``valueQuantity.code`` when its system is UCUM, else its ``unit`` text); the time from ``effectiveDateTime``,
  ``effectiveInstant``, ``effectivePeriod`` (end, else start) or ``issued``. All of them go to the diagnosis
  service, which converts units (mmol/L → mg/dL and the like), checks hard limits and plausibility, and builds the
  model's ``_last`` (the latest by time wins), ``_mean`` and ``_trend`` features as training did.
- Conditions unless ``verificationStatus`` is ``refuted`` or ``entered-in-error``: an ICD-10-CM coding if there is
  one, else a SNOMED CT coding (the model's crosswalk maps it).
- Everything not used is listed in :attr:`Mapped.ignored` with its place and why (another code, no value, a
  comparator such as ``<5``, a status, a search's OperationOutcome): the card says what the answer did not see.

A prefetch key the service asked for and did not get (absent, or an OperationOutcome in its place) is
:class:`PrefetchMissing` (412 in CDS Hooks: the service cannot get the data it needs, and it never calls the EHR's
``fhirServer`` back); ``null`` means "no such data" and is accepted for observations and conditions, not for the
patient. A malformed resource is :class:`PrefetchInvalid` (400) naming the place, never a value.

**Answer** (:func:`cards_for`, :func:`risk_assessment`): one card — summary under 140 characters, indicator
``info`` (not flagged), ``warning`` (flagged) or ``critical`` (flagged at ``cds_hooks.critical_probability`` or
more), markdown detail (probability, threshold, model, top contributing inputs, inputs used, checks, out-of-profile
notes, what was not used), source and uuid; when asked, a FHIR R4 ``RiskAssessment`` as the card's suggestion
(action ``create``) for the clinician to accept into the chart.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from access.api.scoring import MAX_ITEMS, ConditionIn, EncounterIn, ObservationIn
from pipeline.errors import MedguardError

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["OBSERVATION_KEY", "RISK_ASSESSMENT_EXTENSION", "Mapped", "PrefetchInvalid", "PrefetchMissing", "cards_for",
           "encounter_from_prefetch", "prefetch_templates", "risk_assessment"]

OBSERVATION_KEY = "obs-"  # + the LOINC code
# Send ``"extension": {"org.medguard.risk-assessment": true}`` in a hook request to get a RiskAssessment.
RISK_ASSESSMENT_EXTENSION = "org.medguard.risk-assessment"
LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
_BP_PANEL, _SYSTOLIC, _DIASTOLIC = "85354-9", "8480-6", "8462-4"
_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected"})
_CONDITION_SKIPPED = frozenset({"refuted", "entered-in-error"})
_GENDER = {"male": "M", "female": "F", "other": "O"}
_RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
_SUMMARY_MAX = 139
_LOC = re.compile(r"^encounters\[0\]\.(observations|conditions)\[(\d+)\](.*)$")


class PrefetchMissing(MedguardError):
    """A prefetch key the service needs is absent or holds an OperationOutcome: 412 ``prefetch_missing``."""

    code = "prefetch_missing"
    status = 412

    def __init__(self, key: str, why: str) -> None:
        self.field = f"prefetch.{key}"
        super().__init__(f"prefetch.{key}: {why}")


class PrefetchInvalid(MedguardError):
    """A prefetch resource that cannot be used: 400 ``prefetch_invalid``, naming where (never a value)."""

    code = "prefetch_invalid"
    status = 400

    def __init__(self, where: str, rule: str) -> None:
        self.field = where
        self.rule = rule
        super().__init__(f"{where}: {rule}")


@dataclass(frozen=True)
class Used:
    """One prefetch resource behind an input: where it was, its FHIR reference, and what it said (for the card)."""

    where: str
    reference: str | None
    code: str
    display: str
    value: float | None = None
    unit: str | None = None
    effective: datetime | None = None


@dataclass
class Mapped:
    """What a hook's prefetch became: the encounter to diagnose, where each of its items came from, and what was
    left out (each ``(where, why)``)."""

    encounter: EncounterIn
    patient_reference: str
    at: datetime
    observations: list[Used] = field(default_factory=list)  # parallel to encounter.observations
    conditions: list[Used] = field(default_factory=list)  # parallel to encounter.conditions
    ignored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # SNOMED CT conditions were passed on without knowing whether the model's crosswalk maps them.
    crosswalk_unknown: bool = False

    def latest(self) -> dict[str, Used]:
        """Per LOINC code, the latest observation (by time; the last listed among untimed ones)."""
        out: dict[str, Used] = {}
        for used in self.observations:
            have = out.get(used.code)
            if have is None or _later(used, have):
                out[used.code] = used
        return out

    def basis(self) -> list[str]:
        """The FHIR references of the resources the answer rests on (a RiskAssessment's ``basis``)."""
        refs = [self.patient_reference] + [u.reference for u in (*self.observations, *self.conditions) if u.reference]
        return list(dict.fromkeys(refs))

    def fhir_field(self, field_path: str) -> str:
        """A diagnosis service field (``encounters[0].observations[2].value``) as its place in the prefetch."""
        match = _LOC.match(field_path)
        if match is None:
            return "prefetch.patient" if field_path.endswith((".age", ".sex")) else "prefetch"
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        items = self.observations if kind == "observations" else self.conditions
        if index >= len(items):
            return "prefetch"
        suffix = {".value": ".valueQuantity.value", ".unit": ".valueQuantity.code", ".code": ".code"}.get(rest, "")
        return items[index].where + suffix


def _later(a: Used, b: Used) -> bool:
    if a.effective is not None and b.effective is not None:
        return a.effective >= b.effective
    return a.effective is not None or b.effective is None


# prefetch templates -------------------------------------------------------------------------------------------

def observation_query_codes(observation_codes: list[str]) -> list[str]:
    """The LOINC codes to ask for: the model's, plus the blood-pressure panel when it reads a pressure."""
    codes = list(dict.fromkeys(observation_codes))
    if {_SYSTOLIC, _DIASTOLIC} & set(codes):
        codes.append(_BP_PANEL)
    return codes


def prefetch_templates(model: dict[str, Any], *, count: int) -> dict[str, str]:
    """The discovery document's ``prefetch`` for the model ``model`` (:meth:`DiagnosisService.model_info`)."""
    out = {"patient": "Patient/{{context.patientId}}"}
    for code in observation_query_codes(list(model.get("observation_codes") or [])):
        out[f"{OBSERVATION_KEY}{code}"] = (f"Observation?patient={{{{context.patientId}}}}&code={LOINC}|{code}"
                                           f"&_sort=-date&_count={count}")
    if model.get("condition_codes"):
        out["conditions"] = "Condition?patient={{context.patientId}}"
    return out


# prefetch → encounter ---------------------------------------------------------------------------------------

def _validate(resource: dict[str, Any], where: str) -> None:
    """Check one resource against its ``fhir.resources`` R4B model; the error names the element, not the value."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    kind = resource.get("resourceType")
    try:
        model = get_fhir_model_class(str(kind))
    except (KeyError, ValueError):
        raise PrefetchInvalid(f"{where}.resourceType", "must be a FHIR R4 resource type") from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
        raise PrefetchInvalid(f"{where}.{loc}" if loc else where,
                              f"does not conform to FHIR R4 {kind} ({first.get('type', 'invalid')})") from None


def _reference_id(reference: Any, kind: str) -> str | None:
    """``Patient/123``, ``https://ehr/fhir/Patient/123/_history/2`` → ``123``; None when not a ``kind``."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == kind and i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


def _when(text: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime (partial dates at their first day, UTC)."""
    if not isinstance(text, str) or not text:
        return None
    if re.fullmatch(r"\d{4}", text):
        text += "-01-01"
    elif re.fullmatch(r"\d{4}-\d{2}", text):
        text += "-01"
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _effective(resource: dict[str, Any]) -> datetime | None:
    period = resource.get("effectivePeriod") or {}
    for text in (resource.get("effectiveDateTime"), resource.get("effectiveInstant"), period.get("end"),
                 period.get("start"), resource.get("issued")):
        found = _when(text)
        if found is not None:
            return found
    return None


def _age(birth: str, at: datetime) -> float:
    parts = [int(p) for p in birth.split("-")]
    # A partial birth date is counted from the middle of what it leaves open.
    born = date(parts[0], 7, 1) if len(parts) == 1 else date(parts[0], parts[1], 15) if len(parts) == 2 else \
        date(parts[0], parts[1], parts[2])
    today = at.astimezone(UTC).date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return float(years)


def _resources(value: Any, key: str, kind: str, mapped: Mapped) -> list[tuple[str, dict[str, Any], str | None]]:
    """The ``kind`` resources of a prefetch value (a searchset Bundle, or one resource): (where, resource, fullUrl)."""
    where = f"prefetch.{key}"
    if not isinstance(value, dict):
        raise PrefetchInvalid(where, "must be a FHIR Bundle, a resource or null")
    if value.get("resourceType") == "OperationOutcome":
        raise PrefetchMissing(key, "the EHR could not fetch it (OperationOutcome)")
    if value.get("resourceType") == kind:
        return [(where, value, None)]
    if value.get("resourceType") != "Bundle":
        raise PrefetchInvalid(f"{where}.resourceType", f"must be Bundle or {kind}")
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        raise PrefetchInvalid(f"{where}.entry", "must be a list")
    links = value.get("link") if isinstance(value.get("link"), list) else []
    if any(isinstance(link, dict) and link.get("relation") == "next" for link in links):
        mapped.notes.append(f"{where}: the EHR sent one page of results; later pages are not read")
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}.entry[{i}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise PrefetchInvalid(at, "must hold a resource")
        mode = (entry.get("search") or {}).get("mode") if isinstance(entry.get("search"), dict) else None
        if resource.get("resourceType") == "OperationOutcome" or mode == "outcome":
            mapped.ignored.append((f"{at}.resource", "a search OperationOutcome, not data"))
            continue
        if resource.get("resourceType") != kind:
            mapped.ignored.append((f"{at}.resource", f"a {resource.get('resourceType')}, not an {kind}"))
            continue
        full = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        out.append((f"{at}.resource", resource, full))
    return out


def _reference(resource: dict[str, Any], kind: str, full_url: str | None) -> str | None:
    if isinstance(resource.get("id"), str):
        return f"{kind}/{resource['id']}"
    return full_url


def _own(resource: dict[str, Any], where: str, patient_id: str) -> None:
    if _reference_id(resource.get("subject"), "Patient") != patient_id:
        raise PrefetchInvalid(f"{where}.subject", "must reference the hook's patient (Patient/<context.patientId>)")


def _loinc(codeable: Any) -> list[tuple[str, str]]:
    codings = (codeable or {}).get("coding") or [] if isinstance(codeable, dict) else []
    return [(c["code"], c.get("display") or c["code"]) for c in codings
            if isinstance(c, dict) and c.get("system") == LOINC and isinstance(c.get("code"), str)]


def encounter_from_prefetch(patient_id: str, prefetch: dict[str, Any] | None, model: dict[str, Any], *,
                            at: datetime) -> Mapped:
    """Map a ``patient-view`` hook's prefetch to one encounter for the model ``model`` (``model_info()``).

    Args:
        patient_id: ``context.patientId``.
        prefetch: the request's ``prefetch`` object.
        model: what the diagnosis service says the current model reads.
        at: the hook's time (ages are counted to it).

    Raises:
        PrefetchMissing: a key the service asked for was not sent, or the patient is null.
        PrefetchInvalid: a resource is malformed or about another patient.
    """
    asked = prefetch_templates(model, count=1)
    prefetch = prefetch if isinstance(prefetch, dict) else {}
    for key in asked:
        if key not in prefetch:
            raise PrefetchMissing(key, "not sent; this service does not call the EHR's FHIR server")
    patient = prefetch["patient"]
    if patient is None:
        raise PrefetchMissing("patient", "null: the patient's record is needed")
    if not isinstance(patient, dict):
        raise PrefetchInvalid("prefetch.patient", "must be a Patient resource")
    if patient.get("resourceType") == "OperationOutcome":
        raise PrefetchMissing("patient", "the EHR could not fetch it (OperationOutcome)")
    if patient.get("resourceType") != "Patient":
        raise PrefetchInvalid("prefetch.patient.resourceType", "must be Patient")
    _validate(patient, "prefetch.patient")
    if patient.get("id") not in (None, patient_id):
        raise PrefetchInvalid("prefetch.patient.id", "must be context.patientId")
    mapped = Mapped(encounter=EncounterIn(), patient_reference=f"Patient/{patient_id}", at=at)
    age: float | None = None
    if isinstance(patient.get("birthDate"), str):
        age = _age(patient["birthDate"], at)
    else:
        mapped.ignored.append(("prefetch.patient.birthDate", "absent: age unknown"))
    sex = _GENDER.get(str(patient.get("gender")))
    levels = {str(lv).upper() for lv in model.get("sex_levels") or []}
    if levels and sex not in levels:
        mapped.ignored.append(("prefetch.patient.gender", "not a level the model knows: sex unknown"))
        sex = None
    keys = [key for key in asked if key.startswith(OBSERVATION_KEY)]
    observations = _observations({key: prefetch[key] for key in keys}, patient_id, model, mapped)
    conditions = _conditions(prefetch.get("conditions"), patient_id, model, mapped) if "conditions" in asked else []
    mapped.encounter = EncounterIn(age=age, sex=sex if levels else None, observations=observations,
                                   conditions=conditions)
    return mapped


def _observations(searches: dict[str, Any], patient_id: str, model: dict[str, Any],
                  mapped: Mapped) -> list[ObservationIn]:
    wanted = set(model.get("observation_codes") or [])
    found: list[tuple[ObservationIn, Used]] = []
    seen: set[str] = set()
    results = [item for key, value in searches.items() if value is not None
               for item in _resources(value, key, "Observation", mapped)]
    for where, resource, full_url in results:
        _validate(resource, where)
        _own(resource, where, patient_id)
        reference = _reference(resource, "Observation", full_url)
        if reference is not None and reference in seen:
            continue  # the same result found by two searches (a panel matched by its component's code)
        seen.add(reference or where)
        status = resource.get("status")
        if status not in _OBSERVATION_STATUSES:
            mapped.ignored.append((where, f"status {status}: only final, amended or corrected results are used"))
            continue
        effective = _effective(resource)
        # A panel (blood pressure) carries its values in components; each one the model reads is an observation.
        parts = [(f"{where}.component[{k}]", c) for k, c in enumerate(resource.get("component") or [])
                 if isinstance(c, dict)]
        if resource.get("valueQuantity") is not None or not parts:
            parts.insert(0, (where, resource))
        for part_where, part in parts:
            codes = _loinc(part.get("code"))
            match = next(((c, d) for c, d in codes if c in wanted), None)
            if match is None:
                mapped.ignored.append((part_where, f"LOINC {codes[0][0]} is not an input of the model" if codes
                                       else "no LOINC coding"))
                continue
            quantity = part.get("valueQuantity")
            if not isinstance(quantity, dict) or quantity.get("value") is None:
                mapped.ignored.append((part_where, "no valueQuantity value"))
                continue
            if quantity.get("comparator"):
                mapped.ignored.append((part_where, "a value with a comparator (<, >) is not a measurement"))
                continue
            unit = quantity.get("code") if quantity.get("system") == _UCUM and quantity.get("code") else \
                quantity.get("unit")
            code, display = match
            try:
                obs = ObservationIn(code=code, value=float(quantity["value"]),
                                    unit=unit if isinstance(unit, str) else None, effective=effective)
            except (ValidationError, TypeError, ValueError, OverflowError):
                raise PrefetchInvalid(f"{part_where}.valueQuantity", "value must be a finite number and unit a UCUM "
                                      "code of at most 32 characters") from None
            found.append((obs, Used(part_where, reference, code, display, obs.value, obs.unit, effective)))
    if len(found) > MAX_ITEMS:
        found.sort(key=lambda pair: pair[1].effective or datetime.min.replace(tzinfo=UTC), reverse=True)
        mapped.notes.append(f"prefetch: only the {MAX_ITEMS} most recent observations are used")
        found = found[:MAX_ITEMS]
    mapped.observations = [u for _, u in found]
    return [o for o, _ in found]


def _conditions(value: Any, patient_id: str, model: dict[str, Any], mapped: Mapped) -> list[ConditionIn]:
    if value is None:
        return []
    from ingestion.codes import short_name

    wanted = {str(c).upper() for c in model.get("condition_codes") or []}
    crosswalk = model.get("condition_map")  # "snomed|<id>" → ICD-10-CM, when the service tells

    found: list[tuple[ConditionIn, Used]] = []
    for where, resource, full_url in _resources(value, "conditions", "Condition", mapped):
        _validate(resource, where)
        _own(resource, where, patient_id)
        verification = next((c.get("code") for c in (resource.get("verificationStatus") or {}).get("coding") or []
                             if isinstance(c, dict)), None)
        if verification in _CONDITION_SKIPPED:
            mapped.ignored.append((where, f"verification status {verification}"))
            continue
        codings = [c for c in (resource.get("code") or {}).get("coding") or []
                   if isinstance(c, dict) and isinstance(c.get("code"), str) and isinstance(c.get("system"), str)]
        by_system = {short_name(c["system"]): c for c in reversed(codings)}
        chosen = by_system.get("icd10cm") or by_system.get("snomed")
        if chosen is None:
            mapped.ignored.append((where, "no ICD-10-CM or SNOMED CT coding"))
            continue
        system = short_name(chosen["system"])
        if system == "icd10cm" and chosen["code"].upper() not in wanted:
            mapped.ignored.append((f"{where}.code", f"ICD-10-CM {chosen['code']} is not an input of the model"))
            continue
        if system == "snomed" and isinstance(crosswalk, dict) and f"snomed|{chosen['code']}" not in crosswalk:
            mapped.ignored.append((f"{where}.code", f"SNOMED CT {chosen['code']} maps to no input of the model"))
            continue
        if system == "snomed" and not isinstance(crosswalk, dict):
            mapped.crosswalk_unknown = True
        try:
            cond = ConditionIn(code=chosen["code"], system=system, onset=_when(resource.get("onsetDateTime")))
        except ValidationError:
            raise PrefetchInvalid(f"{where}.code", "a code of at most 64 characters") from None
        found.append((cond, Used(f"{where}.code", _reference(resource, "Condition", full_url), chosen["code"],
                                 chosen.get("display") or chosen["code"])))
    if len(found) > MAX_ITEMS:
        mapped.notes.append(f"prefetch.conditions: only the first {MAX_ITEMS} conditions are used")
        found = found[:MAX_ITEMS]
    mapped.conditions = [u for _, u in found]
    return [c for c, _ in found]


# the answer -------------------------------------------------------------------------------------------------

def _indicator(diagnosis: dict[str, Any], critical: float) -> str:
    if not diagnosis["flag"]:
        return "info"
    return "critical" if diagnosis["probability"] >= critical else "warning"


def outcome_text(model: dict[str, Any]) -> str:
    """What the model predicts, in words: ``outcomes__t2d_within_1y`` → ``t2d within 1y``."""
    name = str(model.get("name") or "outcome")
    return name.split("__", 1)[-1].replace("_", " ")


def _pct(p: float) -> str:
    return f"{100 * p:.1f} %"


def _summary(diagnosis: dict[str, Any]) -> str:
    p, t = diagnosis["probability"], diagnosis["threshold"]
    side = "at or above" if diagnosis["flag"] else "below"
    text = f"Risk of {outcome_text(diagnosis['model'])}: {round(100 * p)} %, {side} the {round(100 * t)} % threshold"
    if diagnosis.get("out_of_profile"):
        text += " (inputs outside the model's training range)"
    return text if len(text) <= _SUMMARY_MAX else text[:_SUMMARY_MAX - 1] + "…"


def _md(text: Any) -> str:
    """Text from a resource made safe inside markdown: no markup, links or HTML from the EHR's data."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", str(text))[:200]


def _detail(diagnosis: dict[str, Any], mapped: Mapped) -> str:
    model = diagnosis["model"]
    lines = [f"**Probability:** {_pct(diagnosis['probability'])} (threshold {_pct(diagnosis['threshold'])}: "
             f"{'flagged' if diagnosis['flag'] else 'not flagged'})",
             f"**Model:** {_md(model['name'])} version {model['version']} ({_md(model['model_version'])})", ""]
    top = diagnosis.get("top_features") or []
    if top:
        lines.append("**Top contributing inputs:**")
        lines += [f"- {_md(f['name'])}: {'raises' if f['contribution'] > 0 else 'lowers'} the risk "
                  f"({f['contribution']:+.3f} log-odds)" for f in top]
        lines.append("")
    latest = mapped.latest()
    if latest or mapped.encounter.age is not None or mapped.conditions:
        lines.append("**Inputs used:**")
        if mapped.encounter.age is not None:
            lines.append(f"- age {mapped.encounter.age:g} years" + (f", sex {mapped.encounter.sex}"
                                                                    if mapped.encounter.sex else ""))
        for used in latest.values():
            when = f", {used.effective.date().isoformat()}" if used.effective else ""
            count = sum(1 for u in mapped.observations if u.code == used.code)
            more = f" (latest of {count})" if count > 1 else ""
            lines.append(f"- {_md(used.display)} (LOINC {used.code}): {used.value:g} {_md(used.unit or '')}"
                         f"{when}{more}".replace("  ", " "))
        lines += [f"- condition {_md(u.display)} ({u.code})" for u in mapped.conditions]
        if mapped.crosswalk_unknown:
            lines.append("- SNOMED CT conditions count only where the model's crosswalk maps them to its codes")
        lines.append("")
    checks = diagnosis.get("checks") or {}
    if checks:
        lines.append("**Validation checks:** " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in checks.items()))
        lines.append("")
    reasons = diagnosis.get("out_of_profile_reasons") or []
    if reasons:
        lines.append("**Outside the training profile** (the estimate is less reliable):")
        lines += [f"- {_md(r['name'])}: {r['side']} the training range (bound {r['bound']:g})" for r in reasons]
        lines.append("")
    if mapped.ignored or mapped.notes:
        lines.append("**Not used:**")
        lines += [f"- `{where}`: {_md(why)}" for where, why in mapped.ignored[:20]]
        if len(mapped.ignored) > 20:
            lines.append(f"- and {len(mapped.ignored) - 20} more")
        lines += [f"- {_md(note)}" for note in mapped.notes]
    return "\n".join(lines).strip()


def risk_assessment(diagnosis: dict[str, Any], mapped: Mapped, settings: Settings) -> dict[str, Any]:
    """A FHIR R4 ``RiskAssessment`` of one diagnosis (status ``final``, the patient, the hook's time, the
    probability and its qualitative risk, the outcome, the resources it rests on)."""
    indicator = _indicator(diagnosis, settings.cds_hooks.critical_probability)
    qualitative = {"info": "low", "warning": "moderate", "critical": "high"}[indicator]
    model = diagnosis["model"]
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": mapped.patient_reference},
        "occurrenceDateTime": mapped.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "method": {"text": f"medguard model {model['model_version']}"},
        "performer": {"display": "medguard"},
        "basis": [{"reference": ref} for ref in mapped.basis()],
        "prediction": [{
            "outcome": {"text": outcome_text(model)},
            "probabilityDecimal": diagnosis["probability"],
            "qualitativeRisk": {"coding": [{"system": _RISK_PROBABILITY, "code": qualitative}]},
            "rationale": f"{'At or above' if diagnosis['flag'] else 'Below'} the model's threshold "
                         f"{diagnosis['threshold']:g}",
        }],
    }
    if diagnosis.get("out_of_profile"):
        resource["note"] = [{"text": "Outside the model's training profile: "
                                     + ", ".join(r["name"] for r in diagnosis["out_of_profile_reasons"])}]
    return resource


def cards_for(diagnosis: dict[str, Any], mapped: Mapped, settings: Settings, *,
              with_risk_assessment: bool) -> list[dict[str, Any]]:
    """The hook's cards for one diagnosis (one card; its suggestion carries the RiskAssessment when asked)."""
    model = diagnosis["model"]
    source: dict[str, Any] = {"label": f"medguard · {model['name']} v{model['version']}"}
    if settings.cds_hooks.source_url:
        source["url"] = settings.cds_hooks.source_url
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(diagnosis),
        "indicator": _indicator(diagnosis, settings.cds_hooks.critical_probability),
        "detail": _detail(diagnosis, mapped),
        "source": source,
    }
    if with_risk_assessment:
        resource = risk_assessment(diagnosis, mapped, settings)
        card["selectionBehavior"] = "at-most-one"
        card["suggestions"] = [{"label": "Record this risk assessment in the chart", "uuid": str(uuid.uuid4()),
                                "isRecommended": False,
                                "actions": [{"type": "create", "description": "Create a RiskAssessment",
                                             "resource": resource}]}]
    return [card]
