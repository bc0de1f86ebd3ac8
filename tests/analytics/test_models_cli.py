"""``medguard models``: list, show, promote (floors re-checked unless forced with a reason) and rollback, through the
command line a person types, on a registry signed with the environment's keyring."""

from __future__ import annotations

import json

import pytest
from _registry_helpers import BUNDLE, booster_bytes, write_card
from typer.testing import CliRunner

from analytics.registry import ModelRegistry
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog


def _judgement(auroc_low: float, decision: str, current: str | None = None) -> dict:
    checks = {"auroc": {"value": auroc_low + 0.05, "low": auroc_low, "high": auroc_low + 0.1, "judged_on": "low"},
              "sensitivity": {"value": 0.85, "low": 0.8, "high": 0.9, "judged_on": "low"},
              "specificity": {"value": 0.7, "low": 0.65, "high": 0.75, "judged_on": "low"},
              "ece": {"value": 0.02, "low": 0.01, "high": 0.04, "judged_on": "high"}}
    comparison = {"current": current, "auroc_drop": 0.0, "passed": True} if current else None
    return {"decision": decision, "reasons": [f"judged {decision}"], "checks": checks, "comparison": comparison}


@pytest.fixture
def home(settings, tmp_path, keyring_env, monkeypatch):
    from pipeline.settings import get_settings

    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                                        "key_provider": "keyring"})
    monkeypatch.setenv("MEDGUARD_HOME", str(local.home))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(local.lake_root))
    get_settings.cache_clear()
    registry = ModelRegistry(local, keyring_env, lake=Lake(local))
    for low, decision in ((0.80, "promoted"), (0.55, "candidate")):
        registry.register("t__y", booster_raw=booster_bytes(), bundle=BUNDLE, metrics={"auroc": low + 0.05},
                          table_versions={"t": 3}, data_sha256="ab" * 32, card=write_card,
                          extra={"promotion": _judgement(low, decision)})
    return registry


def _run(*args: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, ["models", *args])


def test_when_models_are_listed_then_each_version_shows_its_status_and_judgement(home):
    result = _run("list", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["models"][0]["versions"]
    assert [(r["model_version"], r["status"], r["promotion"]["decision"]) for r in rows] == [
        ("t__y@v1", "candidate", "promoted"), ("t__y@v2", "candidate", "candidate")]
    text = _run("list").stdout
    assert "t__y@v2" in text and "candidate" in text and "AUROC 0.600" in text


def test_when_a_version_below_the_floors_is_promoted_then_it_is_refused_in_one_line(home):
    result = _run("promote", "t__y@v2")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "auroc 0.550 below the floor 0.70" in result.stderr
    assert home.current("t__y") is None


def test_when_promotion_is_forced_without_a_reason_then_it_is_refused(home):
    result = _run("promote", "2", "--force")
    assert result.exit_code == 1 and "--force needs --reason" in result.stderr


def test_when_promoted_forced_and_rolled_back_then_the_current_model_follows_and_each_step_is_audited(home):
    assert _run("promote", "t__y@v1").exit_code == 0
    assert home.current("t__y") == 1
    # v1 is current now and v2 was never compared with it: forcing needs a reason, which is recorded.
    forced = _run("promote", "v2", "--force", "--reason", "clinical lead accepts the lower AUROC for the pilot")
    assert forced.exit_code == 0, forced.stderr
    assert home.current("t__y") == 2
    shown = json.loads(_run("show", "t__y@v2", "--json").stdout)
    assert shown["status"] == "current" and "forced over" in shown["history"][-1]["reason"]
    assert shown["history"][-1]["principal"].startswith("os:")
    back = _run("rollback", "--reason", "v2 misses cases on the ward", "--json")
    assert back.exit_code == 0, back.stderr
    assert json.loads(back.stdout)["model_version"] == "t__y@v1" and home.current("t__y") == 1
    events = [e.event for e in AuditLog(home._lake, home._provider).events()]
    moves = [e.reason for e in events if e.action == "write" and e.table_name == "model_registry"
             and e.reason.startswith(("promoted by", "rolled back to by"))]
    assert len(moves) == 3 and "v2 misses cases on the ward" in moves[-1]


def test_when_a_version_is_malformed_then_the_error_names_the_expected_form(home):
    result = _run("show", "latest")
    assert result.exit_code == 1 and "expected NAME@vN" in result.stderr
