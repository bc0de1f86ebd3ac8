"""Free-text clinical notes that mention PHI, with the exact character span and label of every mention.

Each patient gets one note for their latest encounter. Notes are assembled piece by piece, so the ground-truth
spans are exact by construction; ``deidentify evaluate`` scores PHI detection against them. Labels follow
Presidio's entity names where Presidio has one (:data:`PHI_LABELS`). Ages are PHI only above 89 (HIPAA Safe
Harbor), so younger ages are written but not labelled.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.synthetic.population import Provider, providers
from pipeline.synthetic.reference import ENCOUNTER_TYPES, FACILITIES, INDEX_DATE, pools

PHI_LABELS = (
    "PERSON", "DATE_TIME", "AGE", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN", "MEDICAL_RECORD_NUMBER",
    "HEALTH_PLAN_ID", "STREET_ADDRESS", "LOCATION", "ZIP_CODE", "NPI", "DEVICE_ID", "IP_ADDRESS", "URL",
)
_DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d", "%B %d, %Y", "%d %b %Y")
_RELATIONS = ("daughter", "son", "wife", "husband", "sister", "brother", "caregiver")


class NoteBuilder:
    """Appends text and PHI mentions, recording each mention's [start, end) offsets."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.spans: list[dict[str, Any]] = []

    def text(self, value: str) -> NoteBuilder:
        self._parts.append(value)
        self._length += len(value)
        return self

    def phi(self, value: str, label: str) -> NoteBuilder:
        if label not in PHI_LABELS:
            raise ValueError(f"unknown PHI label {label!r}")
        self.spans.append({"start": self._length, "end": self._length + len(value), "label": label})
        return self.text(value)

    def build(self) -> str:
        return "".join(self._parts)


def _fmt_date(value: str, fmt: str) -> str:
    return datetime.fromisoformat(value.rstrip("Z")).strftime(fmt)


def _age(birth: str) -> int:
    born = date.fromisoformat(birth)
    ref = date.fromisoformat(str(INDEX_DATE))
    return ref.year - born.year - ((ref.month, ref.day) < (born.month, born.day))


def _vitals_sentence(values: dict[str, float]) -> str:
    parts = []
    if "8480-6" in values and "8462-4" in values:
        parts.append(f"BP {values['8480-6']:.0f}/{values['8462-4']:.0f}")
    for code, label, fmt in (("8867-4", "HR", "{:.0f}"), ("39156-5", "BMI", "{:.1f}"),
                             ("4548-4", "HbA1c", "{:.1f}%"), ("2345-7", "glucose", "{:.0f} mg/dL"),
                             ("13457-7", "LDL", "{:.0f} mg/dL"), ("2160-0", "creatinine", "{:.2f} mg/dL")):
        if code in values:
            parts.append(f"{label} {fmt.format(values[code])}")
    return ", ".join(parts) + "." if parts else "Vitals not recorded."


