"""The training and diagnosis flows, as steps a DAG task, the CLI and the demo each call the same way.

Training: :func:`step_features` → :func:`step_screen` → :func:`step_train` → :func:`step_evaluate` →
:func:`step_robustness` → :func:`step_judge` → :func:`step_register`. Each step reads and writes a run folder
(``$MEDGUARD_HOME/analytics/runs/<run id>``: examples as Parquet, JSON state), so Airflow tasks stay small and
a failed step can be re-run. :func:`train_pipeline` runs them in order. :func:`diagnose` is the batch diagnosis:
verify the current model, measure drift on the rows it did not train on, score on Spark with each row's top
contributing features, write the ``predictions`` zone and rewrite its one-row-per-patient ``current`` table.

Governance: :func:`step_features` fingerprints the training (the examples' digest, the resolved training config
and the analytics settings); a model with that fingerprint already registered is not trained again
(``train_pipeline`` returns it with the decision ``duplicate``, and registration refuses a second copy under the
registry's lock when two runs race). :func:`step_judge` holds the candidate to the floors of
``settings.governance`` and compares it with the current model on the candidate's test rows
(:mod:`analytics.promotion`); :func:`step_register` registers the candidate and, when it earned it and
``auto_promote`` is on, moves the registry's signed ``current`` pointer to it. A candidate that stays a candidate
is an ``alert`` audit event with the reasons.

Every table read and write goes through the lake's audited path (its access hook records a ``svc:analytics``
event): the deidentified reads of training and scoring, the quarantine of the poisoning screen, the predictions.
The run folder's ``examples.parquet`` is a copy of de-identified rows outside the lake: its writing and its
removal are audit events too, and :func:`step_register` deletes it once the model is registered (the registry
keeps the training data's SHA-256, not the rows), so no copy outlives the run or escapes a patient's erasure.
A run that fails in :func:`train_pipeline` deletes it as well; an Airflow run that fails keeps it for a retry.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analytics.config import TrainConfig, load_train_config
from analytics.contract import Classifier, published_classifier
from analytics.features import GROUP, LABEL, PASSTHROUGH, ROW_ID, FeatureContract, build_features
from pipeline.errors import ValidationError
from pipeline.lake import CommitInfo, Lake, Zone
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PRINCIPAL = "svc:analytics"
QUARANTINE_TABLE = "training_screen"
PREDICTIONS_TABLE = "diagnoses"
CURRENT_TABLE = "current"
_STATE = "state.json"
Progress = Callable[[str, int, int], None]
TRAIN_STEPS = ("features", "screen", "train", "evaluate", "robustness", "judge", "register")
DIAGNOSE_STEPS = ("verify", "drift", "score", "current")


# run folder -------------------------------------------------------------------------------------------

def _run_dir(settings: Settings, run_id: str) -> Path:
    path = settings.home / "analytics" / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / _STATE).read_text())


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    (run_dir / _STATE).write_text(json.dumps(state, indent=2, sort_keys=True, default=str))


def _config(settings: Settings, state: dict[str, Any]) -> TrainConfig:
    return load_train_config(state.get("config_path"), settings, **state.get("overrides", {}))


def open_tables(lake: Lake) -> tuple[dict[str, DataFrame], dict[str, int]]:
    """Every table of the deidentified zone as a Spark DataFrame, with the version read."""
    tables, versions = {}, {}
    for name in lake.tables(Zone.DEIDENTIFIED):
        versions[name] = lake.version(Zone.DEIDENTIFIED, name)
        tables[name] = lake.read_spark(Zone.DEIDENTIFIED, name, version=versions[name])
    return tables, versions


def _digest(frame: pd.DataFrame, columns: list[str]) -> str:
    ordered = frame.sort_values(ROW_ID)[columns]
    return hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes()).hexdigest()


def _fingerprint(settings: Settings, table: str, label: str, config: TrainConfig, examples: pd.DataFrame,
                 features: list[str]) -> str:
    """What makes two trainings the same: the examples (values, labels, splits), the config, the settings."""
    from analytics.train import SPLIT

    data = _digest(examples, [ROW_ID, *features, LABEL, SPLIT])
    recipe = {"table": table, "label": label, "data_sha256": data, "config": config.model_dump(mode="json"),
              "analytics": settings.analytics.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


# training steps ---------------------------------------------------------------------------------------

def step_features(settings: Settings, table: str, label: str, *, config_path: str | None = None,
                  overrides: dict[str, Any] | None = None, run_id: str | None = None,
                  classify: Classifier | None = None, provider: Any = None) -> str:
    """Build the examples on Spark, split them by patient; returns the run folder."""
    from analytics.evaluate import require_both_classes
    from analytics.train import SPLIT, assign_splits
    from pipeline.spark import get_spark

    get_spark(settings)
    provider = provider or _provider(settings)
    lake = _audited_lake(settings, provider)
    config = load_train_config(config_path, settings, **(overrides or {}))
    tables, versions = open_tables(lake)
    sdf, contract = build_features(tables, table, config, classify or published_classifier(lake), label=label)
    examples = sdf.toPandas()
    if examples.empty:
        raise ValidationError(f"deidentified/{table} has no labelled rows for {label!r}")
    examples[SPLIT] = assign_splits(examples[GROUP], config.test_fraction, config.calibration_fraction, config.seed)
    require_both_classes(examples[LABEL], examples[SPLIT], f"label {label!r} of deidentified/{table}")
    run_dir = _run_dir(settings, run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6])
    examples.to_parquet(run_dir / "examples.parquet", index=False)
    used = sorted({table, *contract.source_tables})
    _audit_copy(settings, provider, run_dir, "write", len(examples), {t: versions[t] for t in used})
    _save_state(run_dir, {"table": table, "label": label, "config_path": config_path, "overrides": overrides or {},
                          "contract": contract.to_dict(), "sources": config.sources.model_dump(mode="json"),
                          "table_versions": {t: versions[t] for t in used},
                          "fingerprint": _fingerprint(settings, table, label, config, examples, contract.features),
                          "rows": len(examples), "positives": int(examples[LABEL].sum())})
    return str(run_dir)


def duplicate_of(settings: Settings, run_dir: str, *, provider: Any = None) -> str | None:
    """The model version already registered from the same data and configuration as this run, or None."""
    from analytics.registry import ModelRegistry, model_name

    state = _state(Path(run_dir))
    name = model_name(state["table"], state["label"])
    version = ModelRegistry(settings, provider or _provider(settings)).duplicate_of(name, state["fingerprint"])
    return f"{name}@v{version}" if version is not None else None


def step_screen(settings: Settings, run_dir: str, *, provider: Any = None) -> dict[str, Any]:
    """Screen the newest training batch (or the whole train split, out of fold); quarantine flagged rows."""
    from analytics.poisoning import quarantine_frame, screen
    from analytics.train import SPLIT, xgb_params

    run = Path(run_dir)
    state = _state(run)
    config = _config(settings, state)
    examples = pd.read_parquet(run / "examples.parquet")
    contract = FeatureContract.from_dict(state["contract"])
    train_rows = examples[examples[SPLIT] == "train"]
    batch_col = PASSTHROUGH["_batch_id"]
    trusted = None
    batch_id = "initial"
    if batch_col in train_rows and train_rows[batch_col].nunique() > 1:
        # The newest batch (latest ingestion time) is screened against everything accepted before it.
        order = train_rows.groupby(batch_col)[PASSTHROUGH["_ingested_at"]].max().sort_values() \
            if PASSTHROUGH["_ingested_at"] in train_rows else train_rows.groupby(batch_col).size()
        batch_id = str(order.index[-1])
        trusted = train_rows[train_rows[batch_col] != batch_id]
        batch = train_rows[train_rows[batch_col] == batch_id]
    else:
        batch = train_rows
    params = xgb_params(config, dict(config.cv.grid[0]) if config.cv.grid else {}, train_rows[LABEL].to_numpy())
    _, flagged, report = screen(
        batch, contract.features, params, trusted=trusted,
        validation=examples[examples[SPLIT] == "calibration"] if trusted is not None else None,
        false_flag_rate=(settings.analytics.screen_false_flag_rate if trusted is not None
                         else settings.analytics.screen_initial_flag_rate),
        max_auroc_loss=settings.analytics.screen_max_auroc_loss, source_trust=config.source_trust,
        batch_id=batch_id, seed=config.seed)
    if len(flagged):
        _audited_lake(settings, provider or _provider(settings)).append(Zone.QUARANTINE, QUARANTINE_TABLE,
                              quarantine_frame(flagged, batch_id=batch_id, table=state["table"], model_run=run.name),
                              commit=CommitInfo(principal=PRINCIPAL, purpose="poisoning screen", batch_id=batch_id))
    drop = set(flagged[ROW_ID].astype(str))
    examples = examples[~((examples[SPLIT] == "train") & examples[ROW_ID].astype(str).isin(drop))]
    examples.to_parquet(run / "examples.parquet", index=False)
    state["screen"] = {**report.to_dict(), "quarantine_table": f"quarantine/{QUARANTINE_TABLE}"}
    _save_state(run, state)
    return state["screen"]


def step_train(settings: Settings, run_dir: str) -> dict[str, Any]:
    """Cross-validate and fit on Spark, calibrate, set the threshold; the model is kept in the run folder.

    ``analytics.membership_defence`` trains with :class:`analytics.privacy.MembershipDefence` (its rounding goes
    into the calibrator, so every serving path serves rounded probabilities); ``analytics.adversarial_augmentation``
    adds adversarial versions of up to ``analytics.augmentation_examples`` flagged training positives, within
    the robustness step's bounds (:func:`analytics.robustness.model_attack_bounds`), to the train split.
    """
    from analytics.privacy import MembershipDefence
    from analytics.robustness import augmenter
    from analytics.train import train
    from pipeline.spark import get_spark

    run = Path(run_dir)
    state = _state(run)
    config = _config(settings, state)
    examples = pd.read_parquet(run / "examples.parquet")
    contract = FeatureContract.from_dict(state["contract"])
    a = settings.analytics
    model = train(get_spark(settings), examples, contract, config,
                  defence=MembershipDefence() if a.membership_defence else None,
                  augment=augmenter(config, a.augmentation_examples) if a.adversarial_augmentation else None)
    (run / "model.ubj").write_bytes(bytes(model.booster.save_raw("ubj")))
    state["model"] = {"calibrator": {"method": model.calibrator.method, "params": model.calibrator.params},
                      "threshold": model.threshold, "params": model.params, "cv": model.cv,
                      "train_seconds": model.train_seconds, "defences": model.defences}
    (run / "profile.json").write_text(json.dumps(model.profile))
    _save_state(run, state)
    return {"params": model.params, "cv": model.cv, "threshold": model.threshold,
            "train_seconds": model.train_seconds, "defences": sorted(model.defences)}


def _load_run_model(run: Path, state: dict[str, Any]) -> Any:
    import xgboost as xgb

    from analytics.train import Calibrator, TrainedModel

    booster = xgb.Booster()
    booster.load_model(bytearray((run / "model.ubj").read_bytes()))
    m = state["model"]
    return TrainedModel(booster=booster, contract=FeatureContract.from_dict(state["contract"]),
                        calibrator=Calibrator(m["calibrator"]["method"], m["calibrator"]["params"]),
                        threshold=m["threshold"], params=m["params"], cv=m["cv"],
                        profile=json.loads((run / "profile.json").read_text()), train_seconds=m["train_seconds"],
                        defences=m.get("defences", {}))


def step_evaluate(settings: Settings, run_dir: str) -> dict[str, Any]:
    """Held-out metrics, subgroup metrics and plots (the card itself is written at registration)."""
    from analytics.evaluate import metrics, plots, require_both_classes, subgroup_metrics
    from analytics.train import SPLIT

    run = Path(run_dir)
    state = _state(run)
    model = _load_run_model(run, state)
    test = pd.read_parquet(run / "examples.parquet").query(f"{SPLIT} == 'test'")
    require_both_classes(test[LABEL], test[SPLIT], f"label {state['label']!r} of deidentified/{state['table']}")
    y = test[LABEL].to_numpy(dtype=int)
    prob = model.predict_proba(test)
    subs = [f"_sub_{s}" for s in model.contract.subgroups if f"_sub_{s}" in test]
    sub = subgroup_metrics(test[subs].rename(columns={s: s[5:] for s in subs}), y, prob, model.threshold,
                           [s[5:] for s in subs])
    gain = model.booster.get_score(importance_type="total_gain")
    names = model.features
    importance = {names[int(k[1:])] if k.startswith("f") and k[1:].isdigit() else k: float(v) for k, v in gain.items()}
    state["evaluation"] = {"test": metrics(y, prob, model.threshold), "subgroups": sub, "importance": importance}
    (run / "plots.json").write_text(json.dumps(plots(y, prob, model.threshold, importance)))
    _save_state(run, state)
    return state["evaluation"]["test"]


def step_robustness(settings: Settings, run_dir: str) -> dict[str, Any]:
    """Bounded evasion attack on the model and on its defended variants; membership inference on the model as
    served, beside its other side (an undefended retraining when the membership defence is applied)."""
    from analytics.privacy import MembershipDefence
    from analytics.robustness import evaluate_robustness, model_attack_bounds
    from analytics.train import SPLIT

    run = Path(run_dir)
    state = _state(run)
    config = _config(settings, state)
    model = _load_run_model(run, state)
    examples = pd.read_parquet(run / "examples.parquet")
    applied = model.defences.get("membership")
    defence = MembershipDefence(**{k: v for k, v in applied.items() if k in MembershipDefence.__dataclass_fields__}) \
        if applied else None
    report = evaluate_robustness(model, examples[examples[SPLIT] == "train"],
                                 examples[examples[SPLIT] == "calibration"], examples[examples[SPLIT] == "test"],
                                 bounds=model_attack_bounds(model, config), monotone=config.monotone,
                                 samples=config.attack_samples, seed=config.seed, membership_defence=defence,
                                 membership_applied=applied is not None)
    state["robustness"] = report
    _save_state(run, state)
    return {k: v for k, v in report.items() if k != "bounds"}


def step_judge(settings: Settings, run_dir: str, *, provider: Any = None,
               classify: Classifier | None = None) -> dict[str, Any]:
    """Hold the candidate to the governance floors and to the current model on the candidate's test rows.

    The current model scores the same test rows: straight from the run's examples when they hold its features,
    otherwise by building its own features (its contract) on Spark from the training snapshot's tables. A current
    model that does not verify is not compared with: the candidate then stays a candidate (fail closed).
    """
    from analytics.promotion import judge
    from analytics.registry import ModelRegistry, model_name
    from analytics.train import SPLIT
    from pipeline.errors import ModelIntegrityError

    run = Path(run_dir)
    state = _state(run)
    model = _load_run_model(run, state)
    test = pd.read_parquet(run / "examples.parquet").query(f"{SPLIT} == 'test'")
    y = test[LABEL].to_numpy(dtype=int)
    provider = provider or _provider(settings)
    registry = ModelRegistry(settings, provider)
    name = model_name(state["table"], state["label"])
    refused = None
    current = None
    try:
        number = registry.current(name)
        if number is not None:
            manifest, booster, bundle = registry.load(name)
            current = {"model_version": manifest["model_version"], "version": number,
                       "prob": _score_rows(settings, provider, state, test, booster, bundle, classify)}
    except ModelIntegrityError as exc:
        refused = f"the current model does not verify, so the candidate cannot be compared with it: {exc}"
    verdict = judge(y, model.predict_proba(test), model.threshold, settings.governance, current=current,
                    seed=int(_config(settings, state).seed))
    if refused:
        verdict = {**verdict, "decision": "candidate", "reasons": [refused, *verdict["reasons"]]}
    verdict["current_version"] = current["version"] if current else None
    state["judgement"] = verdict
    _save_state(run, state)
    return verdict


def _score_rows(settings: Settings, provider: Any, state: dict[str, Any], test: pd.DataFrame, booster: Any,
                bundle: dict[str, Any], classify: Classifier | None) -> np.ndarray:
    """Calibrated probabilities of a registered model on the run's ``test`` rows, in their order."""
    from analytics.train import Calibrator, matrix

    features = bundle["contract"]["features"]
    calibrator = Calibrator(bundle["calibrator"]["method"], bundle["calibrator"]["params"])
    if all(f in test.columns for f in features):
        return calibrator.apply(booster.inplace_predict(matrix(test, features)))
    from pyspark.sql import functions as F

    from pipeline.spark import get_spark

    get_spark(settings)
    lake = _audited_lake(settings, provider)
    tables = {t: lake.read_spark(Zone.DEIDENTIFIED, t, version=v) for t, v in state["table_versions"].items()}
    for other in lake.tables(Zone.DEIDENTIFIED):
        tables.setdefault(other, lake.read_spark(Zone.DEIDENTIFIED, other))
    contract = FeatureContract.from_dict(bundle["contract"])
    sdf, _ = build_features(tables, state["table"], TrainConfig(subgroups=(), sources=_sources(bundle)),
                            classify or published_classifier(lake), contract=contract)
    ids = [str(i) for i in test[ROW_ID]]
    rows = sdf.where(F.col(ROW_ID).cast("string").isin(ids)).select(ROW_ID, *features).toPandas()
    rows = rows.assign(**{ROW_ID: rows[ROW_ID].astype(str)}).drop_duplicates(ROW_ID).set_index(ROW_ID)
    aligned = rows.reindex(ids)
    return calibrator.apply(booster.inplace_predict(matrix(aligned, features)))


