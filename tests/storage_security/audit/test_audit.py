"""The tamper-evident audit log: chain and heads, every kind of tampering, concurrent writers, the CLI."""

from __future__ import annotations

import importlib
import itertools
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.errors import KeyProviderUnavailableError, StorageError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings, get_settings
from storage_security.audit import _codec as codec
from storage_security.audit.log import (
    EVENTS_SCHEMA,
    HEADS_SCHEMA,
    MAX_ROW_KEYS,
    SIGNING_KEYS_SCHEMA,
    AuditAction,
    AuditEvent,
    AuditLog,
    Decision,
)

sys.path.insert(0, str(Path(__file__).parent))
from _audit_workers import FakeKeyProvider

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(32, 64))
START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
SIGN_EVERY = 5
EVENTS = 12  # heads at seq 4 and 9 (automatic) and 11 (on demand)


class TickingClock:
    """A clock that advances one second per reading."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _event(i: int) -> AuditEvent:
    """Event number ``i``: every field set, values varying with ``i``; no PHI (names, counts, pseudonyms)."""
    return AuditEvent(
        principal=f"user:analyst-{i % 3}",
        action=[AuditAction.READ, AuditAction.DECRYPT, AuditAction.POLICY_DECISION][i % 3],
        zone=Zone.DEIDENTIFIED,
        table_name="encounters",
        columns=("mrn", "birth_date"),
        row_count=10 + i,
        row_keys=(f"pk_{i:04x}a", f"pk_{i:04x}b"),
        decision=Decision.ALLOW if i % 4 else Decision.DENY,
        purpose="treatment",
        reason=f"ticket {i}",
        dag_run=f"manual__2025-03-01T08:{i:02d}",
        details={"policy": "clinician-default", "key_version": 1 + i % 2},
    )


def _new_log(lake: Lake, *, master: bytes = MASTER, sign_every: int = SIGN_EVERY, **kwargs: Any) -> AuditLog:
    return AuditLog(lake, FakeKeyProvider(master), clock=TickingClock(), sign_every=sign_every, **kwargs)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    """An intact log of 12 events, signed at seq 4, 9 (automatically) and 11 (on demand); copied per test."""
    root = tmp_path_factory.mktemp("audit-template") / "lake"
    log = _new_log(Lake(settings.model_copy(update={"lake_root": str(root)})))
    log.record_many(_event(i) for i in range(5))
    log.record_many(_event(i) for i in range(5, 10))
    log.record_many(_event(i) for i in range(10, EVENTS))
    log.sign_head()
    return root


@pytest.fixture
def chained(template: Path, lake: Lake) -> Lake:
    """A private copy of the template log, with its anchor outside the lake."""
    shutil.copytree(template, lake.root)
    original = _new_log(Lake(lake.settings.model_copy(update={"lake_root": str(template)}))).anchor
    copy = _new_log(lake).anchor
    shutil.copyfile(original.path, copy.path)  # type: ignore[attr-defined]
    return lake


def _rows(lake: Lake, table: str = "events") -> list[dict[str, Any]]:
    return sorted(lake.read_arrow(Zone.AUDIT, table).to_pylist(), key=lambda row: row.get("seq", 0))


def _overwrite(lake: Lake, table: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    lake.overwrite(Zone.AUDIT, table, pa.Table.from_pylist(rows, schema=schema))


def _rehash(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "hash": codec.event_hash(row)}


def _at(rows: list[dict[str, Any]], seq: int) -> int:
    return next(i for i, row in enumerate(rows) if row["seq"] == seq)


# event tampering --------------------------------------------------------------------------------------

def _set(field: str, value: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def change(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[_at(rows, 6)][field] = value
        return rows

    return change


def _delete(seq: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda rows: [row for row in rows if row["seq"] != seq]


def _delete_and_renumber(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "seq": row["seq"] - (row["seq"] > 6)} for row in rows if row["seq"] != 6]


def _insert_duplicate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*rows, {**rows[_at(rows, 6)], "principal": "user:mallory"}]


def _insert_forged_and_renumber(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A careful forger: the new event is well hashed and links to seq 5; the rest are only renumbered.
    forged = _rehash({**rows[_at(rows, 6)], "seq": 6, "prev_hash": rows[_at(rows, 5)]["hash"],
                      "principal": "user:mallory"})
    return [row for row in rows if row["seq"] < 6] + [forged] + [
        {**row, "seq": row["seq"] + 1} for row in rows if row["seq"] >= 6]


def _swap_seqs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    five, six = _at(rows, 5), _at(rows, 6)
    rows[five]["seq"], rows[six]["seq"] = 6, 5
    return rows


def _swap_contents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Exchange what events 5 and 6 say while leaving seq and hashes where they were.
    five, six = _at(rows, 5), _at(rows, 6)
    chain = ("seq", "prev_hash", "hash")
    a = {k: v for k, v in rows[five].items() if k not in chain}
    b = {k: v for k, v in rows[six].items() if k not in chain}
    rows[five].update(b)
    rows[six].update(a)
    return rows


def _change_and_rehash_one(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    six = _at(rows, 6)
    rows[six] = _rehash({**rows[six], "decision": "allow", "principal": "user:mallory"})
    return rows


def _change_and_rehash_chain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The strongest attacker without the signing key: change seq 6 and recompute every later link.
    rows[_at(rows, 6)]["principal"] = "user:mallory"
    prev = codec.GENESIS_HASH
    for row in rows:
        row["prev_hash"] = prev
        row.update(_rehash(row))
        prev = row["hash"]
    return rows


def _truncate_after(seq: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda rows: [row for row in rows if row["seq"] <= seq]


EVENT_TAMPERING = [
    pytest.param(_set("principal", "user:mallory"), 6, "changed", id="change-principal"),
    pytest.param(_set("action", "key_shred"), 6, "changed", id="change-action"),
    pytest.param(_set("zone", "raw"), 6, "changed", id="change-zone"),
    pytest.param(_set("table_name", "patients"), 6, "changed", id="change-table"),
    pytest.param(_set("columns", ["birth_date"]), 6, "changed", id="change-columns"),
    pytest.param(_set("row_count", 1), 6, "changed", id="change-row-count"),
    pytest.param(_set("row_keys", []), 6, "changed", id="change-row-keys"),
    pytest.param(_set("decision", "deny"), 6, "changed", id="change-decision"),
    pytest.param(_set("purpose", "research"), 6, "changed", id="change-purpose"),
    pytest.param(_set("reason", None), 6, "changed", id="change-reason"),
    pytest.param(_set("dag_run", "scheduled__x"), 6, "changed", id="change-dag-run"),
    pytest.param(_set("details", '{"policy":"break-glass"}'), 6, "changed", id="change-details"),
    pytest.param(_set("time", START + timedelta(days=30)), 6, "changed", id="change-time"),
    pytest.param(_set("hash", "f" * 64), 6, "changed", id="change-hash"),
    pytest.param(_set("prev_hash", "e" * 64), 6, "does not link", id="change-prev-hash"),
    pytest.param(_set("seq", 60), 6, "missing", id="change-seq"),
    pytest.param(_delete(0), 0, "seq 0 is missing", id="delete-first"),
    pytest.param(_delete(6), 6, "seq 6 is missing", id="delete-middle"),
    pytest.param(_delete(EVENTS - 1), EVENTS - 1, f"truncated after seq {EVENTS - 2}", id="delete-last"),
    pytest.param(_delete_and_renumber, 6, "does not link", id="delete-and-renumber"),
    pytest.param(_insert_duplicate, 6, "seq 6 appears 2 times", id="insert-duplicate-seq"),
    pytest.param(_insert_forged_and_renumber, 6, "inserted", id="insert-and-renumber"),
    pytest.param(_swap_seqs, 5, "does not link", id="swap-two-seqs"),
    pytest.param(_swap_contents, 5, "changed", id="swap-two-contents"),
    pytest.param(_change_and_rehash_one, 6, "re-hashed", id="change-and-rehash-one"),
    pytest.param(_change_and_rehash_chain, 5, "rewritten", id="change-and-rehash-chain"),
    pytest.param(_truncate_after(7), 8, "truncated after seq 7", id="truncate-tail"),
    pytest.param(lambda rows: [], 0, "no event remains", id="truncate-everything"),
]


@pytest.mark.parametrize(("tamper", "first_bad", "why"), EVENT_TAMPERING)
def test_when_events_are_tampered_with_then_verify_names_the_first_bad_seq(
    chained: Lake, tamper: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], first_bad: int, why: str
) -> None:
    _overwrite(chained, "events", tamper(_rows(chained)), EVENTS_SCHEMA)

    report = _new_log(chained).verify()

    assert not report.ok
    assert report.first_bad_seq == first_bad, report.reason
    assert why in report.reason
    assert f"first bad event seq {first_bad}:" in report.summary()


def test_when_the_events_table_is_restored_to_an_older_version_then_verify_reports_truncation(
    chained: Lake,
) -> None:
    # Versions: 0 (seq 0-4), 1 (seq 5-9), 2 (seq 10-11). An attacker rolls back with Delta's own restore.
    DeltaTable(chained.uri(Zone.AUDIT, "events")).restore(1)

    report = _new_log(chained).verify()

    assert (report.ok, report.first_bad_seq, report.last_seq) == (False, 10, 9)
    assert "truncated after seq 9" in report.reason


# head and key tampering -------------------------------------------------------------------------------

def _resign(rows: list[dict[str, Any]], key: bytes, key_ref: str | None = None) -> list[dict[str, Any]]:
    for row in rows:
        row["key_ref"] = key_ref or row["key_ref"]
        row["signature"] = codec.sign_head(key, row["seq"], row["hash"], row["key_ref"], row["signed_at"])
    return rows


def _forge_signature(lake: Lake) -> None:
    heads = _rows(lake, "heads")
    heads[1]["signature"] = "0" * 64
    _overwrite(lake, "heads", heads, HEADS_SCHEMA)


def _move_head(lake: Lake) -> None:
    heads = _rows(lake, "heads")
    heads[1]["hash"] = _rows(lake)[8]["hash"]  # claim seq 9 had seq 8's hash, without re-signing
    _overwrite(lake, "heads", heads, HEADS_SCHEMA)


def _forge_extra_head(lake: Lake) -> None:
    heads = _rows(lake, "heads")
    forged = {**heads[-1], "seq": 40, "signature": "ab" * 32}
    _overwrite(lake, "heads", [*heads, forged], HEADS_SCHEMA)


def _resign_with_wrong_key(lake: Lake) -> None:
    _overwrite(lake, "heads", _resign(_rows(lake, "heads"), b"k" * 32), HEADS_SCHEMA)


def _swap_in_foreign_key(lake: Lake) -> None:
    # The attacker's own provider wraps a key; the record and every head are made consistent with it.
    foreign = FakeKeyProvider(OTHER_MASTER).generate_data_key("medguard-audit")
    key_ref = codec.key_ref("medguard-audit", foreign.plaintext)
    record = {"key_ref": key_ref, "kek_name": "medguard-audit", "wrapped": foreign.wrapped, "created_at": START}
    _overwrite(lake, "signing_keys", [record], SIGNING_KEYS_SCHEMA)
    _overwrite(lake, "heads", _resign(_rows(lake, "heads"), foreign.plaintext, key_ref), HEADS_SCHEMA)


def _alter_key_record(lake: Lake) -> None:
    records = lake.read_arrow(Zone.AUDIT, "signing_keys").to_pylist()
    records[0]["wrapped"] = FakeKeyProvider(MASTER).generate_data_key("medguard-audit").wrapped
    _overwrite(lake, "signing_keys", records, SIGNING_KEYS_SCHEMA)


def _drop_key_record(lake: Lake) -> None:
    _overwrite(lake, "signing_keys", [], SIGNING_KEYS_SCHEMA)


HEAD_TAMPERING = [
    pytest.param(_forge_signature, 9, "bad signature", id="forge-head-signature"),
    pytest.param(_move_head, 9, "bad signature", id="change-head-hash"),
    pytest.param(_forge_extra_head, 40, "bad signature", id="forge-extra-head"),
    pytest.param(_resign_with_wrong_key, 4, "bad signature", id="wrong-signing-key"),
    pytest.param(_swap_in_foreign_key, 4, "does not unwrap", id="foreign-signing-key"),
    pytest.param(_alter_key_record, 4, "was altered", id="altered-key-record"),
    pytest.param(_drop_key_record, 4, "is unknown", id="deleted-key-record"),
]


@pytest.mark.parametrize(("tamper", "first_bad", "why"), HEAD_TAMPERING)
def test_when_heads_or_the_signing_key_are_tampered_with_then_verify_names_the_head(
    chained: Lake, tamper: Callable[[Lake], None], first_bad: int, why: str
) -> None:
    tamper(chained)

    report = _new_log(chained).verify()

    assert (report.ok, report.first_bad_seq) == (False, first_bad), report.reason
    assert why in report.reason


# intact logs ------------------------------------------------------------------------------------------

def test_when_the_log_is_untouched_then_verify_passes_and_events_read_back_as_recorded(chained: Lake) -> None:
    log = _new_log(chained)

    report = log.verify()
    records = log.events()

    assert report.ok, report.reason
    assert (report.events, report.heads, report.last_seq, report.last_signed_seq) == (EVENTS, 3, 11, 11)
    assert report.summary() == "audit log intact: 12 events, signed to seq 11"
    assert [r.seq for r in records] == list(range(EVENTS))
    assert [replace(r.event, time=None) for r in records] == [_event(i) for i in range(EVENTS)]
    assert records[0].prev_hash == codec.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert [h.seq for h in log.heads()] == [4, 9, 11]


def test_when_rows_are_only_reordered_in_storage_then_verify_passes(chained: Lake) -> None:
    _overwrite(chained, "events", list(reversed(_rows(chained))), EVENTS_SCHEMA)

    assert _new_log(chained).verify().ok


def test_when_the_log_is_empty_then_verify_passes_and_sign_head_returns_none(lake: Lake) -> None:
    log = _new_log(lake)

    report = log.verify()

    assert (report.ok, report.events, report.last_seq) == (True, 0, None)
    assert log.sign_head() is None
    assert log.events() == []


def test_when_events_are_recorded_one_by_one_then_seqs_are_gap_free_and_every_commit_is_signed(lake: Lake) -> None:
    clock = TickingClock()
    log = AuditLog(lake, FakeKeyProvider(MASTER), clock=clock)

    seqs = [log.record(_event(i)) for i in range(9)]

    assert seqs == list(range(9))
    assert [h.seq for h in log.heads()] == list(range(9))
    assert log.anchor.read().seq == 8
    times = [r.event.time for r in log.events()]
    assert times == sorted(set(times)) and times[0] > START and times[-1] <= clock.now  # stamped by the clock
    assert log.verify().ok


def test_when_a_second_log_object_writes_then_it_continues_the_same_chain(chained: Lake) -> None:
    provider = FakeKeyProvider(MASTER)
    log = AuditLog(chained, provider, sign_every=SIGN_EVERY)

    assert log.record_many([_event(20), _event(21), _event(22)]) == [12, 13, 14]
    assert [h.seq for h in log.heads()] == [4, 9, 11, 14]
    assert provider.data_keys_generated == 0  # it unwrapped the stored signing key instead of making another
    assert log.verify().ok


def test_when_someone_commits_behind_the_writers_back_then_its_cached_head_is_not_trusted(chained: Lake) -> None:
    log = _new_log(chained, sign_every=1)
    assert log.record(_event(12)) == 12  # the writer now caches head 12
    last = _rows(chained)[-1]
    outsider = _rehash({**last, "seq": 13, "prev_hash": last["hash"], "principal": "svc:other-tool"})
    chained.append(Zone.AUDIT, "events", pa.Table.from_pylist([outsider], schema=EVENTS_SCHEMA))

    assert log.record(_event(14)) == 14
    assert log.verify().ok


def test_when_the_head_is_already_signed_then_sign_head_adds_nothing(chained: Lake) -> None:
    log = _new_log(chained)

    head = log.sign_head()

    assert head is not None and head.seq == 11
    assert len(log.heads()) == 3


def test_when_events_follow_the_last_signed_head_then_verify_refuses_the_unsigned_tail(chained: Lake) -> None:
    log = _new_log(chained, sign_every=0)  # a writer that stopped before signing, or one outside the log
    log.record(_event(30))
    log.record(_event(31))

    report = log.verify()

    assert (report.ok, report.last_seq, report.last_signed_seq, report.first_bad_seq) == (False, 13, 11, 12)
    assert "events 12..13 follow the last signed head (seq 11) unsigned" in report.reason
    log.sign_head()  # once checked, signing them closes the gap
    assert log.verify().ok


def test_when_the_signing_key_is_stored_then_only_its_wrapped_form_reaches_disk(lake: Lake) -> None:
    provider = FakeKeyProvider(MASTER)
    log = AuditLog(lake, provider, sign_every=1)
    log.record(_event(0))
    record = lake.read_arrow(Zone.AUDIT, "signing_keys").to_pylist()[0]
    plaintext = provider.unwrap(record["kek_name"], record["wrapped"])

    stored = b"".join(p.read_bytes() for p in Path(lake.root).rglob("*") if p.is_file())

    assert record["kek_name"] == "medguard-audit"
    assert plaintext not in stored and plaintext.hex().encode() not in stored
    assert provider.data_keys_generated == 1


def test_when_the_audit_kek_is_rotated_and_old_versions_retired_then_rewrapped_heads_still_verify(
    tmp_path: Path, chained: Lake
) -> None:
    from storage_security.keys.keyring import LocalKeyring

    keyring = LocalKeyring.init(tmp_path / "keyring.json", LocalKeyring.generate_master_key())
    log = AuditLog(chained, keyring, sign_every=SIGN_EVERY)
    _drop_key_record(chained)
    _overwrite(chained, "heads", [], HEADS_SCHEMA)  # start the template's heads afresh under this keyring
    log.sign_head()
    keyring.rotate("medguard-audit")

    assert log.rewrap_signing_keys() == 1
    keyring.set_min_decryption_version("medguard-audit", 2)

    record = chained.read_arrow(Zone.AUDIT, "signing_keys").to_pylist()[0]
    assert record["wrapped"].startswith("keyring:v2:")
    assert AuditLog(chained, keyring).verify().ok
    assert log.record_many(_event(i) for i in range(5)) == [12, 13, 14, 15, 16]
    assert AuditLog(chained, keyring).verify().ok


def test_when_the_key_record_was_altered_then_a_writer_refuses_to_sign(chained: Lake) -> None:
    from pipeline.errors import AuditIntegrityError

    _alter_key_record(chained)

    with pytest.raises(AuditIntegrityError, match="was altered"):
        _new_log(chained).record_many(_event(i) for i in range(5))


def test_when_the_provider_is_unreachable_then_verify_raises_rather_than_reporting_tampering(chained: Lake) -> None:
    class Down(FakeKeyProvider):
        def unwrap(self, key_name: str, wrapped: str) -> bytes:
            raise KeyProviderUnavailableError("keyring unreachable")

    with pytest.raises(KeyProviderUnavailableError):
        AuditLog(chained, Down(MASTER)).verify()


def test_when_a_log_holds_a_key_then_it_refuses_pickling_and_hides_the_key_in_repr(chained: Lake) -> None:
    log = _new_log(chained)
    log.record(_event(40))  # signs a head: the key is now unwrapped in memory
    record = chained.read_arrow(Zone.AUDIT, "signing_keys").to_pylist()[0]
    key = FakeKeyProvider(MASTER).unwrap(record["kek_name"], record["wrapped"])

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(log)
    assert key.hex() not in repr(log) and repr(key) not in repr(log)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"action": "teleport"}, ValueError, id="unknown-action"),
        pytest.param({"zone": "lake"}, ValueError, id="unknown-zone"),
        pytest.param({"decision": "maybe"}, ValueError, id="unknown-decision"),
        pytest.param({"principal": " "}, ValueError, id="no-principal"),
        pytest.param({"time": datetime(2025, 1, 1)}, ValueError, id="naive-time"),
        pytest.param({"row_count": -1}, ValueError, id="negative-count"),
        pytest.param({"row_keys": ["pk"] * (MAX_ROW_KEYS + 1)}, ValueError, id="too-many-row-keys"),
        pytest.param({"details": {"score": float("nan")}}, ValueError, id="nan-in-details"),
        pytest.param({"details": {1: "x"}}, ValueError, id="non-string-detail-key"),
        pytest.param({"columns": "mrn"}, TypeError, id="columns-as-a-string"),
        pytest.param({"details": {"when": datetime.now(UTC)}}, TypeError, id="unencodable-details"),
    ],
)
def test_when_an_event_is_malformed_then_it_is_refused_at_construction(kwargs: dict[str, Any],
                                                                      error: type[Exception]) -> None:
    with pytest.raises(error):
        AuditEvent(**{"principal": "user:a", "action": "read", **kwargs})


def test_when_the_clock_is_naive_then_record_refuses_and_writes_nothing(lake: Lake) -> None:
    log = AuditLog(lake, FakeKeyProvider(MASTER), clock=lambda: datetime(2025, 1, 1))

    with pytest.raises(ValueError, match="timezone-aware"):
        log.record(_event(0))
    assert not lake.exists(Zone.AUDIT, "events")


def test_when_the_lock_is_held_elsewhere_then_a_writer_times_out_with_a_storage_error(lake: Lake) -> None:
    from storage_security._locks import exclusive_lock

    log = _new_log(lake, lock_timeout=0.2)
    with exclusive_lock(log._lock_path, timeout=1), pytest.raises(StorageError, match="timed out"):
        log.record(_event(0))


# concurrent writers -----------------------------------------------------------------------------------

_PROCESSES = 4
_EVENTS_EACH = 25


@pytest.mark.integration
def test_when_processes_record_concurrently_then_the_chain_neither_forks_nor_loses_events(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # delta-rs panics after fork: spawn. The children import the worker module through the parent's sys.path.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    workers = importlib.import_module("_audit_workers")
    ctx = multiprocessing.get_context("spawn")

    with ctx.Pool(_PROCESSES, initializer=workers.start_together, initargs=(ctx.Barrier(_PROCESSES),)) as pool:
        jobs = [pool.apply_async(workers.record_events, (lake.root, str(lake.settings.home), MASTER, w,
                                                         _EVENTS_EACH, 10)) for w in range(_PROCESSES)]
        seqs = [job.get(timeout=120) for job in jobs]

    total = _PROCESSES * _EVENTS_EACH
    assert sorted(s for chunk in seqs for s in chunk) == list(range(total))
    assert all(chunk == sorted(chunk) for chunk in seqs)
    log = _new_log(lake)
    records = log.events()
    assert [r.seq for r in records] == list(range(total))
    by_worker = {w: [r.event.details["i"] for r in records if r.event.details["worker"] == w]
                 for w in range(_PROCESSES)}
    assert by_worker == {w: list(range(_EVENTS_EACH)) for w in range(_PROCESSES)}
    report = log.verify()
    assert report.ok, report.reason
    assert report.last_signed_seq == total - 1
    assert len(lake.read_arrow(Zone.AUDIT, "signing_keys")) == 1  # one key, however many writers raced


# command line -----------------------------------------------------------------------------------------

@pytest.fixture
def cli(chained: Lake, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``medguard audit verify`` in-process against the copied log, with the fake provider."""
    from pipeline import cli as spine

    monkeypatch.setattr("storage_security.keys.providers.provider_from_settings",
                        lambda settings, role=None: FakeKeyProvider(MASTER))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", chained.root)
    get_settings.cache_clear()

    def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["medguard", "audit", "verify", *args])
        with pytest.raises(SystemExit) as exit_:
            spine.main()
        out, err = capsys.readouterr()
        return int(exit_.value.code or 0), out, err

    yield run


