"""The request audit spool: events survive a failed flush, two server processes' spools on one file write each
event once, and closing flushes what is left into the real audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.api.security import AuditSpool
from pipeline.lake import Lake
from pipeline.settings import load_settings
from storage_security.audit.log import AuditLog


def _event(i: int) -> dict[str, Any]:
    return {"principal": "endpoint:ep_test", "action": "request", "decision": "allow", "purpose": "treatment",
            "details": {"front": "http", "route": "/v1/diagnoses", "status": 200, "n": i},
            "time": datetime(2026, 11, 30, 12, 0, i % 60, tzinfo=UTC).isoformat()}


def test_when_the_sink_fails_then_the_events_stay_spooled_and_the_next_flush_writes_them(tmp_path: Path):
    written: list[dict[str, Any]] = []
    broken = {"on": True}

    def sink(events: list[dict[str, Any]]) -> None:
        if broken["on"]:
            raise OSError("audit log unavailable")
        written.extend(events)

    spool = AuditSpool(tmp_path / "spool.sqlite", sink)
    for i in range(5):
        spool.add(_event(i))
    with pytest.raises(OSError):
        spool.flush()
    assert spool.pending() == 5 and written == []
    broken["on"] = False
    assert spool.flush() == 5 and spool.pending() == 0
    assert [e["details"]["n"] for e in written] == [0, 1, 2, 3, 4]
    assert (tmp_path / "spool.sqlite").stat().st_mode & 0o077 == 0


def test_when_two_spools_share_a_file_then_each_event_is_written_once(tmp_path: Path):
    written: list[int] = []

    def sink(events: list[dict[str, Any]]) -> None:
        written.extend(e["details"]["n"] for e in events)

    first = AuditSpool(tmp_path / "spool.sqlite", sink, batch=7)
    second = AuditSpool(tmp_path / "spool.sqlite", sink, batch=7)
    for i in range(40):
        (first if i % 2 else second).add(_event(i))
    first.flush()
    second.flush()
    assert sorted(written) == list(range(40))


def test_when_the_spool_closes_then_its_events_are_in_the_audit_log(tmp_path: Path, keyring: Any):
    settings = load_settings(home=tmp_path / "home", key_provider="keyring", keyring={"path": keyring.path})
    spool = AuditSpool.from_settings(settings, provider=keyring, interval=60)
    spool.start()
    for i in range(3):
        spool.add(_event(i))
    spool.close()
    records = [r for r in AuditLog(Lake(settings), keyring).events() if str(r.event.action) == "request"]
    assert [r.event.details["n"] for r in records] == [0, 1, 2]
    assert all(r.event.principal == "endpoint:ep_test" for r in records)
