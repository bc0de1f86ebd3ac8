"""HL7 v2 ADT^A01 and ORU^R01 messages (one per line, segments separated by CR) into the conformed tables.

Messages are parsed with ``python-hl7`` (the ``hl7`` package). Before mapping, the segment sequence is checked
against the message structure of HL7 v2.5.1 (ADT_A01, ORU_R01, simplified to the segments they may carry), so a
message with segments in the wrong order, a garbled segment (no valid segment id) or an unsupported type is
one rejected ``messages`` record (``message N (line L)``) with the reason — never a partial load. PID maps to
patients, PV1 to encounters, OBX (in ORU) to observations; HL7 escape sequences are decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingestion.sources._base import Chunker, Rejected, SourceChunk, decode_line, iter_lines, lossy

__all__ = ["MESSAGES", "read_hl7"]

MESSAGES = "messages"
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
# Segment grammars (one token per segment, each followed by a space) after the HL7 v2.5.1 abstract syntax.
_AFTER_PV1 = "(PV2 )?(ROL |DB1 |OBX |AL1 |DG1 |DRG |PR1 |GT1 |IN1 |IN2 |IN3 |ACC |UB1 |UB2 |PDA |NTE )*"
_ORDER = "(ORC )?OBR (NTE )*(TQ1 )*(CTD )?(OBX (NTE )*)*(FT1 )*(CTI )*(SPM (OBX )*)*"
_STRUCTURES = {
    "ADT^A01": re.compile(f"MSH (SFT )*EVN PID (PD1 )?(ROL )*(NK1 )*PV1 {_AFTER_PV1}"),
    "ORU^R01": re.compile(f"MSH (SFT )*((PID (PD1 )?(NTE )*(NK1 )*(PV1 (PV2 )?)?)?{_ORDER}({_ORDER})*)+(DSC )?"),
}
# LOINC codes of the FHIR vital-signs profile; other OBX codes are laboratory results.
_VITALS = {"85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4", "29463-7",
           "39156-5", "85354-9", "8480-6", "8462-4"}
_PATIENT_CLASS = {"O": "AMB", "E": "EMER", "I": "IMP"}


def hl7_files(path: Path) -> list[Path]:
    """The message files under ``path`` (a file, or a directory of ``*.hl7``), in name order."""
    return sorted(path.glob("*.hl7")) if path.is_dir() else [path]


def read_hl7(path: Path, *, chunk_rows: int, max_record_bytes: int) -> Iterator[SourceChunk]:
    """Chunks of mapped records from the messages under ``path``."""
    import hl7

    chunks = Chunker(chunk_rows)
    index = 0
    for file in hl7_files(path):
        with file.open("rb") as handle:
            for number, raw, too_long in iter_lines(handle, max_record_bytes):
                if not raw.strip(b"\r\n\x0b\x1c "):
                    continue
                index += 1
                chunk = chunks.chunk
                chunk.units[MESSAGES] = chunk.units.get(MESSAGES, 0) + 1
                position = f"message {index} ({file.name} line {number})"
                _message(chunk, raw, too_long, position, max_record_bytes, hl7)
                yield from chunks.full()
    yield from chunks.rest()


def _reject(chunk: SourceChunk, position: str, rule: str, reason: str, payload: str, **extra: Any) -> None:
    chunk.rejected.append(Rejected(MESSAGES, position, rule, f"{position} {reason}", payload, **extra))


def _message(chunk: SourceChunk, raw: bytes, too_long: bool, position: str, max_bytes: int, hl7: Any) -> None:
    if too_long:
        _reject(chunk, position, "record:size", f"is longer than the {max_bytes:,}-byte record limit", lossy(raw),
                payload_truncated=True)
        return
    text, problem = decode_line(raw)
    if problem:
        _reject(chunk, position, "record:encoding", problem, lossy(raw))
        return
    text = text.strip("\x0b\x1c\n").rstrip("\r")
    if not text.startswith("MSH|"):
        _reject(chunk, position, "hl7:structure", "does not start with an MSH segment", text)
        return
    segments = [s for s in text.split("\r") if s]
    for number, segment in enumerate(segments, start=1):
        if not _SEGMENT_ID.match(segment[:3]) or (len(segment) > 3 and segment[3] != "|"):
            _reject(chunk, position, "hl7:garbled", f"segment {number} is garbled (no valid segment id and "
                    "field separator)", text)
            return
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises plain exceptions on malformed input
        _reject(chunk, position, "hl7:parse", f"is not parseable HL7 ({type(exc).__name__})", text)
        return
    msh = message.segment("MSH")
    kind = "^".join(_field(msh, 9, comp=c) for c in (0, 1))
    structure = _STRUCTURES.get(kind)
    if structure is None:
        _reject(chunk, position, "hl7:type", f"has message type {kind[:20]!r}; only ADT^A01 and ORU^R01 are mapped",
                text)
        return
    sequence = "".join(s[:3] + " " for s in segments)
    if not structure.fullmatch(sequence):
        _reject(chunk, position, "hl7:segment_order",
                f"has segments {sequence.split()} out of the {kind} structure (wrong segment order)", text)
        return
    _map(chunk, message, kind, position)


def _field(segment: Any, field: int, rep: int = 0, comp: int = 0) -> str:
    try:
        value = segment[field]
        if isinstance(value, str):
            return value if rep == comp == 0 else ""
        value = value[rep]
        if isinstance(value, str):
            return value if comp == 0 else ""
        return str(value[comp])
    except IndexError:
        return ""


def _text(message: Any, segment: Any, field: int, rep: int = 0, comp: int = 0) -> str | None:
    value = _field(segment, field, rep, comp)
    return message.unescape(value) if value else None


def _repetitions(segment: Any, field: int) -> int:
    try:
        value = segment[field]
    except IndexError:
        return 0
    return 1 if isinstance(value, str) else len(value)


def _date(ts: str | None) -> str | None:
    # HL7 DT/TS (YYYYMMDD...) to ISO; validity of the calendar date is the contract's job.
    if not ts:
        return None
    return f"{ts[:4]}-{ts[4:6]}-{ts[6:8]}" if len(ts) >= 8 else ts


def _timestamp(ts: str | None) -> str | None:
    if not ts:
        return None
    if len(ts) < 14:
        return ts
    return f"{ts[:4]}-{ts[4:6]}-{ts[6:8]}T{ts[8:10]}:{ts[10:12]}:{ts[12:14]}Z"


def _patient(message: Any, pid: Any) -> dict[str, Any]:
    ids: dict[str, tuple[str, str]] = {}
    for rep in range(_repetitions(pid, 3)):
        ids[_field(pid, 3, rep, 4)] = (message.unescape(_field(pid, 3, rep, 0)), _field(pid, 3, rep, 3))
    phone = email = None
    for rep in range(_repetitions(pid, 13)):
        if _field(pid, 13, rep, 2) == "Internet" or _field(pid, 13, rep, 1) == "NET":
            email = _text(message, pid, 13, rep, 3)
        elif phone is None and _field(pid, 13, rep, 6):
            area, number = _field(pid, 13, rep, 5), _field(pid, 13, rep, 6)
            phone = f"{area}-{number[:3]}-{number[3:]}" if area else number
    mrn, facility = ids.get("MR", (None, None))
    return {
        "patient_id": ids.get("PI", (None, None))[0] or mrn, "mrn": mrn,
        "first_name": _text(message, pid, 5, 0, 1), "last_name": _text(message, pid, 5, 0, 0),
        "sex": _field(pid, 8) or None, "birth_date": _date(_field(pid, 7)),
        "ssn": _text(message, pid, 19), "address": _text(message, pid, 11, 0, 0),
        "city": _text(message, pid, 11, 0, 2), "state": _text(message, pid, 11, 0, 3),
        "zip": _text(message, pid, 11, 0, 4), "phone": phone, "email": email,
        "insurance_member_id": _text(message, pid, 18), "facility_id": facility or None, "consent_research": None,
    }


def _encounter(message: Any, pv1: Any, patient_id: str | None) -> dict[str, Any]:
    patient_class = _field(pv1, 2)
    return {
        "encounter_id": _text(message, pv1, 19), "patient_id": patient_id,
        "facility_id": _field(pv1, 3, 0, 3) or None,
        "encounter_type": _field(pv1, 3, 0, 0) or _PATIENT_CLASS.get(patient_class),
        "admit_time": _timestamp(_field(pv1, 44)), "discharge_time": _timestamp(_field(pv1, 45)),
        "provider_npi": _field(pv1, 7, 0, 0) or None,
    }


def _observation(message: Any, obx: Any, patient_id: str | None, encounter_id: str | None) -> dict[str, Any]:
    code = _field(obx, 3, 0, 0) or None
    raw_value = _field(obx, 5)
    try:
        value: Any = float(raw_value) if raw_value else None
    except ValueError:
        value = raw_value  # the contract's type check rejects it, naming the field
    return {
        "observation_id": f"{encounter_id}-{code}" if encounter_id and code else None,
        "patient_id": patient_id, "encounter_id": encounter_id,
        "category": "vital-signs" if code in _VITALS else "laboratory", "loinc_code": code,
        "display": _text(message, obx, 3, 0, 1), "value": value, "unit": _text(message, obx, 6),
        "effective_time": _timestamp(_field(obx, 14)),
    }


def _map(chunk: SourceChunk, message: Any, kind: str, position: str) -> None:
    patient_id = encounter_id = None
    for number, segment in enumerate(message, start=1):
        name = str(segment[0])
        where = f"{position} segment {number} ({name})"
        if name == "PID":
            row = _patient(message, segment)
            patient_id = row["patient_id"]
            chunk.rows("patients").add(row, where)
        elif name == "PV1":
            row = _encounter(message, segment, patient_id)
            encounter_id = row["encounter_id"]
            chunk.rows("encounters").add(row, where)
        elif name == "OBX" and kind == "ORU^R01":
            chunk.rows("observations").add(_observation(message, segment, patient_id, encounter_id), where)
