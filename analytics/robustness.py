"""Evasion robustness: a bounded black-box search over the trees' split thresholds, and defences measured.

The attacker changes the measured values of a flagged patient (labs, vitals) by at most a clinically plausible
amount per feature (``attack_bounds`` in the config, else ``attack_epsilon`` x the training standard deviation)
and inside the training profile's plausible range, to push the calibrated probability under the decision
threshold. Only the split thresholds of the model's trees can change its output, so the search tries, for every
attackable feature, the values just either side of each threshold within the bound, and greedily takes the move
that lowers the score most until the flag flips or no move helps. It needs only model outputs (black box).

Reported: attack success rate with its 95 % (Wilson) interval, and the minimal perturbation of successful attacks
(L-infinity in units of each feature's bound, and the number of features changed). Defences, each retrained
with the same parameters and attacked the same way: monotonic constraints where a config asks for them
(``monotone``; the shipped T2D config no longer does: they measured no gain), adversarial augmentation
(adversarial examples of training positives added with their true label), and input-profile refusal (an
isolation forest fitted on the training rows refuses to score a row less typical than all but ``refuse_rate`` of
them; a refused evasion is no success, and the clean rows it refuses are its cost). A defence is *kept* only when
it lowers the success rate significantly (one-sided two-proportion test, p < 0.05, against the retrained
baseline) at a clean-AUROC cost of at most ``max_auroc_cost``. Adversarial augmentation can also be applied to
the served model in training (``analytics.adversarial_augmentation``; :func:`augmenter`); the report's
``applied`` lists what the served model (its ``undefended`` row) was trained with.

The membership-inference result (:mod:`analytics.privacy`) travels in the same report under
``membership_inference``, so the card shows both attacks on the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    evaded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.attacked if self.attacked else 0.0

    def summary(self) -> dict[str, Any]:
        low, high = wilson(self.succeeded, self.attacked)
        return {"attacked": self.attacked, "succeeded": self.succeeded, "success_rate": self.success_rate,
                "success_interval": {"low": low, "high": high},
                "median_linf_of_bound": float(np.median(self.linf)) if self.linf else None,
                "mean_features_changed": float(np.mean(self.changed)) if self.changed else None}


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """The 95 % Wilson score interval of a proportion (sound at small counts and at 0 or 1)."""
    if not trials:
        return None, None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def lower_rate_p(successes: int, trials: int, base_successes: int, base_trials: int) -> float | None:
    """One-sided p-value that a success rate is lower than the baseline's (two-proportion z-test, pooled)."""
    from scipy.stats import norm

    if not trials or not base_trials:
        return None
    pooled = (successes + base_successes) / (trials + base_trials)
    se = np.sqrt(pooled * (1 - pooled) * (1 / trials + 1 / base_trials))
    if se == 0:
        return 1.0
    z = (base_successes / base_trials - successes / trials) / se
    return float(norm.sf(z))


class ProfileGuard:
    """Refuses rows less typical of the training data than all but ``refuse_rate`` of the training rows."""

    def __init__(self, x_train: np.ndarray, refuse_rate: float = 0.01, seed: int = 0) -> None:
        from sklearn.ensemble import IsolationForest

        self.median = np.nan_to_num(np.nanmedian(x_train, axis=0))
        std = np.nan_to_num(np.nanstd(x_train, axis=0))
        self.scale = np.where(std > 0, std, 1.0)
        self.forest = IsolationForest(n_estimators=200, random_state=seed).fit(self._prep(x_train))
        self.cut = float(np.quantile(self.forest.score_samples(self._prep(x_train)), refuse_rate))

    def _prep(self, x: np.ndarray) -> np.ndarray:
        # Missingness is information (a lab never measured); keep it as its own column per feature.
        return np.c_[(np.where(np.isnan(x), self.median, x) - self.median) / self.scale, np.isnan(x)]

    def refuses(self, x: np.ndarray) -> np.ndarray:
        return self.forest.score_samples(self._prep(x)) < self.cut


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


def model_attack_bounds(model: Any, config: Any) -> dict[str, float]:
    """The per-feature bounds an attacker of ``model`` works within (:func:`attack_bounds` for its features).

    Measured values can be nudged: labs and vitals (``obs_*`` but not their trends), and a flat table's own
    numeric columns. Training's adversarial augmentation and the robustness step both use these bounds.

    Args:
        model: a :class:`~analytics.train.TrainedModel` (its contract and training profile).
        config: the :class:`~analytics.config.TrainConfig` (``attack_bounds``, ``attack_epsilon``).
    """
    c = model.contract
    own_numeric = {name for name, (table, column) in c.provenance.items() if table == c.table and column in c.numeric}
    attackable = [f for f in model.features if (f.startswith("obs_") and not f.endswith("_trend")) or f in own_numeric]
    return attack_bounds(model.features, model.profile, config.attack_bounds, config.attack_epsilon, attackable)


