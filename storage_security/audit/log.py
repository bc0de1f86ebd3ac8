"""The tamper-evident audit log: hash-chained events in the ``audit`` zone, a signed head per commit, anchored.

Every read, write, decrypt, encryption, policy decision and key operation is one :class:`AuditEvent`.
:class:`AuditLog` appends events to ``audit/events`` and signs the chain head into ``audit/heads``;
:meth:`AuditLog.verify` (``medguard audit verify``) names the first bad event after any change, deletion,
insertion, reordering or truncation.

**No PHI in events.** An event names tables, column *names*, row counts and row-key *pseudonyms* (keyed HMACs,
never MRNs or names), a purpose and a reason. Never put a cell value, a patient identifier or free text copied
from a record into any field, ``details`` included: the audit zone is not encrypted and is read by auditors.

Tables (all in the ``audit`` zone):

- ``events``: one row per event: ``seq`` (0, 1, 2, … without gaps), ``prev_hash`` (the previous event's
  ``hash``; 64 zeros for seq 0), ``hash`` (SHA-256 over a canonical JSON of seq, prev_hash and every event
  field; see :mod:`storage_security.audit._codec`), then the event's fields.
- ``heads``: signed chain heads ``(seq, hash, signature, key_ref, signed_at)``; ``signature`` is
  HMAC-SHA256 over (seq, hash, key_ref, signed_at). Every writer's commit ends with one signed head over its
  last event (one signature per commit, not per event), a batch holding a security-relevant event (break-glass,
  a deny, a key operation, a shred) is always signed, and :meth:`AuditLog.sign_head` signs on demand.
- ``alerts``: the activity monitor's alerts (:mod:`storage_security.audit.monitoring`); each stored alert is
  also an ``alert`` event carrying the alert's id and a digest of its row, so an alert deleted or altered in
  ``alerts`` (or one added outside the monitor) is named by :meth:`AuditLog.verify` like any other event.
- ``signing_keys``: the HMAC key, **wrapped only**: ``(key_ref, kek_name, wrapped, created_at)``. It is a data
  key generated once from the key provider under its own KEK, ``medguard-audit`` (apart from the data KEK, so
  data-key rotation and retirement never touch it); it is unwrapped in memory to sign and verify. Keeping it in
  the lake (not under ``MEDGUARD_HOME``) keeps the key with the log it signs. ``key_ref`` is the KEK name and a
  one-way digest of the key itself, so a swapped key record is noticed and re-wrapping
  (:meth:`AuditLog.rewrap_signing_keys`, after rotating the KEK) changes nothing else.

Concurrency: appending means read head → hash → append, which must not interleave between writers, or two
events would get the same seq (a forked chain). On a local lake, writers (threads, processes, parallel Airflow
tasks on one machine) take an exclusive ``flock`` on ``$MEDGUARD_HOME/locks/audit-<lake id>.lock`` around it.
That lock does not reach across machines: on object storage (S3, ABFS, GCS) run a single audit-writer service
that every task sends events to, or commit through Delta with a conflict check on the head row; this class
serves a single machine. The verifier reads heads first and events second, so it never mistakes a writer
caught in between for truncation.

**The anchor.** After each signed head the writer copies it outside the lake (:mod:`storage_security.audit._anchor`:
a KV v2 secret only the ``medguard-audit-anchor`` role writes, on the local OpenBao; else a 0600 file under
``$MEDGUARD_HOME/audit-anchors``). It moves forward only: a writer that finds the
lake no longer holding the anchored head (the tail was cut or rewritten behind its back) keeps the old anchor
and raises :class:`~pipeline.errors.AuditIntegrityError` after recording its events.

What verification can and cannot see: a changed, deleted, inserted or reordered event breaks the chain at that
seq; an attacker who also recomputes every later hash is caught by the next signed head (reported as the
first seq after the last head that still matches); a tail cut off after a signed head (``Lake.overwrite`` or a
Delta restore to an older version) is reported as truncation. Events after the last signed head are refused
(every commit is signed, so an unsigned tail is events deleted with their heads, ``audit/heads`` emptied, or
events appended outside the log). An attacker who deletes the newest events *and* their heads, or empties
``heads`` and rewrites the whole chain, is caught by the anchor: ahead of the log, or no longer matching it.
Forging a head needs the key provider. Not seen: well-chained events appended while no writer runs are signed
over by the next writer (they can add to the record, not remove from it); whoever can rewrite both the lake
and the anchor (the account running medguard, with its key provider) can still cut the tail.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import AuditIntegrityError, DecryptionError
from pipeline.lake import AccessHook, CommitInfo, Lake, LakeAccess, Zone
from storage_security._locks import exclusive_lock
from storage_security.audit import _codec as codec
from storage_security.audit._anchor import AnchoredHead, HeadAnchor, default_anchor
from storage_security.audit._head_cache import HeadCache
from storage_security.audit.redact import scrub_identifiers
from storage_security.keys.base import KeyProvider

EVENTS_TABLE = "events"
HEADS_TABLE = "heads"
SIGNING_KEYS_TABLE = "signing_keys"
ALERTS_TABLE = "alerts"
DEFAULT_KEY_NAME = "medguard-audit"
# 1: every commit ends with a signed head (verify refuses an unsigned tail, so anything else is for tests).
DEFAULT_SIGN_EVERY = 1
# Row keys are pseudonyms; past this many an event should carry a count (and the batch id in details).
MAX_ROW_KEYS = 1000

EVENTS_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("prev_hash", pa.string()),
    ("hash", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("principal", pa.string()),
    ("action", pa.string()),
    ("zone", pa.string()),
    ("table_name", pa.string()),
    ("columns", pa.list_(pa.string())),
    ("row_count", pa.int64()),
    ("row_keys", pa.list_(pa.string())),
    ("decision", pa.string()),
    ("purpose", pa.string()),
    ("reason", pa.string()),
    ("dag_run", pa.string()),
    ("details", pa.string()),
])
HEADS_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("hash", pa.string()),
    ("signature", pa.string()),
    ("key_ref", pa.string()),
    ("signed_at", pa.timestamp("us", tz="UTC")),
])
SIGNING_KEYS_SCHEMA = pa.schema([
    ("key_ref", pa.string()),
    ("kek_name", pa.string()),
    ("wrapped", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])
_WRITER = "svc:medguard-audit"
# Commit extra fields longer than this stay out of access events (see AuditLog.access_hook).
_DETAIL_CHARS = 200


class AuditAction(StrEnum):
    """What an event records."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REENCRYPT = "reencrypt"
    POLICY_DECISION = "policy_decision"
    BREAK_GLASS = "break_glass"
    KEY_CREATE = "key_create"
    KEY_ROTATE = "key_rotate"
    KEY_REWRAP = "key_rewrap"
    KEY_RETIRE = "key_retire"
    KEY_SHRED = "key_shred"
    ALERT = "alert"
    # One call to a served front (the HTTP API, CDS Hooks, the pgwire endpoint), accepted or refused.
    REQUEST = "request"
    # ``medguard backup create|verify|restore``: what was backed up or restored, never its contents.
    BACKUP = "backup"
    RESTORE = "restore"


