"""Evasion robustness: a bounded black-box search over the trees' split thresholds, and defences measured.

The attacker changes the measured values of a flagged patient (labs, vitals) by at most a clinically plausible
amount per feature (``attack_bounds`` in the config, else ``attack_epsilon`` x the training standard deviation)
and inside the training profile's plausible range, to push the calibrated probability under the decision
threshold. Only the split thresholds of the model's trees can change its output, so the search tries, for every
attackable feature, the values just either side of each threshold within the bound, and greedily takes the move
that lowers the score most until the flag flips or no move helps. It needs only model outputs (black box).

Reported: attack success rate, and the minimal perturbation of successful attacks (L-infinity in units of
each feature's bound, and the number of features changed). Defences, each retrained with the same parameters
and attacked the same way: monotonic constraints where clinically justified (``monotone`` in the config) and
adversarial augmentation (adversarial examples of training positives added with their true label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import LABEL
from analytics.train import Calibrator, fit_local, matrix

_EPS = 1e-4


@dataclass
class AttackResult:
    """Outcome of attacking some flagged rows."""

    attacked: int
    succeeded: int
    linf: list[float]
    changed: list[int]
    adversarial: np.ndarray

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.attacked if self.attacked else 0.0

    def summary(self) -> dict[str, Any]:
        return {"attacked": self.attacked, "succeeded": self.succeeded, "success_rate": self.success_rate,
                "median_linf_of_bound": float(np.median(self.linf)) if self.linf else None,
                "mean_features_changed": float(np.mean(self.changed)) if self.changed else None}


def attack_bounds(features: list[str], profile: dict[str, Any], bounds: dict[str, float], epsilon: float,
                  attackable: list[str] | None = None) -> dict[str, float]:
    """Per-feature maximal change: the config's clinical bounds, else epsilon x training std for measured values.

    Args:
        attackable: features an attacker can plausibly nudge (measurements); default: lab and vital values
            (``obs_*``), never trends, indicators or demographics.
    """
    if attackable is None:
        attackable = [f for f in features if f.startswith("obs_") and not f.endswith("_trend")]
    out = {}
    for name in features:
        if name in bounds:
            out[name] = float(bounds[name])
        elif name in attackable and profile.get(name, {}).get("std"):
            out[name] = float(epsilon * profile[name]["std"])
    return {k: v for k, v in out.items() if v > 0}


def _split_values(booster: Any, features: list[str]) -> dict[int, np.ndarray]:
    trees = booster.trees_to_dataframe()
    splits = trees[trees["Feature"] != "Leaf"]
    out: dict[int, np.ndarray] = {}
    index = {name: i for i, name in enumerate(features)}
    for feature, group in splits.groupby("Feature"):
        j = index.get(str(feature))
        if j is None and str(feature).startswith("f") and str(feature)[1:].isdigit():
            j = int(str(feature)[1:])
        if j is not None:
            out[j] = np.unique(group["Split"].to_numpy(dtype=float))
    return out


def attack(booster: Any, calibrator: Calibrator, threshold: float, x: np.ndarray, features: list[str],
           bounds: dict[str, float], profile: dict[str, Any], max_steps: int = 8) -> AttackResult:
    """Greedy bounded search pushing each row of ``x`` (all currently flagged) under ``threshold``."""
    cols = [j for j, name in enumerate(features) if name in bounds]
    splits = _split_values(booster, features)
    delta = np.array([bounds[features[j]] for j in cols])
    lo = np.array([profile.get(features[j], {}).get("p01", -np.inf) for j in cols])
    hi = np.array([profile.get(features[j], {}).get("p99", np.inf) for j in cols])
    adversarial = x.copy()
    succeeded, linf, changed = 0, [], []
    for i in range(len(x)):
        original = x[i]
        current = original.copy()
        score = float(calibrator.apply(booster.inplace_predict(current[None, :]))[0])
        for _ in range(max_steps):
            if score < threshold:
                break
            candidates, owners = [], []
            for k, j in enumerate(cols):
                if np.isnan(original[j]):
                    continue  # a missing value stays missing: adding a measurement is not a small change
                low = max(original[j] - delta[k], lo[k])
                high = min(original[j] + delta[k], hi[k])
                values = splits.get(j, np.array([]))
                values = values[(values >= low) & (values <= high)]
                options = np.unique(np.clip(np.r_[values - _EPS, values, low, high], low, high))
                for v in options:
                    if v != current[j]:
                        row = current.copy()
                        row[j] = v
                        candidates.append(row)
                        owners.append(k)
            if not candidates:
                break
            probs = calibrator.apply(booster.inplace_predict(np.array(candidates)))
            best = int(np.argmin(probs))
            if probs[best] >= score:
                break
            current, score = candidates[best], float(probs[best])
        if score < threshold:
            # Shrink the successful perturbation towards the original: the minimal step that still evades.
            low_a, high_a = 0.0, 1.0
            for _ in range(12):
                mid = (low_a + high_a) / 2
                trial = np.where(np.isnan(original), original, original + mid * np.nan_to_num(current - original))
                if float(calibrator.apply(booster.inplace_predict(trial[None, :]))[0]) < threshold:
                    high_a = mid
                else:
                    low_a = mid
            current = np.where(np.isnan(original), original, original + high_a * np.nan_to_num(current - original))
        adversarial[i] = current
        if score < threshold:
            succeeded += 1
            moved = np.abs(current[cols] - original[cols]) / delta
            moved = np.nan_to_num(moved)
            linf.append(float(moved.max()))
            changed.append(int((moved > 0).sum()))
    return AttackResult(len(x), succeeded, linf, changed, adversarial)


def evaluate_robustness(model: Any, train: pd.DataFrame, calibration: pd.DataFrame, test: pd.DataFrame, *,
                        bounds: dict[str, float], monotone: dict[str, int], samples: int, seed: int,
                        ) -> dict[str, Any]:
    """Attack the model on flagged test positives; retrain with each defence and attack it the same way.

    Every retrained variant (the plain baseline and each defence) is single-node xgboost with the model's
    parameters, its threshold set on the calibration split to the sensitivity the model reaches there, so
    they are compared at the same operating point.

    Args:
        model: a :class:`~analytics.train.TrainedModel`.
        train: the training rows (to retrain and to find augmentation examples).
        calibration: the calibration rows (operating point of retrained variants).
        test: held-out rows; the attacked ones are true positives the model flags.
    """
    from sklearn.metrics import roc_auc_score

    from analytics.train import choose_threshold

    features = model.features
    rng = np.random.default_rng(seed)
    y_cal = calibration[LABEL].to_numpy()
    cal_prob = model.predict_proba(calibration)
    sensitivity = float((cal_prob[y_cal == 1] >= model.threshold).mean())
    identity = Calibrator("platt", {"a": [1.0], "b": [0.0]})

    def targets(booster: Any, calibrator: Calibrator, threshold: float, frame: pd.DataFrame) -> np.ndarray:
        x = matrix(frame, features)
        flagged = calibrator.apply(booster.inplace_predict(x)) >= threshold
        rows = np.flatnonzero(flagged & (frame[LABEL].to_numpy() == 1))
        return x[np.sort(rng.permutation(rows)[:samples])] if len(rows) else x[:0]

    def run(booster: Any, calibrator: Calibrator, threshold: float) -> dict[str, Any]:
        x = targets(booster, calibrator, threshold, test)
        result = attack(booster, calibrator, threshold, x, features, bounds, model.profile)
        auroc = float(roc_auc_score(test[LABEL], booster.inplace_predict(matrix(test, features))))
        return {**result.summary(), "auroc": auroc}

    def retrained(frame: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
        booster = fit_local(frame, features, params)
        threshold = choose_threshold(booster.inplace_predict(matrix(calibration, features)), y_cal, sensitivity)
        return run(booster, identity, threshold)

    report: dict[str, Any] = {"bounds": bounds, "operating_sensitivity": sensitivity}
    report["undefended"] = run(model.booster, model.calibrator, model.threshold)
    report["baseline_retrained"] = retrained(train, model.params)
    if monotone:
        params = dict(model.params)
        params["monotone_constraints"] = "(" + ",".join(str(int(monotone.get(f, 0))) for f in features) + ")"
        report["monotone"] = retrained(train, params)
        report["monotone"]["constrained"] = sorted(f for f in features if monotone.get(f))
    # Adversarial augmentation: attack training positives, add what evaded with the true label, retrain.
    x_train = targets(model.booster, model.calibrator, model.threshold, train)
    found = attack(model.booster, model.calibrator, model.threshold, x_train, features, bounds, model.profile)
    augmented = pd.concat([train, pd.DataFrame(found.adversarial, columns=features).assign(**{LABEL: 1})],
                          ignore_index=True)
    report["adversarial_augmentation"] = retrained(augmented, model.params)
    report["adversarial_augmentation"]["examples_added"] = len(found.adversarial)
    return report