def attack(booster: Any, calibrator: Calibrator, threshold: float, x: np.ndarray, features: list[str],
           bounds: dict[str, float], profile: dict[str, Any], max_steps: int = 8) -> AttackResult:
    """Greedy bounded search pushing each row of ``x`` (all currently flagged) under ``threshold``.

    The search follows the unrounded calibrated probability (a rounded output hides small steps; an attacker
    could probe around it, so searching on it would flatter the rounding), while success is judged on the
    probability as served (:meth:`Calibrator.apply`).
    """
    cols = [j for j, name in enumerate(features) if name in bounds]
    splits = _split_values(booster, features)
    delta = np.array([bounds[features[j]] for j in cols])
    lo = np.array([profile.get(features[j], {}).get("p01", -np.inf) for j in cols])
    hi = np.array([profile.get(features[j], {}).get("p99", np.inf) for j in cols])
    adversarial = x.copy()
    evaded = np.zeros(len(x), dtype=bool)
    succeeded, linf, changed = 0, [], []
    for i in range(len(x)):
        original = x[i]
        current = original.copy()
        score = float(calibrator.probability(booster.inplace_predict(current[None, :]))[0])
        for _ in range(max_steps):
            if calibrator.round(score) < threshold:
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
            probs = calibrator.probability(booster.inplace_predict(np.array(candidates)))
            best = int(np.argmin(probs))
            if probs[best] >= score:
                break
            current, score = candidates[best], float(probs[best])
        evades = bool(calibrator.round(score) < threshold)
        if evades:
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
        if evades:
            succeeded += 1
            evaded[i] = True
            moved = np.abs(current[cols] - original[cols]) / delta
            moved = np.nan_to_num(moved)
            linf.append(float(moved.max()))
            changed.append(int((moved > 0).sum()))
    return AttackResult(len(x), succeeded, linf, changed, adversarial, evaded)


