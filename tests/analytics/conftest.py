"""Fixtures of the analytics tests: deidentified-shaped synthetic tables, a column classification, one trained run.

De-identification publishes column classes through ``storage_security.deid.deidentify.published_report``; until it
lands (and to control the classes in tests), ``classified`` puts a stand-in module with that function in
``sys.modules``. ``t2d_run`` trains once per test run on 8,000 synthetic patients and is shared by the tests
that only read its results.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.synthetic import CLASSES, SyntheticDeidentified, publish, synthetic_deidentified
from pipeline.lake import Lake
from pipeline.settings import Settings

T2D_PATIENTS = 8_000
T2D_SEED = 11
# Small but real: every step runs, with few boosting rounds and a two-fold, two-candidate search.
FAST = {"n_estimators": 120, "attack_samples": 40,
        # A one-second budget: the first candidate always runs, the second must be skipped (the budget works).
        "cv": {"folds": 2, "budget_seconds": 1.0,
               "grid": [{"max_depth": 3, "learning_rate": 0.1}, {"max_depth": 4, "learning_rate": 0.1}]},
        "monotone": {"obs_4548_4_last": 1, "obs_2345_7_last": 1, "obs_39156_5_last": 1, "age_band_lower": 1}}


class Classes(dict):
    """Column classes per table, as the stand-in ``published_report`` serves them."""


def install_deidentify(classes: dict[str, dict[str, str]]) -> types.ModuleType | None:
    previous = sys.modules.get("storage_security.deid.deidentify")
    module = types.ModuleType("storage_security.deid.deidentify")

    def published_report(lake: Lake, table: str) -> dict[str, Any]:
        if table not in classes:
            raise LookupError(f"deidentified/{table} was never published")
        return {"column_classes": dict(classes[table]), "k": 5, "suppressed": 0, "version": 0}

    module.published_report = published_report  # type: ignore[attr-defined]
    sys.modules["storage_security.deid.deidentify"] = module
    return previous


def restore_deidentify(previous: types.ModuleType | None) -> None:
    if previous is None:
        sys.modules.pop("storage_security.deid.deidentify", None)
    else:
        sys.modules["storage_security.deid.deidentify"] = previous


@pytest.fixture
def classified() -> Iterator[Classes]:
    classes = Classes({k: dict(v) for k, v in CLASSES.items()})
    previous = install_deidentify(classes)
    yield classes
    restore_deidentify(previous)


def isolated(settings: Settings, root: Path) -> Settings:
    """Settings with their own home and lake, so registries and keys never mix between tests."""
    return settings.model_copy(update={"home": root / "home", "lake_root": str(root / "lake"),
                                       "airflow_home": root / "home" / "airflow"})


@pytest.fixture
def publish_classes() -> Iterator[Any]:
    """Install a stand-in ``published_report`` serving the given classes; undone after the test."""
    saved: list[types.ModuleType | None] = []

    def install(classes: dict[str, dict[str, str]]) -> None:
        saved.append(install_deidentify(classes))

    yield install
    for previous in reversed(saved):
        restore_deidentify(previous)


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
    previous = install_deidentify({k: dict(v) for k, v in CLASSES.items()})
    try:
        result = train_pipeline(local, "outcomes", "t2d_within_1y", overrides=FAST, provider=ring)
    finally:
        restore_deidentify(previous)
    return {"result": result, "settings": local, "provider": ring, "run_dir": Path(result["run_dir"])}
