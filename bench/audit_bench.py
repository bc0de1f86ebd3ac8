"""Audit log write cost: events per second for a 10,000-event append, in one commit, in commits of 100 events,
and as one commit per event (the access hook's pattern, 500 events). Run: ``.venv/bin/python -m bench.audit_bench``.

Uses an in-memory AES-GCM key provider (the tests' FakeKeyProvider), so the figures are the lake's and the
chain's cost, not a key service's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pipeline.lake import Lake, Zone
from pipeline.settings import get_settings
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "storage_security" / "audit"))
from _audit_workers import FakeKeyProvider


def _event(i: int) -> AuditEvent:
    return AuditEvent(principal=f"user:analyst-{i % 7}", action=AuditAction.READ, zone=Zone.DEIDENTIFIED,
                      table_name="encounters", columns=("encounter_id", "start"), row_count=10 + i,
                      purpose="research", details={"operation": "read", "version": i})


def _log(home: Path) -> AuditLog:
    settings = get_settings().model_copy(update={"home": home, "lake_root": str(home / "lake")})
    return AuditLog(Lake(settings), FakeKeyProvider(bytes(32)))


def main() -> None:
    rows = []
    for label, total, per_commit in (("10,000 events, one commit", 10_000, 10_000),
                                     ("10,000 events, commits of 100", 10_000, 100),
                                     ("500 events, one commit each", 500, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            log = _log(Path(tmp))
            log.record(_event(-1))  # the signing key and the tables exist before timing
            events = [_event(i) for i in range(total)]
            started = time.perf_counter()
            for first in range(0, total, per_commit):
                log.record_many(events[first:first + per_commit])
            seconds = time.perf_counter() - started
            report = log.verify()
            rows.append((label, seconds, total / seconds, report.summary()))
    for label, seconds, rate, summary in rows:
        print(f"{label:32s} {seconds:8.2f} s {rate:10.0f} events/s   [{summary}]")


if __name__ == "__main__":
    main()
