"""The DEK store: the batch-scoped and pseudonym data keys, wrapped by their KEK, in one Delta table.

Lives at ``<lake root>/_keys/deks``, beside the zones rather than in one (:data:`pipeline.lake.SYSTEM_ZONE`): it
is key metadata, not data, and no zone listing, policy or analyst query should ever see it. It is read and
written through :class:`~pipeline.lake.Lake` like any table. Only wrapped keys are stored; a plaintext DEK
never reaches it. Patients' DEKs live in the patient key store
(:mod:`storage_security.keys.patient_keys`); records of scope ``patient`` here are those of lakes written with
one KEK per patient, until ``medguard keys migrate`` moves them.

Columns: ``key_id`` (hex, the key id inside each cell), ``kek_name``, ``wrapped`` (``vault:v<N>:…`` or
``keyring:v<N>:…``), ``table``, ``column``, ``scope`` (``batch`` | ``patient`` | ``pseudonym``), ``scope_key``
(the batch id, the patient pseudonym, or the pseudonym key's name), ``created_at``, ``retired``.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StorageError
from pipeline.lake import SYSTEM_ZONE, CommitInfo, Lake
from storage_security._locks import exclusive_lock

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.keys.base import KeyProvider

__all__ = ["SCOPES", "DekRecord", "DekStore", "RewrapReport", "check_scope_key", "sql_in_list", "store_lock"]

SCOPES = ("batch", "patient", "pseudonym")
_SCOPE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_KEY_ID = re.compile(r"^[0-9a-f]{2,64}$")
_WRAPPED_VERSION = re.compile(r"^[a-z][a-z0-9_-]*:v([0-9]{1,9}):")
# Vault refuses a batch_input of more than ~499 items with its default JSON limits.
REWRAP_CHUNK = 400
_LOOKUP_CHUNK = 2000
LOCK_TIMEOUT_SECONDS = 120.0

SCHEMA = pa.schema([
    pa.field("key_id", pa.string(), nullable=False),
    pa.field("kek_name", pa.string(), nullable=False),
    pa.field("wrapped", pa.string(), nullable=False),
    pa.field("table", pa.string(), nullable=False),
    pa.field("column", pa.string(), nullable=False),
    pa.field("scope", pa.string(), nullable=False),
    pa.field("scope_key", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("retired", pa.bool_(), nullable=False),
])


def check_scope_key(scope_key: str) -> str:
    """Validate a scope key (batch id, patient pseudonym, pseudonym key name); returns it.

    Raises:
        ValueError: not 1-100 characters of letters, digits, ``_`` and ``-`` (it names a KEK and sits in SQL).
    """
    if not isinstance(scope_key, str) or not _SCOPE_KEY.match(scope_key):
        raise ValueError(f"scope key {scope_key!r} must be 1-100 characters of letters, digits, '_' and '-'")
    return scope_key


def wrapped_version(wrapped: str) -> int | None:
    """The KEK version named by a wrapped DEK (``<provider>:v<N>:…``), or None when it names none."""
    match = _WRAPPED_VERSION.match(wrapped)
    return int(match.group(1)) if match else None


def sql_in_list(values: Iterable[str]) -> str:
    """The body of a SQL ``IN (…)`` list of string literals, quotes doubled: how the key stores select ids."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def store_lock(lake: Lake, table: str, *, timeout: float = LOCK_TIMEOUT_SECONDS
               ) -> Callable[[], AbstractContextManager[None]]:
    """What a key store table's writers enter: an inter-process lock beside the table on a local lake; on an object
    store (which has no file lock) one under ``$MEDGUARD_HOME/locks`` named by the lake, so the writers of one
    machine still exclude each other (writers on several machines need one writer of keys; see README)."""
    uri = lake.uri(SYSTEM_ZONE, table)
    if getattr(lake.settings, "lake_is_local", "://" not in uri):
        path = Path(uri).with_name(f".{table}.lock")
    else:
        lake_id = hashlib.sha256(lake.root.encode()).hexdigest()[:16]
        path = Path(lake.settings.home) / "locks" / f"keys-{lake_id}-{table}.lock"
    return lambda: exclusive_lock(path, timeout=timeout)


@dataclass(frozen=True)
class DekRecord:
    """One stored data key: its id, the KEK that wraps it, what it encrypts."""

    key_id: str
    kek_name: str
    wrapped: str
    table: str
    column: str
    scope: str
    scope_key: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    retired: bool = False

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise ValueError(f"key id {self.key_id!r} must be lowercase hex")
        if self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r} must be one of {SCOPES}")
        check_scope_key(self.scope_key)


