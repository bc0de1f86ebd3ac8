"""HL7 v2.5.1 export: an ADT^A01 (admission) and an ORU^R01 (results) message per encounter.

Segments end with a carriage return, as the standard requires; each message ends with a line feed so that a
file holds one message per line. Field values are escaped with HL7's escape sequences.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

SENDING_APP = "MEDGUARD-SYN"
VERSION = "2.5.1"
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(value: Any) -> str:
    """Escape HL7 delimiters inside a field value."""
    text = "" if value is None else str(value)
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _ts(iso: str) -> str:
    return iso.replace("-", "").replace(":", "").replace("T", "").rstrip("Z")


def _pid(patient: dict[str, Any]) -> str:
    phone = patient["phone"].replace("-", "")
    fields = [
        "PID", "1", "",
        f"{escape(patient['mrn'])}^^^{patient['facility_id']}^MR~{escape(patient['patient_id'])}^^^MEDGUARD^PI",
        "", f"{escape(patient['last_name'])}^{escape(patient['first_name'])}", "",
        _ts(patient["birth_date"]), patient["sex"], "", "",
        f"{escape(patient['address'])}^^{escape(patient['city'])}^{patient['state']}^{patient['zip']}^USA",
        "", f"^PRN^PH^^1^{phone[:3]}^{phone[3:]}~^NET^Internet^{escape(patient['email'])}", "", "", "", "",
        escape(patient["insurance_member_id"]), escape(patient["ssn"]),
    ]
    return "|".join(fields)


def _pv1(enc: dict[str, Any]) -> str:
    patient_class = {"AMB": "O", "EMER": "E", "IMP": "I"}[enc["encounter_type"]]
    fields = ["PV1", "1", patient_class, f"{enc['encounter_type']}^^^{enc['facility_id']}"]
    fields += [""] * 3 + [f"{enc['provider_npi']}^^^^^^^^NPI"] + [""] * 11
    fields += [escape(enc["encounter_id"])] + [""] * 24 + [_ts(enc["admit_time"]), _ts(enc["discharge_time"])]
    return "|".join(fields)


def _msh(kind: str, facility: str, when: str, control_id: str) -> str:
    structure = {"ADT^A01": "ADT^A01^ADT_A01", "ORU^R01": "ORU^R01^ORU_R01"}[kind]
    return "|".join(["MSH", "^~\\&", SENDING_APP, facility, "MEDGUARD", "MEDGUARD", _ts(when), "", structure,
                     control_id, "P", VERSION])


def encounter_messages(patient: dict[str, Any], enc: dict[str, Any], observations: list[dict[str, Any]]) -> list[str]:
    """The ADT^A01 and (when there are results) ORU^R01 messages of one encounter, segments joined by CR."""
    pid, pv1 = _pid(patient), _pv1(enc)
    adt = [_msh("ADT^A01", enc["facility_id"], enc["admit_time"], f"A{enc['encounter_id']}"),
           f"EVN|A01|{_ts(enc['admit_time'])}", pid, pv1]
    messages = ["\r".join(adt) + "\r"]
    if observations:
        oru = [_msh("ORU^R01", enc["facility_id"], enc["discharge_time"], f"R{enc['encounter_id']}"), pid, pv1,
               f"OBR|1|{escape(enc['encounter_id'])}||24323-8^Comprehensive metabolic panel^LN|||"
               f"{_ts(enc['admit_time'])}"]
        for i, obs in enumerate(observations, 1):
            oru.append("|".join([
                "OBX", str(i), "NM", f"{obs['loinc_code']}^{escape(obs['display'])}^LN", "", f"{obs['value']:g}",
                escape(obs["unit"]), "", "", "", "", "F", "", "", _ts(obs["effective_time"]),
            ]))
        messages.append("\r".join(oru) + "\r")
    return messages


def messages(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Every message of the chunk, in patient and encounter order."""
    patients = {p["patient_id"]: p for p in tables["patients"].to_dict("records")}
    by_encounter: dict[str, list[dict[str, Any]]] = {}
    for obs in tables["observations"].to_dict("records"):
        by_encounter.setdefault(obs["encounter_id"], []).append(obs)
    result = []
    for enc in tables["encounters"].to_dict("records"):
        patient = patients.get(enc["patient_id"])
        if patient is not None:
            result.extend(encounter_messages(patient, enc, by_encounter.get(enc["encounter_id"], [])))
    return result
