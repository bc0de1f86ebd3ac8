"""De-identify the raw zone into ``deidentified`` whenever ingestion updates a raw table.

Scheduled on the raw-zone Assets that ingestion emits (``medguard://raw/<table>``): any of them updated starts a
run, which publishes every raw table (one task, one call into ``storage_security.deid.deidentify``) and emits the
matching ``medguard://deidentified/<table>`` Assets for the layers downstream (training, the query gateway).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes", "notes")
RAW = [Asset(f"medguard://raw/{t}") for t in TABLES]
DEIDENTIFIED = [Asset(f"medguard://deidentified/{t}") for t in TABLES]


@dag(
    dag_id="medguard_deidentify",
    description="PHI detection, masking and the k-anonymity gate: raw zone to deidentified zone",
    doc_md=__doc__,
    schedule=(RAW[0] | RAW[1] | RAW[2] | RAW[3] | RAW[4] | RAW[5] | RAW[6]),
    catchup=False,
    tags=["medguard", "deidentify", "security"],
    default_args={"owner": "medguard", "retries": 0},
)
def medguard_deidentify() -> None:
    @task(task_id="publish", outlets=DEIDENTIFIED)
    def publish(run_id: str | None = None) -> dict[str, Any]:
        from storage_security.deid.deidentify import publish_raw_zone_or_fail

        return publish_raw_zone_or_fail(dag_run=run_id)

    publish()


medguard_deidentify()
