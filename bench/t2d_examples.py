"""The synthetic T2D population (pipeline.synthetic) as model rows, built the way training builds them.

``t2d_examples(patients, seed)`` publishes the synthetic deidentified tables into a throw-away lake, builds the
features on Spark with the shipped T2D training config (``analytics/configs/t2d_within_1y.yaml``) and splits
them by patient, so the privacy and evasion benches attack the rows the real flow would train on;
``fit_served`` trains on them as training does (:func:`analytics.train.fit_calibrated`, single node).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

CONFIG = Path(__file__).resolve().parent.parent / "analytics" / "configs" / "t2d_within_1y.yaml"


def t2d_examples(patients: int, seed: int = 3, *, cache: Path | None = None, **overrides: Any,
                 ) -> tuple[pd.DataFrame, Any, Any]:
    """(examples with a ``_split`` column, the feature contract, the training config).

    With ``cache`` (a folder), the examples and contract built for (``patients``, ``seed``) are kept there and
    reused by the next bench (building them on Spark takes minutes); the cache holds synthetic rows only.
    """
    import json

    from analytics.config import load_train_config
    from analytics.features import GROUP, FeatureContract, build_features
    from analytics.flow import open_tables
    from analytics.synthetic import CLASSES, publish, synthetic_deidentified
    from analytics.train import SPLIT, assign_splits
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from pipeline.spark import get_spark

    stem = cache / f"t2d-{patients}-{seed}" if cache is not None else None
    if stem is not None and stem.with_suffix(".json").exists():
        examples = pd.read_parquet(stem.with_suffix(".parquet"))
        contract = FeatureContract.from_dict(json.loads(stem.with_suffix(".json").read_text()))
        config = load_train_config(CONFIG, load_settings(), **overrides)
        examples[SPLIT] = assign_splits(examples[GROUP], config.test_fraction, config.calibration_fraction,
                                        config.seed)
        return examples, contract, config
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
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        examples.to_parquet(stem.with_suffix(".parquet"), index=False)
        stem.with_suffix(".json").write_text(json.dumps(contract.to_dict()))
    return examples, contract, config


def fit_served(examples: pd.DataFrame, contract: Any, config: Any, seed: int, *, defence: bool = True,
               augmentation_examples: int | None = None) -> dict[str, Any]:
    """Split ``examples`` by patient (per ``seed``) and train the config's first grid point as training does.

    The model is :func:`analytics.train.fit_calibrated` on single-node xgboost: with ``defence`` the membership
    defence (regularisation, early stopping on the calibration split, rounded output), with
    ``augmentation_examples`` adversarial augmentation of that many flagged training positives at most — the
    served model of ``analytics.membership_defence`` / ``analytics.adversarial_augmentation``.

    Returns the ``train``/``calibration``/``test`` frames, the undefended xgboost ``params`` and the ``model``
    (a :class:`~analytics.train.TrainedModel`).
    """
    from analytics.features import GROUP, LABEL
    from analytics.privacy import MembershipDefence
    from analytics.robustness import augmenter
    from analytics.train import SPLIT, assign_splits, fit_calibrated, fit_local, xgb_params

    examples = examples.copy()
    examples[SPLIT] = assign_splits(examples[GROUP], config.test_fraction, config.calibration_fraction, seed)
    train, cal, test = (examples[examples[SPLIT] == s] for s in ("train", "calibration", "test"))
    params = xgb_params(config, dict(config.cv.grid[0]), train[LABEL].to_numpy())
    features = contract.features

    def fit(frame: pd.DataFrame, params: dict[str, Any], **stop: Any) -> Any:
        return fit_local(frame, features, params, **stop)

    model = fit_calibrated(fit, train, cal, contract, config, params,
                           defence=MembershipDefence() if defence else None,
                           augment=augmenter(config, augmentation_examples) if augmentation_examples else None)
    return {"train": train, "calibration": cal, "test": test, "params": params, "model": model}