def step_register(settings: Settings, run_dir: str, *, provider: Any = None,
                  keep_examples: bool = False) -> dict[str, Any]:
    """Sign and register the candidate with its metrics, lineage and judgement; promote it when it earned it.

    The result (the CLI's and the DAG's) carries ``promotion``: ``{"decision": "promoted"|"candidate"|
    "duplicate", "reasons": [...], "current": the current model version afterwards}`` and ``table_versions`` (the
    Delta version of each training table, which the DAG puts into its registry Asset event). A candidate left a
    candidate is an ``alert`` audit event with the reasons. Then the run folder's copy of de-identified rows
    (``examples.parquet``) is deleted (an audit event), unless ``keep_examples`` (tests and debugging).
    """
    from analytics.evaluate import write_model_card
    from analytics.registry import CARD_FILE, ModelRegistry, model_name
    from analytics.train import SPLIT

    run = Path(run_dir)
    state = _state(run)
    model = _load_run_model(run, state)
    examples = pd.read_parquet(run / "examples.parquet")
    train_rows = examples[examples[SPLIT] == "train"]
    provider = provider or _provider(settings)
    registry = ModelRegistry(settings, provider)
    test = state["evaluation"]["test"]
    metrics = {k: test.get(k) for k in ("auroc", "auprc", "sensitivity", "specificity", "brier", "ece")}
    judgement = state.get("judgement") or {"decision": "candidate", "reasons": ["not judged (step_judge did not "
                                                                                  "run)"], "current_version": None}
    recorded = {k: v for k, v in judgement.items() if k != "current_version"}
    bundle = {"calibrator": state["model"]["calibrator"], "threshold": model.threshold, "params": model.params,
              "contract": state["contract"], "sources": state["sources"], "profile": model.profile}

    def card(manifest: dict[str, Any], path: Path) -> None:
        # Written before signing, from the manifest so far: the signature covers the card too.
        write_model_card(
            path, title=f"Model card — {manifest['model_version']}",
            summary={"model version": manifest["model_version"], "table": state["table"], "label": state["label"],
                     "rows (all splits)": state["rows"], "positives": state["positives"],
                     "threshold": model.threshold, "training tables": state["table_versions"],
                     "parameters": model.params, "training data SHA-256": manifest["training_data_sha256"],
                     "artifact SHA-256": manifest["sha256"], "signed with": manifest["key_ref"]},
            test_metrics=test, subgroups=state["evaluation"]["subgroups"],
            images=json.loads((run / "plots.json").read_text()),
            sections={"Cross-validation": state["model"]["cv"], "Poisoning screen": state.get("screen", {}),
                      "Evasion robustness": state.get("robustness", {}), "Features": model.features},
            promotion=recorded, screening=state.get("screen"), features=model.features,
            snapshot={"table versions": state["table_versions"], "training fingerprint": state.get("fingerprint"),
                      "training data SHA-256": manifest["training_data_sha256"]})

    name = model_name(state["table"], state["label"])
    manifest = registry.register(
        name, booster_raw=(run / "model.ubj").read_bytes(), bundle=bundle,
        metrics=metrics, table_versions=state["table_versions"],
        data_sha256=_digest(train_rows, [ROW_ID, *model.features, LABEL]),
        extra={"threshold": model.threshold, "cv": state["model"]["cv"], "screen": state.get("screen"),
               "robustness": {k: v for k, v in state.get("robustness", {}).items() if k != "bounds"},
               "subgroup_largest_gap": state["evaluation"]["subgroups"]["largest_gap"], "promotion": recorded},
        card=card, fingerprint=state.get("fingerprint"))
    promotion = _promote(settings, provider, registry, manifest, judgement)
    card_path = registry.root / manifest["name"] / f"v{manifest['version']}" / CARD_FILE
    result = {"model_version": manifest["model_version"], "metrics": metrics, "model_card": str(card_path),
              "threshold": model.threshold, "run_dir": str(run), "promotion": promotion,
              "table_versions": state["table_versions"]}
    state["result"] = result
    _save_state(run, state)
    if not keep_examples:
        discard_examples(settings, str(run), provider=provider)
    return result


