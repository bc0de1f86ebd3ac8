"""Online diagnosis: one encounter's payload checked against the current model's feature contract, then scored.

The model is the one batch diagnosis uses (``ModelRegistry.load`` of the most recently trained model: its
*current*, promoted version), verified once per version and kept in memory. Each call re-reads only the stat of
the models' signed ``index.json`` files; a promotion or rollback changes it, and the next call verifies and loads
the new current version, without a restart.

A payload (:class:`EncounterIn`) becomes the model's features the way :mod:`analytics.features` builds them from
the lake: per LOINC code the ``last`` value (by ``effective`` time, else the last listed), the ``mean`` and the
``trend`` (least-squares slope per year, two or more timed values); each ICD-10-CM condition (SNOMED CT ones
mapped through the model's own crosswalk) and RxNorm medication a 0/1 indicator; ``age`` the lower bound of its
5-year band (``90+`` → 90); ``sex`` the one-hot levels the model was trained on. Before that, in order:

- **types**: pydantic (numbers are numbers, at most :data:`MAX_ITEMS` observations per encounter);
- **codes**: LOINC, ICD-10-CM and SNOMED CT codes must be well formed (``ingestion.codes``' check digits);
- **units**: UCUM, converted to the unit the ingestion contract's limits use where unambiguous (mass, length,
  glucose mg/dL↔mmol/L, HbA1c %↔mmol/mol, cholesterols and triglycerides mg/dL↔mmol/L, creatinine
  mg/dL↔umol/L); a unit that does not convert is refused;
- **hard limits**: the ingestion contract's physiological limits per LOINC code (``observations.yaml``), and age
  0–130;
- **plausibility**: diastolic below systolic at the same time, HDL and LDL below total cholesterol, BMI
  consistent with weight and height, no observation or condition dated more than a day in the future;
- **training profile**: the batch scorer's out-of-profile check (``analytics.flow.score_spark``: a feature more
  than 10 % of its training range outside it). ``api.out_of_profile`` decides: ``flag`` scores and says why,
  ``refuse`` answers 422.

A refusal is :class:`PayloadInvalid` naming the field (``encounters[0].observations[2].value``) and the rule; it
never repeats a submitted value.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import MedguardError, ModelIntegrityError

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["ConditionIn", "DiagnosisService", "EncounterIn", "MedicationIn", "ModelUnavailable", "ObservationIn",
           "OutOfProfile", "PayloadInvalid"]

MAX_ITEMS = 500
_MAX_CODE = 64
_AGE_LIMITS = (0.0, 130.0)
# Units a LOINC code's limits are in ← other units of the same analyte, with the factor (value × factor).
# Molar masses: glucose 180.16 g/mol, cholesterol 386.65, triglycerides (as triolein) 885.7, creatinine 113.12.
_ANALYTE_UNITS: dict[str, dict[str, float]] = {
    "2345-7": {"mmol/L": 18.016},
    "2093-3": {"mmol/L": 38.67}, "2085-9": {"mmol/L": 38.67}, "13457-7": {"mmol/L": 38.67},
    "2571-8": {"mmol/L": 88.57},
    "2160-0": {"umol/L": 1 / 88.42, "µmol/L": 1 / 88.42},
}
# HbA1c in IFCC mmol/mol → NGSP % is affine (the NGSP/IFCC master equation), not a factor.
_HBA1C = "4548-4"
_UNIT_SPELLINGS = {"mmol/mol": "mmol/mol", "umol/l": "umol/L", "µmol/l": "umol/L", "mmol/l": "mmol/L",
                   "mg/dl": "mg/dL", "%": "%"}
_SYSTOLIC, _DIASTOLIC = "8480-6", "8462-4"
_TOTAL_CHOL, _HDL, _LDL = "2093-3", "2085-9", "13457-7"
_WEIGHT, _HEIGHT, _BMI = "29463-7", "8302-2", "39156-5"
_SECONDS_PER_YEAR = 365.25 * 86400
# Clocks differ and time zones get lost: a time up to a day ahead is tolerated, later is refused.
_FUTURE_SLACK = 86400.0


class PayloadInvalid(MedguardError):
    """A payload refused (422 ``payload_invalid``): ``field`` is where, ``rule`` what it must satisfy."""

    code = "payload_invalid"
    status = 422

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class OutOfProfile(PayloadInvalid):
    """Features outside the model's training profile, refused because ``api.out_of_profile`` is ``refuse``."""

    code = "out_of_profile"


