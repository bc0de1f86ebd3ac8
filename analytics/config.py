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

Coded events find their code in the column a source prefers (``icd10_code`` for diagnoses, ``rxnorm_code`` for
prescriptions, ``loinc_code`` for observations) and, when a row has none, in its ``code``/``code_system`` pair: a
row coded in the wanted system gives its code as it is, a row in another system gives what a crosswalk maps it to
(``analytics/crosswalk/snomed_to_icd10cm.yaml`` for SNOMED CT diagnoses). Override per source::

    sources:
      events:
        - {table: conditions, code: icd10_code, time: onset_date, prefix: dx,
           fallback: {target: icd10cm, crosswalks: [snomed_to_icd10cm.yaml, /etc/medguard/local_dx.yaml]}}
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from pipeline.errors import SettingsError
from pipeline.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrosswalkEntry(_Strict):
    """One mapped code: its target, the source system's display of it, and where the mapping comes from."""

    to: str = Field(min_length=1)
    name: str
    source: str = Field(min_length=1)


class Crosswalk(_Strict):
    """A code-system crosswalk file (``analytics/crosswalk/*.yaml``): source codes to target codes, one per line."""

    source_system: str = Field(min_length=1)
    target_system: str = Field(min_length=1)
    entries: dict[str, CrosswalkEntry]

    @field_validator("entries", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted SNOMED code as an integer; a code is text.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    def pairs(self) -> dict[str, str]:
        """``{"<source system>|<code>": target}``, the form feature building looks codes up in."""
        return {f"{self.source_system}|{code}": entry.to for code, entry in self.entries.items()}


@lru_cache(maxsize=32)
def load_crosswalk(name: str) -> Crosswalk:
    """A crosswalk by file name (shipped under ``analytics/crosswalk/``) or by path.

    Raises:
        SettingsError: the file is missing, not YAML, or not a crosswalk (the problem named).
    """
    shipped = resources.files("analytics").joinpath("crosswalk", name)
    path = Path(name) if "/" in name or Path(name).is_absolute() else None
    try:
        text = path.read_text("utf-8") if path is not None else shipped.read_text("utf-8")
        return Crosswalk(**(yaml.safe_load(text) or {}))
    except (OSError, yaml.YAMLError, TypeError) as exc:
        raise SettingsError(f"crosswalk {name} is not readable YAML: {exc}") from exc
    except PydanticValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid crosswalk {name}: {problems}") from exc


class CodeFallback(_Strict):
    """Where an event row with no code in the preferred column finds one: its ``code`` and ``code_system``.

    A row whose system is ``target`` gives its code as it is; a row in another system gives what one of the
    ``crosswalks`` maps its code to (the first that knows it), or nothing. Crosswalks are checked at load.
    """

    code: str = "code"
    system: str = "code_system"
    target: str
    crosswalks: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _crosswalks_load(self) -> CodeFallback:
        for name in self.crosswalks:
            walk = load_crosswalk(name)
            if walk.target_system != self.target:
                raise ValueError(f"crosswalk {name} maps to {walk.target_system}, not {self.target}")
        return self

    def pairs(self) -> dict[str, str]:
        """Every crosswalk's ``{"<system>|<code>": target}``; an earlier crosswalk wins a code two of them map."""
        out: dict[str, str] = {}
        for name in reversed(self.crosswalks):
            out.update(load_crosswalk(name).pairs())
        return out


class EventSource(_Strict):
    """A long table of coded events per patient (labs, diagnoses, prescriptions) turned into wide features.

    With ``value`` set, each code gives ``<prefix>_<code>_last``, ``_mean`` and ``_trend`` (per year) over the
    look-back window before the index date; without it, each code gives a 0/1 indicator ``<prefix>_<code>``.
    ``fallback`` says where a row with no ``code`` value finds its code (see :class:`CodeFallback`).
    """

    table: str
    code: str
    time: str | None = None
    value: str | None = None
    prefix: str
    fallback: CodeFallback | None = None


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
        EventSource(table="observations", code="loinc_code", value="value", time="effective_time", prefix="obs",
                    fallback=CodeFallback(target="loinc")),
        EventSource(table="conditions", code="icd10_code", time="onset_date", prefix="dx",
                    fallback=CodeFallback(target="icd10cm", crosswalks=("snomed_to_icd10cm.yaml",))),
        EventSource(table="medications", code="rxnorm_code", time="start_date", prefix="rx",
                    fallback=CodeFallback(target="rxnorm")),
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