def _promote(settings: Settings, provider: Any, registry: Any, manifest: dict[str, Any],
             judgement: dict[str, Any]) -> dict[str, Any]:
    """Act on the judgement: promote an earning candidate (auto_promote), or alert why it stays a candidate."""
    name, label = manifest["name"], manifest["model_version"]
    if manifest.get("duplicate"):
        current = registry.current(name)
        return {"decision": "duplicate", "current": f"{name}@v{current}" if current is not None else None,
                "reasons": [f"the same data snapshot and configuration are already registered as {label}: "
                            "nothing new was registered"]}
    reasons = list(judgement["reasons"])
    decision = judgement["decision"]
    if decision == "promoted" and not settings.governance.auto_promote:
        decision = "candidate"
        reasons.append("automatic promotion is off (governance.auto_promote): promote it with "
                       f"`medguard models promote {label}`")
    elif decision == "promoted":
        try:
            registry.promote(name, manifest["version"], reason="; ".join(reasons), principal=PRINCIPAL,
                             expect_current=judgement.get("current_version"))
        except ValidationError as exc:
            decision = "candidate"
            reasons.append(f"not promoted: {exc}")
    current = registry.current(name)
    if decision == "candidate":
        _alert(settings, provider, label, reasons)
    return {"decision": decision, "reasons": reasons, "current": f"{name}@v{current}" if current else None}