class ModelUnavailable(MedguardError):
    """No model verifies (none trained, none promoted, or its signature fails): 503 ``model_unavailable``."""

    code = "model_unavailable"
    status = 503


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ObservationIn(_In):
    """A vital sign or lab result: a LOINC code, its value and UCUM unit (the limits' unit when omitted)."""

    code: str = Field(min_length=1, max_length=_MAX_CODE)
    system: str = Field(default="loinc", max_length=200)
    value: float = Field(allow_inf_nan=False)
    unit: str | None = Field(default=None, max_length=32)
    effective: datetime | None = None


class ConditionIn(_In):
    """A diagnosis: ICD-10-CM, or SNOMED CT mapped to ICD-10-CM through the model's crosswalk."""

    code: str = Field(min_length=1, max_length=_MAX_CODE)
    system: str = Field(default="icd10cm", max_length=200)
    onset: datetime | None = None


class MedicationIn(_In):
    """A medication: an RxNorm code."""

    code: str = Field(min_length=1, max_length=_MAX_CODE)
    system: str = Field(default="rxnorm", max_length=200)


class EncounterIn(_In):
    """One encounter to diagnose. ``encounter_ref`` is the caller's own reference, echoed back; send no
    identifiers in it (it is never logged)."""

    encounter_ref: str | None = Field(default=None, max_length=128)
    age: float | None = Field(default=None, allow_inf_nan=False)
    sex: str | None = Field(default=None, max_length=32)
    observations: list[ObservationIn] = Field(default_factory=list, max_length=MAX_ITEMS)
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=MAX_ITEMS)
    medications: list[MedicationIn] = Field(default_factory=list, max_length=MAX_ITEMS)
    # A flat (non-clinical) model's own numeric columns, by feature name.
    features: dict[str, float] = Field(default_factory=dict, max_length=MAX_ITEMS)

    @field_validator("features")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        for name, number in value.items():
            if not math.isfinite(number):
                raise ValueError(f"features.{name[:64]} must be a finite number")
        return value


@dataclass(frozen=True)
class _Loaded:
    name: str
    version: int
    model_version: str
    booster: Any
    contract: Any
    calibrator: Any
    threshold: float
    ranges: dict[str, tuple[float, float]]
    names: dict[str, str]
    prefixes: dict[str, str]  # "observations"/"conditions"/"medications" → the event prefix
    trained_at: str | None


def _short(system: str) -> str:
    from ingestion.codes import short_name

    return short_name(system)


