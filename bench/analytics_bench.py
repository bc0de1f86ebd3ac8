"""Analytics figures: xgboost.spark training time against single-node xgboost on the same rows in the same run,
Spark feature building, and batch scoring rows/s on Spark against in-process scoring.

Both trainers get the same examples (features built once on Spark), the same parameters and the same number of
boosting rounds; the ratio says what Spark's distribution costs (or saves) at this size on this machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def analytics_figures(patients: int, rounds: int = 100) -> Iterator[tuple[str, float, str, str]]:
    from analytics.config import TrainConfig
    from analytics.features import GROUP, LABEL, build_features
    from analytics.flow import open_tables, score_spark
    from analytics.synthetic import CLASSES, publish, synthetic_deidentified
    from analytics.train import Calibrator, assign_splits, fit_local, fit_spark, matrix, profile, xgb_params
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from pipeline.spark import get_spark

    with tempfile.TemporaryDirectory(prefix="medguard-bench-analytics-") as tmp:
        settings = load_settings(home=Path(tmp) / "home", spark={"ui_enabled": False})
        spark = get_spark(settings)
        lake = Lake(settings)
        publish(lake, synthetic_deidentified(patients, seed=3))
        tables, _ = open_tables(lake)
        config = TrainConfig(n_estimators=rounds)
        started = time.perf_counter()
        sdf, contract = build_features(tables, "outcomes", config, lambda t: CLASSES[t], label="t2d_within_1y")
        examples = sdf.toPandas()
        feature_seconds = time.perf_counter() - started
        yield ("analytics.features_seconds", feature_seconds, "s",
               f"{patients:,} patients → {len(examples):,} labelled rows x {len(contract.features)} features on Spark")
        examples["_split"] = assign_splits(examples[GROUP], 0.2, 0.2, 7)
        train = examples[examples["_split"] == "train"]
        params = xgb_params(config, {"max_depth": 4, "learning_rate": 0.1}, train[LABEL].to_numpy())
        timings: dict[str, list[float]] = {"spark": [], "local": []}
        for _ in range(2):  # interleaved, best of two: the first Spark fit also pays barrier-stage start-up
            t = time.perf_counter()
            booster = fit_spark(spark, train, contract.features, params, num_workers=1)
            timings["spark"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fit_local(train, contract.features, params)
            timings["local"].append(time.perf_counter() - t)
        spark_s, local_s = min(timings["spark"]), min(timings["local"])
        yield ("analytics.train_spark_seconds", spark_s, "s",
               f"SparkXGBClassifier, 1 worker, {rounds} rounds, {len(train):,} rows (best of 2)")
        yield ("analytics.train_local_seconds", local_s, "s", "single-node xgboost, same rows and parameters")
        yield ("analytics.train_spark_vs_local", spark_s / local_s, "x", "xgboost.spark time / single-node time")
        bundle: dict[str, Any] = {"contract": contract.to_dict(), "threshold": 0.5,
                                  "calibrator": {"method": "platt", "params": {"a": [1.0], "b": [0.0]}},
                                  "profile": profile(train, contract.features)}
        scoring, _ = build_features(tables, "outcomes", config, lambda t: CLASSES[t], contract=contract)
        scoring = scoring.cache()
        rows = scoring.count()
        t = time.perf_counter()
        score_spark(scoring, booster, bundle, "bench@v1", "ok", "bench").write.format("noop").mode("overwrite").save()
        spark_rate = rows / (time.perf_counter() - t)
        frame = scoring.toPandas()
        t = time.perf_counter()
        Calibrator("platt", {"a": [1.0], "b": [0.0]}).apply(booster.inplace_predict(matrix(frame, contract.features)))
        local_rate = rows / (time.perf_counter() - t)
        yield ("analytics.score_spark_rows_per_s", spark_rate, "rows/s",
               f"{rows:,} rows: mapInPandas with the booster broadcast, calibrated, range-checked")
        yield ("analytics.score_spark_vs_inprocess", spark_rate / local_rate, "x",
               f"Spark scoring rate / in-process inplace_predict rate ({local_rate:,.0f} rows/s)")
