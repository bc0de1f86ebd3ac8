"""Weekly: rotate the data KEK and the audit KEK, rewrap every stored DEK, then retire the old KEK versions.

One task, one call into ``storage_security.keys.lifecycle.rotate_with_settings`` (what ``medguard keys rotate``
runs). No data is touched; a rotation interrupted anywhere (a retry, a timeout) is finished by the next try
instead of rotating again. With secrets from Vault it logs in with the key-rotation AppRole of the Airflow
connection ``medguard_vault_key_rotation`` (the pipeline's AppRole cannot rotate).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from pipeline.airflow_support import task_defaults


@dag(
    dag_id="medguard_rotate_keys",
    description="Rotate the KEKs, rewrap every DEK and audit signing key, retire the old KEK versions",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
    catchup=False,
    tags=["medguard", "security", "keys"],
    default_args=task_defaults("medguard-security"),
)
def medguard_rotate_keys() -> None:
    @task(task_id="rotate")
    def rotate() -> dict[str, Any]:
        from pipeline.airflow_support import KEY_ROTATION_CONNECTION, task_settings
        from storage_security.keys.lifecycle import rotate_with_settings

        settings = task_settings(vault_connection=KEY_ROTATION_CONNECTION)
        return rotate_with_settings(settings, principal="svc:key-rotation").to_dict()

    rotate()


medguard_rotate_keys()
