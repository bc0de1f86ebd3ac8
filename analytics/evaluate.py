"""Held-out evaluation and the HTML model card: metrics, subgroup gaps, and the plots a reviewer looks at.

Metrics are computed on the test split with calibrated probabilities: AUROC, AUPRC, sensitivity and specificity
at the chosen threshold, Brier score, a calibration curve and the confusion matrix; the same per subgroup (sex,
age band), with the largest gap in sensitivity or AUROC flagged. The card is one self-contained HTML file: PNG
plots (matplotlib, Agg) are embedded as base64, so it opens anywhere and leaks nothing to the network.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ValidationError

# Subgroups smaller than this are listed but not used to find the largest gap (too noisy to flag).
MIN_SUBGROUP = 30


def require_both_classes(labels: pd.Series, splits: pd.Series, what: str) -> None:
    """Refuse labels that leave a split without a positive or a negative case (nothing to fit or measure).

    Raises:
        ValidationError: naming the split and its counts (no value of any row).
    """
    labels = pd.Series(np.asarray(labels, dtype=int), index=splits.index)
    if labels.empty:
        raise ValidationError(f"{what} has no labelled rows")
    if labels.sum() == 0 or labels.sum() == len(labels):
        kind = "positive" if labels.sum() == 0 else "negative"
        raise ValidationError(f"{what} has no {kind} case in {len(labels)} rows: check the label and the training "
                              "config's positive_class")
    for split, part in labels.groupby(splits, sort=True):
        positives = int(part.sum())
        if positives == 0 or positives == len(part):
            raise ValidationError(f"the {split} split of {what} has {positives} positive of {len(part)} rows: more "
                                  "labelled data (of both classes) is needed to train and evaluate")


def metrics(y: np.ndarray, prob: np.ndarray, threshold: float, *, intervals: bool = True, n_boot: int = 200,
            seed: int = 0) -> dict[str, Any]:
    """Discrimination, calibration and threshold metrics of calibrated probabilities ``prob`` against ``y``.

    With ``intervals`` the result carries ``"intervals"``: :func:`bootstrap_metrics` of the same rows, so every
    figure a card shows has its 95 % interval next to it.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    flag = prob >= threshold
    tp = int((flag & (y == 1)).sum())
    fn = int((~flag & (y == 1)).sum())
    tn = int((~flag & (y == 0)).sum())
    fp = int((flag & (y == 0)).sum())
    both = len(np.unique(y)) == 2
    out: dict[str, Any] = {
        "auroc": float(roc_auc_score(y, prob)) if both else None,
        "auprc": float(average_precision_score(y, prob)) if both else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "brier": float(brier_score_loss(y, prob)) if len(y) else None,
        "ece": float(_batch_metrics(y[None, :], prob[None, :], threshold, 10)["ece"][0]) if len(y) else None,
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }
    if intervals:
        out["intervals"] = bootstrap_metrics(y, prob, threshold, n_boot=n_boot, seed=seed)
    return out


