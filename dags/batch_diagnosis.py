"""Daily batch diagnosis: verify the current model → drift check → score on Spark → write the predictions zone.

Runs every day, and once per registration (``medguard://models/registry``, emitted once per training run).
``verify`` refuses a modified or unsigned model, or a model with no current (promoted) version, and a missing
deidentified table (the run fails before anything is scored); ``drift`` measures PSI/KS against the model's
training profile on the rows its training snapshot did not hold; ``score_and_write`` scores on Spark, merges into
``predictions/diagnoses`` (re-running a day adds nothing twice), rewrites ``predictions/current`` (one row per
patient) and emits ``medguard://predictions/diagnoses`` with the model version and the Delta version written.
Each task is one call into ``analytics.flow``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from pipeline.airflow_support import MODEL_REGISTRY, PREDICTIONS, task_defaults


@dag(
    dag_id="medguard_batch_diagnosis",
    description="Verify the signed model, check drift, score deidentified rows on Spark, write predictions",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
                                 assets=Asset(MODEL_REGISTRY)),
    catchup=False,
    tags=["medguard", "analytics"],
    default_args=task_defaults("medguard-analytics"),
    params={"table": Param(None, type=["null", "string"],
                           description="Deidentified table to score (None: the newest model's table)")},
)
def medguard_batch_diagnosis() -> None:
    @task(task_id="verify_model")
    def verify(params: dict[str, Any]) -> dict[str, Any]:
        from analytics.flow import verify_model
        from pipeline.airflow_support import require_tables, task_settings

        settings = task_settings()
        model = verify_model(settings, params["table"])
        require_tables(settings, "deidentified", [model["table"]])
        return model

    @task(task_id="drift_check")
    def drift(model: dict[str, Any]) -> dict[str, Any]:
        from analytics.flow import drift_check
        from pipeline.airflow_support import task_settings

        return drift_check(task_settings(), model["table"])

    @task(task_id="score_and_write", outlets=[Asset(PREDICTIONS)])
    def score(model: dict[str, Any], drift: dict[str, Any], run_id: str | None = None,
              outlet_events: Any = None) -> dict[str, Any]:
        from analytics.flow import diagnose
        from pipeline.airflow_support import diagnosed_batch, task_settings

        result = diagnose(task_settings(), model["table"], batch_id=run_id)
        outlet_events[Asset(PREDICTIONS)].extra = diagnosed_batch(result)
        return result

    model = verify()
    score(model, drift(model))


medguard_batch_diagnosis()
