"""Generate a synthetic source extract (EHR tables, FHIR, HL7 v2, notes) under ``$MEDGUARD_HOME/sources``.

One task, one call into ``pipeline.synthetic.generate``; the run's params are its arguments. The output
goes to ``sources/seed<seed>``; the generator is deterministic per seed. The task then emits
``medguard://sources/extract`` with the folder (``extra.sources_dir``) and its tabular format, which starts
``medguard_ingest`` on that folder.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

from pipeline.airflow_support import SOURCES_EXTRACT, task_defaults


@dag(
    dag_id="medguard_synthetic_extract",
    description="Synthetic patient population written as source extracts, deterministic per seed",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    tags=["medguard"],
    default_args=task_defaults("medguard"),
    params={
        "patients": Param(500, type="integer", description="How many patients to generate"),
        "seed": Param(7, type="integer", description="Random seed; the output folder is sources/seed<seed>"),
        "defect_rate": Param(0.02, type="number", description="Share of records with a deliberate defect"),
        "formats": Param(
            "csv,parquet,jsonl,fhir,hl7,notes",
            type="string",
            description="Comma-separated output formats: csv, parquet, jsonl, fhir, hl7, notes",
        ),
    },
)
def medguard_synthetic_extract() -> None:
    @task(task_id="generate", outlets=[Asset(SOURCES_EXTRACT)])
    def generate_sources(params: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
        from pipeline.airflow_support import landed_extract, task_settings
        from pipeline.synthetic import generate

        out_dir = task_settings().home / "sources" / f"seed{params['seed']}"
        formats = [name.strip() for name in params["formats"].split(",") if name.strip()]
        summary = generate(out_dir, patients=params["patients"], seed=params["seed"], formats=formats,
                           defect_rate=params["defect_rate"])
        outlet_events[Asset(SOURCES_EXTRACT)].extra = landed_extract(out_dir, formats)
        return summary.to_dict()

    generate_sources()


medguard_synthetic_extract()
