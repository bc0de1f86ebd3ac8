"""Ingest source extract folders into the lake: per source, validate → quarantine → load; then one raw-batch Asset.

``find_extract`` picks the folders: those of the ``medguard://sources/extract`` events that started the run
(``extra.sources_dir``, e.g. from ``medguard_synthetic_extract``), or the ``sources_dir`` param of a run started
by hand; a folder that does not exist or is empty fails the run there. Each source's tasks are one call into
``ingestion.batch.ingest_extract`` with the stages it owns: ``validate`` writes nothing (it checks every record
against its contract and builds the Data Docs), ``quarantine`` writes the rejected records, ``load`` appends the
accepted rows to ``raw`` and records the batch in the ledger. Batch ids are deterministic and every chunk is
appended with a Delta transaction id that a retry skips once committed (and a finished batch is replayed from the
ledger), so Airflow retries are safe. ``emit_batch`` then emits ``medguard://raw/batch`` once, its ``extra``
holding the batch ids and the Delta version of each raw table loaded; a run that found no input or accepted no
record fails there and emits nothing.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

from pipeline.airflow_support import RAW_BATCH, SOURCES_EXTRACT, task_defaults

SOURCES = ("tabular", "fhir", "hl7", "notes")


def _run(source: str, stages: list[str], inputs: list[dict[str, str]], run_id: str | None) -> list[dict[str, Any]]:
    from ingestion.batch import ingest_extract
    from pipeline.airflow_support import task_settings

    settings = task_settings()
    return [ingest_extract(settings, source=source, sources_dir=extract["sources_dir"], stages=stages,
                           tabular_format=extract["tabular_format"], dag_run=run_id) for extract in inputs]


@dag(
    dag_id="medguard_ingest",
    description="Validate source extracts against their data contracts, quarantine rejects, load raw (PHI sealed)",
    doc_md=__doc__,
    schedule=Asset(SOURCES_EXTRACT),
    catchup=False,
    tags=["medguard", "ingestion"],
    default_args=task_defaults("medguard-ingestion"),
    params={
        "sources_dir": Param("", type="string", description="Extract folder (default $MEDGUARD_HOME/sources/demo)"),
        "tabular_format": Param("parquet", enum=["csv", "parquet", "jsonl"], description="Format of tabular files"),
    },
)
def medguard_ingest() -> None:
    @task(task_id="find_extract")
    def find_extract(params: dict[str, Any], triggering_asset_events: Any = None) -> list[dict[str, str]]:
        from pipeline.airflow_support import extract_inputs, task_settings

        return extract_inputs(triggering_asset_events, params, task_settings())

    @task(task_id="emit_batch", outlets=[Asset(RAW_BATCH)])
    def emit_batch(inputs: list[dict[str, str]], loads: list[list[dict[str, Any]]],
                   outlet_events: Any = None) -> dict[str, Any]:
        from pipeline.airflow_support import ingested_batch, task_settings

        extra = ingested_batch(loads, inputs, task_settings())
        outlet_events[Asset(RAW_BATCH)].extra = extra
        return extra

    inputs = find_extract()
    loads = []
    for source in SOURCES:
        @task(task_id=f"validate_{source}")
        def validate(inputs: list[dict[str, str]], run_id: str | None = None,
                     source: str = source) -> list[dict[str, Any]]:
            return _run(source, [], inputs, run_id)

        @task(task_id=f"quarantine_{source}")
        def quarantine(inputs: list[dict[str, str]], run_id: str | None = None,
                       source: str = source) -> list[dict[str, Any]]:
            return _run(source, ["quarantine"], inputs, run_id)

        @task(task_id=f"load_{source}")
        def load(inputs: list[dict[str, str]], run_id: str | None = None,
                 source: str = source) -> list[dict[str, Any]]:
            return _run(source, ["quarantine", "raw"], inputs, run_id)

        loaded = load(inputs)
        validate(inputs) >> quarantine(inputs) >> loaded
        loads.append(loaded)
    emit_batch(inputs, loads)


medguard_ingest()
