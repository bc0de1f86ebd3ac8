"""Raw-zone tables as the ingestion contract describes them, built from generator output (tests and bench).

Same columns and types as the generator, plus ``patient_pseudonym`` and provenance; PHI columns sealed through
ProtectedLake with ``row_key="_record_hash"`` and ``patient_key="patient_pseudonym"``.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.lake import CommitInfo
from storage_security.protected import Protection

PHI = {
    "patients": ("mrn", "first_name", "last_name", "birth_date", "ssn", "address", "city", "zip", "phone", "email",
                 "insurance_member_id", "patient_id"),
    "encounters": ("patient_id", "admit_time", "discharge_time"),
    "observations": ("patient_id", "effective_time"),
    "conditions": ("patient_id", "onset_date"),
    "medications": ("patient_id", "start_date"),
    "outcomes": ("patient_id",),
    "notes": ("patient_id", "text"),
}


def read_frames(source: Path, tables=tuple(PHI)) -> dict[str, pd.DataFrame]:
    """The generator's tables under ``source`` as plaintext frames (notes' spans as JSON text)."""
    frames = {}
    for table in tables:
        if table == "notes":
            frame = pd.read_json(source / "notes.jsonl", lines=True, dtype=False)
            frame["spans"] = frame["spans"].map(json.dumps)
        else:
            frame = pd.read_parquet(source / f"{table}.parquet")
        frames[table] = frame
    return frames


def land(plake, table: str, frame: pd.DataFrame, batch: str) -> None:
    """One ingestion batch of ``table`` into raw, as the ingestion contract lays it out."""
    arrow = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    hashes = [hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()
              for r in frame.to_dict("records")]
    arrow = (arrow.append_column("patient_pseudonym",
                                 plake.pseudonymizer("patient").pseudonymize(arrow.column("patient_id")))
             .append_column("_source", pa.array([f"{table}.parquet"] * len(frame)))
             .append_column("_batch_id", pa.array([batch] * len(frame)))
             .append_column("_record_hash", pa.array(hashes)))
    protection = Protection(encrypted=PHI[table], row_key="_record_hash", patient_key="patient_pseudonym")
    plake.append("raw", table, arrow, protection, commit=CommitInfo(principal="svc:ingest", purpose="ingest"))


def load_raw(plake, source: Path, tables=tuple(PHI), *, extra_columns: dict[str, dict[str, list]] | None = None):
    """Write the generator's tables under ``source`` into the raw zone; returns the plaintext frames."""
    frames = read_frames(source, tables)
    for table, frame in frames.items():
        for column, values in (extra_columns or {}).get(table, {}).items():
            frame[column] = values[: len(frame)]
        land(plake, table, frame, "b-test")
    return frames


@cache
def shared_detector():
    """One medguard PhiDetector per test session (a spaCy model load takes seconds)."""
    from storage_security.deid.detection import PhiDetector

    return PhiDetector("medguard")


@cache
def generated(patients: int = 60, seed: int = 11) -> Path:
    """A generated population (no defects) in a per-session temporary folder."""
    import tempfile

    from pipeline.synthetic import generate

    out = Path(tempfile.mkdtemp(prefix="medguard-deid-")) / f"p{patients}-s{seed}"
    generate(out, patients=patients, seed=seed, formats=["parquet", "notes"], defect_rate=0.0)
    return out
