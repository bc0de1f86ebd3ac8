"""The analytics steps of ``medguard demo``: ``60_train`` and ``70_diagnose`` (entry points), each one DAG run.

``60_train`` runs ``medguard_train`` on the deidentified tables de-identification published, then reads the
registered model back from the signed registry: its metrics, the promotion decision and its model card.
``70_diagnose`` runs ``medguard_batch_diagnosis`` when the registry holds a current (promoted) model, and reports
the predictions zone's rows; with no current model it says why instead (fail closed: a candidate is never used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.demo import run_dag_step, table_rows
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings

T2D_CONFIG = Path(__file__).parent / "configs" / "t2d_within_1y.yaml"
TABLE, LABEL = "outcomes", "t2d_within_1y"


def train_step(settings: Settings) -> dict[str, Any]:
    """Run the train DAG on the T2D cohort (its defaults); returns the run and the model it left in the registry."""
    run = run_dag_step(settings, "medguard_train")
    model = registered_model(settings)
    return {"dag_run": run, **model, "summary": {"model": model}}


def diagnose_step(settings: Settings) -> dict[str, Any]:
    """Run the batch diagnosis DAG with the current model; skipped (with the reasons) when there is none."""
    from analytics.flow import CURRENT_TABLE

    model = registered_model(settings)
    if model["current"] is None:
        return {"skipped": f"no current model: {model['model_version']} stays a candidate "
                           f"({'; '.join(model['reasons'])})"}
    run = run_dag_step(settings, "medguard_batch_diagnosis")
    lake = Lake(settings)
    predictions = {t: table_rows(lake, Zone.PREDICTIONS, t) for t in lake.tables(Zone.PREDICTIONS)}
    flags = lake.read_arrow(Zone.PREDICTIONS, CURRENT_TABLE, columns=["flag"]).column("flag").to_pylist()
    flagged = sum(bool(flag) for flag in flags)
    return {"dag_run": run, "predictions_rows": predictions, "flagged_patients": flagged}


def registered_model(settings: Settings) -> dict[str, Any]:
    """The T2D model's newest version in the registry (verified): status, held-out metrics, the promotion decision
    with its reasons and what it judged (bounds or point estimates), the current version and the model card's path.

    Raises:
        ValidationError: no T2D model is registered.
        ModelIntegrityError: the registry's index does not verify.
    """
    from analytics.registry import CARD_FILE, ModelRegistry, model_name
    from storage_security.keys.providers import provider_from_settings

    registry = ModelRegistry(settings, provider_from_settings(settings))
    name = model_name(TABLE, LABEL)
    described = registry.describe(name)
    newest = described["versions"][-1]
    current = described["current"]
    judged = newest.get("promotion") or {}
    return {"model_version": newest["model_version"], "status": newest["status"],
            "metrics": newest.get("metrics", {}), "decision": judged.get("decision"),
            "reasons": judged.get("reasons", []), "judged_on": judged.get("judge_on"),
            "current": f"{name}@v{current}" if current is not None else None,
            "model_card": str(registry.root / name / f"v{newest['version']}" / CARD_FILE)}