BOOTSTRAP_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "brier", "ece")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as the Mann-Whitney AUROC needs."""
    order = np.argsort(values, axis=-1, kind="mergesort")
    ranked = np.take_along_axis(values, order, axis=-1)
    n = values.shape[-1]
    ranks = np.empty(values.shape, dtype=float)
    position = np.broadcast_to(np.arange(1, n + 1, dtype=float), values.shape)
    # Tied runs: each element gets the mean position of its run.
    new_run = np.concatenate([np.ones((*values.shape[:-1], 1), dtype=bool), ranked[..., 1:] != ranked[..., :-1]],
                             axis=-1)
    run_id = np.cumsum(new_run, axis=-1) - 1
    sums = np.zeros(values.shape, dtype=float)
    counts = np.zeros(values.shape, dtype=float)
    rows = np.indices(values.shape[:-1])
    index = (*[np.broadcast_to(r[..., None], values.shape) for r in rows], run_id)
    np.add.at(sums, index, position)
    np.add.at(counts, index, 1.0)
    mean_rank = np.take_along_axis(sums / np.where(counts > 0, counts, 1.0), run_id, axis=-1)
    np.put_along_axis(ranks, order, mean_rank, axis=-1)
    return ranks


def _batch_metrics(y: np.ndarray, prob: np.ndarray, threshold: float, bins: int) -> dict[str, np.ndarray]:
    """Every bootstrap metric for each row of ``y``/``prob`` (shape ``(draws, n)``) at once."""
    pos = y.sum(axis=-1)
    neg = y.shape[-1] - pos
    flag = prob >= threshold
    tp = (flag & (y == 1)).sum(axis=-1)
    tn = (~flag & (y == 0)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ranks = _ranks(prob)
        auroc = ((ranks * y).sum(axis=-1) - pos * (pos + 1) / 2) / (pos * neg)
        # Average precision as scikit-learn defines it: tied scores are one threshold, so each positive counts
        # the precision at the end of its run of ties (highest scores first).
        order = np.argsort(-prob, axis=-1, kind="mergesort")
        hits = np.take_along_axis(y, order, axis=-1)
        ranked = np.take_along_axis(prob, order, axis=-1)
        n = y.shape[-1]
        run_end = np.concatenate([ranked[..., 1:] != ranked[..., :-1], np.ones((*y.shape[:-1], 1), dtype=bool)],
                                 axis=-1)
        end = np.where(run_end, np.arange(n), n)[..., ::-1]
        end = np.minimum.accumulate(end, axis=-1)[..., ::-1]
        cum = np.cumsum(hits, axis=-1)
        precision = np.take_along_axis(cum, end, axis=-1) / (end + 1)
        auprc = (precision * hits).sum(axis=-1) / pos
        sensitivity = tp / pos
        specificity = tn / neg
    brier = ((prob - y) ** 2).mean(axis=-1)
    # Expected calibration error over equal-width probability bins.
    which = np.clip((prob * bins).astype(int), 0, bins - 1)
    ece = np.zeros(y.shape[0])
    for b in range(bins):
        inside = which == b
        count = inside.sum(axis=-1)
        gap = np.abs((prob * inside).sum(axis=-1) - (y * inside).sum(axis=-1))
        ece += np.where(count > 0, gap, 0.0)
    ece /= y.shape[-1]
    undefined = (pos == 0) | (neg == 0)
    return {"auroc": np.where(undefined, np.nan, auroc), "auprc": np.where(pos == 0, np.nan, auprc),
            "sensitivity": np.where(pos == 0, np.nan, sensitivity),
            "specificity": np.where(neg == 0, np.nan, specificity), "brier": brier, "ece": ece}


def bootstrap_metrics(y: np.ndarray, prob: np.ndarray, threshold: float, *, n_boot: int = 200, seed: int = 0,
                      bins: int = 10) -> dict[str, dict[str, float | None]]:
    """Each metric's value and 95 % percentile-bootstrap interval: ``{metric: {"value", "low", "high"}}``.

    Metrics: AUROC, AUPRC, sensitivity and specificity at ``threshold``, Brier score and expected calibration
    error (``bins`` equal-width bins). All resamples are computed at once (vectorised over draws); a draw missing
    a class does not count for the metrics that need it. A metric undefined on the data itself is ``None``.
    """
    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    if not len(y):
        return {m: {"value": None, "low": None, "high": None} for m in BOOTSTRAP_METRICS}
    point = _batch_metrics(y[None, :], prob[None, :], threshold, bins)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    draws = _batch_metrics(y[idx], prob[idx], threshold, bins)
    out: dict[str, dict[str, float | None]] = {}
    for name in BOOTSTRAP_METRICS:
        value = float(point[name][0])
        sample = draws[name][~np.isnan(draws[name])]
        if np.isnan(value) or not len(sample):
            out[name] = {"value": None if np.isnan(value) else value, "low": None, "high": None}
            continue
        low, high = np.quantile(sample, [0.025, 0.975])
        out[name] = {"value": value, "low": float(low), "high": float(high)}
    return out


def subgroup_metrics(frame: pd.DataFrame, y: np.ndarray, prob: np.ndarray, threshold: float,
                     columns: list[str], *, min_n: int = MIN_SUBGROUP, min_positives: int = 5) -> dict[str, Any]:
    """Metrics with intervals per level of each subgroup column, and the largest gap (AUROC or sensitivity).

    A level with fewer than ``min_n`` rows or ``min_positives`` positives is listed with its figures but marked
    ``too_small`` and never used to find or flag a gap: an n = 3 group's sensitivity is noise, not a finding.
    A sensitivity gap also needs ``min_n`` positives in both groups.
    """
    out: dict[str, Any] = {"groups": {}, "largest_gap": None, "min_n": int(min_n)}
    largest: dict[str, Any] | None = None
    for column in columns:
        values = frame[column].fillna("(missing)").astype(str).to_numpy()
        per: dict[str, Any] = {}
        for level in sorted(set(values)):
            mask = values == level
            per[level] = metrics(y[mask], prob[mask], threshold)
            per[level]["too_small"] = bool(per[level]["n"] < min_n or per[level]["positives"] < min_positives)
        out["groups"][column] = per
        for metric in ("auroc", "sensitivity"):
            # Sensitivity is a proportion of the positives alone: those must number min_n too, or a group with
            # 5 positives all caught (interval 1.000-1.000) would "differ" from everyone.
            usable = {k: v[metric] for k, v in per.items() if v[metric] is not None and not v["too_small"]
                      and (metric != "sensitivity" or v["positives"] >= min_n)}
            if len(usable) < 2:
                continue
            low, high = min(usable, key=usable.get), max(usable, key=usable.get)
            gap = usable[high] - usable[low]
            if largest is None or gap > largest["gap"]:
                low_ci, high_ci = per[low]["intervals"][metric], per[high]["intervals"][metric]
                largest = {"column": column, "metric": metric, "gap": float(gap), "low": low, "high": high,
                           "low_value": usable[low], "high_value": usable[high],
                           "low_interval": [low_ci["low"], low_ci["high"]],
                           "high_interval": [high_ci["low"], high_ci["high"]],
                           # Intervals that do not overlap: a gap the test split's size supports.
                           "separated": bool(None not in (low_ci["high"], high_ci["low"])
                                             and low_ci["high"] < high_ci["low"])}
    out["largest_gap"] = largest
    return out


def calibration_curve(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed rate in quantile bins of the predictions."""
    order = np.argsort(prob)
    chunks = [c for c in np.array_split(order, min(bins, max(len(prob), 1))) if len(c)]
    return {"predicted": [float(prob[c].mean()) for c in chunks], "observed": [float(y[c].mean()) for c in chunks],
            "count": [len(c) for c in chunks]}


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(y: np.ndarray, prob: np.ndarray, threshold: float, importance: dict[str, float]) -> dict[str, str]:
    """ROC, PR, calibration, confusion matrix and feature importance as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = {}
    fpr, tpr, _ = roc_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, lw=2)
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    m = metrics(y, prob, threshold)
    if m["specificity"] is not None and m["sensitivity"] is not None:
        ax.scatter([1 - m["specificity"]], [m["sensitivity"]], c="red", zorder=3, label="threshold")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC (AUROC {_fmt(m['auroc'])})")
    ax.legend(loc="lower right")
    out["roc"] = _png(fig)
    precision, recall, _ = precision_recall_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(recall, precision, lw=2)
    ax.axhline(y.mean(), ls="--", c="grey")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"PR (AUPRC {_fmt(m['auprc'])})")
    out["pr"] = _png(fig)
    curve = calibration_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.plot(curve["predicted"], curve["observed"], marker="o")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title=f"Calibration (Brier {_fmt(m['brier'])})")
    out["calibration"] = _png(fig)
    c = m["confusion"]
    fig, ax = plt.subplots(figsize=(3.4, 3))
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        # White on the dark cells: the largest count must stay readable.
        ax.text(j, i, f"{v:,}", ha="center", va="center", fontsize=12,
                color="white" if v > grid.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["flag: no", "flag: yes"], yticklabels=["true: no", "true: yes"],
           title="Confusion at threshold")
    out["confusion"] = _png(fig)
    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:15][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(top), 3) + 0.8))
    ax.barh([_short(readable(k)) for k, _ in top], [v for _, v in top])
    ax.set(xlabel="total gain", title="Feature importance (top 15)")
    out["importance"] = _png(fig)
    return out


def readable(feature: str) -> str:
    """The feature's display name (:mod:`analytics.names`), or the name itself when nothing describes it."""
    from analytics.names import display_name

    try:
        return display_name(str(feature))
    except (KeyError, ValueError, OSError):
        return str(feature)


