"""Training on Spark: patient-grouped splits, time-boxed cross-validation, xgboost.spark, calibration, threshold.

The examples (one row per patient or per flat-table row) are split by group (the patient pseudonym) into
train / calibration / test, so no patient is on both sides. Hyper-parameters are cross-validated on the train
split (group k-fold, candidates in config order until the time budget is spent), the chosen ones are refit with
``xgboost.spark.SparkXGBClassifier`` on the whole train split, with ``scale_pos_weight`` = negatives/positives
and missing values left to xgboost. Probabilities are calibrated (Platt or isotonic) on the calibration split,
where the decision threshold is also set to reach the target sensitivity. The test split is only evaluated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analytics.config import TrainConfig
from analytics.features import GROUP, LABEL, FeatureContract
from pipeline.errors import ValidationError

if TYPE_CHECKING:
    import xgboost as xgb
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
SPLIT = "_split"


@dataclass
class Calibrator:
    """Maps a raw xgboost probability to a calibrated one; stored as plain numbers (no pickle in artifacts)."""

    method: str
    params: dict[str, list[float]]

    @classmethod
    def fit(cls, method: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        if len(np.unique(y)) < 2:
            raise ValidationError("the calibration split holds only one class: more labelled data is needed")
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
        return cls("platt", {"a": [float(lr.coef_[0, 0])], "b": [float(lr.intercept_[0])]})

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=float)
        if self.method == "isotonic":
            return np.interp(raw, self.params["x"], self.params["y"])
        z = self.params["a"][0] * _logit(raw) + self.params["b"][0]
        return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@dataclass
class TrainedModel:
    """A trained, calibrated model and everything needed to score with it and to audit how it was made."""

    booster: xgb.Booster
    contract: FeatureContract
    calibrator: Calibrator
    threshold: float
    params: dict[str, Any]
    cv: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0

    @property
    def features(self) -> list[str]:
        return self.contract.features

    def raw_scores(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.inplace_predict(matrix(frame, self.features))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibrator.apply(self.raw_scores(frame))


def matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The feature matrix as float64 with NaN for missing values (what xgboost treats as missing)."""
    return frame[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def assign_splits(groups: pd.Series, test_fraction: float, calibration_fraction: float, seed: int) -> pd.Series:
    """``train``/``calibration``/``test`` per row, the same for every row of a group (deterministic per seed)."""
    unique = np.array(sorted(groups.astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = round(len(unique) * test_fraction)
    n_cal = round(len(unique) * calibration_fraction)
    labels = np.empty(len(unique), dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test:n_test + n_cal]] = "calibration"
    labels[order[n_test + n_cal:]] = "train"
    return groups.astype(str).map(dict(zip(unique, labels, strict=True)))


def xgb_params(config: TrainConfig, candidate: dict[str, Any], y: np.ndarray) -> dict[str, Any]:
    """xgboost parameters for one candidate: imbalance weight from the labels, fixed seed, histogram trees."""
    positives = max(int(y.sum()), 1)
    params = {"n_estimators": config.n_estimators, "max_depth": 4, "learning_rate": 0.1, "tree_method": "hist",
              "scale_pos_weight": float((len(y) - positives) / positives), "random_state": config.seed,
              "min_child_weight": 1.0, "subsample": 1.0}
    params.update(candidate)
    return params


def fit_spark(spark: SparkSession, frame: pd.DataFrame, features: list[str], params: dict[str, Any],
              num_workers: int) -> xgb.Booster:
    """Fit ``xgboost.spark.SparkXGBClassifier`` on ``frame`` and return its booster."""
    from xgboost.spark import SparkXGBClassifier

    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    sdf = spark.createDataFrame(frame[[*features, LABEL]].astype({f: "float64" for f in features}))
    spark_params = dict(params)
    spark_params["seed"] = spark_params.pop("random_state", 0)
    clf = SparkXGBClassifier(features_col=list(features), label_col=LABEL, num_workers=num_workers,
                             missing=float("nan"), verbosity=0, verbose=False, **spark_params)
    return clf.fit(sdf.repartition(num_workers)).get_booster()


def fit_local(frame: pd.DataFrame, features: list[str], params: dict[str, Any]) -> xgb.Booster:
    """Single-node xgboost with the same parameters (baseline, screening and robustness experiments)."""
    import xgboost as xgb

    clf = xgb.XGBClassifier(missing=np.nan, verbosity=0, n_jobs=2, **params)
    clf.fit(matrix(frame, features), frame[LABEL].to_numpy())
    return clf.get_booster()


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def cross_validate(spark: SparkSession, train: pd.DataFrame, features: list[str], config: TrainConfig,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Group k-fold over the grid in order until the budget is spent; the best mean AUROC wins."""
    from sklearn.model_selection import GroupKFold

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    y = train[LABEL].to_numpy()
    folds = list(GroupKFold(n_splits=config.cv.folds).split(train, y, train[GROUP].astype(str)))
    for candidate in config.cv.grid:
        if results and config.cv.budget_seconds is not None and time.monotonic() - started > config.cv.budget_seconds:
            break
        scores = []
        for fit_idx, val_idx in folds:
            part = train.iloc[fit_idx]
            params = xgb_params(config, candidate, part[LABEL].to_numpy())
            booster = fit_spark(spark, part, features, params, config.num_workers)
            held = train.iloc[val_idx]
            scores.append(_auroc(held[LABEL].to_numpy(), booster.inplace_predict(matrix(held, features))))
        results.append({"params": dict(candidate), "auroc_mean": float(np.nanmean(scores)),
                        "auroc_folds": [float(s) for s in scores]})
    best = max(results, key=lambda r: r["auroc_mean"])
    return dict(best["params"]), results


def choose_threshold(prob: np.ndarray, y: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold whose sensitivity on (prob, y) is at least the target."""
    positives = np.sort(prob[y == 1])
    if not len(positives):
        raise ValidationError("no positive example to set the decision threshold on")
    k = int(np.floor((1 - target_sensitivity) * len(positives)))
    return float(positives[min(k, len(positives) - 1)])


def profile(frame: pd.DataFrame, features: list[str], bins: int = 10, sample: int = 1000, seed: int = 0,
            ) -> dict[str, Any]:
    """The training data's per-feature profile: quantile bins for PSI, a sample for KS, plausible ranges."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name in features:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        if not len(present):
            out[name] = {"missing": 1.0, "edges": [], "proportions": [], "sample": []}
            continue
        edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
        pick = present if len(present) <= sample else rng.choice(present, sample, replace=False)
        out[name] = {
            "missing": float(1 - len(present) / len(values)), "edges": edges.tolist(),
            "proportions": (counts / counts.sum()).tolist(), "sample": np.sort(pick).tolist(),
            "min": float(present.min()), "max": float(present.max()), "p01": float(np.quantile(present, 0.01)),
            "p99": float(np.quantile(present, 0.99)), "mean": float(present.mean()), "std": float(present.std()),
        }
    return out


def train(spark: SparkSession, examples: pd.DataFrame, contract: FeatureContract, config: TrainConfig,
          ) -> TrainedModel:
    """Cross-validate, fit on Spark, calibrate and set the threshold; ``examples`` carries a ``_split`` column.

    Raises:
        ValidationError: too few labelled rows, or a split without both classes.
    """
    features = contract.features
    train_rows = examples[examples[SPLIT] == "train"]
    cal_rows = examples[examples[SPLIT] == "calibration"]
    for name, part in (("train", train_rows), ("calibration", cal_rows)):
        if part[LABEL].nunique() < 2 or part[LABEL].sum() < config.cv.folds:
            raise ValidationError(f"the {name} split has {int(part[LABEL].sum())} positive of {len(part)} rows: "
                                  "too few to train on")
    started = time.perf_counter()
    best, cv = cross_validate(spark, train_rows, features, config)
    params = xgb_params(config, best, train_rows[LABEL].to_numpy())
    booster = fit_spark(spark, train_rows, features, params, config.num_workers)
    seconds = time.perf_counter() - started
    calibrator = Calibrator.fit(config.calibration, booster.inplace_predict(matrix(cal_rows, features)),
                                cal_rows[LABEL].to_numpy())
    model = TrainedModel(booster=booster, contract=contract, calibrator=calibrator, threshold=0.5, params=params,
                         cv=cv, profile=profile(train_rows, features, seed=config.seed), train_seconds=seconds)
    model.threshold = choose_threshold(model.predict_proba(cal_rows), cal_rows[LABEL].to_numpy(),
                                       float(config.target_sensitivity or 0.85))
    return model