def generate_notes(seed: int, chunk_index: int, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One note per patient of the chunk, for their latest encounter.

    Returns:
        Columns ``note_id, patient_id, encounter_id, note_time, text, spans`` (spans: list of
        ``{"start", "end", "label"}``).
    """
    rng = np.random.default_rng([seed, chunk_index, 0xB0B])
    p = pools()
    staff: dict[str, list[Provider]] = {}
    for prov in providers(seed):
        staff.setdefault(prov.facility, []).append(prov)
    by_npi = {prov.npi: prov for provs in staff.values() for prov in provs}

    encounters = tables["encounters"]
    last = encounters.groupby("patient_id", sort=False).tail(1).set_index("patient_id")
    visits: dict[str, list[str]] = {}
    for pid, admitted in zip(encounters["patient_id"], encounters["admit_time"], strict=True):
        visits.setdefault(pid, []).append(admitted)
    obs = tables["observations"]
    obs = obs[obs["encounter_id"].isin(last["encounter_id"])]
    values: dict[str, dict[str, float]] = {}
    for pid, code, value in zip(obs["patient_id"], obs["loinc_code"], obs["value"], strict=True):
        values.setdefault(pid, {})[code] = value
    conds: dict[str, list[tuple[str, str]]] = {}
    cond = tables["conditions"]
    for pid, desc, code in zip(cond["patient_id"], cond["description"], cond["icd10_code"], strict=True):
        conds.setdefault(pid, []).append((desc, code))
    meds: dict[str, list[tuple[str, str]]] = {}
    med = tables["medications"]
    for pid, name, dose in zip(med["patient_id"], med["medication"], med["dosage"], strict=True):
        meds.setdefault(pid, []).append((name, dose))
    patients = tables["patients"]
    last_rec = last.to_dict("index")
    # Pre-drawn uniforms, a row per patient: far cheaper than a Generator call per decision.
    u = rng.random((len(patients), 20))
    ints = rng.integers(0, 10**9, (len(patients), 4))
    rows = []
    for i, patient in enumerate(patients.itertuples(index=False)):
        ui, pick = u[i], lambda seq, k, ui=u[i]: seq[int(ui[k] * len(seq))]
        pid = patient.patient_id
        enc = last_rec[pid]
        b = NoteBuilder()
        name = f"{patient.first_name} {patient.last_name}"
        # A hospital's name says where the patient was: PHI in the i2b2 sense, labelled as a location.
        b.phi(FACILITIES[enc["facility_id"]], "LOCATION")
        b.text(f" - {ENCOUNTER_TYPES[enc['encounter_type']]} visit note\n")
        b.text("Date of service: ").phi(_fmt_date(enc["admit_time"], pick(_DATE_FORMATS, 0)), "DATE_TIME")
        b.text("\n").text(pick(("Patient: ", "Name: ", "Pt: "), 1)).phi(name, "PERSON")
        b.text(pick(("  MRN: ", "  MRN# ", "  Medical record number "), 2)).phi(patient.mrn, "MEDICAL_RECORD_NUMBER")
        b.text(pick(("  DOB: ", "  Date of birth: ", "  born "), 3)).phi(
            _fmt_date(patient.birth_date, pick(_DATE_FORMATS, 4)), "DATE_TIME").text("\n\n")

        age = _age(patient.birth_date)
        b.text("HPI: ")
        if ui[5] < 0.4:
            b.phi(name, "PERSON")
        elif ui[5] < 0.7:
            b.phi(patient.first_name, "PERSON")
        else:
            b.text("Mr. " if patient.sex == "M" else "Ms. ").phi(patient.last_name, "PERSON")
        b.text(" is a ")
        if age > 89:
            b.phi(str(age), "AGE")
        else:
            b.text(str(age))
        problems = conds.get(pid, [])
        reason = ", ".join(d.lower() for d, _ in problems[:3]) if problems else "a routine examination"
        b.text(f"-year-old {'woman' if patient.sex == 'F' else 'man'} seen for follow-up of {reason}.")
        if len(visits[pid]) > 1:
            b.text(" Last seen on ").phi(_fmt_date(visits[pid][-2], pick(_DATE_FORMATS, 6)), "DATE_TIME").text(".")
        if ui[7] < 0.2:
            relative = pick(p.female_first, 8) if ui[9] < 0.5 else pick(p.male_first, 8)
            b.text(f" Accompanied by {pick(_RELATIONS, 10)} ").phi(f"{relative} {patient.last_name}", "PERSON")
            b.text(".")
        b.text("\n")
        if ui[11] < 0.5:
            b.text("Lives at ").phi(patient.address, "STREET_ADDRESS").text(", ").phi(patient.city, "LOCATION")
            b.text(f", {patient.state} ").phi(patient.zip, "ZIP_CODE").text(".")
        if ui[12] < 0.5:
            b.text(" Can be reached at ").phi(patient.phone, "PHONE_NUMBER").text(" or ").phi(
                patient.email, "EMAIL_ADDRESS").text(".")
        if ui[13] < 0.25:
            b.text(" SSN ").phi(patient.ssn, "US_SSN").text(" verified; insurance member ID ").phi(
                patient.insurance_member_id, "HEALTH_PLAN_ID").text(".")
        b.text("\n\nExam: ").text(_vitals_sentence(values.get(pid, {})))
        if ui[14] < 0.1:
            serial = f"GLM-{1000 + ints[i, 0] % 9000}-{10000 + ints[i, 1] % 90000}"
            b.text(" Home glucometer (serial ").phi(serial, "DEVICE_ID").text(") readings reviewed.")
        if ui[15] < 0.05:
            octets = [11 + ints[i, 2] % 212, ints[i, 2] // 1000 % 256, ints[i, 3] % 256, ints[i, 3] // 1000 % 256]
            b.text(" Portal message received from ").phi(".".join(map(str, octets)), "IP_ADDRESS").text(".")
        if ui[16] < 0.05:
            b.text(" Photos shared via ").phi(f"https://portal.example.org/share/{ints[i, 0]}", "URL").text(".")
        b.text("\n\nAssessment and plan:\n")
        for k, (desc, code) in enumerate(problems or [("General adult medical examination", "Z00.00")], 1):
            b.text(f"{k}. {desc} ({code}).\n")
        for med, dose in meds.get(pid, []):
            b.text(f"Continue {med}, {dose}.\n")
        prov = by_npi[enc["provider_npi"]]
        b.text("\nElectronically signed by Dr. ").phi(f"{prov.first} {prov.last}", "PERSON").text(" (NPI ")
        b.phi(prov.npi, "NPI").text(") on ").phi(
            _fmt_date(enc["discharge_time"], pick(_DATE_FORMATS, 17)), "DATE_TIME").text(".\n")
        rows.append({"note_id": f"NOTE-{enc['encounter_id']}", "patient_id": pid,
                     "encounter_id": enc["encounter_id"], "note_time": enc["discharge_time"], "text": b.build(),
                     "spans": b.spans})
    return pd.DataFrame(rows, columns=["note_id", "patient_id", "encounter_id", "note_time", "text", "spans"])