@dataclass(frozen=True)
class RewrapReport:
    """What :meth:`DekStore.rewrap_all` did."""

    rewrapped: int
    already_current: int
    missing_kek: int
    keks: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DekStore:
    """Wrapped DEKs in a Delta table of the lake's system zone.

    Args:
        lake: the lake whose ``_keys`` zone holds the table; a path or URI stands for the root of a lake with
            the process's other settings (handy for tools and benchmarks).
        table: the table's name in that zone.
    """

    def __init__(self, lake: Lake | str | Path, *, table: str = "deks") -> None:
        if not isinstance(lake, Lake):
            from pipeline.settings import get_settings

            lake = Lake(get_settings().model_copy(update={"lake_root": str(lake).rstrip("/")}))
        self.lake = lake
        self.table = table
        self.uri = lake.uri(SYSTEM_ZONE, table)
        self._locked = store_lock(lake, table)

    @classmethod
    def from_settings(cls, settings: Settings) -> DekStore:
        """The DEK store of the lake of ``settings``: ``<lake root>/_keys/deks``."""
        return cls(Lake(settings))

    def __repr__(self) -> str:
        return f"DekStore(uri={self.uri!r})"

    # writes --------------------------------------------------------------------------------------------

    def put(self, records: Sequence[DekRecord], *, commit: CommitInfo | None = None) -> None:
        """Append records in one commit.

        Raises:
            StorageError: the write failed (callers must not use the keys then).
        """
        if not records:
            return
        table = pa.Table.from_pylist([asdict(r) for r in records], schema=SCHEMA)
        self.lake.append(SYSTEM_ZONE, self.table, table, commit=commit or CommitInfo(purpose="envelope-encryption"))

    def drop_scope(self, scope_key: str, *, scope: str | None = None, commit: CommitInfo | None = None) -> int:
        """Delete every record of ``scope_key`` (optionally only of one ``scope``); returns how many.

        Used for the per-patient records of lakes not yet migrated, whose KEK a shred destroys first: the
        records dropped here are then useless, and older versions of this table keep only keys wrapped under
        the destroyed KEK.
        """
        check_scope_key(scope_key)
        if not self.exists():
            return 0
        where = f"scope_key = '{scope_key}'"
        if scope is not None:
            if scope not in SCOPES:
                raise ValueError(f"scope {scope!r} must be one of {SCOPES}")
            where += f" AND scope = '{scope}'"
        with self._locked():
            return self.lake.delete(SYSTEM_ZONE, self.table, where=where,
                                    commit=commit or CommitInfo(purpose="crypto-shredding"))

    def drop_keys(self, key_ids: Iterable[str], *, commit: CommitInfo | None = None) -> int:
        """Delete the records of the given key ids (e.g. once ``keys migrate`` has moved them); returns how many."""
        ids = sorted({k for k in key_ids if isinstance(k, str) and _KEY_ID.match(k)})
        if not ids or not self.exists():
            return 0
        info = commit or CommitInfo(purpose="key-migration")
        dropped = 0
        with self._locked():
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                where = f"key_id IN ({sql_in_list(ids[start:start + _LOOKUP_CHUNK])})"
                dropped += self.lake.delete(SYSTEM_ZONE, self.table, where=where, commit=info)
        return dropped

    def retire(self, key_ids: Iterable[str], *, commit: CommitInfo | None = None) -> int:
        """Mark DEKs retired (no longer used for new cells; they still decrypt). Returns how many changed."""
        ids = [k for k in key_ids if isinstance(k, str) and _KEY_ID.match(k)]
        if not ids or not self.exists():
            return 0
        info = commit or CommitInfo(purpose="key-retirement")
        with self._locked():
            changed = [DekRecord(**{**asdict(r), "retired": True}) for r in self.get(ids).values() if not r.retired]
            self._update(changed, info)
        return len(changed)

    def rewrap_all(self, provider: KeyProvider, *, chunk_size: int = REWRAP_CHUNK,
                   commit: CommitInfo | None = None) -> RewrapReport:
        """Rewrap every stored DEK under its KEK's latest version, without touching any data.

        Idempotent and safe to re-run after an interruption: DEKs already under the latest version are
        skipped, each chunk is committed as it is done, and a row changed by someone else since it was read
        is left alone (the update matches on the old wrapped value). Records whose KEK no longer exists
        (shredded patients) are counted and skipped.

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError: from the provider; what was committed stays.
            StorageError: a write failed.
        """
        if not 1 <= chunk_size <= 499:
            raise ValueError("chunk_size must be 1 to 499 (Vault's batch_input limit)")
        by_kek: dict[str, list[DekRecord]] = defaultdict(list)
        for record in self.records():
            by_kek[record.kek_name].append(record)
        rewrapped = current = missing = 0
        info = commit or CommitInfo(purpose="key-rotation")
        for kek_name, records in sorted(by_kek.items()):
            if not provider.key_exists(kek_name):
                missing += len(records)
                continue
            latest = provider.versions(kek_name).latest
            stale = [r for r in records if wrapped_version(r.wrapped) != latest]
            current += len(records) - len(stale)
            for start in range(0, len(stale), chunk_size):
                chunk = stale[start:start + chunk_size]
                fresh = provider.rewrap(kek_name, [r.wrapped for r in chunk])
                rewrapped += self._replace_wrapped(chunk, fresh, info)
        return RewrapReport(rewrapped=rewrapped, already_current=current, missing_kek=missing, keks=len(by_kek))

    def _replace_wrapped(self, records: list[DekRecord], fresh: list[str], info: CommitInfo) -> int:
        if len(fresh) != len(records):
            raise StorageError(f"the key provider rewrapped {len(fresh)} of {len(records)} DEKs; nothing stored")
        with self._locked():
            # Only rows still as they were read: one dropped or rewrapped meanwhile is left alone, never restored.
            current = self.get(r.key_id for r in records)
            changed = [DekRecord(**{**asdict(current[r.key_id]), "wrapped": w})
                       for r, w in zip(records, fresh, strict=True)
                       if r.key_id in current and current[r.key_id].wrapped == r.wrapped]
            self._update(changed, info)
        return len(changed)

    def _update(self, records: list[DekRecord], info: CommitInfo) -> None:
        """Replace existing records by key id, in one commit (callers hold the lock and pass only present ids)."""
        if records:
            table = pa.Table.from_pylist([asdict(r) for r in records], schema=SCHEMA)
            self.lake.merge(SYSTEM_ZONE, self.table, table, keys=["key_id"], commit=info)

    # reads ---------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        """True once a DEK has been stored."""
        return self.lake.exists(SYSTEM_ZONE, self.table)

    def get(self, key_ids: Iterable[str]) -> dict[str, DekRecord]:
        """The records of the given key ids that exist (malformed ids are simply not found)."""
        ids = sorted({k for k in key_ids if isinstance(k, str) and _KEY_ID.match(k)})
        if not ids or not self.exists():
            return {}
        if len(ids) <= _LOOKUP_CHUNK:
            return {r.key_id: r for r in self._read(f"key_id IN ({sql_in_list(ids)})")}
        # Many ids (a cold de-identification of an unmigrated lake): one scan filtered in Arrow, not one per chunk.
        table = self.lake.read_arrow(SYSTEM_ZONE, self.table)
        table = table.filter(pc.is_in(table.column("key_id"), value_set=pa.array(ids, pa.string())))
        return {row["key_id"]: DekRecord(**row) for row in table.to_pylist()}

    def records(self, *, scope: str | None = None, scope_key: str | None = None) -> list[DekRecord]:
        """Stored records, optionally of one scope and/or scope key."""
        if not self.exists():
            return []
        clauses = []
        if scope is not None:
            if scope not in SCOPES:
                raise ValueError(f"scope {scope!r} must be one of {SCOPES}")
            clauses.append(f"scope = '{scope}'")
        if scope_key is not None:
            clauses.append(f"scope_key = '{check_scope_key(scope_key)}'")
        return self._read(" AND ".join(clauses) or None)

    def summary(self, latest: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Counts for ``medguard keys status``: DEKs per scope, patients, retired.

        Args:
            latest: the latest version of the KEKs the caller can see; with it, ``stale`` counts DEKs of those
                KEKs wrapped under an older version (``keys rotate`` rewraps them).
        """
        records = self.records()
        result: dict[str, Any] = {
            "uri": self.uri,
            "deks": len(records),
            "by_scope": {scope: sum(1 for r in records if r.scope == scope) for scope in SCOPES},
            "patients": len({r.scope_key for r in records if r.scope == "patient"}),
            "retired": sum(1 for r in records if r.retired),
        }
        if latest is not None:
            result["stale"] = sum(1 for r in records
                                  if r.kek_name in latest and wrapped_version(r.wrapped) != latest[r.kek_name])
        return result

    def _read(self, where: str | None) -> list[DekRecord]:
        table = self.lake.read_arrow(SYSTEM_ZONE, self.table, where=where)
        return [DekRecord(**row) for row in table.to_pylist()]
