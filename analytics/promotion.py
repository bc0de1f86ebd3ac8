"""Whether a trained candidate model earns becoming the current one: floors with intervals, and no regression.

A registered model is a *candidate*. It may become *current* when, on its held-out test split:

- it meets every floor of ``settings.governance``: AUROC, sensitivity and specificity at its threshold, and the
  expected calibration error. With ``judge_on: bound`` (the default) the pessimistic end of the 95 % percentile
  bootstrap interval is compared with the floor (the lower bound of AUROC, sensitivity and specificity, the upper
  bound of the ECE): a model passes only when its test data show it meets the floor, not when a lucky split does;
  ``judge_on: point`` compares the point estimates;
- and it is not worse than the current model on the same rows: the current model scores the candidate's test
  split and the candidate's AUROC may be at most ``max_auroc_drop`` below the current one's (point estimates on
  identical rows: the split-to-split noise that intervals guard against cancels out). The first model of a name
  is judged on the floors alone.

:func:`judge` is a pure function of labels and probabilities; the training flow gathers them and acts on its
verdict, and the registry moves the signed ``current`` pointer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.settings import GovernanceSettings

# (metric, floor setting, higher is better)
_FLOORS = (("auroc", "min_auroc", True), ("sensitivity", "min_sensitivity", True),
           ("specificity", "min_specificity", True), ("ece", "max_ece", False))


def judge(y: np.ndarray, prob: np.ndarray, threshold: float, governance: GovernanceSettings, *,
          current: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The promotion verdict of a candidate's calibrated test probabilities ``prob`` against labels ``y``.

    Args:
        threshold: the candidate's flag threshold (sensitivity and specificity are measured there).
        current: the current model on the same rows, ``{"model_version": str, "prob": array}``; None for the first
            model of a name.

    Returns:
        ``{"decision": "promoted"|"candidate", "reasons": [...], "checks": {metric: {...}}, "comparison": {...}
        | None, "judge_on": ..., "current": the current model version or None}``. ``reasons`` says why in words,
        also when the candidate passes.
    """
    from analytics.evaluate import bootstrap_metrics

    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    intervals = bootstrap_metrics(y, prob, threshold, n_boot=governance.n_boot, seed=seed)
    bound = governance.judge_on == "bound"
    checks: dict[str, Any] = {}
    failed: list[str] = []
    for metric, setting, higher in _FLOORS:
        floor = float(getattr(governance, setting))
        interval = intervals[metric]
        side = ("low" if higher else "high") if bound else "value"
        judged = interval[side]
        passed = judged is not None and (judged >= floor if higher else judged <= floor)
        checks[metric] = {**interval, "judged_on": side, "floor": floor, "passed": bool(passed)}
        if not passed:
            what = {"low": "95 % lower bound", "high": "95 % upper bound", "value": "point estimate"}[side]
            shown = "undefined" if judged is None else f"{judged:.3f}"
            failed.append(f"{metric} {what} {shown} {'below' if higher else 'above'} the floor {floor:.2f}")
    comparison = None
    if current is not None:
        from sklearn.metrics import roc_auc_score

        theirs = float(roc_auc_score(y, np.asarray(current["prob"], dtype=float)))
        ours = float(intervals["auroc"]["value"]) if intervals["auroc"]["value"] is not None else float("nan")
        drop = theirs - ours
        comparison = {"current": current["model_version"], "current_auroc": theirs, "candidate_auroc": ours,
                      "auroc_drop": drop, "tolerance": governance.max_auroc_drop, "rows": len(y),
                      "passed": bool(drop <= governance.max_auroc_drop)}
        if not comparison["passed"]:
            failed.append(f"AUROC {ours:.3f} is {drop:.3f} below the current model {current['model_version']}'s "
                          f"{theirs:.3f} on the same {len(y)} test rows (tolerance {governance.max_auroc_drop:.2f})")
    if failed:
        reasons = failed
    else:
        reasons = [f"meets every floor on the {'95 % interval bound' if bound else 'point estimate'} "
                   f"(AUROC {checks['auroc'][checks['auroc']['judged_on']]:.3f} ≥ {governance.min_auroc:.2f})"]
        reasons.append(f"AUROC {comparison['candidate_auroc']:.3f} vs the current model {comparison['current']}'s "
                       f"{comparison['current_auroc']:.3f} on the same test rows" if comparison else
                       "first model of its name: judged on the floors alone")
    return {"decision": "candidate" if failed else "promoted", "reasons": reasons, "checks": checks,
            "comparison": comparison, "judge_on": governance.judge_on,
            "current": current["model_version"] if current else None}


def recheck(recorded: dict[str, Any] | None, governance: GovernanceSettings, current: str | None) -> list[str]:
    """Why a registered candidate may not be promoted by hand now; [] when it may.

    The test rows are not kept after training, so the candidate's recorded judgement is held to today's floors
    (its recorded interval bounds or point estimates) and its recorded comparison must have been made against
    the model that is current now (``current``, a model version or None).
    """
    if not recorded or not recorded.get("checks"):
        return ["no recorded judgement (registered before promotion existed): promote with --force --reason"]
    problems = []
    bound = governance.judge_on == "bound"
    for metric, setting, higher in _FLOORS:
        check = recorded["checks"].get(metric) or {}
        judged = check.get(("low" if higher else "high") if bound else "value")
        floor = float(getattr(governance, setting))
        if judged is None or (judged < floor if higher else judged > floor):
            shown = "undefined" if judged is None else f"{judged:.3f}"
            problems.append(f"{metric} {shown} {'below' if higher else 'above'} the floor {floor:.2f}")
    comparison = recorded.get("comparison")
    compared_with = comparison["current"] if comparison else None
    if current is not None and compared_with != current:
        problems.append(f"it was never compared with the current model {current} (judged against "
                        f"{compared_with or 'no model'}): retrain, or promote with --force --reason")
    elif comparison and not comparison.get("passed"):
        problems.append(f"AUROC {comparison['auroc_drop']:.3f} below the current model {current} on its test rows")
    return problems
