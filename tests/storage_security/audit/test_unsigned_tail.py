"""Issue 18 item 1: the tail of the audit log cannot be cut or rewritten quietly, nor its heads emptied.

Each test builds a log the way the gateway writes one (a commit per decision, five break-glass grants of one
clinician at the end), runs the attack seen in the audit of the running system, and checks that
``medguard audit verify`` exits 1 naming the gap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.errors import AuditIntegrityError
from pipeline.lake import Lake, Zone
from pipeline.settings import get_settings
from storage_security.audit import _codec as codec
from storage_security.audit.log import EVENTS_SCHEMA, HEADS_SCHEMA, AuditAction, AuditEvent, AuditLog, Decision
from storage_security.audit.monitoring import ALERTS_SCHEMA, ActivityMonitor, break_glass_alert

sys.path.insert(0, str(Path(__file__).parent))
from _audit_workers import FakeKeyProvider

MASTER = bytes(range(32))
START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
READS = 20  # seq 0..19, then five break-glass grants at seq 20..24


class TickingClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _log(lake: Lake, **kwargs: Any) -> AuditLog:
    return AuditLog(lake, FakeKeyProvider(MASTER), clock=TickingClock(), **kwargs)


def _read(i: int) -> AuditEvent:
    return AuditEvent(principal="user:ann", action=AuditAction.READ, zone=Zone.DEIDENTIFIED, table_name="encounters",
                      columns=("encounter_id",), row_count=10 + i, decision=Decision.ALLOW, purpose="research")


def _break_glass(i: int) -> AuditEvent:
    return AuditEvent(principal="user:dr-cole", action=AuditAction.BREAK_GLASS, zone=Zone.RAW, table_name="patients",
                      columns=("name",), row_count=1, decision=Decision.ALLOW, purpose="treatment",
                      reason="break-glass: [redacted]", details={"grant": i})


@pytest.fixture
def audited(lake: Lake) -> Lake:
    """Reads in one-event commits (as the access hook writes them), then five break-glass grants."""
    log = _log(lake)
    for i in range(READS):
        log.record(_read(i))
    for i in range(5):
        log.record(_break_glass(i))
    assert log.verify().ok
    return lake


def _rows(lake: Lake, table: str) -> list[dict[str, Any]]:
    return sorted(lake.read_arrow(Zone.AUDIT, table).to_pylist(), key=lambda row: row["seq"])


def _overwrite(lake: Lake, table: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    lake.overwrite(Zone.AUDIT, table, pa.Table.from_pylist(rows, schema=schema))


def _rechain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prev = codec.GENESIS_HASH
    for row in rows:
        row["prev_hash"] = prev
        row["hash"] = codec.event_hash(row)
        prev = row["hash"]
    return rows


def test_when_every_commit_is_written_then_each_ends_with_a_signed_head_and_the_anchor_follows(audited: Lake) -> None:
    log = _log(audited)
    report = log.verify()

    assert [head.seq for head in log.heads()] == list(range(READS + 5))
    assert (report.last_seq, report.last_signed_seq, report.anchored_seq) == (24, 24, 24)
    assert log.anchor.read().hash == _rows(audited, "events")[-1]["hash"]


def test_when_a_batch_holds_a_break_glass_event_then_it_is_signed_even_if_signing_is_batched(lake: Lake) -> None:
    log = _log(lake, sign_every=100)

    log.record_many([_read(0), _read(1)])
    log.record_many([_read(2), _break_glass(0)])

    assert [head.seq for head in log.heads()] == [3]


def test_when_the_break_glass_events_and_their_heads_are_deleted_then_verify_names_the_gap(audited: Lake) -> None:
    # The attack seen: erase the clinician's five grants and the heads that sign them; the rest still chains.
    _overwrite(audited, "events", [r for r in _rows(audited, "events") if r["seq"] < READS], EVENTS_SCHEMA)
    _overwrite(audited, "heads", [h for h in _rows(audited, "heads") if h["seq"] < READS], HEADS_SCHEMA)

    report = _log(audited).verify()

    assert (report.ok, report.first_bad_seq) == (False, READS)
    assert f"events {READS}..24 are gone" in report.reason and "anchored outside the lake" in report.reason


def test_when_the_tail_is_rewritten_with_a_recomputed_chain_then_verify_names_the_rewrite(audited: Lake) -> None:
    rows = _rows(audited, "events")
    for row in rows[READS:]:
        row.update(principal="user:someone-else", action="read", reason=None)
    _overwrite(audited, "events", _rechain(rows), EVENTS_SCHEMA)
    _overwrite(audited, "heads", [h for h in _rows(audited, "heads") if h["seq"] < READS], HEADS_SCHEMA)

    report = _log(audited).verify()

    assert (report.ok, report.first_bad_seq) == (False, READS)
    assert f"events {READS}..24 were rewritten" in report.reason


def test_when_audit_heads_is_emptied_then_verify_fails(audited: Lake) -> None:
    _overwrite(audited, "heads", [], HEADS_SCHEMA)

    report = _log(audited).verify()

    assert (report.ok, report.first_bad_seq) == (False, 0)
    assert "no signed head covers events 0..24" in report.reason


def test_when_heads_are_emptied_and_the_whole_chain_rewritten_then_verify_fails(audited: Lake) -> None:
    rows = _rows(audited, "events")
    for row in rows[READS:]:
        row.update(principal="user:ann", action="read", table_name="encounters", reason=None)
    _overwrite(audited, "events", _rechain(rows), EVENTS_SCHEMA)
    _overwrite(audited, "heads", [], HEADS_SCHEMA)

    report = _log(audited).verify()

    assert (report.ok, report.first_bad_seq) == (False, 0)
    assert "events 0..24 were rewritten" in report.reason


def test_when_events_and_heads_are_restored_to_an_older_version_then_the_anchor_is_ahead(audited: Lake) -> None:
    for table in ("events", "heads"):
        DeltaTable(audited.uri(Zone.AUDIT, table)).restore(READS - 1)  # versions 0..19: the reads only

    report = _log(audited).verify()

    assert (report.ok, report.last_seq, report.anchored_seq) == (False, READS - 1, 24)
    assert "is at seq 24 but the log ends at seq 19" in report.reason


def test_when_a_writer_finds_the_tail_cut_then_it_records_but_keeps_the_anchor(audited: Lake) -> None:
    _overwrite(audited, "events", [r for r in _rows(audited, "events") if r["seq"] < READS], EVENTS_SCHEMA)
    _overwrite(audited, "heads", [h for h in _rows(audited, "heads") if h["seq"] < READS], HEADS_SCHEMA)
    log = _log(audited)

    with pytest.raises(AuditIntegrityError, match="no longer holds the head anchored at seq 24"):
        for i in range(6):  # enough new events to pass the anchored seq again
            log.record(_read(100 + i))

    assert log.anchor.read().seq == 24
    assert not log.verify().ok


def test_when_an_alert_is_deleted_or_altered_then_verify_names_its_event(lake: Lake) -> None:
    log = _log(lake)
    seq = log.record(_break_glass(0))
    monitor = ActivityMonitor(lake, log)
    monitor.store([break_glass_alert(seq, _break_glass(0), START)])
    assert log.verify().ok
    stored = lake.read_arrow(Zone.AUDIT, "alerts").to_pylist()

    _overwrite(lake, "alerts", [{**stored[0], "severity": "low"}], ALERTS_SCHEMA)
    altered = log.verify()
    _overwrite(lake, "alerts", [], ALERTS_SCHEMA)
    deleted = log.verify()

    assert (altered.ok, altered.first_bad_seq) == (False, 1) and "was altered in audit/alerts" in altered.reason
    assert (deleted.ok, deleted.first_bad_seq) == (False, 1) and "was deleted from audit/alerts" in deleted.reason


@pytest.fixture
def cli(audited: Lake, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], tuple[int, str]]]:
    from pipeline import cli as spine

    monkeypatch.setattr("storage_security.keys.providers.provider_from_settings",
                        lambda settings, role=None: FakeKeyProvider(MASTER))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", audited.root)
    get_settings.cache_clear()

    def run() -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["medguard", "audit", "verify"])
        with pytest.raises(SystemExit) as exit_:
            spine.main()
        return int(exit_.value.code or 0), ""

    yield run


def test_when_the_tail_is_cut_then_medguard_audit_verify_exits_one_naming_the_gap(
    audited: Lake, cli: Callable[[], tuple[int, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli()[0] == 0
    capsys.readouterr()
    _overwrite(audited, "events", [r for r in _rows(audited, "events") if r["seq"] < 22], EVENTS_SCHEMA)
    _overwrite(audited, "heads", [h for h in _rows(audited, "heads") if h["seq"] < 22], HEADS_SCHEMA)

    code, _ = cli()

    err = capsys.readouterr().err
    assert code == 1
    assert "first bad event seq 22: events 22..24 are gone" in err


def test_when_an_alert_is_added_outside_the_monitor_then_verify_names_it_until_an_operator_chains_it(
        lake: Lake) -> None:
    log = _log(lake)
    seq = log.record(_break_glass(0))
    alert = break_glass_alert(seq, _break_glass(0), START)
    row = {"alert_id": alert.alert_id, "detected_at": START, "event_time": START, "detector": alert.detector,
           "severity": alert.severity, "principal": alert.principal, "summary": alert.summary,
           "evidence_seqs": [seq], "details": "{}"}
    lake.append(Zone.AUDIT, "alerts", pa.Table.from_pylist([row], schema=ALERTS_SCHEMA))  # as before chaining

    unchained = log.verify()
    chained = ActivityMonitor(lake, log).chain_stored_alerts()

    assert not unchained.ok and "1 alert(s) in audit/alerts have no audit event" in unchained.reason
    assert chained == 1 and log.verify().ok
