"""``medguard_rotate_keys`` under ``airflow dags test``: both KEKs get a new version, old versions are retired, and
the rotation is in the audit log."""

from __future__ import annotations

from pathlib import Path

from pipeline.lake import Lake
from pipeline.orchestration import run_dag
from storage_security.audit.log import AuditAction, AuditLog
from storage_security.keys.keyring import LocalKeyring


def test_when_the_rotate_keys_dag_runs_then_both_keks_move_to_a_new_version(
        settings, tmp_path: Path, keyring_env: LocalKeyring) -> None:
    dag_settings = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    before = {name: keyring_env.versions(name).latest for name in ("medguard-kek", "medguard-audit")}

    result = run_dag("medguard_rotate_keys", settings=dag_settings, timeout=400)
    result.raise_for_state()

    after = {name: keyring_env.versions(name) for name in before}
    assert {name: v.latest for name, v in after.items()} == {name: n + 1 for name, n in before.items()}
    assert all(v.min_decryption_version == v.latest for v in after.values())
    actions = [r.event.action for r in AuditLog(Lake(dag_settings), keyring_env).events()]
    assert actions.count(AuditAction.KEY_ROTATE) == 2
