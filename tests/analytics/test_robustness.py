"""Evasion: a bounded attack flips some flags within plausible bounds; its report and the defences are measured."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analytics.features import LABEL
from analytics.robustness import attack, attack_bounds
from analytics.train import SPLIT, Calibrator, fit_local, matrix


def test_when_the_model_is_attacked_then_success_rate_and_minimal_perturbation_are_reported(t2d_run):
    state = json.loads((t2d_run["run_dir"] / "state.json").read_text())
    report = state["robustness"]
    undefended = report["undefended"]
    assert undefended["attacked"] > 0
    assert 0.0 <= undefended["success_rate"] <= 1.0
    if undefended["succeeded"]:
        # Minimal perturbation: successful attacks are shrunk back towards the original values.
        assert 0 < undefended["median_linf_of_bound"] <= 1.0 + 1e-9
    assert "obs_4548_4_last" in report["bounds"]
    for defence in ("baseline_retrained", "adversarial_augmentation"):
        assert 0.0 <= report[defence]["success_rate"] <= 1.0 and report[defence]["auroc"] > 0.7
    # Monotone constraints measured no gain: a config without them (as shipped) does not compare them.
    assert "monotone" not in report and report["applied"] == ["adversarial_augmentation"]  # the default


def test_when_attacking_then_no_feature_moves_beyond_its_bound_or_out_of_range(t2d_run):
    state = json.loads((t2d_run["run_dir"] / "state.json").read_text())
    examples = pd.read_parquet(t2d_run["run_dir"] / "examples.parquet")
    features = state["contract"]["features"]
    train = examples[examples[SPLIT] == "train"]
    prof = json.loads((t2d_run["run_dir"] / "profile.json").read_text())
    booster = fit_local(train, features, {**state["model"]["params"], "n_estimators": 40})
    cal = Calibrator("platt", {"a": [1.0], "b": [0.0]})
    bounds = attack_bounds(features, prof, {}, 0.25)
    test = examples[(examples[SPLIT] == "test") & (examples[LABEL] == 1)]
    x = matrix(test, features)
    threshold = float(np.quantile(booster.inplace_predict(x), 0.3))
    x = x[booster.inplace_predict(x) >= threshold][:15]
    result = attack(booster, cal, threshold, x, features, bounds, prof)
    moved = np.nan_to_num(np.abs(result.adversarial - x))
    for j, name in enumerate(features):
        limit = bounds.get(name, 0.0)
        assert moved[:, j].max() <= limit + 1e-3, name
    assert result.attacked == len(x)


def test_when_the_training_run_is_attacked_then_the_report_has_intervals_kept_defences_and_membership(t2d_run):
    report = json.loads((t2d_run["run_dir"] / "state.json").read_text())["robustness"]
    for variant in ("undefended", "baseline_retrained", "adversarial_augmentation", "profile_refusal"):
        interval = report[variant]["success_interval"]
        assert interval["low"] <= report[variant]["success_rate"] <= interval["high"], variant
    assert set(report["kept_defences"]) <= {"monotone", "adversarial_augmentation", "profile_refusal"}
    assert 0.0 <= report["profile_refusal"]["clean_refused"] <= 0.05
    membership = report["membership_inference"]
    for side in ("undefended", "defended"):
        assert 0.0 <= membership[side]["attack_auroc"] <= 1.0 and membership[side]["clean_auroc"] > 0.7
    assert membership["members"] == membership["non_members"] > 100


def test_when_counting_successes_then_the_wilson_interval_and_the_one_sided_test_behave():
    from analytics.robustness import lower_rate_p, wilson

    low, high = wilson(0, 50)
    assert low == 0.0 and 0.05 < high < 0.1
    low, high = wilson(40, 212)
    assert low < 40 / 212 < high and high - low < 0.12
    assert lower_rate_p(18, 212, 40, 212) < 0.01  # 8.5 % against 18.9 %: a real reduction
    assert lower_rate_p(39, 214, 40, 212) > 0.3  # 18.2 % against 18.9 %: noise
    assert wilson(0, 0) == (None, None) and lower_rate_p(1, 0, 1, 10) is None


def test_when_a_defence_helps_only_by_losing_auroc_then_it_is_not_kept():
    from analytics.robustness import kept_defences

    base = {"attacked": 400, "succeeded": 80, "success_rate": 0.2, "auroc": 0.89}
    report = {"baseline_retrained": base,
              "monotone": {"attacked": 400, "succeeded": 40, "success_rate": 0.1, "auroc": 0.85},
              "adversarial_augmentation": {"attacked": 400, "succeeded": 45, "success_rate": 0.11, "auroc": 0.888},
              "profile_refusal": {"attacked": 400, "succeeded": 78, "success_rate": 0.195, "auroc": 0.89,
                                  "clean_refused": 0.01, "refuse_rate": 0.01}}
    assert kept_defences(report, max_auroc_cost=0.01) == ["adversarial_augmentation"]
    assert report["monotone"]["kept"] is False and report["monotone"]["p_lower"] < 0.001


def test_when_rows_are_far_outside_the_training_profile_then_the_guard_refuses_them_and_few_clean_ones():
    from analytics.robustness import ProfileGuard

    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (3000, 5))
    guard = ProfileGuard(train, refuse_rate=0.01, seed=0)
    assert guard.refuses(rng.normal(0, 1, (2000, 5))).mean() < 0.03
    assert guard.refuses(np.full((10, 5), 8.0)).all()
