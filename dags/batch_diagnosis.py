"""Daily batch diagnosis: verify the current model → drift check → score on Spark → write the predictions zone.

Runs every day, and also as soon as a new model is registered (``medguard://models/registry``). ``verify``
refuses a modified or unsigned model, or a model with no current (promoted) version (the run fails before
anything is scored); ``drift`` measures PSI/KS against the model's training profile on the rows its training
snapshot did not hold; ``score_and_write`` scores on Spark, merges into ``predictions/diagnoses`` (re-running a
day adds nothing twice) and rewrites ``predictions/current`` (one row per patient). Each task is one call into
``analytics.flow``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

REGISTRY = Asset("medguard://models/registry")
OUTCOMES = Asset("medguard://deidentified/outcomes")
PREDICTIONS = Asset("medguard://predictions/diagnoses")


@dag(
    dag_id="medguard_batch_diagnosis",
    description="Verify the signed model, check drift, score deidentified rows on Spark, write predictions",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 6 * * *", timezone="UTC"), assets=REGISTRY),
    catchup=False,
    tags=["medguard", "analytics"],
    default_args={"owner": "medguard-analytics", "retries": 0},
    params={"table": Param(None, type=["null", "string"],
                           description="Deidentified table to score (None: the newest model's table)")},
)
def medguard_batch_diagnosis() -> None:
    @task(task_id="verify_model")
    def verify(params: dict[str, Any]) -> dict[str, Any]:
        from analytics.flow import verify_model
        from pipeline.settings import get_settings

        return verify_model(get_settings(), params["table"])

    @task(task_id="drift_check", inlets=[OUTCOMES])
    def drift(model: dict[str, Any]) -> dict[str, Any]:
        from analytics.flow import drift_check
        from pipeline.settings import get_settings

        return drift_check(get_settings(), model["table"])

    @task(task_id="score_and_write", outlets=[PREDICTIONS])
    def score(model: dict[str, Any], drift: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        from analytics.flow import diagnose
        from pipeline.settings import get_settings

        return diagnose(get_settings(), model["table"], batch_id=run_id)

    model = verify()
    score(model, drift(model))


medguard_batch_diagnosis()
