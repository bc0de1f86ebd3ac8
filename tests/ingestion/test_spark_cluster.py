"""Layers 1-2 on a Spark standalone cluster: ingestion checks and structured masking run on its executors and
give the same tables as the in-process path.

The cluster is ``spark_cluster`` (tests/conftest.py): a master and one worker started from pyspark's ``spark-class``
on 127.0.0.1. The project keeps one Spark session per process and the test run's is a ``local[*]`` one, so the
cluster's driver is a subprocess (:mod:`_spark_cluster_driver`), with its own home and a keyring it shares with the
executors through the worker's environment (as a cluster passes secrets to its executors).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_when_compute_is_a_spark_cluster_then_ingestion_and_deidentification_match_the_local_path(
        spark_cluster, tmp_path):
    from pipeline.synthetic.generate import generate

    generate(tmp_path / "sources", patients=200, seed=7, formats=("parquet",), defect_rate=0.02)
    driver = Path(__file__).with_name("_spark_cluster_driver.py")
    run = subprocess.run([sys.executable, str(driver), str(tmp_path / "sources"), spark_cluster.master],
                         env=spark_cluster.env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    tables = result["tables"]
    assert {"raw.patients", "raw.observations", "quarantine.records"} <= set(tables)
    assert {name for name in tables if name.startswith("deidentified.")}, "nothing was published"
    for name, found in tables.items():
        assert found["equal"], f"{name}: {found}"
        assert found["local_rows"] == found["spark_rows"] > 0
    assert result["counts_equal"]
    assert result["published_local"] == result["published_spark"]
    # The work ran on the cluster: every check and mask job succeeded there, and each published table was masked
    # on the executors.
    assert result["jobs"]["ingest"] and set(result["jobs"]["ingest"]) == {"SUCCEEDED"}
    assert result["jobs"]["deidentify"] and set(result["jobs"]["deidentify"]) == {"SUCCEEDED"}
    assert {result["masking"][name] for name in result["published_spark"]} == {"spark"}
