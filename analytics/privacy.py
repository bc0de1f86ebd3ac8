"""Membership inference: how much a model's outputs reveal about who was in its training data, and a defence.

The attacker is black box: they hold a person's record (features and diagnosis) and see only the probability the
model serves for it, and want to know whether that person was in the training set. Two attacks, the stronger one
reported:

- ``loss``: the model's confidence in the true label (members tend to get more), thresholded (Yeom et al. 2018);
- ``shadow``: the attacker trains a shadow model of the same kind and parameters on data of their own (half in,
  half out), learns what a member's output looks like from it (a small gradient-boosted classifier on the
  probability, the true label and the confidence), and applies that to the target's outputs (Shokri et al. 2017).

Measured on equal numbers of members (training rows) and non-members (held-out rows the model never saw): the
attack AUROC (0.5: the attacker learns nothing), its 95 % bootstrap interval, the advantage 2·AUROC − 1, and the
true-positive rate at a low false-positive rate (the attacker who must be right when they accuse).

The defence, measured side by side on the same rows: regularisation chosen for it (shallower trees, larger leaves,
L2 on the leaf weights, row and column subsampling), early stopping on held-out data, and the served probability
rounded to ``round_significant`` figures. Its cost is the clean test AUROC next to the undefended one. With
``analytics.membership_defence`` on (the default) training applies it (:func:`analytics.train.fit_calibrated`) and
the report measures the served model as the defended side, beside an undefended retraining; off, the served
model is the undefended side and the defence is measured on a retraining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import LABEL
from analytics.train import Calibrator, fit_local, matrix, round_significant

Predict = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class MembershipDefence:
    """Training and serving choices that make members look like non-members (see the module docstring)."""

    max_depth: int = 3
    min_child_weight: float = 10.0
    reg_lambda: float = 10.0
    subsample: float = 0.7
    colsample_bytree: float = 0.7
    early_stopping_rounds: int = 20
    # Significant figures, not decimals: at a 5 % prevalence two decimals left six distinct probabilities below 0.06
    # and put the threshold at 0.01 (specificity 0, 1,494 of 1,500 patients flagged on the Spark cluster test).
    round_significant: int = 2

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the defence's regularisation (never less regularised than they already are)."""
        out = dict(params)
        out["max_depth"] = min(int(out.get("max_depth", 6)), self.max_depth)
        out["min_child_weight"] = max(float(out.get("min_child_weight", 1.0)), self.min_child_weight)
        out["reg_lambda"] = max(float(out.get("reg_lambda", 1.0)), self.reg_lambda)
        out["subsample"] = min(float(out.get("subsample", 1.0)), self.subsample)
        out["colsample_bytree"] = min(float(out.get("colsample_bytree", 1.0)), self.colsample_bytree)
        return out


