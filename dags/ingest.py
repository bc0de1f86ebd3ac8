"""Ingest a source extract folder into the lake: per source, validate → quarantine → load, then raw Assets.

Each task is one call into ``ingestion.batch.ingest_extract`` with the stages it owns: ``validate`` writes
nothing (it checks every record against its contract and builds the Data Docs), ``quarantine`` writes the
rejected records, ``load`` appends the accepted rows to ``raw`` and records the batch in the ledger. Batch ids
are deterministic and every chunk is appended with a Delta transaction id that a retry skips once committed
(and a finished batch is replayed from the ledger), so Airflow retries are safe. The load tasks
emit one Asset per raw table (``medguard://raw/<table>``) for data-aware downstream DAGs.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

SOURCES = {
    "tabular": ("patients", "encounters", "observations", "conditions", "medications", "outcomes"),
    "fhir": ("patients", "encounters", "observations", "conditions", "medications", "procedures", "immunizations",
             "allergies", "diagnostic_reports", "resources"),
    "hl7": ("patients", "encounters", "observations", "conditions", "medications", "procedures", "immunizations",
            "allergies", "diagnostic_reports", "resources"),
    "notes": ("notes",),
}


def raw_asset(table: str) -> Asset:
    return Asset(f"medguard://raw/{table}")


def _run(source: str, stages: list[str], params: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    from pathlib import Path

    from ingestion.batch import ingest_extract
    from pipeline.settings import get_settings

    settings = get_settings()
    folder = params.get("sources_dir") or str(Path(settings.home) / "sources" / "demo")
    return ingest_extract(settings, source=source, sources_dir=folder, stages=stages,
                          tabular_format=params["tabular_format"], dag_run=run_id)


@dag(
    dag_id="medguard_ingest",
    description="Validate source extracts against their data contracts, quarantine rejects, load raw (PHI sealed)",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    tags=["medguard", "ingestion"],
    default_args={"owner": "medguard-ingestion", "retries": 2},
    params={
        "sources_dir": Param("", type="string", description="Extract folder (default $MEDGUARD_HOME/sources/demo)"),
        "tabular_format": Param("parquet", enum=["csv", "parquet", "jsonl"], description="Format of tabular files"),
    },
)
def medguard_ingest() -> None:
    for source, tables in SOURCES.items():
        @task(task_id=f"validate_{source}")
        def validate(params: dict[str, Any], run_id: str | None = None, source: str = source) -> dict[str, Any]:
            return _run(source, [], params, run_id)

        @task(task_id=f"quarantine_{source}")
        def quarantine(params: dict[str, Any], run_id: str | None = None, source: str = source) -> dict[str, Any]:
            return _run(source, ["quarantine"], params, run_id)

        @task(task_id=f"load_{source}", outlets=[raw_asset(t) for t in tables])
        def load(params: dict[str, Any], run_id: str | None = None, source: str = source) -> dict[str, Any]:
            return _run(source, ["quarantine", "raw"], params, run_id)

        validate() >> quarantine() >> load()


medguard_ingest()
