"""The defences applied to the served model: the membership defence (regularised training, early stopping, the
served probability rounded through the registered calibrator) when ``analytics.membership_defence`` is on and not
when off; the card reporting the served model's membership advantage as "applied"; adversarial augmentation adding
attacked training positives to the train split only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analytics.features import LABEL, FeatureContract
from analytics.flow import step_evaluate, step_register, step_train
from analytics.registry import ModelRegistry
from analytics.train import (
    SPLIT,
    Calibrator,
    assign_splits,
    choose_threshold,
    fit_calibrated,
    fit_local,
    matrix,
    round_significant,
)
from bench.uci_heart import load_heart


def _registered(settings: Any, provider: Any, model_version: str) -> tuple[Any, dict[str, Any]]:
    name, _, number = model_version.partition("@v")
    _, booster, bundle = ModelRegistry(settings, provider).load(name, int(number), pin=True)
    return booster, bundle


def _served(booster: Any, bundle: dict[str, Any], rows: pd.DataFrame) -> np.ndarray:
    # What batch diagnosis and the diagnosis API do: a Calibrator from the registered bundle, applied.
    cal = bundle["calibrator"]
    return Calibrator(cal["method"], cal["params"]).apply(booster.inplace_predict(matrix(rows,
                                                                                       bundle["contract"]["features"])))


def test_when_the_membership_defence_is_on_then_the_registered_model_is_regularised_and_serves_rounded_probabilities(
        t2d_run):
    local, ring, run = t2d_run["settings"], t2d_run["provider"], t2d_run["run_dir"]
    assert local.analytics.membership_defence  # the default
    booster, bundle = _registered(local, ring, t2d_run["result"]["model_version"])
    assert bundle["calibrator"]["params"]["significant"] == [2.0]
    test = pd.read_parquet(run / "examples.parquet").query(f"{SPLIT} == 'test'")
    prob = _served(booster, bundle, test)
    assert np.array_equal(prob, round_significant(prob, 2)) and len(np.unique(prob)) > 5
    # Significant figures keep a rare label's small probabilities apart: the threshold is not on a coarse grid
    # that flags nearly everyone.
    assert (prob >= bundle["threshold"]).mean() < 0.9
    params = bundle["params"]
    assert params["max_depth"] <= 3 and params["min_child_weight"] >= 10 and params["reg_lambda"] >= 10
    assert params["subsample"] <= 0.7 and params["colsample_bytree"] <= 0.7
    state = json.loads((run / "state.json").read_text())
    # Stopped early: the rounds kept are the model's size, never more than configured.
    assert params["n_estimators"] == booster.num_boosted_rounds() <= state["overrides"]["n_estimators"]
    assert state["model"]["defences"]["membership"]["undefended_params"]["min_child_weight"] == 1.0
    # Adversarial augmentation is on by default too: some flagged training positives attacked and added.
    assert local.analytics.adversarial_augmentation
    added = state["model"]["defences"]["adversarial_augmentation"]["examples_added"]
    assert 0 < added <= local.analytics.augmentation_examples


def test_when_the_defence_is_applied_then_the_card_reports_the_served_models_membership_advantage_as_applied(t2d_run):
    state = json.loads((t2d_run["run_dir"] / "state.json").read_text())
    membership = state["robustness"]["membership_inference"]
    assert membership["applied"] is True and membership["served"] == "defended"
    assert membership["defended"]["rounds"] == state["model"]["params"]["n_estimators"]
    for side in ("undefended", "defended"):
        assert -1.0 <= membership[side]["advantage"] <= 1.0 and membership[side]["clean_auroc"] > 0.7
    card = Path(t2d_run["result"]["model_card"]).read_text(encoding="utf-8")
    privacy = card[card.index("Privacy: membership inference"):card.index("<h2>Evasion robustness")]
    assert "Applied: <b>yes</b>" in privacy
    advantage = f"{membership['defended']['advantage']:.3f}".replace("-0.000", "0.000")
    assert "<b>as served</b> (defence on)" in privacy and advantage in privacy
    assert "without the defence (retrained)" in privacy


@pytest.mark.integration
def test_when_the_defence_is_off_and_augmentation_on_then_probabilities_are_unrounded_and_adversarial_rows_are_added(
        t2d_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(t2d_run["run_dir"], run)
    state = json.loads((run / "state.json").read_text())
    for stale in ("model", "evaluation", "robustness", "judgement", "result"):
        state.pop(stale, None)
    (run / "state.json").write_text(json.dumps(state))
    before = pd.read_parquet(run / "examples.parquet")
    base = t2d_run["settings"]  # its own home and lake: the shared run's registry is left as it is
    local = base.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                                    "analytics": base.analytics.model_copy(update={
                                        "membership_defence": False, "adversarial_augmentation": True,
                                        "augmentation_examples": 25})})
    ring = t2d_run["provider"]
    step_train(local, str(run))
    step_evaluate(local, str(run))
    result = step_register(local, str(run), provider=ring, keep_examples=True)
    booster, bundle = _registered(local, ring, result["model_version"])
    assert "significant" not in bundle["calibrator"]["params"]
    prob = _served(booster, bundle, before[before[SPLIT] == "test"])
    assert not np.array_equal(prob, round_significant(prob, 2))
    params = bundle["params"]
    assert params["min_child_weight"] == 1.0 and params["subsample"] == 1.0 and "reg_lambda" not in params
    assert params["n_estimators"] == booster.num_boosted_rounds() == state["overrides"]["n_estimators"]
    defences = json.loads((run / "state.json").read_text())["model"]["defences"]
    assert set(defences) == {"adversarial_augmentation"}
    assert defences["adversarial_augmentation"]["examples_added"] == 25
    # The run's rows are untouched: the adversarial rows exist only in the training fit.
    after = pd.read_parquet(run / "examples.parquet")
    assert after[SPLIT].value_counts().to_dict() == before[SPLIT].value_counts().to_dict()


def test_when_augmenting_then_only_the_train_fit_gets_the_adversarial_rows_all_labelled_positive():
    from analytics.config import TrainConfig
    from analytics.privacy import MembershipDefence
    from analytics.robustness import augmenter

    frame, features = load_heart()
    frame[SPLIT] = assign_splits(frame["_group"], 0.3, 0.2, 1)
    train, cal = frame[frame[SPLIT] == "train"], frame[frame[SPLIT] == "calibration"]
    numeric = ["age", "trestbps", "chol", "thalch", "oldpeak"]
    contract = FeatureContract(table="heart", key=None, row_id="id", label="num", positive_class=None,
                               index_time=None, joined=False, numeric=numeric, features=features,
                               provenance={f: ("heart", f) for f in features})
    config = TrainConfig(n_estimators=60, target_sensitivity=0.85)
    params = {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "random_state": 7}
    calls: list[tuple[pd.DataFrame, dict[str, Any], dict[str, Any], Any]] = []

    def fit(rows: pd.DataFrame, p: dict[str, Any], **stop: Any) -> Any:
        booster = fit_local(rows, features, p, **stop)
        calls.append((rows, p, stop, booster))
        return booster

    plain = fit_calibrated(fit, train, cal, contract, config, params, defence=MembershipDefence())
    flagged_positives = int(((plain.predict_proba(train) >= plain.threshold) & (train[LABEL] == 1)).sum())
    calls.clear()
    model = fit_calibrated(fit, train, cal, contract, config, params, defence=MembershipDefence(),
                           augment=augmenter(config, 40))
    added = model.defences["adversarial_augmentation"]["examples_added"]
    assert added == min(40, flagged_positives) == 40  # flagged training positives, each attacked once
    (first, _, stop, stopped), (second, refit, restop, _) = calls
    assert first is train and stop["early_stopping"] is cal  # early stopping on the calibration rows as they are
    assert len(second) == len(train) + added and not restop
    assert (second[LABEL].iloc[len(train):] == 1).all()
    assert np.allclose(matrix(second.iloc[:len(train)], features), matrix(train, features), equal_nan=True)
    # The refit keeps the early-stopped size rather than stopping again on rows it is calibrated on.
    assert refit["n_estimators"] == model.params["n_estimators"] == stopped.num_boosted_rounds()
    # Calibrated and thresholded on the real calibration rows only.
    assert model.threshold == choose_threshold(model.predict_proba(cal), cal[LABEL].to_numpy(), 0.85)