def _alert(settings: Settings, provider: Any, model_version: str, reasons: list[str]) -> None:
    """An ``alert`` audit event: a trained model was not promoted, and why (metrics only, no PHI)."""
    from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision

    AuditLog(Lake(settings), provider).record(AuditEvent(
        principal=PRINCIPAL, action=AuditAction.ALERT, zone=Zone.PREDICTIONS, table_name="model_registry",
        decision=Decision.DENY, purpose="model governance", reason=f"{model_version} stays a candidate"[:300],
        details={"model_version": model_version, "reasons": [r[:300] for r in reasons[:10]]}))


def discard_examples(settings: Settings, run_dir: str, *, provider: Any = None) -> bool:
    """Delete a run folder's copy of de-identified rows, recording it; False when there was none."""
    examples = Path(run_dir) / "examples.parquet"
    if not examples.exists():
        return False
    rows = len(pd.read_parquet(examples, columns=[ROW_ID]))
    examples.unlink()
    _audit_copy(settings, provider or _provider(settings), Path(run_dir), "delete", rows, {})
    return True


def _audit_copy(settings: Settings, provider: Any, run: Path, action: str, rows: int,
                versions: dict[str, int]) -> None:
    """Record the run folder's copy of deidentified rows (outside the lake) being written or deleted."""
    from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision

    details: dict[str, Any] = {"copy": "run_folder/examples.parquet", "run": run.name}
    if versions:
        details["table_versions"] = versions
    AuditLog(Lake(settings), provider).record(AuditEvent(
        principal=PRINCIPAL, action=AuditAction(action), zone=Zone.DEIDENTIFIED, row_count=rows,
        decision=Decision.ALLOW, purpose="model training", details=details))


