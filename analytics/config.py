"""The training configuration of one dataset: which features, which label value is positive, how to train.

A new dataset needs a data contract (ingestion) and one of these YAML files, never code. Every field has a
default, so ``medguard train --table T --label L`` works without a file; defaults for the targets come from
``settings.analytics``. Unknown keys are refused at load time, naming the key.

Example (``t2d.yaml``)::

    drop: [prevalent_t2d]               # columns or feature names never to use
    positive_class: true
    target_sensitivity: 0.85
    monotone: {obs_4548_4_last: 1, obs_2085_9_last: -1}   # clinically justified directions
    attack_bounds: {obs_4548_4_last: 0.3}                  # plausible per-feature perturbation (absolute)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from pipeline.errors import SettingsError
from pipeline.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSource(_Strict):
    """A long table of coded events per patient (labs, diagnoses, prescriptions) turned into wide features.

    With ``value`` set, each code gives ``<prefix>_<code>_last``, ``_mean`` and ``_trend`` (per year) over the
    look-back window before the index date; without it, each code gives a 0/1 indicator ``<prefix>_<code>``.
    """

    table: str
    code: str
    time: str | None = None
    value: str | None = None
    prefix: str


class PatientSource(_Strict):
    """The per-patient table: categorical columns become one-hot features, banded ones an ordinal number."""

    table: str = "patients"
    categorical: tuple[str, ...] = ("sex",)
    ordinal_bands: tuple[str, ...] = ("age_band",)


class Sources(_Strict):
    """Where per-patient features come from when the training table is keyed by patient."""

    key: str = "patient_pseudonym"
    index_time: str | None = "index_date"
    lookback_days: int = Field(default=730, ge=1)
    join: Literal["auto", "always", "never"] = "auto"
    patients: PatientSource | None = PatientSource()
    events: tuple[EventSource, ...] = (
        EventSource(table="observations", code="loinc_code", value="value", time="effective_time", prefix="obs"),
        EventSource(table="conditions", code="icd10_code", time="onset_date", prefix="dx"),
        EventSource(table="medications", code="rxnorm_code", time="start_date", prefix="rx"),
    )
    min_code_patients: int = Field(default=5, ge=1)
    max_codes_per_source: int = Field(default=60, ge=1)
    max_levels: int = Field(default=20, ge=2)


class CvConfig(_Strict):
    """Hyper-parameter search: a grid tried in order, group k-fold by patient, stopped at the time budget."""

    folds: int = Field(default=3, ge=2, le=10)
    budget_seconds: float | None = None
    grid: tuple[dict[str, Any], ...] = (
        {"max_depth": 3, "learning_rate": 0.1},
        {"max_depth": 4, "learning_rate": 0.05},
        {"max_depth": 6, "learning_rate": 0.05},
    )


class TrainConfig(_Strict):
    """Everything about training one dataset; see the module docstring for an example."""

    features: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    positive_class: Any = None
    target_sensitivity: float | None = Field(default=None, gt=0.0, lt=1.0)
    calibration: Literal["platt", "isotonic"] = "platt"
    n_estimators: int = Field(default=200, ge=1, le=5000)
    num_workers: int = Field(default=1, ge=1, le=64)
    seed: int = 7
    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    calibration_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    cv: CvConfig = CvConfig()
    sources: Sources = Sources()
    subgroups: tuple[str, ...] = ("sex", "age_band")
    monotone: dict[str, Literal[-1, 1]] = Field(default_factory=dict)
    attack_bounds: dict[str, float] = Field(default_factory=dict)
    attack_epsilon: float = Field(default=0.25, gt=0.0, le=2.0)
    attack_samples: int = Field(default=100, ge=1)
    source_trust: dict[str, float] = Field(default_factory=dict)


def load_train_config(path: str | Path | None, settings: Settings, **overrides: Any) -> TrainConfig:
    """Read a training config file (or the defaults), filling targets from ``settings.analytics``.

    Raises:
        SettingsError: the file is missing, not YAML, or holds an unknown or invalid key (named).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"training config {path} is not readable YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"training config {path} must be a mapping, not {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides)
    data.setdefault("target_sensitivity", settings.analytics.target_sensitivity)
    data.setdefault("cv", {})
    if isinstance(data["cv"], dict):
        data["cv"] = {"budget_seconds": settings.analytics.cv_budget_seconds, **data["cv"]}
    data.setdefault("num_workers", settings.analytics.num_workers)
    try:
        return TrainConfig(**data)
    except PydanticValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid training config {path or '(defaults)'}: {problems}") from exc
