"""The synthetic T2D population (pipeline.synthetic) as model rows, built the way training builds them.

``t2d_examples(patients, seed)`` publishes the synthetic deidentified tables into a throw-away lake, builds the
features on Spark with the shipped T2D training config (``analytics/configs/t2d_within_1y.yaml``) and splits
them by patient, so the privacy and evasion benches attack the rows the real flow would train on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

CONFIG = Path(__file__).resolve().parent.parent / "analytics" / "configs" / "t2d_within_1y.yaml"


def t2d_examples(patients: int, seed: int = 3, **overrides: Any) -> tuple[pd.DataFrame, Any, Any]:
    """(examples with a ``_split`` column, the feature contract, the training config)."""
    from analytics.config import load_train_config
    from analytics.features import GROUP, build_features
    from analytics.flow import open_tables
    from analytics.synthetic import CLASSES, publish, synthetic_deidentified
    from analytics.train import SPLIT, assign_splits
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from pipeline.spark import get_spark

    with tempfile.TemporaryDirectory(prefix="medguard-bench-t2d-") as tmp:
        settings = load_settings(home=Path(tmp) / "home", spark={"ui_enabled": False})
        get_spark(settings)
        lake = Lake(settings)
        publish(lake, synthetic_deidentified(patients, seed=seed))
        tables, _ = open_tables(lake)
        config = load_train_config(CONFIG, settings, **overrides)
        sdf, contract = build_features(tables, "outcomes", config, lambda t: CLASSES[t], label="t2d_within_1y")
        examples = sdf.toPandas()
    examples[SPLIT] = assign_splits(examples[GROUP], config.test_fraction, config.calibration_fraction, config.seed)
    return examples, contract, config


def fit_default(examples: pd.DataFrame, features: list[str], config: Any, seed: int) -> dict[str, Any]:
    """Split ``examples`` by patient and fit the config's first grid point, calibrated: what the attacks face.

    Returns the ``train``/``calibration``/``test`` frames, the xgboost ``params``, the ``booster`` and its
    ``calibrator``.
    """
    from analytics.features import GROUP, LABEL
    from analytics.train import SPLIT, Calibrator, assign_splits, fit_local, matrix, xgb_params

    examples = examples.copy()
    examples[SPLIT] = assign_splits(examples[GROUP], config.test_fraction, config.calibration_fraction, seed)
    train, cal, test = (examples[examples[SPLIT] == s] for s in ("train", "calibration", "test"))
    params = xgb_params(config, dict(config.cv.grid[0]), train[LABEL].to_numpy())
    booster = fit_local(train, features, params)
    calibrator = Calibrator.fit(config.calibration, booster.inplace_predict(matrix(cal, features)),
                                cal[LABEL].to_numpy())
    return {"train": train, "calibration": cal, "test": test, "params": params, "booster": booster,
            "calibrator": calibrator}
