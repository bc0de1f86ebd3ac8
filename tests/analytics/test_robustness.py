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
    for defence in ("baseline_retrained", "monotone", "adversarial_augmentation"):
        assert 0.0 <= report[defence]["success_rate"] <= 1.0 and report[defence]["auroc"] > 0.7


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
