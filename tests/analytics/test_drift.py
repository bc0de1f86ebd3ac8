"""Drift: PSI and KS are near zero for the training distribution and alert on a shifted batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.drift import drift_report, psi
from analytics.train import profile


@pytest.fixture
def base():
    rng = np.random.default_rng(3)
    return pd.DataFrame({"a": rng.normal(0, 1, 5000), "b": rng.exponential(1, 5000)})


@pytest.mark.parametrize(("shift", "status", "retrain"), [(0.0, "ok", False), (1.0, "drift", True)])
def test_when_a_batch_is_compared_with_training_then_alerts_follow_the_shift(base, shift, status, retrain):
    prof = profile(base, ["a", "b"])
    rng = np.random.default_rng(4)
    batch = pd.DataFrame({"a": rng.normal(shift, 1, 2000), "b": rng.exponential(1, 2000)})
    report = drift_report(prof, batch, ["a", "b"], psi_alert=0.2, ks_alert=0.15, retrain_share=0.5)
    assert report["status"] == status and report["retrain"] is retrain
    assert report["features"]["b"]["alert"] is False
    assert (report["features"]["a"]["psi"] > 0.2) is (shift > 0)


def test_when_distributions_are_identical_then_psi_is_zero():
    edges = [1.0, 2.0]
    assert psi([0.25, 0.5, 0.25], edges, np.array([0.5, 1.5, 1.6, 2.5])) == pytest.approx(0.0, abs=1e-12)
