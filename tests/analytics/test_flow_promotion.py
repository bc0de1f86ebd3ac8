"""Training under governance, on a copy of the shared T2D run: a duplicate training registers nothing, a worse
candidate is not promoted (and an alert says why), a candidate as good as the current one is, and rollback
restores the previous model for diagnosis."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from analytics.flow import (
    step_evaluate,
    step_features,
    step_judge,
    step_register,
    step_screen,
    step_train,
    train_pipeline,
    verify_model,
)
from analytics.registry import ModelRegistry
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog

NAME = "outcomes__t2d_within_1y"
# The two strongest signals of new type 2 diabetes: without them a model is clearly worse.
WITHOUT_GLYCAEMIA = [f"obs_{code}_{stat}" for code in ("4548_4", "2345_7") for stat in ("last", "mean", "trend")]


@pytest.fixture
def governed(t2d_run, tmp_path) -> dict[str, Any]:
    """The T2D run's home and lake copied, so promotions here never change what other tests of the run see."""
    local = t2d_run["settings"]
    copy = local.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    shutil.copytree(local.home, copy.home)
    shutil.copytree(local.lake_root, copy.lake_root)
    overrides = json.loads((t2d_run["run_dir"] / "state.json").read_text())["overrides"]  # what the run used
    return {**t2d_run, "settings": copy, "overrides": overrides}


def _candidate(run: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A training through the flow's steps (the evasion step, slow and irrelevant to promotion, left out)."""
    settings, ring, classify = run["settings"], run["provider"], run["classes"].classify
    run_dir = step_features(settings, "outcomes", "t2d_within_1y", overrides=overrides, provider=ring,
                            classify=classify)
    step_screen(settings, run_dir, provider=ring)
    step_train(settings, run_dir)
    step_evaluate(settings, run_dir)
    step_judge(settings, run_dir, provider=ring, classify=classify)
    return step_register(settings, run_dir, provider=ring)


def test_when_the_first_model_meets_the_floors_then_training_made_it_current(t2d_run):
    promotion = t2d_run["result"]["promotion"]
    assert promotion == {"decision": "promoted", "current": f"{NAME}@v1", "reasons": promotion["reasons"]}
    assert any("first model" in r for r in promotion["reasons"])


def test_when_the_same_training_runs_again_then_nothing_new_is_registered(governed):
    settings = governed["settings"]
    before = sorted(p.name for p in (settings.home / "models" / NAME).glob("v*"))
    again = train_pipeline(settings, "outcomes", "t2d_within_1y", overrides=governed["overrides"],
                           provider=governed["provider"], classify=governed["classes"].classify)
    assert again["promotion"]["decision"] == "duplicate" and again["model_version"] == f"{NAME}@v1"
    assert again["promotion"]["current"] == f"{NAME}@v1" and list(again["step_seconds"]) == ["features"]
    assert sorted(p.name for p in (settings.home / "models" / NAME).glob("v*")) == before == ["v1"]


def test_when_candidates_are_worse_or_as_good_then_only_the_good_one_is_promoted_and_rollback_restores(governed):
    settings, ring = governed["settings"], governed["provider"]
    registry = ModelRegistry(settings, ring)

    worse = _candidate(governed, {**governed["overrides"], "drop": ["prevalent_t2d", "index_year", *WITHOUT_GLYCAEMIA],
                                  "monotone": {}})
    assert worse["model_version"] == f"{NAME}@v2" and worse["promotion"]["decision"] == "candidate"
    assert any("below the current model outcomes__t2d_within_1y@v1" in r for r in worse["promotion"]["reasons"])
    assert registry.current(NAME) == 1 and verify_model(settings, provider=ring)["model_version"] == f"{NAME}@v1"
    alerts = [e.event for e in AuditLog(Lake(settings), ring).events() if e.event.action == "alert"]
    assert alerts[-1].details["model_version"] == f"{NAME}@v2" and alerts[-1].details["reasons"]

    as_good = _candidate(governed, {**governed["overrides"], "n_estimators": 140})
    assert as_good["promotion"]["decision"] == "promoted", as_good["promotion"]["reasons"]
    assert registry.current(NAME) == 3 and verify_model(settings, provider=ring)["model_version"] == f"{NAME}@v3"
    statuses = {v["version"]: v["status"] for v in registry.describe(NAME)["versions"]}
    assert statuses == {1: "retired", 2: "candidate", 3: "current"}

    registry.rollback(NAME, reason="v3 under review", principal="user:lead")
    assert verify_model(settings, provider=ring)["model_version"] == f"{NAME}@v1"
