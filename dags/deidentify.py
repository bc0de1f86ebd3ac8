"""De-identify the raw zone into ``deidentified`` once per ingested batch (``medguard://raw/batch``).

``check_raw`` fails the run when the raw zone holds no table (nothing to publish is an error, not a quiet
success). ``publish`` publishes every raw table (one call into ``storage_security.deid.deidentify``; a table the
risk gate refuses fails the task after the others are published) and emits ``medguard://deidentified/batch``
once, its ``extra`` holding the Delta version of each deidentified table and the raw batches that started the
run, for the layers downstream (training, the query gateway).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

from pipeline.airflow_support import DEIDENTIFIED_BATCH, RAW_BATCH, task_defaults


@dag(
    dag_id="medguard_deidentify",
    description="PHI detection, masking and the k-anonymity gate: raw zone to deidentified zone",
    doc_md=__doc__,
    schedule=Asset(RAW_BATCH),
    catchup=False,
    tags=["medguard", "deidentify", "security"],
    default_args=task_defaults("medguard"),
)
def medguard_deidentify() -> None:
    @task(task_id="check_raw")
    def check_raw() -> list[str]:
        from pipeline.airflow_support import require_tables, task_settings

        return require_tables(task_settings(), "raw")

    @task(task_id="publish", outlets=[Asset(DEIDENTIFIED_BATCH)])
    def publish(tables: list[str], run_id: str | None = None, triggering_asset_events: Any = None,
                outlet_events: Any = None) -> dict[str, Any]:
        from pipeline.airflow_support import published_batch, task_settings
        from storage_security.deid.deidentify import publish_raw_zone_or_fail

        settings = task_settings()
        result = publish_raw_zone_or_fail(settings=settings, dag_run=run_id)
        outlet_events[Asset(DEIDENTIFIED_BATCH)].extra = published_batch(settings, result, triggering_asset_events)
        return result

    publish(check_raw())


medguard_deidentify()
