"""The patient key store: each patient's data key, wrapped by the data KEK, in a table where deletion is final.

One random 32-byte DEK per patient serves every cell of that patient in every table, for life. It is made
locally, wrapped with many others in one provider request (Vault Transit ``encrypt`` with ``batch_input``) under
the one rotatable data KEK, and stored here; crypto-shredding a patient deletes their rows and then vacuums the
table with zero retention, so no file of the store holds the wrapped key afterwards.

Lives at ``<lake root>/_keys/patient_keys`` (:data:`pipeline.lake.SYSTEM_ZONE`), read and written through
:class:`~pipeline.lake.Lake` like any table, on either engine. Why a Delta table and not a store without history:
it lives wherever the lake lives (a directory or an object store), both engines read it, and a lookup of a
batch's patients is one predicate scan. Delta keeps history in two places, and both are closed here:

- deleted rows stay in the Parquet files older versions reference: every shred vacuums with zero retention
  (under an exclusive lock, which every writer of the store takes too, so the vacuum never removes the file of an
  append still in flight; on an object store the lock is per machine, under ``$MEDGUARD_HOME/locks``); time
  travel on this table ends at the last shred. The vacuum is a full one: it also removes files no commit ever
  referenced, which a write whose commit failed or was interrupted (a crashed ``keys rotate``, a full disk) leaves
  behind holding live wrapped keys;
- the ``_delta_log`` JSON and checkpoints carry column min/max statistics, which vacuum never removes: the wrapped
  key is a ``binary`` column, for which neither delta-rs nor Delta Spark write min/max statistics (the key id
  and the pseudonym, which are no secrets, do appear there).

What it costs: about 180 bytes of Parquet a patient (measured), and a lookup scans the table (key ids and
pseudonyms are random, so Delta can skip no file); a process looks up only the patients it does not hold, once.
At 10 million patients that is a scan of about 1.8 GB per cold lookup, where a store partitioned by pseudonym
prefix would read 1/256 of it.

Shredded patients are noted in ``<lake root>/_keys/shredded`` (``scope_key``, ``shredded_at``: no key material)
*before* their rows are deleted, and :meth:`PatientKeyStore.put` refuses, under the store's lock, any record of a
noted patient (:class:`PatientShreddedError`). So a write that began before a shred (a writer wrapping a new
patient's DEK, ``keys migrate``) and lands after it cannot bring the patient's key back, and no later write makes
a new one: either the put commits first and the shred's delete removes it, or the shred's note is there first and
the put is refused. On an object store the lock holds on one machine only: a put on another machine that read the
notes just before a shred's note and commits just after its delete still lands; closing that needs a conditional
commit (put-if-absent on the note's version), which delta-rs does not offer for a read of another table.

Columns: ``key_id`` (hex, the key id inside each cell), ``scope_key`` (the patient's pseudonym), ``kek_name``,
``wrapped`` (``vault:v<N>:…`` or ``keyring:v<N>:…`` as UTF-8 bytes), ``created_at``.

What is wrapped is ``DEK || binding`` where ``binding`` is the first 16 bytes of
``SHA-256("medguard.patient-dek.v1\\0" || key id || pseudonym)``: the KEK authenticates it, so a wrapped key moved
to another patient's row, or given another key id, is refused on unwrapping instead of serving (or surviving the
shred of) the wrong patient.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import CryptoError
from pipeline.lake import SYSTEM_ZONE, CommitInfo
from storage_security.keys.dek_store import check_scope_key, sql_in_list, store_lock

if TYPE_CHECKING:
    from pipeline.lake import Lake

__all__ = ["BINDING_BYTES", "PatientKey", "PatientKeyStore", "PatientShreddedError", "bind", "bind_id", "unbind"]

TABLE = "patient_keys"
SHREDDED_TABLE = "shredded"
BINDING_BYTES = 16
DEK_BYTES = 32
_DOMAIN = b"medguard.patient-dek.v1\x00"
_KEY_ID = re.compile(r"^[0-9a-f]{2,64}$")
_LOOKUP_CHUNK = 2000

SCHEMA = pa.schema([
    pa.field("key_id", pa.string(), nullable=False),
    pa.field("scope_key", pa.string(), nullable=False),
    pa.field("kek_name", pa.string(), nullable=False),
    pa.field("wrapped", pa.binary(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

SHREDDED_SCHEMA = pa.schema([
    pa.field("scope_key", pa.string(), nullable=False),
    pa.field("shredded_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


class PatientShreddedError(CryptoError):
    """Raised by :meth:`PatientKeyStore.put` (and so by sealing) for a patient who was crypto-shredded.

    ``scope_keys`` names the shredded patients (pseudonyms, no PHI): seal their cells as nulls, or leave them out.
    """

    def __init__(self, scope_keys: Iterable[str]) -> None:
        self.scope_keys = frozenset(scope_keys)
        names = sorted(self.scope_keys)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        super().__init__(f"{len(names)} patient(s) were crypto-shredded, no data key is stored for them: {shown}")


def _binding(key_id: str, scope_key: str) -> bytes:
    return _binding_of(bytes.fromhex(key_id), scope_key)


def _binding_of(key_id: bytes, scope_key: str) -> bytes:
    return hashlib.sha256(_DOMAIN + key_id + scope_key.encode()).digest()[:BINDING_BYTES]


def bind(dek: bytes, key_id: str, scope_key: str) -> bytes:
    """What is wrapped for a patient's DEK: the DEK followed by the binding of its key id and patient."""
    return bind_id(dek, bytes.fromhex(key_id), scope_key)