# A batch holding one of these is signed whatever ``sign_every`` says (a deny is security-relevant too).
SECURITY_ACTIONS = frozenset({AuditAction.BREAK_GLASS, AuditAction.KEY_CREATE, AuditAction.KEY_ROTATE,
                              AuditAction.KEY_REWRAP, AuditAction.KEY_RETIRE, AuditAction.KEY_SHRED,
                              AuditAction.ALERT})


class Decision(StrEnum):
    """The outcome of a policy decision or an attempted operation."""

    ALLOW = "allow"
    DENY = "deny"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditEvent:
    """One audited action. Holds no PHI: column names, counts and row-key pseudonyms only.

    Args:
        principal: who acted, e.g. ``user:alice`` or ``svc:deidentify``.
        action: an :class:`AuditAction` (or its value).
        zone: the lake zone touched, if any.
        table_name: the table touched, if any.
        columns: names of the columns read, written, encrypted or decrypted.
        row_count: how many rows were involved.
        row_keys: pseudonymised row keys (keyed HMACs), at most :data:`MAX_ROW_KEYS`; never raw identifiers.
        decision: ``allow``/``deny`` for policy decisions and refused operations.
        purpose: purpose of use (e.g. ``treatment``, ``research``).
        reason: free text from the caller (break-glass justification, denial rule); no PHI.
        dag_run: the Airflow DAG run id, when run from a DAG.
        details: further JSON-serialisable facts (key name and version, batch id, policy id); no PHI.
        time: when it happened (timezone-aware); the log's clock fills it in when omitted.

    Raises:
        ValueError: an unknown action, zone or decision, a naive time, a negative count, too many row keys,
            or details that are not canonical JSON (NaN, non-string keys).
        TypeError: a field of the wrong type.
    """

    principal: str
    action: AuditAction | str
    zone: Zone | str | None = None
    table_name: str | None = None
    columns: Sequence[str] = ()
    row_count: int | None = None
    row_keys: Sequence[str] = ()
    decision: Decision | str | None = None
    purpose: str = "unspecified"
    reason: str | None = None
    dag_run: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    time: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.principal, str) or not self.principal.strip():
            raise ValueError("an audit event needs a principal (who acted)")
        set_ = object.__setattr__
        set_(self, "action", AuditAction(self.action))
        if self.zone is not None:
            set_(self, "zone", Zone(self.zone))
        if self.decision is not None:
            set_(self, "decision", Decision(self.decision))
        for name in ("columns", "row_keys"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise TypeError(f"{name} must be a sequence of strings, not {value!r}")
            set_(self, name, tuple(value))
        if len(self.row_keys) > MAX_ROW_KEYS:
            raise ValueError(f"{len(self.row_keys)} row keys in one event (at most {MAX_ROW_KEYS}): "
                             "record a row_count and a batch id in details instead")
        if self.row_count is not None and (isinstance(self.row_count, bool) or self.row_count < 0):
            raise ValueError(f"row_count must be a non-negative integer, not {self.row_count!r}")
        if not isinstance(self.details, Mapping):
            raise TypeError(f"details must be a mapping, not {type(self.details).__name__}")
        if not all(isinstance(key, str) for key in self.details):
            raise ValueError("details keys must be strings")
        codec.canonical_json(dict(self.details))  # fail now, not when the event is written
        if self.time is not None:
            codec.utc_text(self.time)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-ready values."""
        out = asdict(self)
        out.update(action=str(self.action), zone=self.zone and str(self.zone),
                   decision=self.decision and str(self.decision), columns=list(self.columns),
                   row_keys=list(self.row_keys), details=dict(self.details),
                   time=self.time and codec.utc_text(self.time))
        return out


@dataclass(frozen=True)
class AuditRecord:
    """An event as stored: its place in the chain and the hashes that link it."""

    seq: int
    prev_hash: str
    hash: str
    event: AuditEvent

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values."""
        return {"seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash, **self.event.to_dict()}


@dataclass(frozen=True)
class SignedHead:
    """A signed statement that the chain's event ``seq`` has hash ``hash``."""

    seq: int
    hash: str
    signature: str
    key_ref: str
    signed_at: datetime


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :meth:`AuditLog.verify`.

    ``first_bad_seq`` and ``reason`` are set when the log is not intact: the lowest sequence number that cannot
    be trusted and why.
    """

    ok: bool
    events: int
    heads: int
    last_seq: int | None
    last_signed_seq: int | None
    first_bad_seq: int | None = None
    reason: str | None = None
    anchored_seq: int | None = None

    def summary(self) -> str:
        """One line for people and logs."""
        if self.ok:
            if self.last_signed_seq is None:
                return f"audit log intact: {self.events} events, no signed head"
            unsigned = (self.last_seq or 0) - self.last_signed_seq
            tail = f" ({unsigned} unsigned)" if unsigned else ""
            return f"audit log intact: {self.events} events, signed to seq {self.last_signed_seq}{tail}"
        return f"audit log tampered: first bad event seq {self.first_bad_seq}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str


class AuditLog:
    """Append-only, hash-chained audit events in the ``audit`` zone of ``lake``, signed with a provider key.

    Args:
        lake: the lake whose ``audit`` zone holds the log.
        provider: the key provider holding the KEK that wraps the head-signing key.
        clock: returns the current time, timezone-aware (tests inject a fixed clock).
        sign_every: 1 (the default) signs the head at the end of every commit; n > 1 only when a write
            crosses a multiple of n events or holds a security-relevant event; 0 only on demand. Verification
            refuses an unsigned tail, so values other than 1 are for tests and bulk loads that end with
            :meth:`sign_head`.
        key_name: the KEK under which the signing key is wrapped.
        lock_timeout: seconds a writer waits for the inter-process lock before failing.
        anchor: where the latest signed head is kept outside the lake; by default the local OpenBao's KV
            anchor when it is the key provider, else a 0600 file ``$MEDGUARD_HOME/audit-anchors/<lake id>.json``
            (:func:`~storage_security.audit._anchor.default_anchor`).

    Raises:
        ValueError: ``sign_every`` negative, ``lock_timeout`` not positive, or an empty ``key_name``.
    """

    def __init__(self, lake: Lake, provider: KeyProvider, *, clock: Callable[[], datetime] = _utcnow,
                 sign_every: int = DEFAULT_SIGN_EVERY, key_name: str = DEFAULT_KEY_NAME,
                 lock_timeout: float = 60.0, anchor: HeadAnchor | None = None) -> None:
        if sign_every < 0:
            raise ValueError(f"sign_every must be >= 0 (0: sign only on demand), not {sign_every}")
        if lock_timeout <= 0:
            raise ValueError(f"lock_timeout must be positive, not {lock_timeout}")
        if not key_name:
            raise ValueError("key_name must name the KEK that wraps the audit signing key")
        self._lake = lake
        self._provider = provider
        self._clock = clock
        self._sign_every = sign_every
        self._key_name = key_name
        self._lock_timeout = lock_timeout
        lake_id = hashlib.sha256(lake.root.encode()).hexdigest()[:16]
        self.lake_id = lake_id  # names this log's lock and anchor
        self._lock_path = Path(lake.settings.home) / "locks" / f"audit-{lake_id}.lock"
        local_table = None if "://" in lake.root else Path(lake.uri(Zone.AUDIT, EVENTS_TABLE))
        self._head_cache = HeadCache(self._lock_path.with_suffix(".head.json"), local_table)
        self._signing_key: tuple[str, bytes] | None = None
        self._last_seq_seen: int | None = None
        self.anchor: HeadAnchor = anchor or default_anchor(lake.settings, provider, lake_id)

    def __repr__(self) -> str:
        return f"AuditLog(lake={self._lake.root!r}, key_name={self._key_name!r}, sign_every={self._sign_every})"

    def __getstate__(self) -> None:
        raise TypeError("AuditLog may hold the unwrapped signing key and cannot be pickled; build one per process")

    # writing -----------------------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> int:
        """Append one event; returns its sequence number.

        Raises:
            StorageError: the lock or the lake write failed (nothing was appended).
            CryptoError: a head was due and the key provider could not supply the signing key; the event
                itself is already appended.
        """
        return self.record_many([event])[0]

    def record_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append events in order as one Delta commit; returns their sequence numbers (consecutive).

        Raises:
            TypeError: something other than an :class:`AuditEvent` was passed.
            StorageError, CryptoError: as for :meth:`record`.
        """
        batch = list(events)
        for event in batch:
            if not isinstance(event, AuditEvent):
                raise TypeError(f"record takes AuditEvent objects, not {type(event).__name__}")
        if not batch:
            return []
        with exclusive_lock(self._lock_path, timeout=self._lock_timeout):
            head = self._read_head()
            first = 0 if head is None else head.seq + 1
            prev = codec.GENESIS_HASH if head is None else head.hash
            rows = []
            for offset, event in enumerate(batch):
                row = _event_row(first + offset, prev, event if event.time else replace(event, time=self._now()))
                prev = row["hash"]
                rows.append(row)
            last = first + len(rows) - 1
            commit = CommitInfo(principal=_WRITER, purpose="audit", dag_run=batch[0].dag_run,
                                extra={"audit.first_seq": str(first), "audit.last_seq": str(last)})
            version = self._lake.append(Zone.AUDIT, EVENTS_TABLE, pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA),
                                        commit=commit)
            self._head_cache.put(version, last, prev)
            self._last_seq_seen = last
            due = bool(self._sign_every) and (last + 1) // self._sign_every > first // self._sign_every
            if due or any(_security_relevant(event) for event in batch):
                self._sign(_Head(last, prev), after=head)
        return list(range(first, last + 1))

    def access_hook(self, principal: str) -> AccessHook:
        """A :class:`~pipeline.lake.Lake` access hook that records each reported read and write as one event.

        Give it to ``Lake(settings, on_access=...)`` or ``lake.with_access_hook(...)``. The event's principal is
        ``principal``; its action is ``read``, ``write`` or ``delete``; a write's purpose and DAG run come from its
        commit. Details name the operation, the version, the commit's batch id and those of its ``extra`` fields
        short enough to be facts rather than documents (at most :data:`_DETAIL_CHARS` characters; longer ones,
        such as a whole report, stay in the commit's metadata). Lake reports names and counts only, no values.

        Raises:
            ValueError: an empty principal.
        """
        if not isinstance(principal, str) or not principal.strip():
            raise ValueError("an access hook needs the principal its events are recorded as")

        def record(access: LakeAccess) -> None:
            commit = access.commit
            details: dict[str, Any] = {"operation": access.operation,
                                       "version": access.version if access.version is not None else "latest"}
            if commit is not None:
                if commit.batch_id:
                    details["batch_id"] = commit.batch_id
                details.update({k: v for k, v in commit.extra.items() if len(v) <= _DETAIL_CHARS})
            details.update(access.details)
            self.record(AuditEvent(principal=principal, action=AuditAction(access.action), zone=access.zone,
                                   table_name=access.table, columns=access.columns, row_count=access.rows,
                                   decision=Decision.ALLOW, purpose=commit.purpose if commit else "unspecified",
                                   dag_run=commit.dag_run if commit else None, details=details))

        return record

    def sign_head(self) -> SignedHead | None:
        """Sign the current head now (if it is not signed already) and anchor it; None while the log is empty.

        Raises:
            StorageError: the lock or a lake read/write failed, or the anchor could not be written.
            CryptoError: the key provider could not create or unwrap the signing key.
            AuditIntegrityError: the lake no longer holds the anchored head (the anchor is kept).
        """
        with exclusive_lock(self._lock_path, timeout=self._lock_timeout):
            head = self._read_head()
            if head is None:
                return None
            for signed in reversed(self._heads()):
                if signed.seq == head.seq and signed.hash == head.hash:
                    self._advance_anchor(signed, after=None)
                    return signed
            return self._sign(head, after=None)

    def rewrap_signing_keys(self) -> int:
        """Re-wrap the stored signing key(s) under their KEK's latest version; returns how many were re-wrapped.

        Run it after rotating the audit KEK and before raising its ``min_decryption_version``, as ``medguard keys
        rotate`` does for data keys; the keys themselves (and so every signature) stay the same.

        Raises:
            StorageError: the lock or the lake failed. CryptoError: the provider refused to re-wrap.
        """
        with exclusive_lock(self._lock_path, timeout=self._lock_timeout):
            table = self._read(SIGNING_KEYS_TABLE)
            if table is None or table.num_rows == 0:
                return 0
            rows = table.to_pylist()
            for kek_name in sorted({row["kek_name"] for row in rows}):
                mine = [row for row in rows if row["kek_name"] == kek_name]
                for row, wrapped in zip(mine, self._provider.rewrap(kek_name, [r["wrapped"] for r in mine]),
                                        strict=True):
                    row["wrapped"] = wrapped
            self._lake.overwrite(Zone.AUDIT, SIGNING_KEYS_TABLE, pa.Table.from_pylist(rows, schema=SIGNING_KEYS_SCHEMA),
                                 commit=CommitInfo(principal=_WRITER, purpose="audit signing key rewrap"))
            self._signing_key = None
            return len(rows)

    # reading -----------------------------------------------------------------------------------------

    def events(self) -> list[AuditRecord]:
        """Every stored event in sequence order, as stored (run :meth:`verify` to know it is authentic)."""
        return [_record(row) for row in self._event_rows()]

    def heads(self) -> list[SignedHead]:
        """Every signed head in sequence order."""
        return self._heads()

    def verify(self) -> VerifyReport:
        """Check the whole chain and every signed head; report the first bad event.

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider cannot be asked to unwrap the
                signing key (the log's integrity is then unknown, not bad).
            StorageError: a table cannot be read.
        """
        # One consistent snapshot: under the writer lock (held only for these reads of the Delta logs and the
        # anchor) no writer is between its events, its head and its anchor. The tables are read at those versions.
        with exclusive_lock(self._lock_path, timeout=self._lock_timeout):
            versions = {table: self._lake.version(Zone.AUDIT, table) if self._lake.exists(Zone.AUDIT, table)
                        else None for table in (EVENTS_TABLE, HEADS_TABLE, ALERTS_TABLE)}
            anchored = self.anchor.read()
        heads = self._heads(versions[HEADS_TABLE])
        keys = self._key_records()
        rows = self._event_rows(versions[EVENTS_TABLE])
        last_seq = rows[-1]["seq"] if rows else None
        last_signed = max((head.seq for head in heads if head.seq is not None), default=None)
        chain_failure, verified = _check_chain(rows)
        head_failure = self._check_heads(heads, keys, verified, last_seq)
        anchor_failure = self._check_anchor(anchored, keys, verified, last_seq, heads)
        failures = [f for f in (chain_failure, head_failure, anchor_failure) if f is not None]
        if not failures:
            # Only an intact chain is judged for what it lacks: its tail's signature and its alerts.
            failures = [f for f in (_check_tail(rows, last_seq, last_signed),
                                    self._check_alerts(rows, versions[ALERTS_TABLE])) if f is not None]
        common = {"events": len(rows), "heads": len(heads), "last_seq": last_seq, "last_signed_seq": last_signed,
                  "anchored_seq": anchored.seq if anchored else None}
        if not failures:
            return VerifyReport(ok=True, **common)
        bad_seq, reason = min(failures, key=lambda failure: failure[0])
        return VerifyReport(ok=False, first_bad_seq=bad_seq, reason=reason, **common)

    # helpers -----------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        moment = self._clock()
        codec.utc_text(moment)  # a naive clock is a bug: refuse it
        return moment.astimezone(UTC)

    def _read(self, table: str, **kwargs: Any) -> pa.Table | None:
        if not self._lake.exists(Zone.AUDIT, table):
            return None
        if kwargs.get("version", 0) is None:
            del kwargs["version"]
        return self._lake.read_arrow(Zone.AUDIT, table, **kwargs)

    def _read_head(self) -> _Head | None:
        cached = self._head_cache.get()
        if cached is not None:
            return _Head(*cached)
        found = None
        if self._last_seq_seen is not None:
            # Delta's file statistics skip every file below the last seq this log saw: a cheap read.
            found = self._read(EVENTS_TABLE, columns=["seq", "hash"], where=f"seq >= {int(self._last_seq_seen)}")
        if found is None or found.num_rows == 0:
            found = self._read(EVENTS_TABLE, columns=["seq", "hash"],
                               where="seq = (SELECT max(seq) FROM snapshot)")
        if found is None or found.num_rows == 0:
            return None
        top = max(found.to_pylist(), key=lambda row: row["seq"])
        return _Head(top["seq"], top["hash"])

    def _event_rows(self, version: int | None = None) -> list[dict[str, Any]]:
        table = self._read(EVENTS_TABLE, version=version)
        if table is None:
            return []
        rows = table.to_pylist()
        rows.sort(key=lambda row: (row.get("seq") is None, row.get("seq") or 0))
        return rows

    def _heads(self, version: int | None = None) -> list[SignedHead]:
        table = self._read(HEADS_TABLE, version=version)
        if table is None:
            return []
        heads = [SignedHead(**{name: row.get(name) for name in HEADS_SCHEMA.names}) for row in table.to_pylist()]
        return sorted(heads, key=lambda head: (head.seq is None, head.seq or 0, head.signed_at is None,
                                               head.signed_at or datetime.min.replace(tzinfo=UTC)))

    def _key_records(self) -> dict[str, dict[str, Any]]:
        table = self._read(SIGNING_KEYS_TABLE)
        return {} if table is None else {row["key_ref"]: row for row in table.to_pylist()}

    def _sign(self, head: _Head, *, after: _Head | None) -> SignedHead:
        """Sign ``head``, store it in ``heads`` and anchor it; ``after``: the head this writer appended after."""
        key_ref, key = self._current_signing_key()
        signed_at = self._now()
        signed = SignedHead(head.seq, head.hash, codec.sign_head(key, head.seq, head.hash, key_ref, signed_at),
                            key_ref, signed_at)
        self._lake.append(Zone.AUDIT, HEADS_TABLE, pa.Table.from_pylist([asdict(signed)], schema=HEADS_SCHEMA),
                          commit=CommitInfo(principal=_WRITER, purpose="audit", extra={"audit.head": str(head.seq)}))
        self._advance_anchor(signed, after=after)
        return signed

    def _advance_anchor(self, signed: SignedHead, *, after: _Head | None) -> None:
        """Move the anchor to ``signed`` unless the lake no longer holds the head anchored now (then keep it)."""
        current = self.anchor.read()
        if current is not None and (current.seq, current.hash) != (signed.seq, signed.hash):
            # The usual case costs nothing: this writer appended right after the anchored head.
            continues = after is not None and (after.seq, after.hash) == (current.seq, current.hash)
            if not continues and (current.seq > signed.seq or self._hash_at(current.seq) != current.hash):
                raise AuditIntegrityError(
                    f"the audit log no longer holds the head anchored at seq {current.seq} ({self.anchor.where}): "
                    "events were cut or rewritten outside the log; the anchor is kept, run `medguard audit verify`")
        self.anchor.write(AnchoredHead(signed.seq, signed.hash, signed.signature, signed.key_ref, signed.signed_at))

    def _hash_at(self, seq: int) -> str | None:
        found = self._read(EVENTS_TABLE, columns=["seq", "hash"], where=f"seq = {int(seq)}")
        rows = [] if found is None else found.to_pylist()
        return rows[0]["hash"] if len(rows) == 1 else None

    def _check_anchor(self, anchored: AnchoredHead | None, keys: dict[str, dict[str, Any]], verified: dict[int, str],
                      last_seq: int | None, heads: list[SignedHead]) -> tuple[int, str] | None:
        where = f"the head anchored outside the lake ({self.anchor.where})"
        if anchored is None:
            signed = [head.seq for head in heads if head.seq is not None]
            if not signed:
                return None  # an empty or never-signed log: _check_tail judges it
            return max(signed) + 1, (f"the log has signed heads up to seq {max(signed)} but no head is anchored "
                                     f"outside the lake ({self.anchor.where}): the anchor was deleted, or the log "
                                     "predates anchors (the next audited write or AuditLog.sign_head anchors it)")
        key = self._verification_key(anchored.key_ref, keys)
        if isinstance(key, str):
            return anchored.seq, f"{where} at seq {anchored.seq}: {key}"
        if not codec.head_signature_ok(key, anchored.seq, anchored.hash, anchored.key_ref, anchored.signed_at,
                                       anchored.signature):
            return anchored.seq, f"{where} at seq {anchored.seq} has a bad signature (forged anchor)"
        if last_seq is None or anchored.seq > last_seq:
            first = 0 if last_seq is None else last_seq + 1
            return first, (f"events {first}..{anchored.seq} are gone: {where} is at seq {anchored.seq} but the log "
                           f"ends at {'nothing' if last_seq is None else f'seq {last_seq}'} (events and their heads "
                           "cut off)")
        stored = verified.get(anchored.seq)
        if stored is None:
            return None  # the chain itself is broken before the anchored seq and reported by _check_chain
        if stored != anchored.hash:
            # The rewrite began after the last signed head that still matches the chain (if any does).
            matching = max((head.seq for head in heads if head.seq is not None and head.seq < anchored.seq
                            and verified.get(head.seq) == head.hash), default=-1)
            return matching + 1, (f"events {matching + 1}..{anchored.seq} were rewritten: seq {anchored.seq} no "
                                  f"longer matches {where}")
        return None

    def _check_alerts(self, rows: list[dict[str, Any]], version: int | None) -> tuple[int, str] | None:
        """Every stored alert has its ``alert`` event with the same digest, and every such event its alert."""
        chained: dict[str, tuple[int, str]] = {}
        for row in rows:
            if row.get("action") == AuditAction.ALERT.value and row.get("table_name") == ALERTS_TABLE:
                details = json.loads(row.get("details") or "{}")
                chained[str(details.get("alert_id"))] = (row["seq"], str(details.get("digest")))
        table = None if version is None else self._read(ALERTS_TABLE, version=version)
        stored = {} if table is None else {row.get("alert_id"): alert_digest(row) for row in table.to_pylist()}
        failures = []
        for alert_id, (seq, digest) in chained.items():
            if alert_id not in stored:
                failures.append((seq, f"alert {alert_id} (event seq {seq}) was deleted from audit/alerts"))
            elif stored[alert_id] != digest:
                failures.append((seq, f"alert {alert_id} (event seq {seq}) was altered in audit/alerts"))
        unchained = sorted(str(alert_id) for alert_id in stored if alert_id not in chained)
        if unchained:
            after = 0 if not rows else rows[-1]["seq"] + 1
            failures.append((after, f"{len(unchained)} alert(s) in audit/alerts have no audit event (added outside "
                                    f"the monitor, or stored before alerts were chained: once checked, "
                                    f"ActivityMonitor.chain_stored_alerts records them), e.g. {unchained[0]}"))
        return min(failures, default=None)

    def _current_signing_key(self) -> tuple[str, bytes]:
        # Called with the writer lock held, so two writers never both create a key.
        if self._signing_key is None:
            records = self._key_records()
            if records:
                record = max(records.values(), key=lambda row: row["created_at"])
                key = self._provider.unwrap(record["kek_name"], record["wrapped"])
                if codec.key_ref(record["kek_name"], key) != record["key_ref"]:
                    raise AuditIntegrityError(f"the record of audit signing key {record['key_ref']} was altered; "
                                              "refusing to sign with it")
                self._signing_key = (record["key_ref"], key)
            else:
                self._provider.ensure_key(self._key_name)
                data_key = self._provider.generate_data_key(self._key_name)
                key_ref = codec.key_ref(self._key_name, data_key.plaintext)
                row = {"key_ref": key_ref, "kek_name": self._key_name, "wrapped": data_key.wrapped,
                       "created_at": self._now()}
                self._lake.append(Zone.AUDIT, SIGNING_KEYS_TABLE,
                                  pa.Table.from_pylist([row], schema=SIGNING_KEYS_SCHEMA),
                                  commit=CommitInfo(principal=_WRITER, purpose="audit signing key"))
                self._signing_key = (key_ref, data_key.plaintext)
        return self._signing_key

    def _check_heads(self, heads: list[SignedHead], keys: dict[str, dict[str, Any]], verified: dict[int, str],
                     last_seq: int | None) -> tuple[int, str] | None:
        unwrapped: dict[str, bytes | str] = {}  # key_ref -> key, or why there is none
        last_matching = -1
        for head in heads:
            if None in (head.seq, head.hash, head.key_ref, head.signed_at):
                return head.seq or 0, f"a signed head at seq {head.seq} has empty fields (forged or altered head)"
            if head.key_ref not in unwrapped:
                unwrapped[head.key_ref] = self._verification_key(head.key_ref, keys)
            key = unwrapped[head.key_ref]
            if isinstance(key, str):
                return head.seq, f"signed head at seq {head.seq}: {key}"
            if not codec.head_signature_ok(key, head.seq, head.hash, head.key_ref, head.signed_at, head.signature):
                return head.seq, f"signed head at seq {head.seq} has a bad signature (forged or altered head)"
            if head.seq in verified:
                if verified[head.seq] != head.hash:
                    return last_matching + 1, (f"events {last_matching + 1}..{head.seq} were rewritten: seq "
                                               f"{head.seq} no longer matches its signed head")
                last_matching = head.seq
            elif last_seq is None or head.seq > last_seq:
                after = "no event remains" if last_seq is None else f"truncated after seq {last_seq}"
                return (0 if last_seq is None else last_seq + 1), (
                    f"{after}: the signed head at seq {head.seq} is no longer present (events cut off)")
        return None

    def _verification_key(self, key_ref: str, keys: dict[str, dict[str, Any]]) -> bytes | str:
        record = keys.get(key_ref)
        if record is None:
            return f"its signing key {key_ref} is unknown"
        try:
            key = self._provider.unwrap(record["kek_name"], record["wrapped"])
        except DecryptionError:
            return f"signing key {key_ref} does not unwrap with this key provider (forged or foreign key)"
        if codec.key_ref(record["kek_name"], key) != key_ref:
            return f"the record of signing key {key_ref} was altered"
        return key


def alert_digest(row: Mapping[str, Any]) -> str:
    """The SHA-256 of one stored alert row (every column), as its ``alert`` event carries it."""
    fields = {name: codec._plain(value) for name, value in row.items()}
    return hashlib.sha256(b"medguard-audit-alert-v1\x00" + codec.canonical_json(fields)).hexdigest()


def _security_relevant(event: AuditEvent) -> bool:
    return event.action in SECURITY_ACTIONS or event.decision == Decision.DENY


def _check_tail(rows: list[dict[str, Any]], last_seq: int | None, last_signed: int | None) -> tuple[int, str] | None:
    """Every commit ends with a signed head, so events after the last one are a gap in the signatures."""
    if last_seq is None or (last_signed is not None and last_signed >= last_seq):
        return None
    if last_signed is None:
        return 0, (f"no signed head covers events 0..{last_seq}: audit/heads was emptied, or the events were "
                   "written outside the log")
    return last_signed + 1, (f"events {last_signed + 1}..{last_seq} follow the last signed head (seq {last_signed}) "
                             "unsigned: their heads were deleted, they were appended outside the log, or a writer "
                             "stopped before signing (AuditLog.sign_head signs them once they are checked)")


def _event_row(seq: int, prev_hash: str, event: AuditEvent) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "prev_hash": prev_hash,
        "time": event.time.astimezone(UTC) if event.time else None,
        "principal": event.principal,
        "action": str(event.action),
        "zone": event.zone and str(event.zone),
        "table_name": event.table_name,
        "columns": list(event.columns),
        "row_count": event.row_count,
        "row_keys": list(event.row_keys),
        "decision": event.decision and str(event.decision),
        "purpose": event.purpose,
        "reason": scrub_identifiers(event.reason),  # a backstop: callers redact free text (audit.redact)
        "dag_run": event.dag_run,
        "details": codec.canonical_json(dict(event.details)).decode(),
    }
    row["hash"] = codec.event_hash(row)
    return row


