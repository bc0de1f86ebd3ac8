"""The promotion verdict: floors judged on the bootstrap interval's pessimistic bound, and no regression against the
current model on the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.promotion import judge
from pipeline.settings import GovernanceSettings


def _scores(separation: float, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (20 % positive) and probabilities whose log-odds separate the classes by ``separation``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    logit = rng.normal(size=n) + separation * y - 1.5
    return y, 1 / (1 + np.exp(-logit))


GOV = GovernanceSettings(min_auroc=0.70, min_sensitivity=0.60, min_specificity=0.40, max_ece=0.5)


def test_when_the_first_model_meets_every_floor_then_it_is_promoted_on_the_floors_alone():
    y, prob = _scores(2.5)
    verdict = judge(y, prob, 0.2, GOV)
    assert verdict["decision"] == "promoted" and verdict["comparison"] is None
    assert all(c["passed"] for c in verdict["checks"].values())
    assert verdict["checks"]["auroc"]["judged_on"] == "low"
    assert any("first model" in r for r in verdict["reasons"])


def test_when_a_model_barely_separates_the_classes_then_it_stays_a_candidate_and_says_which_floor():
    y, prob = _scores(0.3)
    verdict = judge(y, prob, 0.2, GOV)
    assert verdict["decision"] == "candidate"
    assert any(r.startswith("auroc 95 % lower bound") and "below the floor 0.70" in r for r in verdict["reasons"])


def test_when_the_point_estimate_passes_but_the_interval_does_not_then_judge_on_decides():
    # A small test split: AUROC near the floor with a wide interval.
    y, prob = _scores(1.0, n=300, seed=1)
    point = judge(y, prob, 0.2, GOV.model_copy(update={"judge_on": "point"}))
    bound = judge(y, prob, 0.2, GOV)
    auroc = bound["checks"]["auroc"]
    assert auroc["low"] < 0.70 <= auroc["value"]
    assert point["checks"]["auroc"]["passed"] and not auroc["passed"]


def test_when_the_candidate_is_worse_than_the_current_model_on_the_same_rows_then_it_is_not_promoted():
    y, strong = _scores(3.0)
    _, weak = _scores(2.0, seed=0)
    verdict = judge(y, weak, 0.2, GOV, current={"model_version": "m@v1", "prob": strong})
    assert verdict["decision"] == "candidate" and verdict["current"] == "m@v1"
    assert verdict["comparison"]["auroc_drop"] > GOV.max_auroc_drop and not verdict["comparison"]["passed"]
    assert any("below the current model m@v1" in r for r in verdict["reasons"])


def test_when_the_candidate_is_at_least_as_good_as_the_current_model_then_it_is_promoted():
    y, weak = _scores(2.0)
    _, strong = _scores(3.0, seed=0)
    verdict = judge(y, strong, 0.2, GOV, current={"model_version": "m@v1", "prob": weak})
    assert verdict["decision"] == "promoted" and verdict["comparison"]["auroc_drop"] < 0
    assert any("vs the current model m@v1" in r for r in verdict["reasons"])


@pytest.mark.parametrize(("field", "value", "metric"), [("min_sensitivity", 0.99, "sensitivity"),
                                                         ("min_specificity", 0.99, "specificity"),
                                                         ("max_ece", 0.001, "ece")])
def test_when_one_floor_is_missed_then_only_that_metric_is_reported(field, value, metric):
    y, prob = _scores(2.5)
    verdict = judge(y, prob, 0.5, GOV.model_copy(update={field: value}))
    assert verdict["decision"] == "candidate"
    assert [r.split()[0] for r in verdict["reasons"]] == [metric]
