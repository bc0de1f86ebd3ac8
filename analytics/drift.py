"""Drift between the training data and a scoring batch: PSI and two-sample KS per feature, alerts, retrain trigger.

The training profile (quantile bin edges and proportions, a sorted value sample; see
:func:`analytics.train.profile`) travels inside the signed model artifact, so drift is always measured against
the data the model really saw. PSI uses the training deciles with a small floor for empty bins; KS compares the
batch with the training sample. A feature alerts when PSI or KS passes its threshold (``settings.analytics``);
retraining is recommended when the alerting share of features reaches ``retrain_drift_share``. The flows hand it
only rows the model's training snapshot did not hold (:func:`analytics.flow.diagnose`), so a table the model was
trained on is not reported as drifting from itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_FLOOR = 1e-4


def psi(expected: list[float], edges: list[float], values: np.ndarray) -> float:
    """Population stability index of ``values`` against training proportions over the same bins."""
    if not len(values) or not expected:
        return 0.0
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(expected))
    actual = np.clip(counts / counts.sum(), _FLOOR, None)
    base = np.clip(np.asarray(expected, dtype=float), _FLOOR, None)
    return float(np.sum((actual - base) * np.log(actual / base)))


def ks(sample: list[float], values: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic between the training sample and ``values``."""
    if not len(values) or not sample:
        return 0.0
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(sample, dtype=float), values).statistic)


def drift_report(profile: dict[str, Any], frame: pd.DataFrame, features: list[str], *, psi_alert: float,
                 ks_alert: float, retrain_share: float) -> dict[str, Any]:
    """Per-feature PSI/KS of ``frame`` against the training ``profile``; alerts and the retraining decision."""
    per: dict[str, Any] = {}
    alerts = []
    for name in features:
        prof = profile.get(name)
        if prof is None:
            continue
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        p = psi(prof["proportions"], prof["edges"], present)
        k = ks(prof["sample"], present)
        missing_shift = abs((1 - len(present) / max(len(values), 1)) - prof["missing"])
        alert = p >= psi_alert or k >= ks_alert
        per[name] = {"psi": p, "ks": k, "missing_shift": float(missing_shift), "alert": bool(alert)}
        if alert:
            alerts.append(name)
    share = len(alerts) / max(len(per), 1)
    return {
        "status": "drift" if alerts else "ok",
        "alerts": alerts,
        "alert_share": share,
        "retrain": share >= retrain_share,
        "thresholds": {"psi": psi_alert, "ks": ks_alert, "retrain_share": retrain_share},
        "rows": len(frame),
        "features": per,
    }
