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


def metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Discrimination, calibration and threshold metrics of calibrated probabilities ``prob`` against ``y``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    flag = prob >= threshold
    tp = int((flag & (y == 1)).sum())
    fn = int((~flag & (y == 1)).sum())
    tn = int((~flag & (y == 0)).sum())
    fp = int((flag & (y == 0)).sum())
    both = len(np.unique(y)) == 2
    return {
        "auroc": float(roc_auc_score(y, prob)) if both else None,
        "auprc": float(average_precision_score(y, prob)) if both else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "brier": float(brier_score_loss(y, prob)) if len(y) else None,
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def subgroup_metrics(frame: pd.DataFrame, y: np.ndarray, prob: np.ndarray, threshold: float,
                     columns: list[str]) -> dict[str, Any]:
    """Metrics per level of each subgroup column, and the largest gap (AUROC or sensitivity) between levels."""
    out: dict[str, Any] = {"groups": {}, "largest_gap": None}
    largest: dict[str, Any] | None = None
    for column in columns:
        values = frame[column].fillna("(missing)").astype(str).to_numpy()
        per: dict[str, Any] = {}
        for level in sorted(set(values)):
            mask = values == level
            per[level] = metrics(y[mask], prob[mask], threshold)
        out["groups"][column] = per
        for metric in ("auroc", "sensitivity"):
            usable = {k: v[metric] for k, v in per.items() if v[metric] is not None and v["n"] >= MIN_SUBGROUP
                      and v["positives"] >= 5}
            if len(usable) < 2:
                continue
            low, high = min(usable, key=usable.get), max(usable, key=usable.get)
            gap = usable[high] - usable[low]
            if largest is None or gap > largest["gap"]:
                largest = {"column": column, "metric": metric, "gap": float(gap), "low": low, "high": high,
                           "low_value": usable[low], "high_value": usable[high]}
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
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="black", fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["flag: no", "flag: yes"], yticklabels=["true: no", "true: yes"],
           title="Confusion at threshold")
    out["confusion"] = _png(fig)
    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:15][::-1]
    fig, ax = plt.subplots(figsize=(5, 0.3 * max(len(top), 3) + 0.8))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(xlabel="total gain", title="Feature importance (top 15)")
    out["importance"] = _png(fig)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def write_model_card(path: Path, *, title: str, summary: dict[str, Any], test_metrics: dict[str, Any],
                     subgroups: dict[str, Any], images: dict[str, str], sections: dict[str, Any]) -> Path:
    """Write the HTML model card; ``sections`` are extra titled tables (screening, robustness, CV, data)."""
    gap = subgroups.get("largest_gap")
    gap_html = ("<p class='warn'>Largest subgroup gap: <b>{metric}</b> {gap} between {column}={low} "
                "({lv}) and {column}={high} ({hv}).</p>").format(
        metric=html.escape(str(gap["metric"])), gap=_fmt(gap["gap"]), column=html.escape(gap["column"]),
        low=html.escape(gap["low"]), high=html.escape(gap["high"]), lv=_fmt(gap["low_value"]),
        hv=_fmt(gap["high_value"])) if gap else (
        "<p>No subgroup large enough to compare.</p>")
    tiles = "".join(f"<div class='tile'><div class='v'>{_fmt(test_metrics.get(k))}</div><div>{k}</div></div>"
                    for k in ("auroc", "auprc", "sensitivity", "specificity", "brier"))
    rows = []
    for column, levels in subgroups.get("groups", {}).items():
        for level, m in levels.items():
            rows.append(f"<tr><td>{html.escape(column)}</td><td>{html.escape(level)}</td><td>{m['n']}</td>"
                        f"<td>{m['positives']}</td><td>{_fmt(m['auroc'])}</td><td>{_fmt(m['sensitivity'])}</td>"
                        f"<td>{_fmt(m['specificity'])}</td></tr>")
    extra = "".join(f"<h2>{html.escape(name)}</h2>{_table(content)}" for name, content in sections.items())
    imgs = "".join(f"<figure><img alt='{k}' src='data:image/png;base64,{v}'/></figure>" for k, v in images.items())
    facts = _table(summary)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
.tiles{{display:flex;gap:1em}}.tile{{background:#eef4fb;padding:1em;border-radius:8px;text-align:center;min-width:8em}}
.v{{font-size:1.8em;font-weight:600}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}
figure{{display:inline-block;margin:.5em}}
.warn{{background:#fff4e0;padding:.5em;border-left:4px solid #f0a000}}</style></head><body>
<h1>{html.escape(title)}</h1><div class="tiles">{tiles}</div>
<p>Held-out test split (by patient), calibrated probabilities, threshold {_fmt(test_metrics.get('threshold'))}.</p>
{imgs}<h2>Subgroups</h2>{gap_html}<table><tr><th>subgroup</th><th>level</th><th>n</th><th>positives</th><th>AUROC</th>
<th>sensitivity</th><th>specificity</th></tr>{''.join(rows)}</table><h2>Model</h2>{facts}{extra}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


def _table(content: Any) -> str:
    if isinstance(content, dict):
        return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_table(v)}</td></tr>"
                                   for k, v in content.items()) + "</table>"
    if isinstance(content, list) and content and isinstance(content[0], dict):
        keys = list(dict.fromkeys(k for row in content for k in row))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_table(row.get(k))}</td>" for k in keys) + "</tr>" for row in content)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(content, list):
        return html.escape(", ".join(str(x) for x in content[:40]) + (" …" if len(content) > 40 else ""))
    return _fmt(content)
