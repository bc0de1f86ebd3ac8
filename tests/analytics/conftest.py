"""Fixtures of the analytics tests: deidentified-shaped synthetic tables, column classes, one trained run.

Analytics reads column classes through a classifier: the flows take one as ``classify=`` (by default
``published_classifier``, which reads the report de-identification puts in a deidentified table's commit).
``classified`` is a mutable set of classes whose ``classify`` method the tests pass in; ``publish_reported`` writes
a deidentified table with a de-identification report in its commit, for the commands, which always read the
published report. ``t2d_run`` trains once per test run on 8,000 synthetic patients and is shared by the tests
that only read its results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analytics.synthetic import CLASSES, SyntheticDeidentified, publish, synthetic_deidentified
from pipeline.errors import ValidationError
from pipeline.lake import CommitInfo, Lake, Zone
from pipeline.settings import Settings
from storage_security.deid.deidentify import REPORT_KEY

T2D_PATIENTS = 8_000
T2D_SEED = 11
# Small but real: every step runs, with few boosting rounds and a two-fold, two-candidate search.
FAST = {"n_estimators": 120, "attack_samples": 40,
        # A one-second budget: the first candidate always runs, the second must be skipped (the budget works).
        "cv": {"folds": 2, "budget_seconds": 1.0,
               "grid": [{"max_depth": 3, "learning_rate": 0.1}, {"max_depth": 4, "learning_rate": 0.1}]}}


class Classes(dict):
    """Column classes per table (``{table: {column: class}}``); ``classify`` is a classifier serving them."""

    def classify(self, table: str) -> Mapping[str, str]:
        if table not in self:
            raise ValidationError(f"no column classification for deidentified/{table}; refusing to build features")
        return dict(self[table])


@pytest.fixture
def classified() -> Classes:
    """The synthetic tables' classes, a fresh copy per test (tests change them)."""
    return Classes({k: dict(v) for k, v in CLASSES.items()})


@pytest.fixture
def publish_reported() -> Callable[[Lake, str, pd.DataFrame, Mapping[str, str]], int]:
    """``publish(lake, table, frame, classes)``: write ``frame`` as ``deidentified/<table>`` with the report that
    de-identification commits beside a table it publishes (what ``published_classifier`` reads)."""

    def publish(lake: Lake, table: str, frame: pd.DataFrame, classes: Mapping[str, str]) -> int:
        report = {"table": table, "column_classes": dict(classes), "k": 5, "suppressed": 0}
        return lake.overwrite(Zone.DEIDENTIFIED, table, frame, commit=CommitInfo(
            principal="svc:test", purpose="test fixture", extra={REPORT_KEY: json.dumps(report, sort_keys=True)}))

    return publish


def isolated(settings: Settings, root: Path) -> Settings:
    """Settings with their own home and lake, so registries and keys never mix between tests."""
    return settings.model_copy(update={"home": root / "home", "lake_root": str(root / "lake"),
                                       "airflow_home": root / "home" / "airflow"})


@pytest.fixture(scope="session")
def t2d_data() -> SyntheticDeidentified:
    return synthetic_deidentified(T2D_PATIENTS, T2D_SEED)


@pytest.fixture(scope="session")
def t2d_run(settings: Settings, spark: Any, t2d_data: SyntheticDeidentified,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full training run (features → screen → train → evaluate → robustness → register) on the T2D data."""
    from analytics.flow import train_pipeline
    from storage_security.keys.keyring import LocalKeyring

    root = tmp_path_factory.mktemp("t2d")
    local = isolated(settings, root)
    publish(Lake(local), t2d_data)
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    classes = Classes({k: dict(v) for k, v in CLASSES.items()})
    # The tests that share this run read its examples, which a run deletes after registration by default.
    result = train_pipeline(local, "outcomes", "t2d_within_1y", overrides=FAST, provider=ring,
                            classify=classes.classify, keep_examples=True)
    return {"result": result, "settings": local, "provider": ring, "run_dir": Path(result["run_dir"]),
            "classes": classes}
