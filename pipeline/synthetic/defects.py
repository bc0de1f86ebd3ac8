"""Realistic faults injected into a chunk at a configurable rate, each one recorded in a manifest.

Kinds: ``missing_value``, ``out_of_range``, ``malformed_code``, ``bad_date``, ``duplicate``, and for the
message formats ``truncated`` (a cut-off FHIR bundle) and ``garbled`` (an HL7 segment with broken
delimiters). The manifest lets ingestion tests check that every injected fault is caught and quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from pipeline.synthetic.reference import MEASURES

KINDS = ("missing_value", "out_of_range", "malformed_code", "bad_date", "duplicate", "truncated", "garbled")
KEYS = {"patients": "patient_id", "encounters": "encounter_id", "observations": "observation_id",
        "conditions": "condition_id", "medications": "medication_id"}
_HIGH = {m.loinc: m.high for m in MEASURES.values()}

Mutation = Callable[[pd.DataFrame, int, np.random.Generator], None]


def _set(field: str, value: Any) -> Mutation:
    def apply(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
        frame.at[row, field] = value
    return apply


def _impossible_date(field: str) -> Mutation:
    def apply(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
        year = str(frame.at[row, field])[:4]
        frame.at[row, field] = f"{year}-02-30" if rng.random() < 0.5 else f"31/12/{year}"
    return apply


def _discharge_before_admit(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
    admitted = datetime.fromisoformat(str(frame.at[row, "admit_time"]).rstrip("Z"))
    frame.at[row, "discharge_time"] = (admitted - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _zip_as_number(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
    # A spreadsheet that read the ZIP as a number wrote it back with a decimal part.
    frame.at[row, "zip"] = f"{frame.at[row, 'zip']}.0"


def _malformed_code(field: str, value: str) -> Mutation:
    # A malformed code is malformed wherever the row carries it: the per-system column and code alike.
    def apply(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
        frame.at[row, field] = value
        frame.at[row, "code"] = value
    return apply


def _out_of_range(frame: pd.DataFrame, row: int, rng: np.random.Generator) -> None:
    frame.at[row, "value"] = -1.0 if rng.random() < 0.3 else round(_HIGH[frame.at[row, "loinc_code"]] * 3, 1)


# (kind, field, mutation) choices per table.
_TABULAR: dict[str, list[tuple[str, str, Mutation]]] = {
    "patients": [
        ("missing_value", "patient_id", _set("patient_id", None)),
        ("bad_date", "birth_date", _impossible_date("birth_date")),
        ("malformed_code", "zip", _zip_as_number),
        ("malformed_code", "ssn", _set("ssn", "123-45-678")),
    ],
    "encounters": [
        ("missing_value", "patient_id", _set("patient_id", None)),
        ("bad_date", "discharge_time", _discharge_before_admit),
        ("bad_date", "admit_time", _impossible_date("admit_time")),
        ("malformed_code", "encounter_type", _set("encounter_type", "XYZ")),
    ],
    "observations": [
        ("missing_value", "code", _set("code", None)),
        ("out_of_range", "value", _out_of_range),
        ("malformed_code", "loinc_code", _malformed_code("loinc_code", "2345-X")),
        ("bad_date", "effective_time", _impossible_date("effective_time")),
    ],
    "conditions": [
        ("missing_value", "code", _set("code", None)),
        ("malformed_code", "icd10_code", _malformed_code("icd10_code", "E11.9X")),
        ("malformed_code", "icd10_code", _malformed_code("icd10_code", "XYZ.99")),
        ("bad_date", "onset_date", _impossible_date("onset_date")),
    ],
    "medications": [
        ("missing_value", "kind", _set("kind", None)),
        ("malformed_code", "ndc_code", _set("ndc_code", "1234-56")),
        ("bad_date", "start_date", _impossible_date("start_date")),
    ],
}


def inject_tabular(tables: dict[str, pd.DataFrame], rate: float,
                   rng: np.random.Generator) -> tuple[dict[str, pd.DataFrame], list[dict[str, Any]]]:
    """Corrupt about ``rate`` of the rows of each source table; duplicates are appended as extra rows.

    Returns:
        The corrupted tables (copies) and one manifest entry per fault.
    """
    out = dict(tables)
    manifest: list[dict[str, Any]] = []
    if rate <= 0:
        return out, manifest
    for name, choices in _TABULAR.items():
        frame = tables[name].copy()
        if name == "observations":
            frame["value"] = frame["value"].astype(float)
        hit = np.flatnonzero(rng.random(len(frame)) < rate)
        kinds = rng.integers(0, len(choices) + 1, len(hit))  # the extra choice means "duplicate"
        duplicates = []
        for row, k in zip(hit.tolist(), kinds.tolist(), strict=True):
            key = frame.at[row, KEYS[name]]
            if k == len(choices):
                duplicates.append(row)
                manifest.append({"format": "tabular", "table": name, "record": key, "kind": "duplicate",
                                 "field": KEYS[name]})
                continue
            kind, field, mutate = choices[k]
            mutate(frame, row, rng)
            manifest.append({"format": "tabular", "table": name, "record": key, "kind": kind, "field": field})
        if duplicates:
            frame = pd.concat([frame, frame.iloc[duplicates]], ignore_index=True)
        out[name] = frame
    return out, manifest


def _first(bundle: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind), None)


def inject_fhir(bundles: list[dict[str, Any]], first_line: int, rate: float,
                rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    """Serialise bundles to JSON lines, corrupting about ``rate`` of them."""
    lines: list[str] = []
    manifest: list[dict[str, Any]] = []
    for _i, bundle in enumerate(bundles):
        line = json.dumps(bundle, separators=(",", ":"))
        if rate <= 0 or rng.random() >= rate:
            lines.append(line)
            continue
        patient = _first(bundle, "Patient")
        assert patient is not None
        key = next(ident["value"] for ident in patient["identifier"]
                   if ident["system"] == "urn:medguard:source-patient-id")
        kind = str(rng.choice(["truncated", "bad_date", "missing_value", "malformed_code", "out_of_range",
                               "duplicate"]))
        entry = {"format": "fhir", "table": "patients", "record": key, "line": first_line + len(lines),
                 "kind": kind, "field": "birthDate"}
        observation, condition = _first(bundle, "Observation"), _first(bundle, "Condition")
        if kind == "truncated":
            line = line[: len(line) // 2]
            entry["field"] = None
        elif kind == "bad_date":
            patient["birthDate"] = patient["birthDate"][:4] + "-02-30"
        elif kind == "missing_value" and observation is not None:
            # only the text is left: no coded code, which an observation needs
            observation["code"] = {"text": observation["code"]["coding"][0].get("display", "observation")}
            entry.update(table="observations", field="code")
        elif kind == "malformed_code" and condition is not None:
            condition["code"]["coding"][0]["code"] = "E11.9X"
            entry.update(table="conditions", field="code")
        elif kind == "out_of_range" and observation is not None:
            observation["valueQuantity"]["value"] = _HIGH[observation["code"]["coding"][0]["code"]] * 3
            entry.update(table="observations", field="valueQuantity")
        elif kind == "duplicate":
            lines.append(line)
            entry.update(field=None)
        else:  # no condition/observation to corrupt in this bundle: leave it clean
            lines.append(line)
            continue
        if kind not in ("truncated", "duplicate"):
            line = json.dumps(bundle, separators=(",", ":"))
        lines.append(line)
        manifest.append(entry)
    return lines, manifest


def inject_hl7(messages: list[str], first_index: int, rate: float,
               rng: np.random.Generator) -> tuple[list[str], list[dict[str, Any]]]:
    """Corrupt about ``rate`` of the HL7 messages; returns the messages and the manifest."""
    out: list[str] = []
    manifest: list[dict[str, Any]] = []
    for message in messages:
        if rate <= 0 or rng.random() >= rate:
            out.append(message)
            continue
        segments = message.split("\r")
        control = segments[0].split("|")[9]
        kind = str(rng.choice(["garbled", "bad_date", "missing_value", "duplicate", "malformed_code",
                               "out_of_range"]))
        entry = {"format": "hl7", "record": control, "message": first_index + len(out), "kind": kind}
        pid_at = next(i for i, s in enumerate(segments) if s.startswith("PID|"))
        pid = segments[pid_at].split("|")
        obx_at = next((i for i, s in enumerate(segments) if s.startswith("OBX|")), None)
        if kind == "garbled":
            segments[pid_at] = segments[pid_at].replace("|", "#").replace("^", "")
            entry["field"] = "PID"
        elif kind == "bad_date":
            pid[7] = pid[7][:4] + "0230"
            segments[pid_at] = "|".join(pid)
            entry["field"] = "PID-7"
        elif kind == "duplicate":
            out.append(message)
            entry["field"] = None
        elif obx_at is not None:
            obx = segments[obx_at].split("|")
            if kind == "malformed_code":
                obx[3] = "2345-X" + obx[3][obx[3].index("^"):]
                entry["field"] = "OBX-3"
            elif kind == "missing_value":  # no observation identifier: the observation has no code
                obx[3] = ""
                entry["field"] = "OBX-3"
            else:
                obx[5] = f"{_HIGH[obx[3].split('^')[0]] * 3:g}"
                entry["field"] = "OBX-5"
            segments[obx_at] = "|".join(obx)
        else:  # an ADT message has no OBX to corrupt: leave it clean
            out.append(message)
            continue
        out.append("\r".join(segments))
        manifest.append(entry)
    return out, manifest


def inject_notes(notes: pd.DataFrame, rate: float,
                 rng: np.random.Generator) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Blank the text or drop the patient key of about ``rate`` of the notes, or duplicate them."""
    frame = notes.copy()
    manifest: list[dict[str, Any]] = []
    if rate <= 0:
        return frame, manifest
    duplicates = []
    for row in np.flatnonzero(rng.random(len(frame)) < rate).tolist():
        kind = str(rng.choice(["missing_value", "missing_key", "duplicate"]))
        entry = {"format": "notes", "table": "notes", "record": frame.at[row, "note_id"], "kind": kind}
        if kind == "missing_value":
            frame.at[row, "text"], frame.at[row, "spans"] = "", []
            entry["field"] = "text"
        elif kind == "missing_key":
            frame.at[row, "patient_id"] = None
            entry.update(kind="missing_value", field="patient_id")
        else:
            duplicates.append(row)
            entry["field"] = "note_id"
        manifest.append(entry)
    if duplicates:
        frame = pd.concat([frame, frame.iloc[duplicates]], ignore_index=True)
    return frame, manifest
