"""``medguard_backup`` under ``airflow dags test``: one encrypted backup of the lake, key store and audit log is
written, verified in full (the private key is beside the home) and kept; pruning removes nothing younger than
``backup.retention_days``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.lake import Lake
from pipeline.orchestration import run_dag


def test_when_the_backup_dag_runs_then_one_verified_backup_is_kept(
        settings, tmp_path: Path, keyring_env, monkeypatch: pytest.MonkeyPatch) -> None:
    backups = tmp_path / "backups"
    monkeypatch.setenv("MEDGUARD_BACKUP__DIR", str(backups))  # the DAG's subprocess inherits it
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    Lake(dag_settings).append("deidentified", "patients", pa.table({"patient_key": ["a", "b"], "age": [40, 51]}))

    result = run_dag("medguard_backup", settings=dag_settings, timeout=500)
    result.raise_for_state()

    made = [path for path in backups.iterdir() if path.is_dir()]
    assert len(made) == 1, made
    verified = json.loads((made[0] / "verified.json").read_text())
    assert verified["level"] == "full"
