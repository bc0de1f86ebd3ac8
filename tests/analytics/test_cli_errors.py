"""Expected training failures reach the user as the CLI's one-line error (``medguard: error: …``, exit 1), never
as a traceback: an empty table, a missing label column, a label without the positive class, a split with no
positive case."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.lake import Lake


def _breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame = frame.rename(columns=lambda c: re.sub(r"[^a-z0-9]+", "_", c.lower()).strip("_"))
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    frame["case_ref"] = [f"C{i:04d}" for i in range(len(frame))]
    return frame


def _train(local, monkeypatch, table: str, label: str, config) -> tuple[int, str]:
    from pipeline.cli import app
    from pipeline.settings import get_settings

    monkeypatch.setenv("MEDGUARD_HOME", str(local.home))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(local.lake_root))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["train", "--table", table, "--label", label, "--config", str(config)])
    return result.exit_code, result.stderr


@pytest.fixture
def lake_of(settings, spark, tmp_path, keyring_env, publish_reported):
    """Publish a variant of sklearn's breast-cancer table (shipped with the package) as deidentified/<name>."""
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    config = tmp_path / "train.yaml"
    config.write_text("positive_class: malignant\nn_estimators: 20\ncv:\n  folds: 2\n  budget_seconds: 1\n"
                      "attack_samples: 5\n")

    def publish(name: str, frame: pd.DataFrame):
        classes = {c: "sensitive" for c in frame.columns}
        classes["case_ref"] = "direct_identifier"
        publish_reported(Lake(local), name, frame, classes)
        return local, config

    return publish


@pytest.mark.parametrize(("case", "label", "expected"), [
    ("empty table", "diagnosis", "no labelled rows"),
    ("missing label column", "outcome", "label column 'outcome' is not in"),
    ("no positive class at all", "diagnosis", "no positive case"),
    ("no positive case in the test split", "diagnosis", "positive"),
])
def test_when_training_fails_for_an_expected_reason_then_the_cli_prints_one_error_line(
        lake_of, monkeypatch, case, label, expected):
    frame = _breast_cancer()
    if case == "empty table":
        frame = frame.iloc[:0]
    elif case == "no positive class at all":
        frame = frame[frame["diagnosis"] == "benign"]
    elif case == "no positive case in the test split":
        # Three malignant rows among the benign ones: some split is left without a positive case.
        frame = pd.concat([frame[frame["diagnosis"] == "benign"], frame[frame["diagnosis"] == "malignant"].head(3)])
    local, config = lake_of("cases", frame.reset_index(drop=True))
    code, stderr = _train(local, monkeypatch, "cases", label, config)
    assert code == 1, stderr
    # Before the error, stderr holds the progress lines of the steps that ran ("train: features: 0/7 steps").
    *progress, error = stderr.strip().splitlines()
    assert error.startswith("medguard: error: ") and expected in error, stderr
    assert all(line.startswith("train") for line in progress) and "Traceback" not in stderr
