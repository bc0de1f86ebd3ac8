"""Batch diagnosis is audited through the lake's access hook: each table it reads and its predictions write."""

from __future__ import annotations

from analytics.flow import PREDICTIONS_TABLE, PRINCIPAL, diagnose
from pipeline.lake import Lake, Zone
from storage_security.audit.log import AuditAction, AuditLog


def test_when_diagnosing_then_each_table_read_and_the_predictions_write_are_audit_events(t2d_run) -> None:
    local, ring, classify = t2d_run["settings"], t2d_run["provider"], t2d_run["classes"].classify
    log = AuditLog(Lake(local), ring)
    before = len(log.events())

    result = diagnose(local, provider=ring, batch_id="audit-day", classify=classify)

    events = [r.event for r in log.events()[before:] if r.event.principal == PRINCIPAL]
    reads = {e.table_name for e in events if e.action == AuditAction.READ and e.zone == Zone.DEIDENTIFIED}
    writes = [e for e in events if e.action == AuditAction.WRITE]
    assert reads == set(Lake(local).tables(Zone.DEIDENTIFIED))
    assert [(w.zone, w.table_name, w.row_count) for w in writes] == [
        (Zone.PREDICTIONS, PREDICTIONS_TABLE, result["rows"])]
    assert writes[0].purpose == "batch diagnosis" and writes[0].details["batch_id"] == "audit-day"
    assert writes[0].details["version"] == result["predictions_version"]
    assert log.verify().ok
