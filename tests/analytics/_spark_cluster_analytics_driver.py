"""Driver of the analytics cluster test, run in its own process (one Spark session per process).

``python _spark_cluster_analytics_driver.py OUT MASTER PATIENTS [ENGINE]`` publishes ``PATIENTS`` synthetic patients
to the deidentified zone of a lake under ``OUT`` through the lake engine ``ENGINE`` (``delta-rs`` by default;
``spark`` is delta-spark, with the jars listed in ``DELTA_SPARK_JARS``), then, with ``spark.master`` = ``MASTER``,
runs the training flow's steps (:mod:`analytics.flow`: features on Spark, cross-validation and fit with
xgboost.spark, calibration, evaluation, judgement, registration; promoted by hand if the governance floors kept it
a candidate) and the batch diagnosis (:func:`analytics.flow.diagnose`: scoring on Spark's executors), keeping the
run's examples for the test to refit on ``local[*]``. The poisoning screen and the evasion-robustness step are left
out: they fit single-node xgboost in the driver and run nothing on the cluster. It prints one JSON line: the
session's master and application id, the training result, the diagnosis result and each step's wall time. The key
provider comes from the environment (``MEDGUARD_*``); home and lake are under ``OUT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from analytics import flow
from analytics.registry import ModelRegistry
from analytics.synthetic import CLASSES, publish, synthetic_deidentified
from pipeline.lake import Lake
from pipeline.settings import load_settings
from pipeline.spark import get_spark
from storage_security.keys.providers import provider_from_settings

SEED = 11
# Few boosting rounds and one candidate, without a time budget: a budget could pick a different candidate on a
# busier machine, and the test compares the model with a local refit of the same one.
OVERRIDES = {"n_estimators": 40,
             "cv": {"folds": 2, "budget_seconds": None, "grid": [{"max_depth": 3, "learning_rate": 0.2}]}}


def classify(table: str) -> dict[str, Any]:
    return dict(CLASSES[table])


def main(out: Path, master: str, patients: int, engine: str = "delta-rs") -> dict[str, Any]:
    conf = {"spark.jars": os.environ["DELTA_SPARK_JARS"]} if engine == "spark" else {}
    settings = load_settings(home=out / "home", lake_root=str(out / "lake"), lake_engine=engine,
                             spark={"master": master, "ui_enabled": False, "driver_memory": "1g", "conf": conf})
    seconds: dict[str, float] = {}

    def timed(name: str, step: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = step(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - started, 1)
        return out

    timed("publish", publish, Lake(settings), synthetic_deidentified(patients, SEED))
    timed("session", get_spark, settings)
    run_dir = timed("features", flow.step_features, settings, "outcomes", "t2d_within_1y", overrides=OVERRIDES,
                    classify=classify)
    timed("train", flow.step_train, settings, run_dir)
    timed("evaluate", flow.step_evaluate, settings, run_dir)
    timed("judge", flow.step_judge, settings, run_dir, classify=classify)
    trained = timed("register", flow.step_register, settings, run_dir, keep_examples=True)
    promoted_by_hand = trained["promotion"]["decision"] != "promoted"
    if promoted_by_hand:
        # Where the run happens is under test here, not the governance floors (which a small population's
        # 5 %-prevalence label can miss): promote as an operator would with `medguard models promote`.
        name, _, version = trained["model_version"].partition("@v")
        ModelRegistry(settings, provider_from_settings(settings)).promote(
            name, int(version), reason="cluster test", principal="svc:test")
    diagnosed = timed("diagnose", flow.diagnose, settings, classify=classify, batch_id="cluster")
    context = get_spark(settings).sparkContext
    return {"master": context.master, "app_id": context.applicationId, "train": trained, "diagnose": diagnosed,
            "promoted_by_hand": promoted_by_hand, "overrides": OVERRIDES, "seconds": seconds}


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
    sys.stdout.write(json.dumps(result, default=str) + "\n")
