"""Daily: an encrypted backup of the lake, the key store and the audit log, verified, then old backups pruned.

Each task is one call into ``storage_security.backup.archive`` (what ``medguard backup create|verify`` run):
``create`` writes the backup (audited), ``verify`` checks it (in full when the private key is readable here, its
outer checksums otherwise) and fails the run on any problem, ``prune`` removes backups older than
``backup.retention_days`` (never the newest verified one), only after this one verified.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from pipeline.airflow_support import task_defaults


@dag(
    dag_id="medguard_backup",
    description="Encrypted backup of the lake, key store and audit log; verify it; prune old backups",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("30 1 * * *", timezone="UTC"),
    catchup=False,
    tags=["medguard", "security", "backup"],
    default_args=task_defaults("medguard-security"),
)
def medguard_backup() -> None:
    @task(task_id="create")
    def create() -> dict[str, Any]:
        from pipeline.airflow_support import task_settings
        from storage_security.backup.archive import create_backup

        return create_backup(task_settings(), principal="svc:backup").to_dict()

    @task(task_id="verify")
    def verify(created: dict[str, Any]) -> dict[str, Any]:
        from pipeline.airflow_support import require_verified, task_settings
        from storage_security.backup.archive import verify_backup

        return require_verified(verify_backup(task_settings(), created["path"]).to_dict())

    @task(task_id="prune")
    def prune(verified: dict[str, Any]) -> dict[str, Any]:
        from pipeline.airflow_support import task_settings
        from storage_security.backup.archive import prune_backups

        return {"removed": prune_backups(task_settings())}

    prune(verify(create()))


medguard_backup()