def flagged_positives(booster: Any, calibrator: Calibrator, threshold: float, frame: pd.DataFrame,
                       features: list[str], samples: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``samples`` rows of ``frame`` (as a matrix, in frame order) that are positive and flagged."""
    x = matrix(frame, features)
    flagged = calibrator.apply(booster.inplace_predict(x)) >= threshold
    rows = np.flatnonzero(flagged & (frame[LABEL].to_numpy() == 1))
    return x[np.sort(rng.permutation(rows)[:samples])] if len(rows) else x[:0]


def adversarial_examples(model: Any, rows: pd.DataFrame, bounds: dict[str, float], samples: int, seed: int,
                         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Adversarial augmentation's rows: up to ``samples`` flagged positives of ``rows`` attacked, labelled positive.

    Each attacked row gives its attacked version (shrunk to the minimal evading step when it evaded, the
    greedy search's end point when it did not). Returns the rows (the model's features and the label) and a
    summary (``attacked``, ``evaded``).
    """
    x = flagged_positives(model.booster, model.calibrator, model.threshold, rows, model.features, samples,
                           np.random.default_rng(seed))
    found = attack(model.booster, model.calibrator, model.threshold, x, model.features, bounds, model.profile)
    frame = pd.DataFrame(found.adversarial, columns=model.features).assign(**{LABEL: 1})
    return frame, {"attacked": found.attacked, "evaded": found.succeeded}


def augmenter(config: Any, samples: int) -> Callable[[Any, pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]:
    """Training's ``augment``: :func:`adversarial_examples` of the train rows within :func:`model_attack_bounds`."""

    def augment(model: Any, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        return adversarial_examples(model, rows, model_attack_bounds(model, config), samples, config.seed)

    return augment


def evaluate_robustness(model: Any, train: pd.DataFrame, calibration: pd.DataFrame, test: pd.DataFrame, *,
                        bounds: dict[str, float], monotone: dict[str, int], samples: int, seed: int,
                        refuse_rate: float = 0.01, max_auroc_cost: float = 0.01, membership: bool = True,
                        membership_defence: Any = None, membership_applied: bool = False,
                        augmentation_samples: int | None = None) -> dict[str, Any]:
    """Attack the model on flagged test positives; retrain with each defence and attack it the same way.

    Every retrained variant (the plain baseline and each defence) is single-node xgboost with the model's
    parameters, its threshold set on the calibration split to the sensitivity the model reaches there, so
    they are compared at the same operating point.

    Args:
        model: a :class:`~analytics.train.TrainedModel`.
        train: the training rows (to retrain and to find augmentation examples).
        calibration: the calibration rows (operating point of retrained variants).
        test: held-out rows; the attacked ones are true positives the model flags.
        refuse_rate: the share of training rows the input-profile guard would refuse.
        max_auroc_cost: the most clean AUROC a defence may cost and still be kept.
        membership: also measure membership inference (:func:`analytics.privacy.membership_report`).
        membership_applied: the model was trained with the membership defence (``model.defences["membership"]``
            holds its undefended parameters, which the undefended side is retrained with).
        augmentation_samples: training positives the augmentation variant attacks (default ``samples``).

    The variants are retrained on the model's parameters; when ``model.defences`` says it was trained with
    adversarial augmentation, ``undefended`` (the model as served) already has it, and ``applied`` lists it.
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
        return flagged_positives(booster, calibrator, threshold, frame, features, samples, rng)

    def run(booster: Any, calibrator: Calibrator, threshold: float) -> tuple[dict[str, Any], AttackResult]:
        x = targets(booster, calibrator, threshold, test)
        result = attack(booster, calibrator, threshold, x, features, bounds, model.profile)
        auroc = float(roc_auc_score(test[LABEL], booster.inplace_predict(matrix(test, features))))
        return {**result.summary(), "auroc": auroc}, result

    def retrained(frame: pd.DataFrame, params: dict[str, Any]) -> tuple[dict[str, Any], AttackResult]:
        booster = fit_local(frame, features, params)
        threshold = choose_threshold(booster.inplace_predict(matrix(calibration, features)), y_cal, sensitivity)
        return run(booster, identity, threshold)

    report: dict[str, Any] = {"bounds": bounds, "operating_sensitivity": sensitivity,
                              "applied": sorted(k for k in model.defences if k != "membership")}
    report["undefended"], _ = run(model.booster, model.calibrator, model.threshold)
    report["baseline_retrained"], base = retrained(train, model.params)
    if monotone:
        params = dict(model.params)
        params["monotone_constraints"] = "(" + ",".join(str(int(monotone.get(f, 0))) for f in features) + ")"
        report["monotone"], _ = retrained(train, params)
        report["monotone"]["constrained"] = sorted(f for f in features if monotone.get(f))
    # Adversarial augmentation: attack training positives, add what evaded with the true label, retrain.
    extra, _ = adversarial_examples(model, train, bounds, augmentation_samples or samples, seed)
    report["adversarial_augmentation"], _ = retrained(pd.concat([train, extra], ignore_index=True), model.params)
    report["adversarial_augmentation"]["examples_added"] = len(extra)
    # Input-profile refusal: the baseline's successful evasions that the guard refuses count as stopped.
    guard = ProfileGuard(matrix(train, features), refuse_rate, seed)
    refused = guard.refuses(base.adversarial) if base.attacked else np.zeros(0, dtype=bool)
    still = int((base.evaded & ~refused).sum())
    clean_refused = float(guard.refuses(matrix(test, features)).mean())
    low, high = wilson(still, base.attacked)
    report["profile_refusal"] = {
        "attacked": base.attacked, "succeeded": still, "success_rate": still / base.attacked if base.attacked else 0.0,
        "success_interval": {"low": low, "high": high}, "auroc": report["baseline_retrained"]["auroc"],
        "clean_refused": clean_refused, "refuse_rate": refuse_rate}
    report["kept_defences"] = kept_defences(report, max_auroc_cost)
    if membership:
        from analytics.privacy import membership_report

        try:
            report["membership_inference"] = membership_report(
                model.predict_proba, train, calibration, test, features, model.params, defence=membership_defence,
                applied=membership_applied,
                undefended_params=model.defences.get("membership", {}).get("undefended_params"),
                calibration_method=model.calibrator.method, seed=seed)
        except ValueError as exc:  # too few rows of a class in a split to fit or measure
            report["membership_inference"] = {"error": str(exc)}
    return report


def kept_defences(report: dict[str, Any], max_auroc_cost: float, alpha: float = 0.05) -> list[str]:
    """The defences that lower the success rate significantly against the retrained baseline, at a small cost.

    Each defence entry of ``report`` gains ``p_lower`` (the one-sided p-value) and ``kept``.
    """
    base = report["baseline_retrained"]
    kept = []
    for name in ("monotone", "adversarial_augmentation", "profile_refusal"):
        entry = report.get(name)
        if not entry:
            continue
        p = lower_rate_p(entry["succeeded"], entry["attacked"], base["succeeded"], base["attacked"])
        cost = base["auroc"] - entry["auroc"]
        if name == "profile_refusal":
            # Its cost is the clean rows it refuses, not AUROC: allowed up to twice the configured refusal rate.
            ok_cost = entry["clean_refused"] <= 2 * entry["refuse_rate"]
        else:
            ok_cost = cost <= max_auroc_cost
        entry["p_lower"] = p
        entry["kept"] = bool(p is not None and p < alpha and ok_cost)
        if entry["kept"]:
            kept.append(name)
    return kept
