"""Streams a synthetic population to source-extract files, chunk by chunk, with bounded memory.

Output layout under ``out_dir`` (what an EHR export would hand over; it is *not* the lake):

* ``<table>.csv`` / ``<table>.parquet`` / ``<table>.jsonl`` for patients, encounters, observations,
  conditions, medications and outcomes (the diagnostic label); coded rows carry ``code`` and ``code_system``
  (short names: ``loinc``, ``icd10cm``, ``rxnorm``) beside the per-system columns, medications their ``kind``;
* ``notes.jsonl``: one clinical note per line, ``{"note_id", "patient_id", "encounter_id", "note_time",
  "text", "spans": [{"start", "end", "label"}]}``;
* ``fhir/bundles-NNNNN.ndjson``: one FHIR R4 Bundle per line, one file per chunk;
* ``hl7/messages-NNNNN.hl7``: HL7 v2 messages, segments separated by CR, one message per line;
* ``defects.jsonl``: every injected fault; ``manifest.json``: what was generated (deterministic, no clock).

The same seed gives byte-identical files: every chunk draws from its own generator seeded by
(seed, chunk index), and nothing depends on the clock or on the machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.synthetic import defects, fhir, hl7v2
from pipeline.synthetic.notes import generate_notes
from pipeline.synthetic.population import TABLES, generate_chunk

FORMATS = ("csv", "parquet", "jsonl", "fhir", "hl7", "notes")
CHUNK_PATIENTS = 5_000  # part of the determinism contract: changing it changes the output

_S = pa.string()
SCHEMAS: dict[str, pa.Schema] = {
    "patients": pa.schema([(c, _S) for c in (
        "patient_id", "mrn", "first_name", "last_name", "sex", "birth_date", "ssn", "address", "city", "state",
        "zip", "phone", "email", "insurance_member_id", "facility_id")] + [("consent_research", pa.bool_())]
        + [(c, _S) for c in ("race", "ethnicity", "birth_sex")]),
    "encounters": pa.schema([(c, _S) for c in (
        "encounter_id", "patient_id", "facility_id", "encounter_type", "admit_time", "discharge_time",
        "provider_npi")]),
    "observations": pa.schema([(c, _S) for c in (
        "observation_id", "patient_id", "encounter_id", "category", "code", "code_system", "loinc_code", "display")]
        + [("value", pa.float64())] + [(c, _S) for c in (
            "value_text", "unit", "reference_range", "interpretation", "effective_time")]),
    "conditions": pa.schema([(c, _S) for c in (
        "condition_id", "patient_id", "encounter_id", "code", "code_system", "icd10_code", "description",
        "onset_date", "clinical_status")]),
    "medications": pa.schema([(c, _S) for c in (
        "medication_id", "patient_id", "encounter_id", "kind", "code", "code_system", "ndc_code", "rxnorm_code",
        "medication", "dosage", "start_date", "status")]),
    "outcomes": pa.schema([("patient_id", _S), ("index_date", _S), ("prevalent_t2d", pa.bool_()),
                           ("t2d_within_1y", pa.bool_())]),
}


@dataclass
class GenerationSummary:
    """What one ``generate`` call produced."""

    out_dir: str
    patients: int
    seed: int
    formats: list[str]
    defect_rate: float
    rows: dict[str, int] = field(default_factory=dict)
    notes: int = 0
    fhir_bundles: int = 0
    hl7_messages: int = 0
    defects: dict[str, int] = field(default_factory=dict)
    prevalent_t2d: int = 0
    label_positive: int = 0
    label_negative: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


class _TableSinks:
    """Per-table streaming writers for the tabular formats, opened on first use."""

    def __init__(self, root: Path, formats: Sequence[str]) -> None:
        self.root = root
        self.formats = [f for f in formats if f in ("csv", "parquet", "jsonl")]
        self._csv: dict[str, pacsv.CSVWriter] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        self._jsonl: dict[str, Any] = {}

    def write(self, name: str, frame: pd.DataFrame) -> None:
        if not self.formats:
            return
        # Columns of the contract the population leaves empty (value_text, race…) are written as nulls, so every
        # extract carries its contract's whole header.
        absent = {c: None for c in SCHEMAS[name].names if c not in frame.columns}
        table = pa.Table.from_pandas(frame.assign(**absent) if absent else frame, schema=SCHEMAS[name],
                                     preserve_index=False)
        if "csv" in self.formats:
            if name not in self._csv:
                self._csv[name] = pacsv.CSVWriter(self.root / f"{name}.csv", SCHEMAS[name])
            self._csv[name].write_table(table)
        if "parquet" in self.formats:
            if name not in self._parquet:
                self._parquet[name] = pq.ParquetWriter(self.root / f"{name}.parquet", SCHEMAS[name],
                                                       compression="zstd")
            self._parquet[name].write_table(table)
        if "jsonl" in self.formats:
            if name not in self._jsonl:
                self._jsonl[name] = (self.root / f"{name}.jsonl").open("w", encoding="utf-8")
            for record in table.to_pylist():
                self._jsonl[name].write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        for writer in [*self._csv.values(), *self._parquet.values(), *self._jsonl.values()]:
            writer.close()


def _validate(out_dir: Path, patients: int, seed: int, formats: Sequence[str], defect_rate: float) -> list[str]:
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= defect_rate <= 0.5:
        raise ValueError(f"defect_rate must be between 0 and 0.5, got {defect_rate}")
    chosen = [f.strip().lower() for f in formats if f.strip()]
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown or not chosen:
        raise ValueError(f"unknown format(s) {unknown or chosen}; choose from {', '.join(FORMATS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise ValueError(f"{out_dir} is not empty and holds no earlier medguard population; refusing to replace it")
    return [f for f in FORMATS if f in chosen]


def generate(out_dir: str | Path, *, patients: int, seed: int, formats: Sequence[str] = FORMATS,
             defect_rate: float = 0.0, progress: Callable[[int], None] | None = None) -> GenerationSummary:
    """Generate ``patients`` synthetic patients into ``out_dir``, replacing an earlier population there.

    Files are written to a temporary sibling directory and moved into place at the end, so a crash leaves
    either the old population or the new one, never half of one.

    Args:
        out_dir: where the source extracts go.
        patients: how many patients (at least 1).
        seed: same seed, same bytes.
        formats: any of :data:`FORMATS`.
        defect_rate: fraction of records (0–0.5) given a realistic fault, recorded in ``defects.jsonl``.
        progress: called with a number of patients finished: after each patient's FHIR bundle (the slow part)
            when FHIR is generated, else after each chunk.

    Raises:
        ValueError: an argument is out of range, or ``out_dir`` holds something other than a population.
    """
    out = Path(out_dir).resolve()
    chosen = _validate(out, patients, seed, formats, defect_rate)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    summary = GenerationSummary(out_dir=str(out), patients=patients, seed=seed, formats=chosen,
                                defect_rate=defect_rate)
    rows: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    try:
        sinks = _TableSinks(work, chosen)
        notes_file = (work / "notes.jsonl").open("w", encoding="utf-8") if "notes" in chosen else None
        defects_file = (work / "defects.jsonl").open("w", encoding="utf-8")
        for sub in ("fhir", "hl7"):
            if sub in chosen:
                (work / sub).mkdir()
        n_chunks = (patients + CHUNK_PATIENTS - 1) // CHUNK_PATIENTS
        for chunk in range(n_chunks):
            start = chunk * CHUNK_PATIENTS
            count = min(CHUNK_PATIENTS, patients - start)
            clean = generate_chunk(seed, chunk, start, count)
            rng = np.random.default_rng([seed, chunk, 0xDEF])
            manifest: list[dict[str, Any]] = []
            dirty, found = defects.inject_tabular(clean, defect_rate, rng)
            manifest += found
            for name in TABLES:
                sinks.write(name, dirty[name])
                rows[name] += len(dirty[name])
            outcomes = clean["outcomes"]
            summary.prevalent_t2d += int(outcomes["prevalent_t2d"].sum())
            summary.label_positive += int((outcomes["t2d_within_1y"] == True).sum())  # noqa: E712
            summary.label_negative += int((outcomes["t2d_within_1y"] == False).sum())  # noqa: E712
            if notes_file is not None:
                notes, found = defects.inject_notes(generate_notes(seed, chunk, clean), defect_rate, rng)
                manifest += found
                for record in notes.to_dict("records"):
                    notes_file.write(json.dumps(record, separators=(",", ":")) + "\n")
                summary.notes += len(notes)
            if "fhir" in chosen:
                lines, found = defects.inject_fhir(fhir.bundles(seed, chunk, clean, progress=progress),
                                                   summary.fhir_bundles, defect_rate, rng)
                manifest += found
                (work / "fhir" / f"bundles-{chunk:05d}.ndjson").write_text("\n".join(lines) + "\n")
                summary.fhir_bundles += len(lines)
            if "hl7" in chosen:
                messages, found = defects.inject_hl7(hl7v2.messages(clean), summary.hl7_messages, defect_rate, rng)
                manifest += found
                with (work / "hl7" / f"messages-{chunk:05d}.hl7").open("w", encoding="utf-8", newline="") as fh:
                    fh.write("".join(m + "\n" for m in messages))
                summary.hl7_messages += len(messages)
            for entry in manifest:
                defects_file.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
                faults[entry["kind"]] += 1
            if progress is not None and "fhir" not in chosen:  # FHIR bundles reported each patient as it went
                progress(count)
        sinks.close()
        for handle in (notes_file, defects_file):
            if handle is not None:
                handle.close()
        summary.rows = {name: rows[name] for name in TABLES if sinks.formats}
        summary.defects = dict(sorted(faults.items()))
        summary.files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        summary.files.append("manifest.json")
        summary.files.sort()
        (work / "manifest.json").write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return summary