def test_when_the_log_is_intact_then_the_cli_exits_zero(cli: Callable[..., tuple[int, str, str]],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys)
    assert (code, out.strip(), err) == (0, "audit log intact: 12 events, signed to seq 11", "")

    code, out, _ = cli(capsys, "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["events"], report["first_bad_seq"]) == (0, True, EVENTS, None)


def test_when_the_log_is_tampered_then_the_cli_exits_one_naming_the_first_bad_seq(
    chained: Lake, cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _overwrite(chained, "events", _delete(6)(_rows(chained)), EVENTS_SCHEMA)

    code, out, err = cli(capsys)
    assert code == 1
    assert err == "medguard: error: audit log tampered: first bad event seq 6: seq 6 is missing (deleted event)\n"

    code, out, err = cli(capsys, "--json")
    assert code == 1
    assert json.loads(out)["first_bad_seq"] == 6
    assert err.count("\n") == 1


@pytest.mark.e2e
def test_when_medguard_audit_verify_runs_with_the_keyring_then_exit_status_and_stderr_tell_the_truth(
    tmp_path: Path, lake: Lake
) -> None:
    from storage_security.keys.keyring import LocalKeyring, encode_master_key

    master = LocalKeyring.generate_master_key()
    keyring = LocalKeyring.init(tmp_path / "keyring.json", master)
    log = AuditLog(lake, keyring, sign_every=SIGN_EVERY)
    log.record_many(_event(i) for i in range(7))
    env = {**os.environ, "MEDGUARD_KEY_PROVIDER": "keyring", "MEDGUARD_KEYRING__PATH": str(keyring.path),
           "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master), "MEDGUARD_LAKE_ROOT": lake.root}
    medguard = [str(Path(sys.executable).parent / "medguard"), "audit", "verify"]

    intact = subprocess.run(medguard, env=env, capture_output=True, text=True, timeout=120)
    _overwrite(lake, "events", _set("purpose", "research")(_rows(lake)), EVENTS_SCHEMA)
    tampered = subprocess.run([*medguard, "--json"], env=env, capture_output=True, text=True, timeout=120)

    assert (intact.returncode, intact.stdout, intact.stderr) == (
        0, "audit log intact: 7 events, signed to seq 6\n", "")
    assert tampered.returncode == 1
    assert tampered.stderr == ("medguard: error: audit log tampered: first bad event seq 6: changed: the event's "
                               "content does not match its hash\n")
    assert json.loads(tampered.stdout)["first_bad_seq"] == 6
