"""Training on Spark: patient-grouped splits, time-boxed cross-validation, xgboost.spark, calibration, threshold.

The examples (one row per patient or per flat-table row) are split by group (the patient pseudonym) into
train / calibration / test, so no patient is on both sides. Hyper-parameters are cross-validated on the train
split (group k-fold, candidates in config order until the time budget is spent), the chosen ones are refit with
``xgboost.spark.SparkXGBClassifier`` on the whole train split, with ``scale_pos_weight`` = negatives/positives
and missing values left to xgboost. Probabilities are calibrated (Platt or isotonic) on the calibration split,
where the decision threshold is also set to reach the target sensitivity. The test split is only evaluated.

Two defences can shape the served model (:func:`fit_calibrated`): the membership-inference defence
(:class:`analytics.privacy.MembershipDefence`: its regularisation in every candidate and the final fit, boosting
stopped early on the calibration split's log-loss, the served probability rounded by the calibrator), and
adversarial augmentation (flagged training positives attacked within plausible bounds and added, labelled
positive, to the train split only; then refit and recalibrated).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    """Maps a raw xgboost probability to a calibrated one; stored as plain numbers (no pickle in artifacts).

    ``params["significant"]``, when present, rounds what :meth:`apply` serves to that many significant figures
    (the membership defence's output rounding; significant figures, not decimals, so that a rare label's small
    probabilities keep their order and the threshold between them). Every serving path (batch diagnosis, the
    diagnosis API, the comparison with the current model) builds a Calibrator from the registered bundle and calls
    :meth:`apply`, so the rounding travels with the model.
    """

    method: str
    params: dict[str, list[float]]

    @classmethod
    def fit(cls, method: str, raw: np.ndarray, y: np.ndarray, *, significant: int | None = None) -> Calibrator:
        if len(np.unique(y)) < 2:
            raise ValidationError("the calibration split holds only one class: more labelled data is needed")
        rounding = {"significant": [float(significant)]} if significant is not None else {}
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist(), **rounding})
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
        return cls("platt", {"a": [float(lr.coef_[0, 0])], "b": [float(lr.intercept_[0])], **rounding})

    @property
    def significant(self) -> int | None:
        """The served probability's significant figures, or None when it is not rounded."""
        return int(self.params["significant"][0]) if self.params.get("significant") else None

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated probability before any rounding (what an attack searches on; never served)."""
        raw = np.asarray(raw, dtype=float)
        if self.method == "isotonic":
            return np.interp(raw, self.params["x"], self.params["y"])
        z = self.params["a"][0] * _logit(raw) + self.params["b"][0]
        return 1.0 / (1.0 + np.exp(-z))

    def round(self, prob: np.ndarray) -> np.ndarray:
        """``prob`` as served: rounded to :attr:`significant` figures when set."""
        return round_significant(prob, self.significant)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """The served probability of raw xgboost scores."""
        return self.round(self.probability(raw))


def round_significant(prob: np.ndarray, figures: int | None) -> np.ndarray:
    """``prob`` rounded to ``figures`` significant figures (0 stays 0); unchanged when ``figures`` is None."""
    prob = np.asarray(prob, dtype=float)
    if figures is None:
        return prob
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(prob)))
    scale = np.power(10.0, np.where(np.isfinite(magnitude), figures - 1 - magnitude, 0.0))
    return np.round(prob * scale) / scale


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
    # The defences this model was trained with: {"membership": {..., "undefended_params"},
    # "adversarial_augmentation": {"examples_added", ...}}; empty when none.
    defences: dict[str, Any] = field(default_factory=dict)

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


_STOP = "_early_stopping"


def _best_rounds(booster: xgb.Booster) -> xgb.Booster:
    # Keep the rounds up to the best iteration only: what stopping early means for the served model.
    best = booster.attr("best_iteration")
    return booster[: int(best) + 1] if best is not None else booster


def fit_spark(spark: SparkSession, frame: pd.DataFrame, features: list[str], params: dict[str, Any],
              num_workers: int, *, early_stopping: pd.DataFrame | None = None, rounds: int | None = None,
              ) -> xgb.Booster:
    """Fit ``xgboost.spark.SparkXGBClassifier`` on ``frame`` and return its booster.

    With ``early_stopping`` rows and ``rounds``, boosting stops once their log-loss has not improved for
    ``rounds`` rounds, and the booster keeps the rounds up to the best one.
    """
    from xgboost.spark import SparkXGBClassifier

    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    columns = [*features, LABEL]
    rows = frame[columns]
    spark_params = dict(params)
    spark_params["seed"] = spark_params.pop("random_state", 0)
    if early_stopping is not None and rounds:
        rows = pd.concat([rows.assign(**{_STOP: False}), early_stopping[columns].assign(**{_STOP: True})],
                         ignore_index=True)
        spark_params.update(validation_indicator_col=_STOP, early_stopping_rounds=rounds, eval_metric="logloss")
    sdf = spark.createDataFrame(rows.astype({f: "float64" for f in features}))
    clf = SparkXGBClassifier(features_col=list(features), label_col=LABEL, num_workers=num_workers,
                             missing=float("nan"), verbosity=0, verbose=False, **spark_params)
    return _best_rounds(clf.fit(sdf.repartition(num_workers)).get_booster())


def fit_local(frame: pd.DataFrame, features: list[str], params: dict[str, Any], *,
              early_stopping: pd.DataFrame | None = None, rounds: int | None = None) -> xgb.Booster:
    """Single-node xgboost with the same parameters (baseline, screening and robustness experiments, benches).

    ``early_stopping`` and ``rounds`` as in :func:`fit_spark`.
    """
    import xgboost as xgb

    kwargs = dict(params)
    fit_kwargs: dict[str, Any] = {}
    if early_stopping is not None and rounds:
        kwargs.update(early_stopping_rounds=rounds, eval_metric="logloss")
        fit_kwargs = {"eval_set": [(matrix(early_stopping, features), early_stopping[LABEL].to_numpy())],
                      "verbose": False}
    clf = xgb.XGBClassifier(missing=np.nan, verbosity=0, n_jobs=2, **kwargs)
    clf.fit(matrix(frame, features), frame[LABEL].to_numpy(), **fit_kwargs)
    return _best_rounds(clf.get_booster())


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def cross_validate(spark: SparkSession, train: pd.DataFrame, features: list[str], config: TrainConfig,
                   defence: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Group k-fold over the grid in order until the budget is spent; the best mean AUROC wins.

    With a membership ``defence`` every candidate is scored with its regularisation (as it will be trained), and
    a candidate the defence makes identical to one already scored is skipped.
    """
    from sklearn.model_selection import GroupKFold

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    y = train[LABEL].to_numpy()
    folds = list(GroupKFold(n_splits=config.cv.folds).split(train, y, train[GROUP].astype(str)))
    seen: set[str] = set()
    for candidate in config.cv.grid:
        if results and config.cv.budget_seconds is not None and time.monotonic() - started > config.cv.budget_seconds:
            break
        if defence is not None:
            effective = repr(sorted(defence.params(xgb_params(config, candidate, y)).items()))
            if effective in seen:
                continue
            seen.add(effective)
        scores = []
        for fit_idx, val_idx in folds:
            part = train.iloc[fit_idx]
            params = xgb_params(config, candidate, part[LABEL].to_numpy())
            params = defence.params(params) if defence is not None else params
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


