"""What `medguard train` and `medguard diagnose` show a user: each step on stderr as it starts (plain lines off a
terminal), the metrics and what became of the model (promoted, candidate or duplicate, and why) on stdout."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from analytics.cli import promotion_line
from pipeline.lake import Lake


@pytest.mark.parametrize(("promotion", "line"), [
    ({"decision": "promoted", "reasons": ["AUROC lower bound 0.95 ≥ 0.7"], "current": "m@v1"},
     "promotion: promoted (current: m@v1) — AUROC lower bound 0.95 ≥ 0.7"),
    ({"decision": "candidate", "reasons": ["sensitivity 0.6 < 0.8", "auto_promote is off"], "current": None},
     "promotion: candidate (no current model) — sensitivity 0.6 < 0.8; auto_promote is off"),
    ({"decision": "duplicate", "reasons": [], "current": "m@v2"}, "promotion: duplicate (current: m@v2)"),
])
def test_when_training_reports_its_promotion_then_the_line_says_the_decision_current_model_and_reasons(
        promotion: dict, line: str) -> None:
    assert promotion_line(promotion) == line


@pytest.fixture
def breast_cancer_home(settings, spark, tmp_path, keyring_env, publish_reported, monkeypatch):
    """sklearn's breast-cancer data (shipped with the package) published as deidentified/breast_cancer; the CLI's
    settings point at it."""
    from sklearn.datasets import load_breast_cancer

    from pipeline.settings import get_settings

    frame = load_breast_cancer(as_frame=True).frame
    frame = frame.rename(columns=lambda c: re.sub(r"[^a-z0-9]+", "_", c.lower()).strip("_"))
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    publish_reported(Lake(local), "breast_cancer", frame, {c: "sensitive" for c in frame.columns})
    config = tmp_path / "breast_cancer.yaml"
    config.write_text("positive_class: malignant\nn_estimators: 50\ncv:\n  folds: 2\n  budget_seconds: 1\n"
                      "attack_samples: 20\n")
    monkeypatch.setenv("MEDGUARD_HOME", str(local.home))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(local.lake_root))
    get_settings.cache_clear()
    return config


@pytest.mark.integration
def test_when_train_and_diagnose_run_off_a_terminal_then_stderr_names_each_step_and_stdout_tells_the_outcome(
        breast_cancer_home) -> None:
    from pipeline.cli import app

    trained = CliRunner().invoke(app, ["train", "--table", "breast_cancer", "--label", "diagnosis", "--config",
                                       str(breast_cancer_home)])
    assert trained.exit_code == 0, trained.output
    steps = [line for line in trained.stderr.splitlines() if "still running" not in line]  # heartbeats
    assert steps[0] == "train: features: 0/7 steps (0%)" and steps[-1] == "train: 7/7 steps (100%) — done"
    assert "train: register: 6/7 steps (86%)" in steps
    assert re.search(r"AUROC 0\.\d{3}, AUPRC 0\.\d{3}", trained.stdout)
    promotion = re.search(r"^promotion: (promoted|candidate) \(", trained.stdout, re.MULTILINE)
    assert promotion, trained.stdout
    if promotion.group(1) == "candidate":  # the floors' bootstrap bounds on a small test split: promote it by hand
        version = trained.stdout.split(":", 1)[0]
        promoted = CliRunner().invoke(app, ["models", "promote", version, "--force", "--reason", "test"])
        assert promoted.exit_code == 0, promoted.output

    scored = CliRunner().invoke(app, ["diagnose", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["rows"] == 569  # stdout stays pure JSON: progress went to stderr
    steps = [line for line in scored.stderr.splitlines() if "still running" not in line]
    assert steps[0] == "diagnose: verify: 0/4 steps (0%)" and steps[-1] == "diagnose: 4/4 steps (100%) — done"