def _short(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _fmt(value: Any) -> str:
    """Three decimals for every real number (numpy's too), thousands separators for counts, text escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{float(value):.3f}"
    return html.escape(str(value))


def _ci(interval: dict[str, Any] | None) -> str:
    if not interval or interval.get("low") is None:
        return ""
    return f"<span class='ci'>95% CI {_fmt(interval['low'])}–{_fmt(interval['high'])}</span>"


def _with_ci(value: Any, interval: dict[str, Any] | None) -> str:
    return f"{_fmt(value)} {_ci(interval)}".strip()


_TILES = {"auroc": "AUROC", "auprc": "AUPRC", "sensitivity": "sensitivity", "specificity": "specificity",
          "brier": "Brier score", "ece": "calibration error (ECE)"}


def _promotion_html(promotion: dict[str, Any] | None) -> str:
    if not promotion:
        return ""
    decision = next((promotion[k] for k in ("decision", "status", "state") if promotion.get(k) is not None), None)
    if decision is None and "promoted" in promotion:
        decision = "promoted" if promotion["promoted"] else "not promoted (stays a candidate)"
    good = str(decision).lower().startswith(("promot", "current", "accept")) or promotion.get("promoted") is True
    reasons = promotion.get("reasons") or []
    items = "".join(f"<li>{html.escape(str(r))}</li>" for r in (reasons if isinstance(reasons, list) else [reasons]))
    rest = {k: v for k, v in promotion.items() if k not in ("decision", "status", "state", "promoted", "reasons",
                                                             "checks") and v is not None}
    checks = promotion.get("checks")
    check_html = ""
    if isinstance(checks, dict) and checks and all(isinstance(c, dict) for c in checks.values()):
        check_html = ("<table><tr><th>check</th><th>value</th><th>95% interval</th><th>floor</th><th>judged on</th>"
                      "<th>passed</th></tr>" + "".join(
                          f"<tr><td>{html.escape(str(name))}</td><td>{_fmt(c.get('value'))}</td>"
                          f"<td>{_fmt(c.get('low'))}–{_fmt(c.get('high'))}</td><td>{_fmt(c.get('floor'))}</td>"
                          f"<td>{_fmt(c.get('judged_on'))}</td><td>{_fmt(c.get('passed'))}</td></tr>"
                          for name, c in checks.items()) + "</table>")
    elif checks:
        rest["checks"] = checks
    return (f"<div class='{'ok' if good else 'warn'}'><b>Promotion decision: {_fmt(decision)}</b>"
            f"{f'<ul>{items}</ul>' if items else ''}</div>{check_html}{_table(rest) if rest else ''}")


def _membership_html(membership: dict[str, Any] | None) -> str:
    """Membership-inference advantage with and without the defence (see :mod:`analytics.privacy`)."""
    if not membership:
        return "<p>Membership inference was not measured for this model.</p>"
    if membership.get("error"):
        return f"<p class='warn'>Membership inference could not be measured: {_fmt(membership['error'])}</p>"
    rows = []
    applied = bool(membership.get("applied"))
    labels = ({"undefended": "without the defence (retrained)", "defended": "<b>as served</b> (defence on)"}
              if applied else
              {"undefended": "<b>as served</b> (no defence)", "defended": "with the defence (retrained)"})
    for key in ("undefended", "defended"):
        m = membership.get(key)
        if not m:
            continue
        rows.append(f"<tr><td>{labels[key]}</td>"
                    f"<td>{_with_ci(m.get('attack_auroc'), m.get('attack_auroc_interval'))}</td>"
                    f"<td>{_fmt(m.get('advantage'))}</td><td>{_fmt(m.get('tpr_at_fpr'))}</td>"
                    f"<td>{_fmt(m.get('clean_auroc'))}</td></tr>")
    defence = membership.get("defence") or {}
    note = (f"<p>Defence: {_fmt(', '.join(f'{k}={v}' for k, v in defence.items()))}. Applied: "
            + ("<b>yes</b> — the served model is trained with it and serves rounded probabilities."
               if applied else "<b>no</b> — measured on a retrained copy; the served model does not use it.")
            + "</p>") if defence else ""
    fpr = membership.get("fpr", 0.01)
    return (f"<p>{_fmt(membership.get('attack', 'black-box attack on the model outputs'))}: "
            f"{_fmt(membership.get('members'))} training rows (members) against {_fmt(membership.get('non_members'))} "
            "rows the model never saw. AUROC 0.5 means the attacker learns nothing; advantage = 2·AUROC − 1.</p>"
            "<table><tr><th>model</th><th>attack AUROC</th><th>advantage</th>"
            f"<th>TPR at {float(fpr):.0%} FPR</th><th>clean test AUROC</th></tr>{''.join(rows)}</table>{note}")


def _evasion_html(robustness: dict[str, Any]) -> str:
    rows = []
    order = ("undefended", "baseline_retrained", "monotone", "adversarial_augmentation", "profile_refusal")
    for key, value in sorted(robustness.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        if not isinstance(value, dict) or "success_rate" not in value:
            continue
        rows.append(f"<tr><td>{html.escape(key.replace('_', ' '))}</td><td>{_fmt(value.get('attacked'))}</td>"
                    f"<td>{_with_ci(value.get('success_rate'), value.get('success_interval'))}</td>"
                    f"<td>{_fmt(value.get('median_linf_of_bound'))}</td><td>{_fmt(value.get('auroc'))}</td></tr>")
    if not rows:
        return _table(robustness)
    kept = robustness.get("kept_defences")
    note = (f"<p>Defences kept (they measurably help): {_fmt(', '.join(kept) or 'none')}.</p>"
            if kept is not None else "")
    applied = robustness.get("applied")
    if applied is not None:
        note += (f"<p>Applied to the served model (the undefended row): "
                 f"{_fmt(', '.join(a.replace('_', ' ') for a in applied) or 'none')}.</p>")
    return ("<p>Bounded black-box evasion of flagged true positives (plausible changes of measured values).</p>"
            "<table><tr><th>variant</th><th>attacked</th><th>success rate</th><th>median step (of bound)</th>"
            f"<th>clean AUROC</th></tr>{''.join(rows)}</table>{note}")


def _screen_html(screen: dict[str, Any]) -> str:
    if not screen:
        return "<p>No poisoning screen ran.</p>"
    accepted = screen.get("accepted", True)
    head = (f"<p class='{'ok' if accepted else 'warn'}'>Batch {_fmt(screen.get('batch_id'))}: "
            f"{_fmt(screen.get('decision'))}; {_fmt(screen.get('flagged'))} of {_fmt(screen.get('rows'))} rows "
            f"flagged ({_fmt(', '.join(f'{k}: {v}' for k, v in (screen.get('reasons') or {}).items()) or 'none')})"
            "</p>")
    rest = {k: v for k, v in screen.items() if k not in ("batch_id", "decision", "flagged", "rows", "reasons",
                                                         "accepted", "threshold", "extra")}
    return head + _table(rest)


def _subgroups_html(subgroups: dict[str, Any]) -> str:
    min_n = subgroups.get("min_n", MIN_SUBGROUP)
    gap = subgroups.get("largest_gap")
    if gap:
        weight = ("the intervals do not overlap" if gap.get("separated") else
                  "the intervals overlap: the gap may be chance") if "separated" in gap else ""
        gap_html = ("<p class='warn'>Largest subgroup gap (groups of n ≥ {n}): <b>{metric}</b> {gap} between "
                    "{column}={low} ({lv}) and {column}={high} ({hv}){w}.</p>").format(
            n=_fmt(min_n), metric=html.escape(str(gap["metric"])), gap=_fmt(gap["gap"]),
            column=html.escape(gap["column"]), low=html.escape(gap["low"]), high=html.escape(gap["high"]),
            lv=_fmt(gap["low_value"]), hv=_fmt(gap["high_value"]), w=f"; {weight}" if weight else "")
    else:
        gap_html = f"<p>No two subgroups of n ≥ {_fmt(min_n)} (and 5 positives) to compare.</p>"
    rows = []
    for column, levels in subgroups.get("groups", {}).items():
        for level, m in levels.items():
            small = m.get("too_small", m["n"] < min_n)
            iv = m.get("intervals", {})
            rows.append(f"<tr{' class=small' if small else ''}><td>{html.escape(column)}</td>"
                        f"<td class=nw>{html.escape(level)}</td><td>{_fmt(m['n'])}</td><td>{_fmt(m['positives'])}</td>"
                        + "".join(f"<td>{_with_ci(m.get(k), iv.get(k))}</td>"
                                  for k in ("auroc", "sensitivity", "specificity"))
                        + f"<td>{'n too small: shown, not flagged' if small else ''}</td></tr>")
    return (f"{gap_html}<table><tr><th>subgroup</th><th>level</th><th>n</th><th>positives</th><th>AUROC</th>"
            f"<th>sensitivity</th><th>specificity</th><th></th></tr>{''.join(rows)}</table>")


def write_model_card(path: Path, *, title: str, summary: dict[str, Any], test_metrics: dict[str, Any],
                     subgroups: dict[str, Any], images: dict[str, str], sections: dict[str, Any],
                     promotion: dict[str, Any] | None = None, membership: dict[str, Any] | None = None,
                     metric_intervals: dict[str, Any] | None = None, snapshot: dict[str, Any] | None = None,
                     screening: dict[str, Any] | None = None, robustness: dict[str, Any] | None = None,
                     features: list[str] | None = None) -> Path:
    """Write the HTML model card.

    Args:
        promotion: the promotion decision and its ``reasons`` (shown first).
        membership: the membership-inference result (:func:`analytics.privacy.membership_report`); by default
            the ``membership_inference`` entry of ``robustness`` (or of the ``Evasion robustness`` section).
        metric_intervals: :func:`bootstrap_metrics` of the test split; by default ``test_metrics["intervals"]``.
        snapshot: the data the model was trained on (table versions, SHA-256); screening: the poisoning screen's
            report; robustness: the evasion report. Each defaults to the matching entry of ``sections``.
        features: the model's features, shown with readable names (default: the ``Features`` section).
        sections: extra titled tables; ``Poisoning screen``, ``Evasion robustness`` and ``Features`` are drawn
            by the card's own layout.
    """
    sections = dict(sections)
    screening = screening if screening is not None else sections.pop("Poisoning screen", None)
    sections.pop("Poisoning screen", None)
    robustness = robustness if robustness is not None else sections.pop("Evasion robustness", None)
    sections.pop("Evasion robustness", None)
    features = features if features is not None else sections.pop("Features", None)
    sections.pop("Features", None)
    robustness = dict(robustness or {})
    membership = membership if membership is not None else robustness.pop("membership_inference", None)
    robustness.pop("membership_inference", None)
    robustness.pop("bounds", None)
    intervals = metric_intervals if metric_intervals is not None else test_metrics.get("intervals", {})
    if snapshot is None:
        snapshot = {k: summary[k] for k in ("training tables", "training data SHA-256", "rows (all splits)",
                                            "positives") if k in summary}
    tiles = "".join(f"<div class='tile'><div class='v'>{_fmt(test_metrics.get(k))}</div><div>{label}</div>"
                    f"<div>{_ci(intervals.get(k))}</div></div>" for k, label in _TILES.items())
    imgs = "".join(f"<figure><img alt='{html.escape(k)}' id='plot-{html.escape(k)}' "
                   f"src='data:image/png;base64,{v}'/></figure>" for k, v in images.items())
    feature_html = ("<table><tr><th>feature</th><th>meaning</th></tr>" + "".join(
        f"<tr><td><code>{html.escape(str(f))}</code></td><td>{html.escape(readable(f))}</td></tr>" for f in features)
        + "</table>") if features else ""
    extra = "".join(f"<h2>{html.escape(name)}</h2>{_table(content)}" for name, content in sections.items())
    n = test_metrics.get("n")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
.tiles{{display:flex;gap:.6em;flex-wrap:wrap}}
.tile{{background:#eef4fb;padding:.6em;border-radius:8px;text-align:center;min-width:8.5em}}
.v{{font-size:1.8em;font-weight:600}}.ci{{color:#555;font-size:.85em;white-space:nowrap}}
table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}
tr.small td{{color:#888}}.nw{{white-space:nowrap}}
figure{{display:inline-block;margin:.5em}}
.warn{{background:#fff4e0;padding:.5em;border-left:4px solid #f0a000}}
.ok{{background:#e8f6ea;padding:.5em;border-left:4px solid #2a9d3a}}</style></head><body>
<h1>{html.escape(title)}</h1>{_promotion_html(promotion)}<div class="tiles">{tiles}</div>
<p>Held-out test split (by patient{f', {_fmt(n)} rows' if n else ''}), calibrated probabilities, threshold
{_fmt(test_metrics.get('threshold'))}; intervals are 95 % percentile bootstrap.</p>
{imgs}<h2>Subgroups</h2>{_subgroups_html(subgroups)}
<h2>Training data and poisoning screen</h2>{_table(snapshot) if snapshot else ''}{_screen_html(screening or {})}
<h2>Privacy: membership inference</h2>{_membership_html(membership)}
<h2>Evasion robustness</h2>{_evasion_html(robustness) if robustness else '<p>Not measured.</p>'}
<h2>Model</h2>{_table(summary)}{extra}{f'<h2>Features</h2>{feature_html}' if feature_html else ''}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


def _table(content: Any) -> str:
    if isinstance(content, dict):
        return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_table(v)}</td></tr>"
                                   for k, v in content.items()) + "</table>"
    if isinstance(content, list | tuple) and content and isinstance(content[0], dict):
        keys = list(dict.fromkeys(k for row in content for k in row))
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_table(row.get(k))}</td>" for k in keys) + "</tr>" for row in content)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(content, list | tuple):
        return ", ".join(_fmt(x) for x in content[:40]) + (" …" if len(content) > 40 else "")
    return _fmt(content)