def bind_id(dek: bytes, key_id: bytes, scope_key: str) -> bytes:
    """:func:`bind` with the key id as its bytes (a new DEK's, before it is ever written as hex)."""
    if len(dek) != DEK_BYTES:
        raise ValueError(f"a patient DEK is {DEK_BYTES} bytes, not {len(dek)}")
    return bytes(dek) + _binding_of(key_id, scope_key)


def unbind(plaintext: bytes | None, key_id: str, scope_key: str) -> bytes | None:
    """The DEK of an unwrapped ``bind`` result, or None when it is not bound to this key id and patient."""
    if plaintext is None or len(plaintext) != DEK_BYTES + BINDING_BYTES:
        return None
    if plaintext[DEK_BYTES:] != _binding(key_id, scope_key):
        return None
    return plaintext[:DEK_BYTES]


@dataclass(frozen=True)
class PatientKey:
    """One stored patient DEK: its id, the patient, the KEK that wraps it and the wrapped form."""

    key_id: str
    scope_key: str
    kek_name: str
    wrapped: str = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise ValueError(f"key id {self.key_id!r} must be lowercase hex")
        check_scope_key(self.scope_key)


class PatientKeyStore:
    """Patients' wrapped DEKs in the lake's system zone, deleted for good on shred.

    Args:
        lake: the lake whose ``_keys`` zone holds the table.
        table: the table's name in that zone.
    """

    def __init__(self, lake: Lake, *, table: str = TABLE) -> None:
        self.lake = lake
        self.table = table
        self.uri = lake.uri(SYSTEM_ZONE, table)
        self._locked = store_lock(lake, table)

    def __repr__(self) -> str:
        return f"PatientKeyStore(uri={self.uri!r})"

    # writes --------------------------------------------------------------------------------------------

    def put(self, records: Sequence[PatientKey], *, commit: CommitInfo | None = None) -> None:
        """Append records in one commit, unless one is of a shredded patient (then nothing is written).

        Raises:
            PatientShreddedError: a record's patient was shredded (checked under the store's lock).
            StorageError: the write failed (callers must not use the keys then).
        """
        if not records:
            return
        self._append(pa.Table.from_pylist(
            [{"key_id": r.key_id, "scope_key": r.scope_key, "kek_name": r.kek_name,
              "wrapped": r.wrapped.encode("ascii"), "created_at": r.created_at} for r in records], schema=SCHEMA),
            {r.scope_key for r in records}, commit)

    def put_new(self, key_ids: list[bytes], scope_keys: list[str], kek_name: str, wrapped: list[str], *,
                commit: CommitInfo | None = None) -> None:
        """:meth:`put` for keys just made here (random ids, checked patients), built column-wise: a first
        ingestion records one per patient, where a :class:`PatientKey` each cost more than the write."""
        if not key_ids:
            return
        if not len(key_ids) == len(scope_keys) == len(wrapped):
            raise ValueError("put_new needs one key id, patient and wrapped key each")
        table = pa.table([
            pa.array([key_id.hex() for key_id in key_ids], pa.string()),
            pa.array(scope_keys, pa.string()), pa.repeat(pa.scalar(kek_name, pa.string()), len(key_ids)),
            pa.array(wrapped, pa.string()).cast(pa.binary()),
            pa.repeat(pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC")), len(key_ids))], schema=SCHEMA)
        self._append(table, set(scope_keys), commit)

    def _append(self, table: pa.Table, patients: set[str], commit: CommitInfo | None) -> None:
        with self._locked():
            dead = self.shredded() & patients
            if dead:
                raise PatientShreddedError(dead)
            self.lake.append(SYSTEM_ZONE, self.table, table,
                             commit=commit or CommitInfo(purpose="envelope-encryption"))

    def note_shredded(self, scope_key: str, *, commit: CommitInfo | None = None) -> bool:
        """Note that a patient is shredded (before their keys are deleted); False when already noted."""
        check_scope_key(scope_key)
        if scope_key in self.shredded():
            return False
        data = pa.Table.from_pylist([{"scope_key": scope_key, "shredded_at": datetime.now(UTC)}],
                                    schema=SHREDDED_SCHEMA)
        self.lake.append(SYSTEM_ZONE, SHREDDED_TABLE, data, commit=commit or CommitInfo(purpose="crypto-shredding"))
        return True

    def shred(self, scope_key: str, *, commit: CommitInfo | None = None) -> int:
        """Delete a patient's wrapped DEKs for good: delete their rows, then vacuum with zero retention.

        Re-runnable: a patient with no rows left deletes nothing and the vacuum finds nothing to remove.

        Returns:
            how many rows were deleted.
        """
        check_scope_key(scope_key)
        if not self.exists():
            return 0
        info = commit or CommitInfo(purpose="crypto-shredding")
        with self._locked():
            deleted = self.lake.delete(SYSTEM_ZONE, self.table, where=f"scope_key = '{scope_key}'", commit=info)
            self.lake.vacuum(SYSTEM_ZONE, self.table, retention_hours=0, dry_run=False, full=True, commit=info)
        return deleted

    def replace(self, records: Sequence[PatientKey], *, commit: CommitInfo | None = None) -> int:
        """Replace the wrapped form of existing records (by key id), e.g. after a KEK rotation; returns how many.

        Records no longer in the store (a patient shredded meanwhile) are left out, never written back.
        """
        if not records:
            return 0
        with self._locked():
            present = self.get(r.key_id for r in records)
            rows = [{"key_id": r.key_id, "scope_key": r.scope_key, "kek_name": r.kek_name,
                     "wrapped": r.wrapped.encode("ascii"), "created_at": r.created_at}
                    for r in records if r.key_id in present and present[r.key_id].scope_key == r.scope_key]
            if not rows:
                return 0
            result = self.lake.merge(SYSTEM_ZONE, self.table, pa.Table.from_pylist(rows, schema=SCHEMA),
                                     keys=["key_id"], commit=commit or CommitInfo(purpose="key-rotation"))
        return result.updated

    # reads ---------------------------------------------------------------------------------------------

    def shredded(self) -> set[str]:
        """Pseudonyms of the patients crypto-shredded in this lake."""
        if not self.lake.exists(SYSTEM_ZONE, SHREDDED_TABLE):
            return set()
        table = self.lake.read_arrow(SYSTEM_ZONE, SHREDDED_TABLE, columns=["scope_key"])
        return set(table.column("scope_key").to_pylist())

    def exists(self) -> bool:
        """True once a patient DEK has been stored."""
        return self.lake.exists(SYSTEM_ZONE, self.table)

    def find(self, scope_keys: Iterable[str]) -> list[PatientKey]:
        """The records of the given patients (a patient may have more than one DEK: see the cipher)."""
        keys = sorted({check_scope_key(k) for k in scope_keys})
        if not keys or not self.exists():
            return []
        return self._lookup("scope_key", keys)

    def get(self, key_ids: Iterable[str]) -> dict[str, PatientKey]:
        """The records of the given key ids that exist (malformed ids are simply not found)."""
        ids = sorted({k for k in key_ids if isinstance(k, str) and _KEY_ID.match(k)})
        if not ids or not self.exists():
            return {}
        return {r.key_id: r for r in self._lookup("key_id", ids)}

    def records(self) -> list[PatientKey]:
        """Every stored record."""
        return self._read(None) if self.exists() else []

    def summary(self, latest: Mapping[str, int] | None = None) -> dict[str, int]:
        """Counts for ``medguard keys status``: patient DEKs, patients, and with ``latest`` (the KEKs' latest
        versions) how many are wrapped under an older version (``keys rotate`` rewraps them)."""
        if not self.exists():
            return {"deks": 0, "patients": 0, "stale": 0}
        table = self.lake.read_arrow(SYSTEM_ZONE, self.table, columns=["scope_key", "kek_name", "wrapped"])
        versions = pc.struct_field(pc.extract_regex(table.column("wrapped").cast(pa.string()),
                                                    r"^[a-z][a-z0-9_-]*:v(?P<v>[0-9]{1,9}):"), "v")
        stale = 0
        for kek, version in (latest or {}).items():
            mine = pc.equal(table.column("kek_name"), kek)
            current = pc.equal(versions, str(version))
            stale += pc.sum(pc.and_(mine, pc.invert(pc.fill_null(current, False)))).as_py() or 0
        return {"deks": table.num_rows, "patients": len(table.column("scope_key").unique()), "stale": stale}

    def _lookup(self, column: str, values: list[str]) -> list[PatientKey]:
        """Rows whose ``column`` is one of ``values``: a predicate for a few, else one scan filtered in Arrow.

        Each read scans the table (the key id and pseudonym are random, so no file can be skipped): many values
        are matched in one scan rather than one scan per few thousand.
        """
        if len(values) <= _LOOKUP_CHUNK:
            return self._read(f"{column} IN ({sql_in_list(values)})")
        # The one column first: a batch of new patients finds none of theirs, and then reads nothing else (at a
        # million patients the whole table is a few hundred MB, read again for every chunk of new patients).
        wanted = pa.array(values, pa.string())
        hits = pc.is_in(self.lake.read_arrow(SYSTEM_ZONE, self.table, columns=[column]).column(column),
                        value_set=wanted)
        if not pc.any(hits).as_py():
            return []
        table = self.lake.read_arrow(SYSTEM_ZONE, self.table)
        return self._records(table.filter(pc.is_in(table.column(column), value_set=wanted)))

    def _read(self, where: str | None) -> list[PatientKey]:
        return self._records(self.lake.read_arrow(SYSTEM_ZONE, self.table, where=where))

    @staticmethod
    def _records(table: pa.Table) -> list[PatientKey]:
        return [PatientKey(key_id=row["key_id"], scope_key=row["scope_key"], kek_name=row["kek_name"],
                           wrapped=row["wrapped"].decode("ascii"), created_at=row["created_at"])
                for row in table.to_pylist()]

