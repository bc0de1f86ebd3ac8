"""Hourly: verify the audit hash chain, then run the activity detectors (alerts go to ``audit/alerts``).

Two tasks, each one call into ``storage_security.audit.monitoring``. The detectors run only after the chain
verifies: alerts computed from a tampered log would be worthless, and the failed run is itself the alarm (its
failure callback stores a ``task_failure`` alert, as every medguard task's does).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from pipeline.airflow_support import task_defaults


@dag(
    dag_id="medguard_audit_monitor",
    description="Verify the audit chain and run activity detectors (bulk reads, off-hours, new endpoints, ...)",
    doc_md=__doc__,
    schedule="@hourly",
    catchup=False,
    tags=["medguard", "security", "audit"],
    default_args=task_defaults("medguard-security"),
)
def medguard_audit_monitor() -> None:
    @task(task_id="verify_chain")
    def verify_chain() -> dict[str, Any]:
        from pipeline.airflow_support import AUDITOR_CONNECTION, task_settings
        from storage_security.audit.monitoring import verify_chain

        return verify_chain(task_settings(vault_connection=AUDITOR_CONNECTION))

    @task(task_id="run_detectors")
    def run_detectors() -> dict[str, Any]:
        from pipeline.airflow_support import AUDITOR_CONNECTION, task_settings
        from storage_security.audit.monitoring import run_detectors

        return run_detectors(task_settings(vault_connection=AUDITOR_CONNECTION))

    verify_chain() >> run_detectors()


medguard_audit_monitor()