def train_pipeline(settings: Settings, table: str, label: str, *, config_path: str | None = None,
                   overrides: dict[str, Any] | None = None, provider: Any = None,
                   classify: Classifier | None = None, keep_examples: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """features → screen → train → evaluate → robustness → judge → register, in one process.

    A training whose fingerprint is already registered stops after the features: the result names the existing
    version with ``promotion.decision == "duplicate"`` and nothing is registered. The run folder's examples are
    deleted after registration, or when a step fails (a failed in-process run is not resumed), unless
    ``keep_examples``.

    Args:
        progress: called before each step with (step name, index from 0, number of steps) — :data:`TRAIN_STEPS`.
    """
    timings: dict[str, float] = {}

    def timed(name: str, step: Any, *args: Any, **kwargs: Any) -> Any:
        if progress is not None:
            progress(name, TRAIN_STEPS.index(name), len(TRAIN_STEPS))
        started = time.perf_counter()
        out = step(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 1)
        return out

    provider = provider or _provider(settings)
    run_dir = timed("features", step_features, settings, table, label, config_path=config_path, overrides=overrides,
                    classify=classify, provider=provider)
    try:
        existing = duplicate_of(settings, run_dir, provider=provider)
        if existing is not None:
            result = _duplicate_result(settings, provider, existing, run_dir)
        else:
            timed("screen", step_screen, settings, run_dir, provider=provider)
            timed("train", step_train, settings, run_dir)
            timed("evaluate", step_evaluate, settings, run_dir)
            timed("robustness", step_robustness, settings, run_dir)
            timed("judge", step_judge, settings, run_dir, provider=provider, classify=classify)
            result = timed("register", step_register, settings, run_dir, provider=provider,
                           keep_examples=keep_examples)
    except BaseException:
        if not keep_examples:
            discard_examples(settings, run_dir, provider=provider)
        raise
    if existing is not None and not keep_examples:
        discard_examples(settings, run_dir, provider=provider)
    result["step_seconds"] = timings
    return result


def _duplicate_result(settings: Settings, provider: Any, model_version: str, run_dir: str) -> dict[str, Any]:
    """The result of a training that was already done: the registered version, nothing new."""
    from analytics.registry import CARD_FILE, ModelRegistry

    registry = ModelRegistry(settings, provider)
    name, _, number = model_version.partition("@v")
    described = registry.describe(name)
    row = next(v for v in described["versions"] if v["version"] == int(number))
    current = described["current"]
    return {"model_version": model_version, "metrics": row.get("metrics", {}), "threshold": row.get("threshold"),
            "model_card": str(registry.root / name / f"v{number}" / CARD_FILE), "run_dir": run_dir,
            "promotion": {"decision": "duplicate", "current": f"{name}@v{current}" if current is not None else None,
                          "reasons": [f"the same data snapshot and configuration are already registered as "
                                      f"{model_version} ({row['status']}): nothing new was registered"]}}


def _provider(settings: Settings) -> Any:
    from storage_security.keys.providers import provider_from_settings

    return provider_from_settings(settings)


def _audited_lake(settings: Settings, provider: Any) -> Lake:
    """The lake, with each table read and write recorded in the audit log as ``svc:analytics``."""
    from storage_security.audit.log import AuditLog

    lake = Lake(settings)
    return lake.with_access_hook(AuditLog(lake, provider).access_hook(PRINCIPAL))


# batch diagnosis --------------------------------------------------------------------------------------

def verify_model(settings: Settings, table: str | None = None, *, provider: Any = None) -> dict[str, Any]:
    """Verify the current model (for ``table``, when given); raises ModelIntegrityError when it does not verify
    or no version of it is current."""
    from analytics.registry import ModelRegistry

    registry = ModelRegistry(settings, provider or _provider(settings))
    name = _model_for(registry, table)
    manifest, _, _ = registry.load(name)
    return {"model_version": manifest["model_version"], "table": manifest["feature_contract"]["table"]}


def _model_for(registry: Any, table: str | None) -> str | None:
    if table is None:
        return None
    names = [p.parent.name for p in registry.versions()
             if json.loads((p / "manifest.json").read_text())["feature_contract"]["table"] == table]
    if not names:
        raise ValidationError(f"no registered model was trained on deidentified/{table}: run `medguard train`")
    return names[-1]


def _scoring_input(settings: Settings, table: str | None, provider: Any, classify: Classifier | None,
                   ) -> tuple[dict[str, Any], Any, dict[str, Any], DataFrame, str, dict[str, int]]:
    from analytics.registry import ModelRegistry
    from pipeline.spark import get_spark

    get_spark(settings)
    provider = provider or _provider(settings)
    registry = ModelRegistry(settings, provider)
    manifest, booster, bundle = registry.load(_model_for(registry, table))
    contract = FeatureContract.from_dict(bundle["contract"])
    table = table or contract.table
    lake = _audited_lake(settings, provider)
    tables, versions = open_tables(lake)
    config = TrainConfig(subgroups=(), sources=_sources(bundle))
    sdf, _ = build_features(tables, table, config, classify or published_classifier(lake), contract=contract)
    return manifest, booster, bundle, sdf, table, versions


_SEEN = "_in_training"


def _mark_training_rows(lake: Lake, manifest: dict[str, Any], contract: FeatureContract,
                        sdf: DataFrame) -> tuple[DataFrame, str]:
    """Mark (``_in_training``) the rows the model's training snapshot already held; returns how it was decided.

    A row belongs to the training snapshot when its stable row id (the contract's ``row_id``: the patient key
    or the record hash) is in the training table at the version the model was trained on (Delta time travel).
    Drift is measured on the other rows only. A table without a stable row id, or whose training version can no
    longer be read (vacuumed), cannot be split: every row is then assessed, and the note says so.
    """
    from pyspark.sql import functions as F

    from pipeline.errors import StorageError

    version = manifest.get("training_tables", {}).get(contract.table)
    if contract.row_id == ROW_ID or version is None:
        return sdf.withColumn(_SEEN, F.lit(False)), "no stable row id: every row assessed"
    try:
        trained = (lake.read_spark(Zone.DEIDENTIFIED, contract.table, version=int(version))
                   .select(F.col(contract.row_id).cast("string").alias(ROW_ID)).distinct()
                   .withColumn(_SEEN, F.lit(True)))
    except StorageError:
        return sdf.withColumn(_SEEN, F.lit(False)), f"training snapshot v{version} unreadable: every row assessed"
    marked = sdf.join(trained, on=ROW_ID, how="left").withColumn(_SEEN, F.coalesce(F.col(_SEEN), F.lit(False)))
    return marked, f"rows of deidentified/{contract.table} v{version} (the training snapshot) excluded"


def _drift(settings: Settings, bundle: dict[str, Any], sdf: DataFrame, how: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from analytics.drift import drift_report

    features = bundle["contract"]["features"]
    fresh = sdf.where(~F.col(_SEEN))
    total = fresh.count()
    excluded = sdf.count() - total
    a = settings.analytics
    thresholds = {"psi": a.psi_alert, "ks": a.ks_alert, "retrain_share": a.retrain_drift_share}
    if not total:
        return {"status": "no_new_data", "alerts": [], "alert_share": 0.0, "retrain": False, "rows": 0,
                "excluded_training_rows": excluded, "assessed": how, "thresholds": thresholds, "features": {}}
    # Drift on a bounded sample: PSI/KS need distributions, not every row.
    sample = fresh.select(*features).sample(fraction=min(1.0, 50_000 / total), seed=1).toPandas()
    report = drift_report(bundle["profile"], sample, features, psi_alert=a.psi_alert, ks_alert=a.ks_alert,
                          retrain_share=a.retrain_drift_share)
    return {**report, "excluded_training_rows": excluded, "assessed": how}


def drift_check(settings: Settings, table: str | None = None, *, provider: Any = None,
                classify: Classifier | None = None) -> dict[str, Any]:
    """PSI/KS of ``table``'s rows the model did not train on against its training profile, alerts, retraining."""
    provider = provider or _provider(settings)
    manifest, _, bundle, sdf, table, _ = _scoring_input(settings, table, provider, classify)
    sdf, how = _mark_training_rows(_audited_lake(settings, provider), manifest,
                                   FeatureContract.from_dict(bundle["contract"]), sdf)
    report = _drift(settings, bundle, sdf, how)
    return {"model_version": manifest["model_version"], "table": table,
            **{k: report[k] for k in ("status", "alerts", "alert_share", "retrain", "rows", "excluded_training_rows",
                                      "assessed")}}


def diagnose(settings: Settings, table: str | None = None, *, provider: Any = None, batch_id: str | None = None,
             classify: Classifier | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Verify the current model, check drift, score ``table`` on Spark, merge into ``predictions``, rewrite current.

    Each ``predictions/diagnoses`` row carries the model version, its threshold, the flag, the calibrated
    probability, the top contributing features (xgboost's own SHAP values, ``pred_contribs``, with readable names
    and the feature's value), the out-of-profile reasons, the drift status and when it was scored.
    ``predictions/current`` is then rewritten: one row per patient (per row without a patient key), the latest
    prediction of the current model.

    Args:
        progress: called before each step with (step name, index from 0, number of steps) — :data:`DIAGNOSE_STEPS`.

    Raises:
        ModelIntegrityError: the model does not verify, or there is no current model (nothing is scored).
        ValidationError: the table cannot produce the model's features.
    """
    from pyspark.sql import functions as F

    def step(name: str) -> None:
        if progress is not None:
            progress(name, DIAGNOSE_STEPS.index(name), len(DIAGNOSE_STEPS))

    started = time.perf_counter()
    provider = provider or _provider(settings)
    step("verify")
    manifest, booster, bundle, sdf, table, versions = _scoring_input(settings, table, provider, classify)
    lake = _audited_lake(settings, provider)
    step("drift")
    sdf, how = _mark_training_rows(lake, manifest, FeatureContract.from_dict(bundle["contract"]), sdf)
    drift = _drift(settings, bundle, sdf, how)
    step("score")
    batch_id = batch_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scored = score_spark(sdf, booster, bundle, manifest["model_version"], drift["status"], batch_id,
                         top=settings.governance.top_features)
    arrow = scored.withColumn("scored_at", F.current_timestamp()).toArrow()
    widen_predictions(lake, arrow, batch_id)
    result = lake.merge(Zone.PREDICTIONS, PREDICTIONS_TABLE, arrow, keys=["row_key", "model_version"],
                        commit=CommitInfo(principal=PRINCIPAL, purpose="batch diagnosis", batch_id=batch_id,
                                          extra={"model_version": manifest["model_version"]}))
    step("current")
    current_rows = _rewrite_current(lake, manifest["model_version"], batch_id)
    flagged = int(pd.Series(arrow.column("flag").to_pylist()).sum())
    return {"model_version": manifest["model_version"], "table": table, "table_version": versions.get(table),
            "rows": arrow.num_rows, "flagged": flagged, "threshold": float(bundle["threshold"]),
            "out_of_profile": int(pd.Series(arrow.column("out_of_profile").to_pylist()).sum()),
            "drift": {k: drift[k] for k in ("status", "alerts", "alert_share", "retrain", "rows",
                                            "excluded_training_rows", "assessed")},
            "predictions": f"{Zone.PREDICTIONS.value}/{PREDICTIONS_TABLE}", "predictions_version": result.version,
            "current": f"{Zone.PREDICTIONS.value}/{CURRENT_TABLE}", "current_rows": current_rows,
            "seconds": round(time.perf_counter() - started, 1)}


def widen_predictions(lake: Lake, arrow: Any, batch_id: str) -> list[str]:
    """Add the columns of ``arrow`` that an existing ``predictions/diagnoses`` lacks (a table written before
    them); returns the columns added. A merge alone would drop them silently: its update/insert takes the
    target's schema. Earlier rows read them as null."""
    if not lake.exists(Zone.PREDICTIONS, PREDICTIONS_TABLE):
        return []
    have = set(lake.schema(Zone.PREDICTIONS, PREDICTIONS_TABLE).names)
    added = [c for c in arrow.schema.names if c not in have]
    if added:
        lake.append(Zone.PREDICTIONS, PREDICTIONS_TABLE, arrow.slice(0, 0), evolve_schema=True,
                    commit=CommitInfo(principal=PRINCIPAL, purpose="batch diagnosis", batch_id=batch_id,
                                      extra={"added_columns": ",".join(added)}))
    return added


def _rewrite_current(lake: Lake, model_version: str, batch_id: str) -> int:
    """Rewrite ``predictions/current``: per patient (per row without a patient key) the latest prediction of
    ``model_version``, the current model. Returns its row count."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = lake.read_spark(Zone.PREDICTIONS, PREDICTIONS_TABLE).where(F.col("model_version") == model_version)
    who = F.coalesce(F.col("patient_pseudonym"), F.col("row_key"))
    latest = Window.partitionBy(who).orderBy(F.col("scored_at").desc(), F.col("row_key").desc())
    current = rows.withColumn("_n", F.row_number().over(latest)).where(F.col("_n") == 1).drop("_n").toArrow()
    lake.overwrite(Zone.PREDICTIONS, CURRENT_TABLE, current,
                   commit=CommitInfo(principal=PRINCIPAL, purpose="batch diagnosis", batch_id=batch_id,
                                     extra={"model_version": model_version}))
    return current.num_rows


def _sources(bundle: dict[str, Any]) -> Any:
    from analytics.config import Sources

    return Sources(**bundle["sources"])


def score_spark(sdf: DataFrame, booster: Any, bundle: dict[str, Any], model_version: str, drift_status: str,
                batch_id: str, *, top: int = 5) -> DataFrame:
    """Per row, on Spark's executors: calibrated probability, flag at the model's threshold, the ``top`` features
    contributing most (|SHAP value| from xgboost's ``pred_contribs``, in log-odds, with readable names and the
    feature's value, as JSON), and the out-of-profile check with its reasons (JSON).

    A row marked ``_in_training`` (see :func:`diagnose`) gets the drift status ``training_data``: the batch's
    drift was measured without it.
    """
    from pyspark.sql.types import BooleanType, DoubleType, StringType, StructField, StructType

    from analytics.names import display_names

    contract = FeatureContract.from_dict(bundle["contract"])
    features = contract.features
    names = display_names(features)
    raw = sdf.sparkSession.sparkContext.broadcast(bytes(booster.save_raw("ubj")))
    calibrator, threshold = bundle["calibrator"], float(bundle["threshold"])
    # Input-range validation from the training profile: values far outside what training saw are flagged.
    ranges = {f: (p.get("min"), p.get("max")) for f, p in bundle["profile"].items() if "min" in p}
    key = contract.key
    seen = _SEEN in sdf.columns
    schema = StructType([StructField("row_key", StringType(), False),
                         StructField("patient_pseudonym", StringType(), True),
                         StructField("model_version", StringType(), False),
                         StructField("threshold", DoubleType(), False),
                         StructField("probability", DoubleType(), False), StructField("flag", BooleanType(), False),
                         StructField("top_features", StringType(), False),
                         StructField("out_of_profile", BooleanType(), False),
                         StructField("out_of_profile_reasons", StringType(), False),
                         StructField("drift_status", StringType(), False),
                         StructField("batch_id", StringType(), False)])

    def score(batches: Any) -> Any:
        import xgboost as xgb

        from analytics.train import Calibrator, matrix

        model = xgb.Booster()
        model.load_model(bytearray(raw.value))
        cal = Calibrator(calibrator["method"], calibrator["params"])
        for part in batches:
            x = matrix(part, features)
            if len(part):
                prob = cal.apply(model.inplace_predict(x))
                contribs = model.predict(xgb.DMatrix(x, missing=np.nan, feature_names=model.feature_names),
                                         pred_contribs=True)[:, :len(features)]
            else:
                prob, contribs = np.zeros(0), np.zeros((0, len(features)))
            order = np.argsort(-np.abs(contribs), axis=1, kind="stable")[:, :top]
            below = np.zeros(x.shape, dtype=bool)
            above = np.zeros(x.shape, dtype=bool)
            for j, name in enumerate(features):
                lo, hi = ranges.get(name, (None, None))
                if lo is None:
                    continue
                span = (hi - lo) or 1.0
                with np.errstate(invalid="ignore"):
                    below[:, j] = x[:, j] < lo - 0.1 * span
                    above[:, j] = x[:, j] > hi + 0.1 * span
            # Per-row JSON: no Arrow kernel builds nested documents; a few features per row.
            top_json = [json.dumps([{"feature": features[j], "name": names[features[j]],
                                     "value": None if np.isnan(x[i, j]) else float(x[i, j]),
                                     "contribution": round(float(contribs[i, j]), 4)} for j in order[i]])
                        for i in range(len(part))]
            reasons = [json.dumps([{"feature": features[j], "name": names[features[j]], "value": float(x[i, j]),
                                    "side": "below" if below[i, j] else "above",
                                    "bound": float(ranges[features[j]][0 if below[i, j] else 1])}
                                   for j in np.flatnonzero(below[i] | above[i])])
                       for i in range(len(part))]
            status = np.where(part[_SEEN].to_numpy(dtype=bool), "training_data", drift_status) if seen else \
                drift_status
            yield pd.DataFrame({
                "row_key": part[ROW_ID].astype(str), "patient_pseudonym": part[key] if key else None,
                "model_version": model_version, "threshold": threshold, "probability": prob,
                "flag": prob >= threshold, "top_features": top_json, "out_of_profile": (below | above).any(axis=1),
                "out_of_profile_reasons": reasons, "drift_status": status, "batch_id": batch_id})

    return sdf.mapInPandas(score, schema=schema)
