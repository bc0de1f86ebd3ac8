"""Poisoning screen: before a new batch of training rows is used, find the rows that look planted.

Signals, each with a reason that travels with the row into the quarantine zone:

- ``label_inconsistent``: the row's label disagrees with (a) a model fitted on trusted data (out-of-fold when
  the batch screens itself) and (b) the labels of its k nearest trusted neighbours. Both are turned into a
  log-likelihood ratio against the class prior, so a rare true positive is not punished for being rare; the
  flag threshold is the quantile of the same score on trusted data at ``false_flag_rate``.
- ``outlier``: an isolation-forest score beyond anything seen in trusted data (0.5 % quantile).
- ``untrusted_source``: the row's ``_source`` has a trust weight below ``min_trust`` in the config.

Then reject-on-negative-impact: a model trained on trusted + screened batch is compared with one trained on
trusted data alone on a validation split; a batch that lowers validation AUROC by more than
``max_auroc_loss`` is rejected whole. Nothing is dropped silently: flagged rows are returned with reasons.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import GROUP, LABEL, ROW_ID
from analytics.train import fit_local, matrix

SOURCE = "_source"
REASON = "reason"
_K = 15
_OUTLIER_QUANTILE = 0.005


@dataclass
class ScreenReport:
    """What one screening run saw and decided."""

    batch_id: str
    rows: int
    flagged: int
    reasons: dict[str, int]
    threshold: list[float]
    auroc_without: float | None = None
    auroc_with: float | None = None
    accepted: bool = True
    decision: str = "accepted"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Imputer:
    def __init__(self, x: np.ndarray) -> None:
        self.median = np.nan_to_num(np.nanmedian(x, axis=0))
        q75, q25 = np.nanpercentile(x, 75, axis=0), np.nanpercentile(x, 25, axis=0)
        scale = np.nan_to_num(q75 - q25)
        std = np.nan_to_num(np.nanstd(x, axis=0))
        self.scale = np.where(scale > 0, scale, np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x), self.median, x)
        return (x - self.median) / self.scale


def _class_thresholds(score: np.ndarray, y: np.ndarray, false_flag_rate: float) -> np.ndarray:
    """Per-class score thresholds that flag ``false_flag_rate`` of clean rows in all.

    Under uniform label flipping a flipped row carries label y with probability prior(1 - y): flips land mostly
    on the minority label. So the budget is shared between the classes in that proportion, each class's
    threshold being the matching quantile of its clean scores.
    """
    prior1 = float(y.mean())
    priors = np.array([1 - prior1, prior1])
    out = np.full(2, -np.inf)
    for cls in (0, 1):
        if priors[cls] > 0 and (y == cls).any():
            share = min(false_flag_rate * priors[1 - cls] / priors[cls], 0.5)
            out[cls] = float(np.quantile(score[y == cls], share))
    return out


def _screen_params(params: dict[str, Any]) -> dict[str, Any]:
    # Unweighted, so that predictions are probabilities the class priors can be compared with.
    out = {k: v for k, v in params.items() if k != "scale_pos_weight"}
    out["n_estimators"] = min(int(out.get("n_estimators", 100)), 80)
    return out


def _consistency(p1: np.ndarray, knn1: np.ndarray, y: np.ndarray) -> np.ndarray:
    p_model = np.where(y == 1, p1, 1 - p1)
    p_knn = np.where(y == 1, knn1, 1 - knn1)
    return 0.5 * np.log(np.clip(p_model, 1e-4, 1.0)) + 0.5 * np.log(np.clip(p_knn, 1e-4, 1.0))


def _pooled_scores(frame: pd.DataFrame, teach: np.ndarray, features: list[str], params: dict[str, Any], seed: int,
                   folds: int = 5) -> np.ndarray:
    """Label-consistency score of every row of ``frame``, out of fold, learning only from rows in ``teach``."""
    from sklearn.model_selection import GroupKFold
    from sklearn.neighbors import NearestNeighbors

    x = matrix(frame, features)
    y = frame[LABEL].to_numpy(dtype=int)
    p1 = np.zeros(len(frame))
    knn1 = np.zeros(len(frame))
    groups = frame[GROUP].astype(str) if GROUP in frame else np.arange(len(frame))
    for fit_idx, held_idx in GroupKFold(n_splits=folds).split(x, y, groups):
        fit_idx = fit_idx[teach[fit_idx]]
        booster = fit_local(frame.iloc[fit_idx], features, params)
        p1[held_idx] = booster.inplace_predict(x[held_idx])
        imp = _Imputer(x[fit_idx])
        nn = NearestNeighbors(n_neighbors=_K).fit(imp(x[fit_idx]))
        _, idx = nn.kneighbors(imp(x[held_idx]))
        knn1[held_idx] = (y[fit_idx][idx].sum(axis=1) + 0.5) / (_K + 1)
    return _consistency(p1, knn1, y)


def screen(batch: pd.DataFrame, features: list[str], params: dict[str, Any], *, trusted: pd.DataFrame | None = None,
           validation: pd.DataFrame | None = None, false_flag_rate: float = 0.03, max_auroc_loss: float = 0.005,
           source_trust: dict[str, float] | None = None, min_trust: float = 0.5, batch_id: str = "batch",
           seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, ScreenReport]:
    """Screen ``batch`` against ``trusted`` data (or against itself, out of fold, when there is none).

    Returns:
        (rows kept, rows flagged with a ``reason`` column, report). When the batch is rejected on negative
        impact, rows kept is empty and every unflagged row is returned flagged ``negative_impact``.
    """
    from sklearn.ensemble import IsolationForest

    sparams = _screen_params(params)
    if trusted is None or not len(trusted):
        reference = batch
        ref_score = batch_score = _pooled_scores(batch, np.ones(len(batch), dtype=bool), features, sparams, seed)
        ref_y = batch_y = batch[LABEL].to_numpy(dtype=int)
        thresholds = _class_thresholds(ref_score, ref_y, false_flag_rate)
    else:
        reference = trusted
        pool = pd.concat([trusted, batch], ignore_index=True)
        y = pool[LABEL].to_numpy(dtype=int)
        is_trusted = np.r_[np.ones(len(trusted), dtype=bool), np.zeros(len(batch), dtype=bool)]
        # Pass 1: only trusted rows teach the label model. Pass 2: trusted rows plus the batch rows pass 1 kept,
        # a larger and mostly clean training set, scores every row out of fold; flagged rows never teach.
        score = _pooled_scores(pool, is_trusted, features, sparams, seed)
        thresholds = _class_thresholds(score[is_trusted], y[is_trusted], false_flag_rate)
        teach = is_trusted | (score >= np.take(thresholds, y))
        score = _pooled_scores(pool, teach, features, sparams, seed)
        ref_score, batch_score = score[is_trusted], score[~is_trusted]
        ref_y, batch_y = y[is_trusted], y[~is_trusted]
        thresholds = _class_thresholds(ref_score, ref_y, false_flag_rate)
    threshold = thresholds.tolist()
    reasons = np.full(len(batch), "", dtype=object)
    reasons[batch_score < np.take(thresholds, batch_y)] = "label_inconsistent"

    xb = matrix(batch, features)
    xr = matrix(reference, features)
    imp = _Imputer(xr)
    forest = IsolationForest(n_estimators=100, random_state=seed).fit(imp(xr))
    cut = float(np.quantile(forest.score_samples(imp(xr)), _OUTLIER_QUANTILE))
    outlier = forest.score_samples(imp(xb)) < cut
    reasons[(reasons == "") & outlier] = "outlier"
    if source_trust and SOURCE in batch:
        trust = batch[SOURCE].map(lambda s: source_trust.get(str(s), 1.0)).to_numpy(dtype=float)
        reasons[(reasons == "") & (trust < min_trust)] = "untrusted_source"

    flagged_mask = reasons != ""
    kept = batch[~flagged_mask]
    flagged = batch[flagged_mask].assign(**{REASON: reasons[flagged_mask]})
    report = ScreenReport(batch_id=batch_id, rows=len(batch), flagged=int(flagged_mask.sum()),
                          reasons=dict(Counter(reasons[flagged_mask].tolist())), threshold=threshold)
    if validation is not None and trusted is not None and len(trusted) and len(kept):
        from sklearn.metrics import roc_auc_score

        xv, yv = matrix(validation, features), validation[LABEL].to_numpy(dtype=int)
        without = fit_local(trusted, features, params)
        with_batch = fit_local(pd.concat([trusted, kept], ignore_index=True), features, params)
        report.auroc_without = float(roc_auc_score(yv, without.inplace_predict(xv)))
        report.auroc_with = float(roc_auc_score(yv, with_batch.inplace_predict(xv)))
        if report.auroc_with < report.auroc_without - max_auroc_loss:
            report.accepted = False
            report.decision = (f"rejected: validation AUROC {report.auroc_with:.4f} with the batch vs "
                               f"{report.auroc_without:.4f} without (allowed loss {max_auroc_loss})")
            flagged = pd.concat([flagged, kept.assign(**{REASON: "negative_impact"})], ignore_index=True)
            kept = kept.iloc[0:0]
    return kept, flagged, report


def quarantine_frame(flagged: pd.DataFrame, *, batch_id: str, table: str, model_run: str) -> pd.DataFrame:
    """The quarantine rows for flagged examples: row key, group, label, reason and where they came from."""
    return pd.DataFrame({
        "row_key": flagged[ROW_ID].astype(str) if ROW_ID in flagged else flagged.index.astype(str),
        "patient_pseudonym": flagged[GROUP].astype(str) if GROUP in flagged else None,
        "label": flagged[LABEL].astype("int64"),
        "reason": flagged[REASON].astype(str),
        "rule": "analytics.poisoning_screen",
        "source_table": table,
        "batch_id": batch_id,
        "run": model_run,
    })
