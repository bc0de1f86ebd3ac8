"""Tests for pipeline/spark.py: one reused session, workers on the driver's Python, and the Delta jar check.

Every test shares the run's one Spark session (the ``spark`` fixture); none builds or stops another.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import EngineUnavailableError, StorageError
from pipeline.settings import Settings
from pipeline.spark import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    _builder_conf,
    delta_jars_present,
    get_spark,
)


def test_when_get_spark_is_called_again_then_the_running_session_is_reused(spark, settings: Settings) -> None:
    assert get_spark(settings) is spark
    assert get_spark() is spark


def test_when_the_session_starts_then_workers_are_pinned_to_this_interpreter(spark) -> None:
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    assert os.environ["PYSPARK_DRIVER_PYTHON"] == sys.executable


def test_when_map_in_pandas_runs_then_the_worker_runs_the_drivers_interpreter(spark) -> None:
    # Defined here, not at module level, so that cloudpickle ships it by value: workers cannot import tests.
    def worker_python(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in batches:
            yield pd.DataFrame({"executable": [sys.executable], "pid": [os.getpid()]})

    rows = spark.range(1, numPartitions=1).mapInPandas(worker_python, "executable string, pid long").collect()

    assert {row.executable for row in rows} == {sys.executable}
    assert os.getpid() not in {row.pid for row in rows}  # it really ran in a Python worker


def test_when_a_python_udf_runs_then_the_worker_runs_the_drivers_interpreter(spark) -> None:
    from pyspark.sql.functions import udf

    executable = udf(lambda _: sys.executable, "string")

    rows = spark.range(1).select(executable("id").alias("executable")).collect()

    assert rows[0].executable == sys.executable


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("spark.sql.execution.arrow.pyspark.enabled", "true"),
        ("spark.sql.execution.arrow.pyspark.fallback.enabled", "false"),
        ("spark.sql.session.timeZone", "UTC"),
        ("spark.master", "local[2]"),
        ("spark.ui.enabled", "false"),
    ],
)
def test_when_the_session_starts_then_it_is_configured_from_settings(spark, key: str, expected: str) -> None:
    assert spark.conf.get(key) == expected


def test_when_settings_disable_the_ui_then_no_ui_is_served(spark) -> None:
    assert spark.sparkContext.uiWebUrl is None


def test_when_lake_engine_is_delta_rs_then_the_builder_adds_no_delta_extension(settings: Settings) -> None:
    conf = _builder_conf(settings)

    assert "spark.sql.extensions" not in conf
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.driver.memory"] == "2g"
    assert conf["spark.sql.warehouse.dir"] == str(settings.home / "spark-warehouse")


def test_when_lake_engine_is_spark_then_the_builder_adds_delta_extension_and_catalog(settings: Settings) -> None:
    conf = _builder_conf(settings.model_copy(update={"lake_engine": "spark"}))

    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG


def test_when_settings_carry_spark_conf_then_it_wins_over_the_builders_defaults(settings: Settings) -> None:
    spark_settings = settings.spark.model_copy(
        update={"conf": {"spark.sql.shuffle.partitions": "3", "spark.jars": "/opt/delta.jar"}}
    )

    conf = _builder_conf(settings.model_copy(update={"spark": spark_settings}))

    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.jars"] == "/opt/delta.jar"


# the Delta jar check (Delta's jars are not on this classpath) ------------------------------------------


def test_when_delta_jars_are_not_on_the_classpath_then_delta_jars_present_is_false(spark) -> None:
    assert delta_jars_present(spark) is False


def test_when_spark_engine_is_requested_from_a_running_session_without_jars_then_get_spark_raises(
    spark, settings: Settings
) -> None:
    with pytest.raises(EngineUnavailableError, match="Delta Lake's jars are not on Spark's classpath"):
        get_spark(settings.model_copy(update={"lake_engine": "spark"}))

    assert get_spark(settings) is spark
    assert spark.range(3).count() == 3  # the shared session was left running


def test_when_lake_uses_spark_engine_without_jars_then_construction_says_how_to_add_them(
    spark, settings: Settings, tmp_path: Path
) -> None:
    from pipeline.lake import Lake

    with pytest.raises(EngineUnavailableError) as caught:
        Lake(settings.model_copy(update={"lake_engine": "spark", "lake_root": str(tmp_path / "lake")}))

    message = str(caught.value)
    assert isinstance(caught.value, StorageError)
    assert "MEDGUARD_SPARK__CONF" in message
    assert "spark.jars" in message
    assert "spark.jars.packages=io.delta:delta-spark" in message
    assert "MEDGUARD_LAKE_ENGINE=delta-rs" in message
    assert spark.range(2).count() == 2


# console noise ----------------------------------------------------------------------------------------------


def test_when_log_level_is_not_debug_then_the_builder_turns_console_progress_off_and_points_log4j_to_our_file(
        settings: Settings) -> None:
    conf = _builder_conf(settings.model_copy(update={"log_level": "INFO"}))

    assert conf["spark.ui.showConsoleProgress"] == "false"
    assert "-Dlog4j2.configurationFile=" in conf["spark.driver.extraJavaOptions"]


def test_when_log_level_is_debug_then_spark_keeps_its_own_logging_and_progress_bars(settings: Settings) -> None:
    conf = _builder_conf(settings.model_copy(update={"log_level": "DEBUG"}))

    assert conf["spark.ui.showConsoleProgress"] == "true"
    assert "log4j2" not in conf["spark.driver.extraJavaOptions"]


_SPARK_JOB = """
from pipeline.spark import get_spark
spark = get_spark()
print(spark.range(200000).repartition(4).selectExpr("sum(id) AS s").collect()[0].s)
"""


@pytest.mark.integration
@pytest.mark.parametrize(("level", "quiet"), [("INFO", True), ("DEBUG", False)])
def test_when_a_command_starts_spark_then_stderr_has_no_spark_chatter_unless_log_level_is_debug(
        tmp_path: Path, level: str, quiet: bool) -> None:
    import subprocess

    env = {**os.environ, "MEDGUARD_HOME": str(tmp_path), "MEDGUARD_LOG_LEVEL": level,
           "MEDGUARD_SPARK__MASTER": "local[1]", "MEDGUARD_SPARK__UI_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", _SPARK_JOB], env=env, capture_output=True, text=True, timeout=300,
                          check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(range(200000)))
    chatter = [line for line in done.stderr.splitlines() if " WARN " in line or "Setting default log level" in line]
    assert (chatter == []) is quiet, done.stderr
