"""Bootstrap intervals: the point value equals scikit-learn's, the interval holds it and narrows with more rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.evaluate import bootstrap_metrics, metrics, subgroup_metrics


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    # Rounded to 2 decimals: many ties, which AUROC and AUPRC must count as scikit-learn does.
    return y, np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 2)


@pytest.mark.parametrize("n", [60, 1500])
def test_when_bootstrapping_then_each_value_matches_scikit_learn_and_sits_inside_its_interval(n):
    y, prob = _scores(n, 3)
    point = metrics(y, prob, 0.45, intervals=False)
    boot = bootstrap_metrics(y, prob, 0.45, n_boot=300, seed=1)
    for name in ("auroc", "auprc", "sensitivity", "specificity", "brier"):
        assert boot[name]["value"] == pytest.approx(point[name], abs=1e-9), name
        assert boot[name]["low"] <= boot[name]["value"] <= boot[name]["high"], name
    assert 0.0 <= boot["ece"]["low"] <= boot["ece"]["high"] <= 1.0


def test_when_there_are_more_rows_then_the_auroc_interval_is_narrower():
    small = bootstrap_metrics(*_scores(100, 5), 0.45)["auroc"]
    large = bootstrap_metrics(*_scores(5000, 5), 0.45)["auroc"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 3


def test_when_a_class_is_missing_then_its_metrics_have_no_value_and_no_interval():
    boot = bootstrap_metrics(np.zeros(30, dtype=int), np.linspace(0, 1, 30), 0.5)
    assert boot["auroc"] == {"value": None, "low": None, "high": None}
    assert boot["sensitivity"]["value"] is None and boot["specificity"]["value"] is not None


def test_when_a_subgroup_is_smaller_than_the_minimum_then_it_is_shown_but_never_part_of_the_gap():
    y, prob = _scores(400, 9)
    levels = np.array(["A"] * 200 + ["B"] * 195 + ["tiny"] * 5)
    # The tiny group gets inverted scores: a huge gap it must not be allowed to flag.
    prob[-5:] = 1 - prob[-5:]
    out = subgroup_metrics(pd.DataFrame({"site": levels}), y, prob, 0.45, ["site"], min_n=30)
    tiny = out["groups"]["site"]["tiny"]
    assert tiny["too_small"] and tiny["n"] == 5
    gap = out["largest_gap"]
    assert gap is not None and "tiny" not in (gap["low"], gap["high"])
    assert len(gap["low_interval"]) == 2 and isinstance(gap["separated"], bool)


def test_when_groups_have_few_positives_then_no_sensitivity_gap_is_flagged_however_large():
    # Two groups of 150 with 8 positives each: one catches all 8, the other 2. Sensitivity 1.0 vs 0.25 on 8
    # positives is what the card must not call a finding; AUROC (over all 150 rows) may still be compared.
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(8), np.zeros(142), np.ones(8), np.zeros(142)].astype(int)
    prob = rng.uniform(0, 0.4, 300)
    prob[:8] = 0.9
    prob[150:152] = 0.9
    out = subgroup_metrics(pd.DataFrame({"site": ["A"] * 150 + ["B"] * 150}), y, prob, 0.5, ["site"], min_n=30)
    assert out["groups"]["site"]["B"]["sensitivity"] == 0.25
    assert out["largest_gap"] is None or out["largest_gap"]["metric"] == "auroc"
