"""The hourly audit-monitor DAG runs for real (``airflow dags test``): chain verified, detectors' alerts stored."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.lake import Lake
from pipeline.orchestration import run_dag
from pipeline.settings import load_settings
from storage_security.audit.log import AuditEvent, AuditLog
from storage_security.audit.monitoring import ActivityMonitor
from storage_security.keys.keyring import LocalKeyring, encode_master_key

pytestmark = pytest.mark.e2e  # the DAG runs under airflow dags test


@pytest.mark.timeout(600)
def test_when_the_audit_monitor_dag_runs_then_alerts_land_in_the_alerts_table(tmp_path, monkeypatch):
    master = LocalKeyring.generate_master_key()
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    monkeypatch.setenv("MEDGUARD_KEY_PROVIDER", "keyring")
    settings = load_settings(home=tmp_path / "home", key_provider="keyring")
    ring = LocalKeyring.init(settings.keyring.path, master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings)
    AuditLog(lake, ring).record(AuditEvent(
        principal="user:night-owl", action="read", zone="deidentified", table_name="patients", row_count=10,
        decision="allow", purpose="research", time=datetime(2026, 3, 2, 3, 0, tzinfo=UTC)))
    result = run_dag("medguard_audit_monitor", settings=settings, logical_date="2026-03-02")
    assert result.state == "success", result.output[-3000:]
    alerts = ActivityMonitor(lake, None).alerts()
    assert [(a["detector"], a["principal"]) for a in alerts] == [("off_hours", "user:night-owl")]
