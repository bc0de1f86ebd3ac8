"""The ``medguard_deidentify`` DAG runs under Airflow 3 (``airflow dags test``), publishes and emits its Assets.

Its raw zone is what ingestion writes: a defect-free generated extract, ingested as the ingest DAG would.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from ingestion.batch import ingest
from pipeline.lake import Lake
from pipeline.orchestration import run_dag
from pipeline.synthetic import generate
from storage_security.deid.deidentify import published_report
from storage_security.protected import ProtectedLake

TABLES = ("patients", "encounters", "outcomes")


def test_when_the_deidentify_dag_runs_then_raw_tables_are_published_and_emitted(settings, tmp_path: Path,
                                                                                keyring_env) -> None:
    # The DAG's task runs in an `airflow dags test` subprocess, which inherits the keyring_env settings.
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    lake = Lake(dag_settings)
    extract = tmp_path / "extract"
    generate(extract, patients=60, seed=11, formats=["parquet"], defect_rate=0.0)
    plake = ProtectedLake(lake, keyring_env, principal="svc:ingest")
    for table in TABLES:
        ingest(dag_settings, source="tabular", path=extract / f"{table}.parquet", table=table, plake=plake, docs=False)

    result = run_dag("medguard_deidentify", settings=dag_settings, timeout=400)
    result.raise_for_state()

    assert set(lake.tables("deidentified")) == set(TABLES)
    for table in TABLES:
        assert published_report(lake, table)["k"] >= dag_settings.deidentify.k_anonymity
        assert lake.history("deidentified", table)[0].get("medguard.dag_run") == result.run_id
    db = Path(dag_settings.airflow_home) / "airflow.db"
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        uris = {row[0] for row in connection.execute(
            "SELECT a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id JOIN dag_run r "
            "ON r.run_id = e.source_run_id WHERE r.run_id = ?", (result.run_id,))}
    assert {f"medguard://deidentified/{t}" for t in TABLES} <= uris