Fit = Callable[..., "xgb.Booster"]
Augment = Callable[[TrainedModel, pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]


def fit_calibrated(fit: Fit, train_rows: pd.DataFrame, cal_rows: pd.DataFrame, contract: FeatureContract,
                   config: TrainConfig, params: dict[str, Any], *, defence: Any = None,
                   augment: Augment | None = None) -> TrainedModel:
    """Fit ``params`` on ``train_rows``, calibrate and set the threshold on ``cal_rows``, with the defences asked.

    Args:
        fit: ``fit(frame, params, early_stopping=rows|None, rounds=int|None)`` returning a booster
            (:func:`fit_spark` bound to a session, or :func:`fit_local`).
        defence: a :class:`analytics.privacy.MembershipDefence`: its regularisation, early stopping on
            ``cal_rows`` (the rounds kept become ``n_estimators``, so a refit reproduces the model's size) and the
            served probability rounded to its ``round_significant`` figures.
        augment: ``augment(model, train_rows)`` returns adversarial rows (features and label) and a summary; they
            are added to the train split only and the model is refit with the same parameters and recalibrated.
            Calibration and test rows never receive them.
    """
    features = contract.features
    started = time.perf_counter()
    defences: dict[str, Any] = {}
    significant = None
    if defence is not None:
        base = params
        params = defence.params(params)
        booster = fit(train_rows, params, early_stopping=cal_rows, rounds=defence.early_stopping_rounds)
        params = {**params, "n_estimators": int(booster.num_boosted_rounds())}
        significant = defence.round_significant
        defences["membership"] = {**asdict(defence), "rounds": params["n_estimators"], "undefended_params": base}
    else:
        booster = fit(train_rows, params)
    target = float(config.target_sensitivity or 0.85)
    y_cal = cal_rows[LABEL].to_numpy()
    trained_on = profile(train_rows, features, seed=config.seed)  # the real rows' profile, never the adversarial

    def calibrated(booster: xgb.Booster) -> TrainedModel:
        calibrator = Calibrator.fit(config.calibration, booster.inplace_predict(matrix(cal_rows, features)), y_cal,
                                    significant=significant)
        model = TrainedModel(booster=booster, contract=contract, calibrator=calibrator, threshold=0.5,
                             params=params, profile=trained_on, defences=defences)
        model.threshold = choose_threshold(model.predict_proba(cal_rows), y_cal, target)
        return model

    model = calibrated(booster)
    if augment is not None:
        extra, summary = augment(model, train_rows)
        columns = [*features, LABEL]
        booster = fit(pd.concat([train_rows[columns], extra[columns]], ignore_index=True), params)
        defences["adversarial_augmentation"] = {**summary, "examples_added": len(extra)}
        model = calibrated(booster)
    model.train_seconds = time.perf_counter() - started
    return model


def train(spark: SparkSession, examples: pd.DataFrame, contract: FeatureContract, config: TrainConfig, *,
          defence: Any = None, augment: Augment | None = None) -> TrainedModel:
    """Cross-validate, fit on Spark, calibrate and set the threshold; ``examples`` carries a ``_split`` column.

    ``defence`` and ``augment`` as in :func:`fit_calibrated` (the defence also shapes the cross-validation).

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
    best, cv = cross_validate(spark, train_rows, features, config, defence)
    params = xgb_params(config, best, train_rows[LABEL].to_numpy())

    def fit(frame: pd.DataFrame, params: dict[str, Any], **stop: Any) -> xgb.Booster:
        return fit_spark(spark, frame, features, params, config.num_workers, **stop)

    model = fit_calibrated(fit, train_rows, cal_rows, contract, config, params, defence=defence, augment=augment)
    model.cv = cv
    model.train_seconds = time.perf_counter() - started
    return model
