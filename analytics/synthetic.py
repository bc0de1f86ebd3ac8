"""Deidentified-shaped tables from the synthetic generator, for tests, benchmarks and the demo's fallback.

Until de-identification publishes real tables, this produces what the data contract says the deidentified
zone holds: ``patient_pseudonym`` instead of identifiers, ``age_band``, ``zip3``, dates shifted per patient
(intervals kept). It also returns the generator's own risk (the documented logistic model's probability per
patient) so tests can compare a trained model with that ceiling. Synthetic data only; never applied to records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.catalog import ColumnClass, load_catalog
from pipeline.lake import CommitInfo, Lake, Zone
from pipeline.synthetic import population
from storage_security.deid.operators import age_bands

# The columns of each synthetic table. Their classes are the column catalog's, as de-identification publishes them.
_COLUMNS = {
    "patients": ("patient_pseudonym", "sex", "age_band", "zip3", "facility_id", "consent_research"),
    "observations": ("patient_pseudonym", "category", "loinc_code", "display", "value", "unit", "effective_time"),
    "conditions": ("patient_pseudonym", "icd10_code", "description", "onset_date", "clinical_status"),
    "medications": ("patient_pseudonym", "ndc_code", "rxnorm_code", "medication", "dosage", "start_date", "status"),
    "outcomes": ("patient_pseudonym", "index_date", "prevalent_t2d", "t2d_within_1y"),
}


def _published_class(table: str, column: str) -> ColumnClass:
    # index_date is kept date-shifted here, where de-identification publishes its year: it keeps its raw class.
    catalog = load_catalog()
    found = catalog.published(table).get(column) or catalog.column(table, column)
    if found is None:
        raise KeyError(f"{table}.{column} is not in the column catalog")
    return found.klass


CLASSES: dict[str, dict[str, ColumnClass]] = {
    table: {column: _published_class(table, column) for column in columns} for table, columns in _COLUMNS.items()
}


@dataclass
class SyntheticDeidentified:
    """The tables, their column classes, and the generator's true risk per pseudonym (the ceiling)."""

    tables: dict[str, pd.DataFrame]
    classes: dict[str, dict[str, ColumnClass]]
    risk: pd.Series


def _pseudonym(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "ps1_test0000_" + hashlib.sha256(f"synthetic:{v}".encode()).hexdigest()[:32])


def _age_band(birth: pd.Series, index: np.datetime64) -> pd.Series:
    age = ((index - pd.to_datetime(birth).values.astype("datetime64[D]")).astype(int) / 365.25).astype(int)
    return pd.Series(age_bands(pa.array(age)).to_numpy(zero_copy_only=False), index=birth.index)


def _shift(values: pd.Series, days: pd.Series, with_time: bool) -> pd.Series:
    shifted = pd.to_datetime(values, utc=True) + pd.to_timedelta(days, unit="D")
    return shifted.dt.strftime("%Y-%m-%dT%H:%M:%SZ" if with_time else "%Y-%m-%d")


def synthetic_deidentified(patients: int, seed: int, *, chunk: int = 0) -> SyntheticDeidentified:
    """Generate ``patients`` patients with ``seed`` and shape them as the deidentified zone would hold them."""
    captured: list[np.ndarray] = []
    real_sigmoid = population._sigmoid

    def capture(z: np.ndarray) -> np.ndarray:
        captured.append(np.asarray(z, dtype=float))
        return real_sigmoid(z)

    # The generator draws each label from the logistic model exactly once per chunk; observe its probability.
    population._sigmoid = capture
    try:
        raw = population.generate_chunk(seed, chunk, chunk * patients, patients)
    finally:
        population._sigmoid = real_sigmoid
    pats = raw["patients"]
    pseud = _pseudonym(pats["patient_id"])
    by_id = dict(zip(pats["patient_id"], pseud, strict=True))
    rng = np.random.default_rng([seed, 0x5A1F])
    shift_days = pd.Series(rng.integers(-365, 365, len(pats)), index=pats["patient_id"].values)
    tables: dict[str, pd.DataFrame] = {}
    index = population.INDEX_DATE
    tables["patients"] = pd.DataFrame({
        "patient_pseudonym": pseud, "sex": pats["sex"], "age_band": _age_band(pats["birth_date"], index),
        "zip3": pats["zip"].str[:3], "facility_id": pats["facility_id"], "consent_research": pats["consent_research"],
    })
    specs = {"observations": ("effective_time", True, ["category", "loinc_code", "display", "value", "unit"]),
             "conditions": ("onset_date", False, ["icd10_code", "description", "clinical_status"]),
             "medications": ("start_date", False, ["ndc_code", "rxnorm_code", "medication", "dosage", "status"])}
    for name, (time_col, with_time, keep) in specs.items():
        frame = raw[name]
        days = frame["patient_id"].map(shift_days)
        tables[name] = pd.DataFrame({"patient_pseudonym": frame["patient_id"].map(by_id), **{c: frame[c] for c in keep},
                                     time_col: _shift(frame[time_col], days, with_time)})
    out = raw["outcomes"]
    tables["outcomes"] = pd.DataFrame({
        "patient_pseudonym": out["patient_id"].map(by_id),
        "index_date": _shift(out["index_date"], out["patient_id"].map(shift_days), False),
        "prevalent_t2d": out["prevalent_t2d"], "t2d_within_1y": out["t2d_within_1y"],
    })
    risk = pd.Series(real_sigmoid(captured[0]), index=pseud.values, name="risk")
    return SyntheticDeidentified(tables, {k: dict(v) for k, v in CLASSES.items()}, risk)


def publish(lake: Lake, data: SyntheticDeidentified) -> dict[str, int]:
    """Write the tables to ``lake``'s deidentified zone; returns each table's version."""
    versions = {}
    for name, frame in data.tables.items():
        versions[name] = lake.overwrite(Zone.DEIDENTIFIED, name, frame,
                                        commit=CommitInfo(principal="svc:synthetic", purpose="test fixture"))
    return versions
