"""Shared fixtures: an isolated MEDGUARD_HOME per test run and one Spark session for the whole run."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports airflow or pyspark: all state of a test run stays in its own home.
_RUN_HOME = Path(tempfile.mkdtemp(prefix="medguard-test-"))
os.environ["MEDGUARD_HOME"] = str(_RUN_HOME)
os.environ["AIRFLOW_HOME"] = str(_RUN_HOME / "airflow")
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
for _name in list(os.environ):
    if _name.startswith("MEDGUARD_") and _name not in {"MEDGUARD_HOME"}:
        del os.environ[_name]

from pipeline.settings import Settings, get_settings, load_settings  # noqa: E402

# py4j logs at INFO from finalizers after pytest has closed its capture streams ("Logging error" noise).
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def run_home() -> Path:
    """The MEDGUARD_HOME shared by the whole test run."""
    return _RUN_HOME


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the test run: embedded defaults under the run's home, Spark UI off, two local cores."""
    return load_settings(spark={"master": "local[2]", "ui_enabled": False, "driver_memory": "2g"})


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[object]:
    """The one Spark session of the test run."""
    from pipeline.spark import get_spark, stop_spark

    session = get_spark(settings)
    yield session
    stop_spark()


@pytest.fixture
def lake(tmp_path: Path, settings: Settings):
    """A lake under a fresh root, so tests never see each other's tables."""
    from pipeline.lake import Lake

    return Lake(settings.model_copy(update={"lake_root": str(tmp_path / "lake")}))


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
