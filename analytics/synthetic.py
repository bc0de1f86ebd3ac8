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

from pipeline.lake import CommitInfo, Lake, Zone
from pipeline.synthetic import population

_DIRECT = "direct_identifier"
CLASSES: dict[str, dict[str, str]] = {
    "patients": {"patient_pseudonym": "quasi_identifier", "sex": "quasi_identifier", "age_band": "quasi_identifier",
                 "zip3": "quasi_identifier", "facility_id": "non_sensitive", "consent_research": "non_sensitive"},
    "observations": {"patient_pseudonym": "quasi_identifier", "category": "non_sensitive",
                     "loinc_code": "sensitive", "display": "sensitive", "value": "sensitive",
                     "unit": "non_sensitive", "effective_time": "quasi_identifier"},
    "conditions": {"patient_pseudonym": "quasi_identifier", "icd10_code": "sensitive", "description": "sensitive",
                   "onset_date": "quasi_identifier", "clinical_status": "sensitive"},
    "medications": {"patient_pseudonym": "quasi_identifier", "ndc_code": "sensitive", "rxnorm_code": "sensitive",
                    "medication": "sensitive", "dosage": "sensitive", "start_date": "quasi_identifier",
                    "status": "sensitive"},
    "outcomes": {"patient_pseudonym": "quasi_identifier", "index_date": "quasi_identifier",
                 "prevalent_t2d": "sensitive", "t2d_within_1y": "sensitive"},
}


@dataclass
class SyntheticDeidentified:
    """The tables, their column classes, and the generator's true risk per pseudonym (the ceiling)."""

    tables: dict[str, pd.DataFrame]
    classes: dict[str, dict[str, str]]
    risk: pd.Series


def _pseudonym(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "ps1_test0000_" + hashlib.sha256(f"synthetic:{v}".encode()).hexdigest()[:32])


def _age_band(birth: pd.Series, index: np.datetime64) -> pd.Series:
    age = ((index - pd.to_datetime(birth).values.astype("datetime64[D]")).astype(int) / 365.25).astype(int)
    lower = np.minimum(age // 5 * 5, 90)
    return pd.Series([("90+" if lo >= 90 else f"{lo}-{lo + 4}") for lo in lower], index=birth.index)


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
