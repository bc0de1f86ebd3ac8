"""The ``medguard_ingest`` DAG runs under Airflow 3 (``airflow dags test``): it loads raw and emits one raw-batch
Asset; on a folder that does not exist it fails, emits nothing and leaves a failure alert."""

from __future__ import annotations

from pathlib import Path

from pipeline.lake import Lake
from pipeline.orchestration import run_dag
from storage_security.audit.monitoring import ActivityMonitor

# What the generated population fills (FHIR immunizations, HL7 ORU reports).
RAW_TABLES = {"patients", "encounters", "observations", "conditions", "medications", "outcomes", "notes",
              "immunizations", "diagnostic_reports"}


def test_when_the_ingest_dag_runs_then_raw_is_loaded_and_one_raw_batch_event_names_its_versions(
        population: Path, settings, tmp_path: Path, keyring_env, asset_events) -> None:
    # The DAG's tasks run in an `airflow dags test` subprocess, which inherits the keyring_env settings.
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})

    result = run_dag("medguard_ingest", settings=dag_settings, timeout=400,
                     conf={"sources_dir": str(population), "tabular_format": "csv"})
    result.raise_for_state()

    lake = Lake(dag_settings)
    assert set(lake.tables("raw")) == RAW_TABLES
    assert any(entry.get("medguard.dag_run") == result.run_id for entry in lake.history("raw", "patients"))
    events = asset_events(dag_settings, result.run_id)
    assert [uri for uri, _ in events] == ["medguard://raw/batch"]
    extra = events[0][1]
    assert extra["sources_dirs"] == [str(population)]
    assert len(extra["batches"]) >= 4  # one per tabular file, plus FHIR, HL7 and notes
    assert extra["tables"] == {table: lake.version("raw", table) for table in RAW_TABLES}


def test_when_sources_dir_has_a_typo_then_the_run_fails_emits_nothing_and_alerts(
        settings, tmp_path: Path, keyring_env, asset_events) -> None:
    orchestration = settings.orchestration.model_copy(update={"task_retries": 0})
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "orchestration": orchestration})
    typo = tmp_path / "sourcse"

    result = run_dag("medguard_ingest", settings=dag_settings, timeout=400, conf={"sources_dir": str(typo)})

    assert result.state == "failed" and result.run_id
    assert f"extract folder {typo} does not exist" in result.output
    assert asset_events(dag_settings, result.run_id) == []
    assert Lake(dag_settings).tables("raw") == []
    alerts = ActivityMonitor(Lake(dag_settings), None).alerts()
    assert [(a["detector"], a["details"]["dag_id"], a["details"]["task_id"], a["details"]["run_id"])
            for a in alerts] == [("task_failure", "medguard_ingest", "find_extract", result.run_id)]
    assert alerts[0]["details"]["error"] == "ValidationError"