def _record(row: dict[str, Any]) -> AuditRecord:
    event = AuditEvent(
        principal=row["principal"], action=row["action"], zone=row["zone"], table_name=row["table_name"],
        columns=tuple(row["columns"] or ()), row_count=row["row_count"], row_keys=tuple(row["row_keys"] or ()),
        decision=row["decision"], purpose=row["purpose"], reason=row["reason"], dag_run=row["dag_run"],
        details=json.loads(row["details"] or "{}"), time=row["time"],
    )
    return AuditRecord(seq=row["seq"], prev_hash=row["prev_hash"], hash=row["hash"], event=event)


def _check_chain(rows: list[dict[str, Any]]) -> tuple[tuple[int, str] | None, dict[int, str]]:
    """Walk events in seq order; returns the first failure (seq, why) and the hashes of the verified prefix."""
    counts = Counter(row.get("seq") for row in rows)
    duplicated = min((seq for seq, n in counts.items() if seq is not None and n > 1), default=None)
    verified: dict[int, str] = {}
    prev = codec.GENESIS_HASH
    for expected, row in enumerate(rows):
        seq = row.get("seq")
        if duplicated is not None and seq == duplicated:
            return (seq, f"seq {seq} appears {counts[seq]} times (inserted event)"), verified
        if seq is None or seq < expected:
            return (expected, f"an event with seq {seq} stands where seq {expected} belongs (inserted event)"), \
                verified
        if seq > expected:
            return (expected, f"seq {expected} is missing (deleted event)"), verified
        content_ok = codec.event_hash(row) == row.get("hash")
        if row.get("prev_hash") != prev:
            return _diagnose_link(seq, row, content_ok, verified), verified
        if not content_ok:
            return (seq, "changed: the event's content does not match its hash"), verified
        verified[seq] = row["hash"]
        prev = row["hash"]
    return None, verified


def _diagnose_link(seq: int, row: dict[str, Any], content_ok: bool, verified: dict[int, str]) -> tuple[int, str]:
    """Name the first bad seq when event ``seq`` does not link to its predecessor."""
    if seq == 0:
        return 0, "seq 0 does not start the chain: its prev_hash is not the genesis hash"
    links_to = next((earlier for earlier, digest in verified.items() if digest == row.get("prev_hash")), None)
    if links_to is not None:
        return links_to + 1, (f"inserted: seq {seq} links to seq {links_to}, so events {links_to + 1}.."
                              f"{seq - 1} were inserted")
    if content_ok:
        return seq - 1, (f"changed: seq {seq} links to a hash that seq {seq - 1} no longer has (seq {seq - 1} "
                         "was altered and re-hashed)")
    return seq, (f"seq {seq} does not link to seq {seq - 1} and does not match its hash (changed, reordered, "
                 "or an event before it was deleted)")
