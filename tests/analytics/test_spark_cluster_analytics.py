"""Layer 3 on a Spark standalone cluster: training (features on Spark, xgboost.spark) and batch scoring run on its
executors, the model scores as the same training on ``local[*]`` does, and scoring writes one prediction per patient.

The cluster is ``spark_cluster`` (tests/conftest.py): a master and one worker (one core, which xgboost.spark's
barrier stage needs for ``num_workers=1``) started from pyspark's ``spark-class`` on 127.0.0.1. A standalone
driver runs no tasks itself, so every Spark job of the run, the xgboost fits and the scoring included, ran on that
worker's executor. The test run's own session is ``local[2]`` (one Spark session per process), so the cluster's
driver is a subprocess (:mod:`_spark_cluster_analytics_driver`); the ``local[*]`` refit runs here.

The lake engine is delta-rs (executors read the Parquet files its Delta log lists). The delta-spark engine runs the
same test where Delta's jars are at hand (``DELTA_SPARK_JARS``, see infra/spark/spark-defaults.conf for the
version); they cannot be fetched here, so that variant is skipped here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.spark import delta_package

pytestmark = pytest.mark.integration

PATIENTS = 1_500
NO_DELTA_JARS = ("the delta-spark lake engine is not run here: Delta's jars cannot be fetched without Maven; set "
                 f"DELTA_SPARK_JARS to local copies of {delta_package()} and delta-storage (comma-separated jar "
                 "paths) to run training and scoring on the cluster through it")


@pytest.fixture(scope="module", params=["delta-rs", "spark"])
def cluster_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The driver's training and diagnosis on the cluster with the lake engine ``request.param``: its JSON result,
    with ``out`` (its home and lake)."""
    engine = request.param
    if engine == "spark" and not os.environ.get("DELTA_SPARK_JARS"):
        pytest.skip(NO_DELTA_JARS)
    spark_cluster = request.getfixturevalue("spark_cluster")
    out = tmp_path_factory.mktemp(f"analytics-cluster-{engine}")
    driver = Path(__file__).with_name("_spark_cluster_analytics_driver.py")
    run = subprocess.run([sys.executable, str(driver), str(out), spark_cluster.master, str(PATIENTS), engine],
                         env=spark_cluster.env, capture_output=True, text=True, timeout=600, check=False)
    (out / "driver.log").write_text(run.stderr + run.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    return {**json.loads(run.stdout.splitlines()[-1]), "out": out}


def test_when_training_on_a_spark_cluster_then_its_worker_ran_it_and_the_model_scores_as_on_local(
        cluster_run, spark_cluster, spark, settings) -> None:
    import pandas as pd
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from analytics.config import load_train_config
    from analytics.features import LABEL, FeatureContract
    from analytics.privacy import MembershipDefence
    from analytics.train import SPLIT, matrix, train

    # The driver's session was the cluster's, and the master ran its application with executors on the worker.
    assert cluster_run["master"] == spark_cluster.master
    state = spark_cluster.master_state()
    apps = {app["id"] for app in [*state.get("activeapps", []), *state.get("completedapps", [])]}
    assert cluster_run["app_id"] in apps
    assert cluster_run["app_id"] in {executor.get("appid") for executor in spark_cluster.worker_executors()}

    trained = cluster_run["train"]
    assert trained["metrics"]["auroc"] >= 0.70

    # The same examples (after the poisoning screen), config, defence and seed, fitted on this process's local[2]
    # session.
    run_dir = Path(trained["run_dir"])
    run_state = json.loads((run_dir / "state.json").read_text())
    examples = pd.read_parquet(run_dir / "examples.parquet")
    local = train(spark, examples, FeatureContract.from_dict(run_state["contract"]),
                  load_train_config(None, settings, **cluster_run["overrides"]),
                  defence=MembershipDefence() if settings.analytics.membership_defence else None)
    on_cluster = xgb.Booster()
    on_cluster.load_model(bytearray((run_dir / "model.ubj").read_bytes()))
    test = examples[examples[SPLIT] == "test"]
    y, x = test[LABEL].to_numpy(dtype=int), matrix(test, local.features)
    cluster_auroc = roc_auc_score(y, on_cluster.inplace_predict(x))
    assert cluster_auroc == pytest.approx(roc_auc_score(y, local.booster.inplace_predict(x)), abs=0.005)
    assert trained["threshold"] == pytest.approx(local.threshold, abs=0.02)


def test_when_scoring_on_a_spark_cluster_then_current_predictions_hold_one_row_per_patient(cluster_run) -> None:
    from analytics.flow import CURRENT_TABLE
    from pipeline.lake import Lake, Zone
    from pipeline.settings import load_settings

    diagnosed = cluster_run["diagnose"]
    assert diagnosed["rows"] == PATIENTS
    lake = Lake(load_settings(home=cluster_run["out"] / "home", lake_root=str(cluster_run["out"] / "lake")))
    current = lake.read_pandas(Zone.PREDICTIONS, CURRENT_TABLE)
    assert diagnosed["current_rows"] == len(current) == current["patient_pseudonym"].nunique() == PATIENTS
    assert set(current["model_version"]) == {cluster_run["train"]["model_version"]}
    assert current["probability"].between(0, 1).all()
    assert (current["threshold"] == cluster_run["train"]["threshold"]).all()
    assert (current["flag"] == (current["probability"] >= current["threshold"])).all()
