"""The ``medguard_ingest`` DAG runs under Airflow 3 (``airflow dags test``), loads raw and emits its Assets."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from pipeline.lake import Lake
from pipeline.orchestration import run_dag

# What the generated population fills (FHIR immunizations, HL7 ORU reports), and the Assets the load tasks emit:
# every table a source can fill, whether or not this extract had rows for it.
RAW_TABLES = {"patients", "encounters", "observations", "conditions", "medications", "outcomes", "notes",
              "immunizations", "diagnostic_reports"}
EMITTED = RAW_TABLES | {"procedures", "allergies", "resources"}


def test_when_the_ingest_dag_runs_then_every_raw_table_is_loaded_and_emitted_as_an_asset(
        population: Path, settings, tmp_path: Path, keyring_env) -> None:
    # The DAG's tasks run in an `airflow dags test` subprocess, which inherits the keyring_env settings.
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})

    result = run_dag("medguard_ingest", settings=dag_settings, timeout=400,
                     conf={"sources_dir": str(population), "tabular_format": "csv"})
    result.raise_for_state()

    lake = Lake(dag_settings)
    assert set(lake.tables("raw")) == RAW_TABLES
    history = lake.history("raw", "patients")
    assert any(entry.get("medguard.dag_run") == result.run_id for entry in history)
    db = Path(dag_settings.airflow_home) / "airflow.db"
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        uris = {row[0] for row in connection.execute(
            "SELECT a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id JOIN dag_run r "
            "ON r.run_id = e.source_run_id WHERE r.run_id = ?", (result.run_id,))}
    assert uris == {f"medguard://raw/{t}" for t in EMITTED}
