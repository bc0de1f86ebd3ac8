"""Analytics is audited through the lake's access hook: training's reads of deidentified, the run folder's copy
of its rows (written, then deleted after registration), scoring's reads and its predictions write."""

from __future__ import annotations

import re

from analytics.flow import CURRENT_TABLE, PREDICTIONS_TABLE, PRINCIPAL, diagnose, train_pipeline
from pipeline.lake import Lake, Zone
from storage_security.audit.log import AuditAction, AuditLog


# Scoring's reads and its predictions write: the diagnosis test below, on the shared trained run.
def test_when_a_model_is_trained_then_its_reads_and_its_run_copy_are_audited_and_the_copy_is_deleted(
        settings, spark, tmp_path, keyring_env, publish_reported) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: re.sub(r"[^a-z0-9]+", "_", c.lower()))
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    publish_reported(Lake(local), "breast_cancer", frame, {c: "sensitive" for c in frame.columns})
    log = AuditLog(Lake(local), keyring_env)
    before = len(log.events())

    result = train_pipeline(local, "breast_cancer", "diagnosis", provider=keyring_env,
                            overrides={"positive_class": "malignant", "n_estimators": 40, "attack_samples": 10,
                                       "cv": {"folds": 2, "budget_seconds": 1.0}})

    events = [r.event for r in log.events()[before:] if r.event.principal == PRINCIPAL]
    reads = [e for e in events if e.action == AuditAction.READ and e.zone == Zone.DEIDENTIFIED]
    copies = [(e.action, e.row_count, e.details["run"]) for e in events if "copy" in e.details]
    writes = [(e.zone, e.table_name, e.row_count) for e in events if e.action == AuditAction.WRITE
              and e.table_name is not None]
    run = tmp_path / "home" / "analytics" / "runs"
    assert {e.table_name for e in reads} == {"breast_cancer"}
    assert [a for a, _, _ in copies] == [AuditAction.WRITE, AuditAction.DELETE] and copies[0][2] == copies[1][2]
    assert copies[0][1] == len(frame) and 0 < copies[1][1] <= len(frame)  # the screen may drop a few rows
    assert not list(run.rglob("*.parquet"))  # no copy of deidentified rows outlives the run
    assert {zone for zone, _, _ in writes} <= {Zone.QUARANTINE, Zone.PREDICTIONS}  # the screen, the registry
    assert result["model_version"] and log.verify().ok


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
        (Zone.PREDICTIONS, PREDICTIONS_TABLE, result["rows"]),
        (Zone.PREDICTIONS, CURRENT_TABLE, result["current_rows"])]
    assert all(w.purpose == "batch diagnosis" and w.details["batch_id"] == "audit-day" for w in writes)
    assert writes[0].details["version"] == result["predictions_version"]
    assert log.verify().ok