def _confidence(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(y == 1, prob, 1.0 - prob)


def _attack_features(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    conf = np.clip(_confidence(prob, y), 1e-6, 1.0)
    return np.c_[prob, y, conf, np.log(conf)]


def _tpr_at_fpr(is_member: np.ndarray, score: np.ndarray, fpr: float) -> float:
    from sklearn.metrics import roc_curve

    false_pos, true_pos, _ = roc_curve(is_member, score)
    return float(np.interp(fpr, false_pos, true_pos))


def _summary(is_member: np.ndarray, score: np.ndarray, fpr: float, n_boot: int, seed: int) -> dict[str, Any]:
    from analytics.evaluate import bootstrap_metrics

    auroc = bootstrap_metrics(is_member, score, 0.5, n_boot=n_boot, seed=seed)["auroc"]
    return {"attack_auroc": auroc["value"], "attack_auroc_interval": {"low": auroc["low"], "high": auroc["high"]},
            "advantage": 2 * auroc["value"] - 1, "tpr_at_fpr": _tpr_at_fpr(is_member, score, fpr)}


def membership_attack(predict: Predict, members: pd.DataFrame, non_members: pd.DataFrame, shadow: pd.DataFrame,
                      features: list[str], params: dict[str, Any], *, shadow_predict: Callable[..., Predict]
                      | None = None, fpr: float = 0.01, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Attack ``predict`` (the served probability) on ``members`` vs ``non_members`` (same size), both attacks.

    Args:
        shadow: the attacker's own rows (same population, not the target's training rows); split half in, half out
            of a shadow model trained with ``params``.
        shadow_predict: ``shadow_predict(train_rows)`` returns the shadow model's predict; default: xgboost with
            ``params``, served as raw probabilities (the attacker mimics the target's training).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    y_in, y_out = members[LABEL].to_numpy(dtype=int), non_members[LABEL].to_numpy(dtype=int)
    p_in, p_out = predict(members), predict(non_members)
    is_member = np.r_[np.ones(len(members), dtype=int), np.zeros(len(non_members), dtype=int)]
    prob, y = np.r_[p_in, p_out], np.r_[y_in, y_out]
    loss = _summary(is_member, _confidence(prob, y), fpr, n_boot, seed)

    order = rng.permutation(len(shadow))
    half = len(shadow) // 2
    shadow_in, shadow_out = shadow.iloc[order[:half]], shadow.iloc[order[half:2 * half]]
    if shadow_predict is None:
        booster = fit_local(shadow_in, features, params)
        shadow_model: Predict = lambda frame: booster.inplace_predict(matrix(frame, features))  # noqa: E731
    else:
        shadow_model = shadow_predict(shadow_in)
    s_prob = np.r_[shadow_model(shadow_in), shadow_model(shadow_out)]
    s_y = np.r_[shadow_in[LABEL].to_numpy(dtype=int), shadow_out[LABEL].to_numpy(dtype=int)]
    s_member = np.r_[np.ones(len(shadow_in), dtype=int), np.zeros(len(shadow_out), dtype=int)]
    learner = HistGradientBoostingClassifier(max_depth=3, max_iter=100, random_state=seed)
    learner.fit(_attack_features(s_prob, s_y), s_member)
    shadow_score = learner.predict_proba(_attack_features(prob, y))[:, 1]
    shadow_result = _summary(is_member, shadow_score, fpr, n_boot, seed)
    best = "loss" if loss["attack_auroc"] >= shadow_result["attack_auroc"] else "shadow"
    return {**(loss if best == "loss" else shadow_result), "attack_used": best,
            "attacks": {"loss": loss, "shadow": shadow_result}}


def _balanced(train: pd.DataFrame, test: pd.DataFrame, limit: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = min(len(train), len(test), limit)
    rng = np.random.default_rng(seed)
    return (train.iloc[np.sort(rng.permutation(len(train))[:n])],
            test.iloc[np.sort(rng.permutation(len(test))[:n])])


def _fit_served(train: pd.DataFrame, calibration: pd.DataFrame, features: list[str], params: dict[str, Any],
                method: str, defence: MembershipDefence | None) -> tuple[Predict, int]:
    """Retrain as training would (with or without the defence); its served predict and its boosting rounds."""
    y_cal = calibration[LABEL].to_numpy(dtype=int)
    if defence is None:
        booster = fit_local(train, features, params)
    else:
        booster = fit_local(train, features, params, early_stopping=calibration, rounds=defence.early_stopping_rounds)
    calibrator = Calibrator.fit(method, booster.inplace_predict(matrix(calibration, features)), y_cal,
                                significant=defence.round_significant if defence is not None else None)
    return (lambda frame: calibrator.apply(booster.inplace_predict(matrix(frame, features))),
            int(booster.num_boosted_rounds()))


def membership_report(predict: Predict, train: pd.DataFrame, calibration: pd.DataFrame, test: pd.DataFrame,
                      features: list[str], params: dict[str, Any], *, defence: MembershipDefence | None = None,
                      applied: bool = False, undefended_params: dict[str, Any] | None = None,
                      calibration_method: str = "platt", fpr: float = 0.01, limit: int = 5000, n_boot: int = 200,
                      seed: int = 0) -> dict[str, Any]:
    """Membership advantage of the served model and of its other side (defended or undefended), with clean AUROCs.

    The members are training rows, the non-members test rows (equal numbers, at most ``limit``); the attacker's
    shadow data are the calibration rows (the same population, never in the booster's training set). A retrained
    side is fit on ``train`` and calibrated on ``calibration`` as training does: the defended one with
    :meth:`MembershipDefence.params`, stopped early on ``calibration`` and serving probabilities rounded to
    ``round_significant`` figures; the undefended one with ``undefended_params`` and nothing else.

    Args:
        predict: the served model's probability for a frame (rounded already when the defence is applied).
        params: the served model's parameters (the defended ones, early-stopped rounds as ``n_estimators``, when
            ``applied``).
        applied: the served model uses the defence: it is the ``defended`` side, and the ``undefended`` side is
            retrained with ``undefended_params`` (default ``params``). Otherwise the served model is the
            ``undefended`` side and the defence is retrained. ``served`` in the result names the served side.
    """
    from sklearn.metrics import roc_auc_score

    defence = defence or MembershipDefence()
    members, non_members = _balanced(train, test, limit, seed)
    y_test = test[LABEL].to_numpy(dtype=int)
    if applied:
        uparams = dict(undefended_params or params)
        undefended_predict, _ = _fit_served(train, calibration, features, uparams, calibration_method, None)
        dparams, defended_predict = dict(params), predict
        rounds = int(dparams.get("n_estimators", 0))
    else:
        uparams, undefended_predict = dict(params), predict
        dparams = defence.params(params)
        defended_predict, rounds = _fit_served(train, calibration, features, dparams, calibration_method, defence)
    undefended = membership_attack(undefended_predict, members, non_members, calibration, features, uparams, fpr=fpr,
                                   n_boot=n_boot, seed=seed)
    undefended["clean_auroc"] = float(roc_auc_score(y_test, undefended_predict(test)))

    def shadow_predict(rows: pd.DataFrame) -> Predict:
        # The attacker knows the defence too (Kerckhoffs): their shadow model is trained and rounded the same way.
        shadow = fit_local(rows, features, {**dparams, "n_estimators": rounds})
        return lambda frame: round_significant(shadow.inplace_predict(matrix(frame, features)),
                                               defence.round_significant)

    defended = membership_attack(defended_predict, members, non_members, calibration, features, dparams,
                                 shadow_predict=shadow_predict, fpr=fpr, n_boot=n_boot, seed=seed)
    defended["clean_auroc"] = float(roc_auc_score(y_test, defended_predict(test)))
    defended["rounds"] = rounds
    return {"attack": "black-box membership inference (loss threshold and shadow model; the stronger shown)",
            "members": len(members), "non_members": len(non_members), "fpr": fpr,
            "undefended": undefended, "defended": defended, "defence": asdict(defence), "applied": applied,
            "served": "defended" if applied else "undefended",
            "advantage_reduction": undefended["advantage"] - defended["advantage"],
            "auroc_cost": undefended["clean_auroc"] - defended["clean_auroc"]}
