"""``medguard_train`` under ``airflow dags test`` on a lake with nothing de-identified: the run fails at its first
task, naming the zone, and emits no registry Asset (so batch diagnosis is not started on nothing)."""

from __future__ import annotations

from pathlib import Path

from pipeline.orchestration import run_dag


def test_when_nothing_is_deidentified_then_the_train_run_fails_and_emits_nothing(
        settings, tmp_path: Path, keyring_env, asset_events) -> None:
    orchestration = settings.orchestration.model_copy(update={"task_retries": 0})
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "orchestration": orchestration})

    result = run_dag("medguard_train", settings=dag_settings, timeout=400)

    assert result.state == "failed" and result.run_id
    assert "the deidentified zone of" in result.output and "holds no table" in result.output
    assert asset_events(dag_settings, result.run_id) == []