class DiagnosisService:
    """Scores encounters with the current signed model; thread-safe, one per server process.

    Args:
        settings: the home (models, keys) and ``api.out_of_profile``.
        provider: the key provider that verifies the model's signature (default: the settings').
        top: how many top contributing features each diagnosis lists.
        clock: seconds since the epoch (a time in the future is refused); injected for tests.
    """

    def __init__(self, settings: Settings, *, provider: Any = None, top: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._provider = provider
        self._top = settings.governance.top_features if top is None else top
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._loaded: _Loaded | None = None
        self._error: str | None = None
        self._limits: dict[str, tuple[float, float, str | None]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, provider: Any = None) -> DiagnosisService:
        return cls(settings, provider=provider)

    def __repr__(self) -> str:
        return f"DiagnosisService(home={str(self.settings.home)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("DiagnosisService holds a key provider and cannot be pickled")

    # the model ---------------------------------------------------------------------------------------

    def _provider_now(self) -> Any:
        if self._provider is None:
            from storage_security.keys.providers import provider_from_settings

            self._provider = provider_from_settings(self.settings)
        return self._provider

    def _models_stamp(self) -> tuple[Any, ...]:
        """What changes when a model is trained, promoted or rolled back: the index files' stat."""
        root = self.settings.home / "models"
        out = []
        if root.is_dir():
            for index in sorted(root.glob("*/index.json")):
                try:
                    st = index.stat()
                except OSError:
                    continue
                out.append((index.parent.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _model(self) -> _Loaded:
        stamp = self._models_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._loaded, self._error = None, None
                try:
                    self._loaded = self._load()
                except ModelIntegrityError as exc:
                    self._error = str(exc)
                except MedguardError as exc:  # the key provider unreachable: fail closed, retried next call
                    self._error = f"model cannot be verified: {type(exc).__name__}"
                    stamp = None  # type: ignore[assignment]
                self._stamp = stamp
            if self._loaded is None:
                raise ModelUnavailable(self._error or "no model")
            return self._loaded

    def _load(self) -> _Loaded:
        from analytics.features import FeatureContract as Contract
        from analytics.names import display_names
        from analytics.registry import ModelRegistry
        from analytics.train import Calibrator

        registry = ModelRegistry(self.settings, self._provider_now())
        manifest, booster, bundle = registry.load(None)
        # One thread per prediction: a request scores a handful of rows, where a thread pool costs more than it saves.
        booster.set_param({"nthread": 1})
        contract = Contract.from_dict(bundle["contract"])
        cal = bundle["calibrator"]
        prefixes = {}
        for event in bundle.get("sources", {}).get("events", []):
            target = (event.get("fallback") or {}).get("target")
            kind = ("observations" if event.get("value") else "conditions" if target == "icd10cm" or
                    event.get("table") == "conditions" else "medications" if target == "rxnorm" or
                    event.get("table") == "medications" else None)
            if kind:
                prefixes[kind] = event["prefix"]
        return _Loaded(
            name=str(manifest.get("name")), version=int(manifest.get("version", 0)),
            model_version=str(manifest["model_version"]), booster=booster, contract=contract,
            calibrator=Calibrator(cal["method"], cal["params"]), threshold=float(bundle["threshold"]),
            ranges={f: (float(p["min"]), float(p["max"])) for f, p in bundle["profile"].items()
                    if p.get("min") is not None and p.get("max") is not None},
            names=display_names(contract.features), prefixes=prefixes,
            trained_at=manifest.get("created_at") or manifest.get("trained_at"))

    def model_info(self) -> dict[str, Any]:
        """The current model: name, version, threshold, features it reads, what the payload may carry.

        Raises:
            ModelUnavailable: no model verifies.
        """
        m = self._model()
        c = m.contract
        return {"name": m.name, "version": m.version, "model_version": m.model_version,
                "threshold": round(m.threshold, 6), "trained_at": m.trained_at,
                "features": len(c.features),
                "observation_codes": list(c.event_codes.get(m.prefixes.get("observations", ""), [])),
                "condition_codes": list(c.event_codes.get(m.prefixes.get("conditions", ""), [])),
                "medication_codes": list(c.event_codes.get(m.prefixes.get("medications", ""), [])),
                "sex_levels": list(c.patient_categorical.get("sex", [])),
                "numeric_features": [f for f in c.numeric if f in c.features],
                "out_of_profile_policy": self.settings.api.out_of_profile}

    def ready(self) -> tuple[bool, str]:
        """(True, "ready") when the current model verifies (its key provider answered); else (False, why)."""
        try:
            m = self._model()
            health = self._provider_now().health()
        except ModelUnavailable as exc:
            return False, str(exc)
        except MedguardError as exc:
            return False, f"key provider unreachable: {type(exc).__name__}"
        if not (health.get("ok") is True or (health.get("initialized") and health.get("sealed") is False)):
            return False, "key provider unreachable or sealed"
        return True, f"model {m.model_version} verified"

    # scoring -----------------------------------------------------------------------------------------

    def diagnose(self, encounters: list[EncounterIn]) -> list[dict[str, Any]]:
        """One diagnosis per encounter, in order.

        Raises:
            ModelUnavailable: no model verifies.
            PayloadInvalid: an encounter fails a check (the first one found; nothing is scored).
            OutOfProfile: out of the training profile and ``api.out_of_profile`` is ``refuse``.
        """
        m = self._model()
        rows, checks = [], []
        for i, enc in enumerate(encounters):
            row, check = self._features(m, enc, f"encounters[{i}]")
            rows.append(row)
            checks.append(check)
        if not rows:
            return []
        x = np.array(rows, dtype=float)
        lo = np.array([m.ranges.get(f, (np.nan, np.nan))[0] for f in m.contract.features])
        hi = np.array([m.ranges.get(f, (np.nan, np.nan))[1] for f in m.contract.features])
        span = np.where((hi - lo) == 0, 1.0, hi - lo)
        with np.errstate(invalid="ignore"):
            below = x < lo - 0.1 * span
            above = x > hi + 0.1 * span
        outside = below | above
        if self.settings.api.out_of_profile == "refuse" and outside.any():
            i = int(np.flatnonzero(outside.any(axis=1))[0])
            names = [m.contract.features[j] for j in np.flatnonzero(outside[i])]
            raise OutOfProfile(f"encounters[{i}]", "outside the model's training profile (features: "
                               f"{', '.join(names[:5])})")
        import xgboost as xgb

        prob = m.calibrator.apply(m.booster.inplace_predict(x))
        contribs = m.booster.predict(xgb.DMatrix(x, missing=np.nan, feature_names=m.booster.feature_names, nthread=1),
                                     pred_contribs=True)[:, :len(m.contract.features)]
        order = np.argsort(-np.abs(contribs), axis=1, kind="stable")[:, :self._top]
        features = m.contract.features
        out = []
        for i, enc in enumerate(encounters):
            reasons = [{"feature": features[j], "name": m.names[features[j]],
                        "side": "below" if below[i, j] else "above",
                        "bound": m.ranges[features[j]][0 if below[i, j] else 1]}
                       for j in np.flatnonzero(outside[i])]
            checks[i]["training_profile"] = "flagged" if reasons else "passed"
            p = float(prob[i])
            out.append({
                "encounter_ref": enc.encounter_ref, "probability": round(p, 6), "flag": p >= m.threshold,
                "threshold": round(m.threshold, 6),
                "model": {"name": m.name, "version": m.version, "model_version": m.model_version},
                "checks": checks[i], "out_of_profile": bool(reasons), "out_of_profile_reasons": reasons,
                "top_features": [{"feature": features[j], "name": m.names[features[j]],
                                  "contribution": round(float(contribs[i, j]), 4)} for j in order[i]],
            })
        return out

    def _hard_limits(self) -> dict[str, tuple[float, float, str | None]]:
        if self._limits is None:
            from ingestion.contract import builtin_contract

            limits: dict[str, tuple[float, float, str | None]] = {}
            for rng in builtin_contract("observations").ranges:
                for code, lim in rng.limits.items():
                    limits[code] = (float(lim[0]), float(lim[1]), lim[2] if len(lim) > 2 else None)  # type: ignore[misc]
            self._limits = limits
        return self._limits

    def _to_limit_unit(self, code: str, value: float, unit: str | None, want: str | None, where: str) -> float:
        """``value`` in the unit ``code``'s limits use; refuses a unit that does not convert unambiguously."""
        from ingestion.codes import unit_factor

        if unit is None or not unit.strip() or want is None:
            return value
        written = _UNIT_SPELLINGS.get(unit.strip().lower(), unit.strip())
        factor = unit_factor(unit, want)
        if not math.isnan(factor):
            return value * factor
        if code == _HBA1C and want == "%" and written == "mmol/mol":
            return 0.09148 * value + 2.152
        extra = _ANALYTE_UNITS.get(code, {})
        if written in extra:
            return value * extra[written]
        allowed = sorted({want, *extra} | ({"mmol/mol"} if code == _HBA1C else set()))
        raise PayloadInvalid(f"{where}.unit", f"LOINC {code} takes UCUM units {', '.join(allowed)} "
                             "(or the same quantity's mass/length units)")

    def _features(self, m: _Loaded, enc: EncounterIn, where: str) -> tuple[list[float], dict[str, str]]:
        from analytics.features import _name
        from ingestion.codes import icd10cm_valid, is_valid

        c = m.contract
        values: dict[str, float] = {}
        limits = self._hard_limits()
        latest = datetime.fromtimestamp(self._clock() + _FUTURE_SLACK, UTC)
        for kind, items, attr in (("observations", enc.observations, "effective"),
                                  ("conditions", enc.conditions, "onset")):
            for k, item in enumerate(items):
                when = getattr(item, attr)
                if when is not None and _utc(when) > latest:
                    raise PayloadInvalid(f"{where}.{kind}[{k}].{attr}", "must not be in the future")
        # observations: converted, range-checked, grouped by code
        series: dict[str, list[tuple[datetime | None, int, float]]] = {}
        for k, obs in enumerate(enc.observations):
            at = f"{where}.observations[{k}]"
            if _short(obs.system) != "loinc":
                raise PayloadInvalid(f"{at}.system", "observations are coded in LOINC (system \"loinc\")")
            if not is_valid(obs.code, "loinc"):
                raise PayloadInvalid(f"{at}.code", "must be a LOINC code with a valid check digit")
            lo, hi, unit = limits.get(obs.code, (-math.inf, math.inf, None))
            value = self._to_limit_unit(obs.code, obs.value, obs.unit, unit, at)
            if not lo <= value <= hi:
                raise PayloadInvalid(f"{at}.value", f"outside the hard limits for LOINC {obs.code} "
                                     f"({lo:g}–{hi:g} {unit or ''})".rstrip())
            series.setdefault(obs.code, []).append((obs.effective, k, value))
        if enc.age is not None and not _AGE_LIMITS[0] <= enc.age <= _AGE_LIMITS[1]:
            raise PayloadInvalid(f"{where}.age", f"must be within {_AGE_LIMITS[0]:g}–{_AGE_LIMITS[1]:g} years")
        self._plausible(series, where)
        prefix = m.prefixes.get("observations")
        for code, points in series.items():
            timed = all(t is not None for t, _, _ in points)
            ordered = sorted(points, key=lambda p: (_utc(p[0]), p[1])) if timed else points
            vals = np.array([v for _, _, v in ordered])
            base = f"{prefix}_{_name(code)}"
            values[f"{base}_last"] = float(vals[-1])
            values[f"{base}_mean"] = float(vals.mean())
            if timed and len({_utc(t) for t, _, _ in ordered}) > 1:
                years = np.array([_utc(t).timestamp() / _SECONDS_PER_YEAR for t, _, _ in ordered])
                years -= years.mean()
                values[f"{base}_trend"] = float((years * (vals - vals.mean())).sum() / (years ** 2).sum())
        # conditions and medications: 0/1 indicators of the model's codes
        indicators = {p for kind, p in m.prefixes.items() if kind != "observations"}
        dx = m.prefixes.get("conditions")
        crosswalk = c.code_maps.get(dx or "", {}).get("map", {})
        for k, cond in enumerate(enc.conditions):
            at = f"{where}.conditions[{k}]"
            system = _short(cond.system)
            code = cond.code.upper() if system == "icd10cm" else cond.code
            if system == "icd10cm" and not icd10cm_valid(code):
                raise PayloadInvalid(f"{at}.code", "must be an ICD-10-CM code (e.g. E11.9)")
            if system == "snomed":
                if not is_valid(code, "snomed"):
                    raise PayloadInvalid(f"{at}.code", "must be a SNOMED CT concept id with a valid check digit")
                code = crosswalk.get(f"snomed|{code}", "")
            elif system != "icd10cm":
                raise PayloadInvalid(f"{at}.system", "conditions are coded in ICD-10-CM or SNOMED CT")
            if dx and code:
                values[f"{dx}_{_name(code)}"] = 1.0
        rx = m.prefixes.get("medications")
        for k, med in enumerate(enc.medications):
            at = f"{where}.medications[{k}]"
            if _short(med.system) != "rxnorm":
                raise PayloadInvalid(f"{at}.system", "medications are coded in RxNorm (system \"rxnorm\")")
            if not med.code.isdigit():
                raise PayloadInvalid(f"{at}.code", "must be an RxNorm concept id (digits)")
            if rx:
                values[f"{rx}_{_name(med.code)}"] = 1.0
        # the patient's own columns
        if enc.age is not None and "age_band" in c.patient_bands:
            values["age_band_lower"] = float(min(int(enc.age // 5) * 5, 90))
        levels = c.patient_categorical.get("sex")
        if enc.sex is not None and levels:
            match = {lv.lower(): lv for lv in levels}.get(enc.sex.lower())
            if match is None:
                raise PayloadInvalid(f"{where}.sex", f"must be one of {', '.join(levels)}")
            for lv in levels:
                values[f"sex_{_name(lv)}"] = 1.0 if lv == match else 0.0
        numeric = {_name(f) for f in c.numeric}
        for name, number in enc.features.items():
            if name not in numeric or name not in c.features:
                raise PayloadInvalid(f"{where}.features", "names only the model's numeric features "
                                     "(GET /v1/models/current lists them)")
            values[name] = float(number)
        row = []
        for f in c.features:
            if f in values:
                row.append(values[f])
            elif f.split("_", 1)[0] in indicators and f.split("_", 1)[0] != prefix:
                row.append(0.0)  # an indicator the encounter does not carry is absent, as in training
            else:
                row.append(math.nan)
        checks = {"types": "passed", "codes": "passed", "units": "passed", "hard_limits": "passed",
                  "plausibility": "passed"}
        return row, checks

    @staticmethod
    def _plausible(series: dict[str, list[tuple[datetime | None, int, float]]], where: str) -> None:
        def latest(code: str) -> float | None:
            pts = series.get(code)
            if not pts:
                return None
            timed = all(t is not None for t, _, _ in pts)
            return (max(pts, key=lambda p: (_utc(p[0]), p[1])) if timed else pts[-1])[2]

        for (t, _, dia) in series.get(_DIASTOLIC, []):
            for (t2, _, sys_) in series.get(_SYSTOLIC, []):
                if (t == t2 or len(series[_DIASTOLIC]) == len(series[_SYSTOLIC]) == 1) and dia >= sys_:
                    raise PayloadInvalid(f"{where}.observations", "diastolic blood pressure (LOINC 8462-4) must be "
                                         "below systolic (LOINC 8480-6)")
        total, hdl, ldl = latest(_TOTAL_CHOL), latest(_HDL), latest(_LDL)
        if total is not None and ((hdl is not None and hdl >= total) or (ldl is not None and ldl >= total)):
            raise PayloadInvalid(f"{where}.observations", "HDL (2085-9) and LDL (13457-7) cholesterol must be "
                                 "below total cholesterol (2093-3)")
        weight, height, bmi = latest(_WEIGHT), latest(_HEIGHT), latest(_BMI)
        if None not in (weight, height, bmi):
            expected = weight / (height / 100) ** 2  # type: ignore[operator]
            if abs(bmi - expected) > 0.2 * expected:  # type: ignore[operator]
                raise PayloadInvalid(f"{where}.observations", "BMI (39156-5) must agree with weight (29463-7) and "
                                     "height (8302-2) within 20 %")


def _utc(t: datetime | None) -> datetime:
    assert t is not None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def models_root(settings: Settings) -> Path:
    """Where the signed models live (what :class:`DiagnosisService` watches)."""
    return settings.home / "models"


def dumps(obj: Any) -> bytes:
    """Compact JSON (no NaN) for responses."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
