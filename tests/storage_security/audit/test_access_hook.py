"""AuditLog.access_hook: a Lake built with it records each read and write of a zone as one chained event."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.lake import CommitInfo, Lake, LakeAccess, Zone
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog
from storage_security.keys.keyring import LocalKeyring


@pytest.fixture
def log(lake: Lake, keyring: LocalKeyring) -> AuditLog:
    return AuditLog(lake, keyring)


def test_when_a_hooked_lake_reads_and_writes_then_each_access_is_one_event_in_a_valid_chain(
        lake: Lake, log: AuditLog) -> None:
    watched = lake.with_access_hook(log.access_hook("user:dana"))
    who = CommitInfo(principal="user:dana", purpose="operations", dag_run="scheduled__7", batch_id="b9")

    watched.append(Zone.PREDICTIONS, "scores", pa.table({"encounter": ["e1", "e2"], "risk": [0.1, 0.9]}), commit=who)
    watched.read_arrow(Zone.PREDICTIONS, "scores", columns=["risk"], where="risk > 0.5")
    watched.delete(Zone.PREDICTIONS, "scores", where="risk < 0.5", commit=who)

    events = [record.event for record in log.events()]
    assert [(e.action, e.zone, e.table_name, e.row_count, e.columns) for e in events] == [
        (AuditAction.WRITE, "predictions", "scores", 2, ("encounter", "risk")),
        (AuditAction.READ, "predictions", "scores", 1, ("risk",)),
        (AuditAction.DELETE, "predictions", "scores", 1, ()),
    ]
    write, read, delete = events
    assert {e.principal for e in events} == {"user:dana"}
    assert (write.purpose, write.dag_run) == ("operations", "scheduled__7")
    assert dict(write.details) == {"operation": "append", "version": 0, "batch_id": "b9"}
    assert dict(read.details) == {"operation": "read", "version": "latest", "filtered": True}
    assert read.purpose == "unspecified" and delete.details["operation"] == "delete"
    assert log.verify().ok


def test_when_the_log_writes_and_verifies_through_a_hooked_lake_then_the_hook_hears_nothing_of_it(
        lake: Lake, keyring: LocalKeyring) -> None:
    # The audit zone is where a hook's events go: reporting its own reads and writes would never end.
    seen: list[LakeAccess] = []
    log = AuditLog(lake.with_access_hook(seen.append), keyring, sign_every=1)

    log.record(AuditEvent(principal="svc:x", action=AuditAction.KEY_CREATE))
    assert log.verify().ok and len(log.events()) == 1

    assert seen == []


def test_when_the_principal_is_empty_then_value_error(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="principal"):
        log.access_hook(" ")
