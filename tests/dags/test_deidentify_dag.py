"""The ``medguard_deidentify`` DAG runs under Airflow 3 (``airflow dags test``), publishes and emits one
deidentified-batch Asset; on an empty raw zone it fails and emits nothing.

Its raw zone is what ingestion writes: a defect-free generated extract, ingested as the ingest DAG would.
"""

from __future__ import annotations

from pathlib import Path

from ingestion.batch import ingest
from pipeline.lake import Lake
from pipeline.orchestration import run_dag
from pipeline.synthetic import generate
from storage_security.deid.deidentify import published_report
from storage_security.protected import ProtectedLake

TABLES = ("patients", "encounters", "outcomes")


def test_when_the_deidentify_dag_runs_then_raw_tables_are_published_and_one_batch_is_emitted(
        settings, tmp_path: Path, keyring_env, asset_events) -> None:
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
    events = asset_events(dag_settings, result.run_id)
    assert [uri for uri, _ in events] == ["medguard://deidentified/batch"]
    assert events[0][1] == {"tables": {t: lake.version("deidentified", t) for t in TABLES}, "raw_batches": []}


def test_when_the_raw_zone_is_empty_then_the_deidentify_run_fails_and_emits_nothing(
        settings, tmp_path: Path, keyring_env, asset_events) -> None:
    orchestration = settings.orchestration.model_copy(update={"task_retries": 0})
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "orchestration": orchestration})

    result = run_dag("medguard_deidentify", settings=dag_settings, timeout=400)

    assert result.state == "failed" and result.run_id
    assert "the raw zone of" in result.output and "holds no table" in result.output
    assert asset_events(dag_settings, result.run_id) == []
    assert Lake(dag_settings).tables("deidentified") == []
