"""Protected tables: the lake adapter for zones holding PHI — encrypt before writing, decrypt on read, audit both.

Every layer that writes sensitive cells goes through :class:`ProtectedLake`: it seals the columns a
:class:`Protection` names with the :class:`~storage_security.crypto.envelope.CellCipher` *before* anything reaches the
lake (so a provider failure writes nothing), records which columns are sealed and their Arrow types in a
manifest, and appends one audit event per write and per read. Readers ask for plaintext by column; cells of
crypto-shredded patients come back null (the patient is gone), any other cell that does not decrypt fails the
read.

Cells are bound to ``"<zone>.<table>"``, the column and the row key, so a cell copied into another zone, table,
column or row does not decrypt. Key metadata lives beside the zones, never in one, in the system zone
(:data:`pipeline.lake.SYSTEM_ZONE`), read and written through :class:`~pipeline.lake.Lake`:

- ``<lake root>/_keys/patient_keys``: each patient's wrapped DEK
  (:class:`~storage_security.keys.patient_keys.PatientKeyStore`), deleted for good on shred;
- ``<lake root>/_keys/manifests``: one row per sealed column ``(zone, table_name, column_name, value_type,
  row_key, patient_key, updated_at)``; ``value_type`` is the column's Arrow type as a serialised schema (base64).
- ``<lake root>/_keys/shredded``: the pseudonyms of shredded patients ``(scope_key, shredded_at)`` — no key
  material, just the fact, so readers know a dead cell from a tampered one, de-identification drops the
  patient's rows, and a restored backup can shred again whoever was shredded after it was taken.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.lake import SYSTEM_ZONE, CommitInfo, Lake, MergeResult, Zone, to_arrow_table
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
from storage_security.crypto.envelope import CellCipher, _with_nulls
from storage_security.crypto.pseudonyms import Pseudonymizer, PseudonymKeys
from storage_security.keys.dek_store import DekStore, check_scope_key
from storage_security.keys.patient_keys import PatientKeyStore, PatientShreddedError

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.keys.base import KeyProvider

__all__ = ["ProtectedLake", "Protection", "ReadResult"]

_MANIFEST_SCHEMA = pa.schema([
    pa.field("zone", pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("column_name", pa.string(), nullable=False),
    pa.field("value_type", pa.string(), nullable=False),
    pa.field("row_key", pa.string(), nullable=False),
    pa.field("patient_key", pa.string()),
    pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
])
_MANIFESTS = "manifests"


@dataclass(frozen=True)
class Protection:
    """Which columns of a table are sealed, and how.

    Args:
        encrypted: the columns stored as AES-GCM cells (every PHI column).
        row_key: a plaintext column, unique per row and free of PHI (a content hash, a pseudonymous id), bound
            into each cell so a cell moved to another row fails to decrypt.
        patient_key: optional column of patient pseudonyms: rows with one get that patient's DEK, so
            ``medguard keys shred`` can erase the patient; rows without one get the batch's DEKs.
    """

    encrypted: tuple[str, ...]
    row_key: str
    patient_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "encrypted", tuple(self.encrypted))
        if isinstance(self.encrypted, str) or not all(isinstance(c, str) and c for c in self.encrypted):
            raise TypeError("Protection.encrypted must be a sequence of column names")
        if len(set(self.encrypted)) != len(self.encrypted):
            raise ValueError(f"Protection.encrypted names a column twice: {self.encrypted}")
        for name, value in (("row_key", self.row_key), ("patient_key", self.patient_key)):
            if value is not None and value in self.encrypted:
                raise ValueError(f"the {name} column {value!r} cannot be encrypted: it is bound into every cell")

    def same_as(self, other: Protection) -> bool:
        """True when both seal the same columns (in any order) with the same row and patient keys."""
        return (set(self.encrypted), self.row_key, self.patient_key) == (
            set(other.encrypted), other.row_key, other.patient_key)

    def check(self, schema: pa.Schema, where: str) -> None:
        """Raise ValueError naming what is missing when ``schema`` lacks a named column."""
        names = set(schema.names)
        wanted = [*self.encrypted, self.row_key, *([self.patient_key] if self.patient_key else [])]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{where}: the protection names columns the data does not have: {missing}")


@dataclass(frozen=True)
class ReadResult:
    """A decrypted read: the rows, and how many rows belonged to shredded patients (their cells are null)."""

    table: pa.Table
    shredded_rows: int


class ProtectedLake:
    """Reads and writes the lake's tables with their PHI columns sealed, audited as the given principal.

    Args:
        lake: the lake.
        provider: the key provider (the data KEK and the audit KEK live there).
        principal: who acts, for commits and audit events (``svc:ingest``, ``user:alice``).
        kek_name: the data KEK.
        audit: the audit log to record into; one over ``lake`` and ``provider`` when omitted.
        cipher: the cell cipher; one over ``provider`` and the lake's DEK store when omitted.
    """

    def __init__(self, lake: Lake, provider: KeyProvider, *, principal: str, kek_name: str = "medguard-kek",
                 audit: AuditLog | None = None, cipher: CellCipher | None = None) -> None:
        if not principal or not isinstance(principal, str):
            raise ValueError("a ProtectedLake needs a principal (who reads and writes)")
        self.lake = lake.with_access_hook(None)  # its accesses record their own events; a hook would repeat them
        self.provider = provider
        self.principal = principal
        self.kek_name = kek_name
        self.store = DekStore(lake)
        self.patient_keys = PatientKeyStore(lake)
        self.cipher = cipher or CellCipher(provider, self.store, kek_name=kek_name, patient_keys=self.patient_keys)
        self.audit = audit or AuditLog(lake, provider)
        self._pseudonym_keys = PseudonymKeys(provider, self.store, kek_name=kek_name)

    @classmethod
    def from_settings(cls, settings: Settings, *, principal: str, role: str | None = None) -> ProtectedLake:
        """A protected lake over the lake and key provider of ``settings``.

        Args:
            role: for the local OpenBao, the AppRole to log in as (see ``provider_from_settings``).
        """
        from storage_security.keys.providers import provider_from_settings

        return cls(Lake(settings), provider_from_settings(settings, role=role), principal=principal,
                   kek_name=settings.vault.kek_name)

    def __repr__(self) -> str:
        return f"ProtectedLake(root={self.lake.root!r}, principal={self.principal!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("ProtectedLake holds data keys and cannot be pickled; build one per process")

    def pseudonymizer(self, name: str = "patient") -> Pseudonymizer:
        """The keyed pseudonymizer ``name`` (``patient``: the join key of every zone).

        The lake's pseudonym keys are unwrapped together (one provider request) the first time one is needed.
        """
        return self._pseudonym_keys.get(name)

    # writes ------------------------------------------------------------------------------------------

    def seal(self, zone: Zone | str, table: str, data: Any, protection: Protection) -> pa.Table:
        """``data`` with the protected columns replaced by cells (binary); nothing is written.

        Rows of crypto-shredded patients keep their plaintext columns, but their sealed cells are null: no key
        is made or used for them (as :func:`~storage_security.keys.lifecycle.reencrypt_table` writes them), so
        data about a patient who asked to be erased that arrives later stays erased. That includes a patient
        shredded while this seal runs (the key store refuses their new key: the seal starts again without them).

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError, CryptoError: the provider failed.
            ValueError: the protection does not fit the data (missing columns, null row keys).
        """
        return self._seal(zone, table, data, protection)[0]

    def _seal(self, zone: Zone | str, table: str, data: Any, protection: Protection) -> tuple[pa.Table, int]:
        """:meth:`seal`, and how many rows were of shredded patients (their sealed cells left null)."""
        zone = Zone(zone)
        self.lake.uri(zone, table)  # validates the name
        arrow = _as_table(data)
        where = f"{zone}.{table}"
        protection.check(arrow.schema, where)
        row_keys = arrow.column(protection.row_key)
        if row_keys.null_count:
            raise ValueError(f"{where}: the row key column {protection.row_key!r} has nulls")
        # unique, not count_distinct: the same hash table, six times faster on long keys (measured).
        if arrow.num_rows and len(pc.unique(row_keys)) != arrow.num_rows:
            raise ValueError(f"{where}: the row key column {protection.row_key!r} is not unique in the data")
        patients = arrow.column(protection.patient_key) if protection.patient_key else None
        dead = self.shredded() if patients is not None else set()
        while True:
            try:
                return self._seal_columns(arrow, where, protection, row_keys, patients, dead)
            except PatientShreddedError as exc:  # shredded meanwhile: each retry has more dead patients, so ends
                if exc.scope_keys <= dead:
                    raise
                dead |= exc.scope_keys

    def _seal_columns(self, arrow: pa.Table, where: str, protection: Protection, row_keys: pa.ChunkedArray,
                      patients: pa.ChunkedArray | None, dead: set[str]) -> tuple[pa.Table, int]:
        erased, count = None, 0
        if patients is not None and dead:
            erased = pc.fill_null(pc.is_in(patients, pa.array(sorted(dead), pa.string())), False)
            count = pc.sum(erased).as_py() or 0
        columns: dict[str, pa.ChunkedArray] = {}
        for column in protection.encrypted:
            values = arrow.column(column)
            if erased is not None:
                if pa.types.is_dictionary(values.type):
                    values = values.cast(values.type.value_type)
                values = pc.if_else(erased, pa.scalar(None, values.type), values)
            columns[column] = values
        # All columns at once: each patient's DEK is found (or made) once per table chunk, not once per column.
        for column, cells in self._seal_many(columns, where, row_keys, patients).items():
            arrow = arrow.set_column(arrow.schema.get_field_index(column), pa.field(column, pa.binary()), cells)
        return arrow, count

    def _seal_many(self, columns: dict[str, pa.ChunkedArray], where: str, row_keys: pa.ChunkedArray,
                   patients: pa.ChunkedArray | None) -> dict[str, pa.Array]:
        values = {column: chunked.combine_chunks() for column, chunked in columns.items()}
        keys = row_keys.combine_chunks()
        if patients is None:
            return self.cipher.encrypt_columns(values, table=where, row_keys=keys)
        patients = patients.combine_chunks()
        if not patients.null_count:
            return self.cipher.encrypt_columns(values, table=where, row_keys=keys, scope_key=patients)
        # Rows with no patient (e.g. a resource about no one) use the batch's DEKs.
        has, hasnt = patients.is_valid(), patients.is_null()
        scoped = self.cipher.encrypt_columns({c: v.filter(has) for c, v in values.items()}, table=where,
                                             row_keys=keys.filter(has), scope_key=patients.filter(has))
        batch = self.cipher.encrypt_columns({c: v.filter(hasnt) for c, v in values.items()}, table=where,
                                            row_keys=keys.filter(hasnt))
        valid = has.to_numpy(zero_copy_only=False)
        order = np.empty(len(keys), dtype=np.int64)
        order[np.flatnonzero(valid)] = np.arange(int(valid.sum()))
        order[np.flatnonzero(~valid)] = int(valid.sum()) + np.arange(int((~valid).sum()))
        positions = pa.array(order)
        return {column: pa.concat_arrays([scoped[column], batch[column]]).take(positions) for column in values}

    def append(self, zone: Zone | str, table: str, data: Any, protection: Protection, *,
               commit: CommitInfo | None = None, txn: tuple[str, int] | None = None,
               evolve_schema: bool = False) -> int:
        """Seal, then append; returns the new table version. Nothing is written if sealing fails.

        ``txn`` makes the append idempotent as in :meth:`Lake.append`; a version ``txn``'s app id already
        committed is neither sealed nor written again. ``evolve_schema`` lets the rows bring a new plaintext
        column (earlier rows read it as null), as :meth:`Lake.append`.
        """
        if txn is not None and self.lake.committed(zone, table, txn):
            return self.lake.version(zone, table)
        sealed, info, extra = self._prepare(zone, table, data, protection, commit)
        version = self.lake.append(zone, table, sealed, commit=info, txn=txn, evolve_schema=evolve_schema)
        self._audit_write(zone, table, protection, sealed.num_rows, info, version=version, operation="append",
                          extra=extra)
        return version

    def merge(self, zone: Zone | str, table: str, data: Any, protection: Protection, *, keys: Sequence[str],
              commit: CommitInfo | None = None) -> MergeResult:
        """Seal, then upsert on ``keys`` (which must be plaintext columns); idempotent on re-runs.

        Re-merging rows already present updates them with fresh cells of the same values.
        """
        sealed_keys = [k for k in keys if k in protection.encrypted]
        if sealed_keys:
            raise ValueError(f"merge keys {sealed_keys} are encrypted: cells differ each time, merge on plaintext")
        sealed, info, extra = self._prepare(zone, table, data, protection, commit)
        result = self.lake.merge(zone, table, sealed, keys=list(keys), commit=info)
        self._audit_write(zone, table, protection, sealed.num_rows, info, version=result.version,
                          operation="merge", extra={"inserted": result.inserted, "updated": result.updated, **extra})
        return result

    def overwrite(self, zone: Zone | str, table: str, data: Any, protection: Protection, *,
                  commit: CommitInfo | None = None) -> int:
        """Seal, then replace the table's rows; earlier versions stay readable (time travel)."""
        sealed, info, extra = self._prepare(zone, table, data, protection, commit)
        version = self.lake.overwrite(zone, table, sealed, commit=info)
        self._audit_write(zone, table, protection, sealed.num_rows, info, version=version, operation="overwrite",
                          extra=extra)
        return version

    def _prepare(self, zone: Zone | str, table: str, data: Any, protection: Protection,
                 commit: CommitInfo | None) -> tuple[pa.Table, CommitInfo, dict[str, Any]]:
        """The sealed data, the commit, and what the write's audit event adds (rows of shredded patients)."""
        zone = Zone(zone)
        arrow = _as_table(data)
        known, types = self._manifest(zone, table)
        if known is not None and not known.same_as(protection):
            raise ValueError(f"{zone}.{table} is protected as {known}; refusing to write it as {protection}")
        _check_types(f"{zone}.{table}", arrow.schema, types)
        sealed, shredded_rows = self._seal(zone, table, arrow, protection)
        if known is None:
            self._write_manifest(zone, table, arrow.schema, protection)
        info = commit or CommitInfo(principal=self.principal, purpose="protected-write")
        return sealed, info, {"shredded_rows": shredded_rows} if shredded_rows else {}

    def _audit_write(self, zone: Zone, table: str, protection: Protection, rows: int, info: CommitInfo, *,
                     version: int, operation: str, extra: dict[str, Any] | None = None) -> None:
        details: dict[str, Any] = {"operation": operation, "version": version}
        if info.batch_id:
            details["batch_id"] = info.batch_id
        details.update(extra or {})
        self.audit.record(AuditEvent(principal=self.principal, action=AuditAction.ENCRYPT, zone=zone,
                                     table_name=table, columns=protection.encrypted, row_count=rows,
                                     decision=Decision.ALLOW, purpose=info.purpose, dag_run=info.dag_run,
                                     details=details))

    # reads -------------------------------------------------------------------------------------------

    def read(self, zone: Zone | str, table: str, *, decrypt: bool | Sequence[str] = False,
             columns: Sequence[str] | None = None, where: str | None = None, version: int | None = None,
             purpose: str = "unspecified") -> pa.Table:
        """Read a table, decrypting the sealed columns asked for; see :meth:`read_result`."""
        return self.read_result(zone, table, decrypt=decrypt, columns=columns, where=where, version=version,
                                purpose=purpose).table

    def read_result(self, zone: Zone | str, table: str, *, decrypt: bool | Sequence[str] = False,
                    columns: Sequence[str] | None = None, where: str | None = None, version: int | None = None,
                    purpose: str = "unspecified") -> ReadResult:
        """Read a table (or a past ``version``), decrypting the sealed columns asked for.

        Args:
            decrypt: True for every sealed column, False for none (cells stay binary), or column names.
            columns: the columns to return (all by default); the row and patient keys are read as needed.
            where: a SQL predicate on plaintext columns.
            purpose: purpose of use, recorded in the audit event.

        Raises:
            DecryptionError: a cell of a living patient does not decrypt (names the cell).
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider failed; nothing is returned.
            ValueError: ``decrypt`` names a column that is not sealed.
        """
        zone = Zone(zone)
        protection, types = self._manifest(zone, table)
        sealed = protection.encrypted if protection else ()
        wanted = list(sealed) if decrypt is True else [] if decrypt is False else list(decrypt)
        not_sealed = [c for c in wanted if c not in sealed]
        if not_sealed:
            raise ValueError(f"{zone}.{table}: columns {not_sealed} are not encrypted; nothing to decrypt")
        if columns is not None:
            wanted = [c for c in wanted if c in columns]
        read_columns = None
        if columns is not None:
            needed = list(columns)
            if wanted and protection is not None:
                needed += [protection.row_key, *([protection.patient_key] if protection.patient_key else [])]
            read_columns = list(dict.fromkeys(needed))
        arrow = self.lake.read_arrow(zone, table, version=version, columns=read_columns, where=where)
        shredded_rows = 0
        if wanted and protection is not None and arrow.num_rows:
            arrow, shredded_rows = self._open(zone, table, arrow, protection, types, wanted)
        if columns is not None:
            arrow = arrow.select(list(columns))
        action = AuditAction.DECRYPT if wanted else AuditAction.READ
        self.audit.record(AuditEvent(principal=self.principal, action=action, zone=zone, table_name=table,
                                     columns=tuple(wanted) or tuple(arrow.column_names), row_count=arrow.num_rows,
                                     decision=Decision.ALLOW, purpose=purpose,
                                     details={"version": version if version is not None else "latest",
                                              "shredded_rows": shredded_rows}))
        return ReadResult(arrow, shredded_rows)

    def _open(self, zone: Zone, table: str, arrow: pa.Table, protection: Protection,
              types: dict[str, pa.DataType], wanted: list[str]) -> tuple[pa.Table, int]:
        where = f"{zone}.{table}"
        alive = None
        if protection.patient_key:
            dead = self.shredded()
            if dead:
                patients = arrow.column(protection.patient_key)
                alive = pc.invert(pc.fill_null(pc.is_in(patients, pa.array(sorted(dead), pa.string())), False))
                alive = alive.combine_chunks()
        shredded_rows = 0 if alive is None else len(alive) - pc.sum(alive).as_py()
        for column in wanted:
            cells = arrow.column(column).combine_chunks()
            row_keys = arrow.column(protection.row_key).combine_chunks()
            value_type = types.get(column, pa.string())
            if alive is not None and shredded_rows:
                live = self.cipher.decrypt_column(cells.filter(alive), table=where, column=column,
                                                  row_keys=row_keys.filter(alive), value_type=value_type)
                plain = _with_nulls(live, alive.to_numpy(zero_copy_only=False))
            else:
                plain = self.cipher.decrypt_column(cells, table=where, column=column, row_keys=row_keys,
                                                   value_type=value_type)
            arrow = arrow.set_column(arrow.schema.get_field_index(column), pa.field(column, value_type), plain)
        return arrow, shredded_rows

    # manifest and shredding ---------------------------------------------------------------------------

    def protection(self, zone: Zone | str, table: str) -> Protection | None:
        """How a table's cells are sealed, or None for a table written without protection."""
        return self._manifest(Zone(zone), table)[0]

    def _manifest(self, zone: Zone, table: str) -> tuple[Protection | None, dict[str, pa.DataType]]:
        """A table's protection and the Arrow type of each sealed column, from one read of the manifest."""
        if not self.lake.exists(SYSTEM_ZONE, _MANIFESTS):
            return None, {}
        self.lake.uri(zone, table)  # validates the name before it goes into SQL
        where = f"zone = '{zone.value}' AND table_name = '{table}'"
        rows = sorted(self.lake.read_arrow(SYSTEM_ZONE, _MANIFESTS, where=where).to_pylist(),
                      key=lambda r: r["column_name"])
        if not rows:
            return None, {}
        types = {row["column_name"]: pa.ipc.read_schema(pa.py_buffer(base64.b64decode(row["value_type"]))).field(0).type
                 for row in rows}
        protection = Protection(encrypted=tuple(types), row_key=rows[0]["row_key"],
                                patient_key=rows[0]["patient_key"])
        return protection, types

    def _write_manifest(self, zone: Zone, table: str, schema: pa.Schema, protection: Protection) -> None:
        now = datetime.now(UTC)
        rows = []
        for column in protection.encrypted:
            field = schema.field(column)
            if pa.types.is_dictionary(field.type):
                field = field.with_type(field.type.value_type)
            encoded = base64.b64encode(pa.schema([field]).serialize().to_pybytes()).decode()
            rows.append({"zone": zone.value, "table_name": table, "column_name": column, "value_type": encoded,
                         "row_key": protection.row_key, "patient_key": protection.patient_key, "updated_at": now})
        data = pa.Table.from_pylist(rows, schema=_MANIFEST_SCHEMA)
        info = CommitInfo(principal=self.principal, purpose="protection-manifest")
        self.lake.merge(SYSTEM_ZONE, _MANIFESTS, data, keys=["zone", "table_name", "column_name"], commit=info)

    def shredded(self) -> set[str]:
        """Pseudonyms of the patients crypto-shredded in this lake."""
        return self.patient_keys.shredded()

    def shred(self, patient_pseudonym: str, *, reason: str, commit: CommitInfo | None = None) -> int:
        """Crypto-shred one patient: note the fact, delete their wrapped DEK for good; audited.

        Every cell sealed under the patient's key, in every version of every table, stays undecryptable for
        good; readers return those cells as null. Re-running an interrupted shred completes it, and running it
        again for a patient already shredded (e.g. after restoring a backup) deletes whatever key came back.
        A pseudonym with no stored key that was never shredded (a typo, another lake's patient, a patient whose
        first write has not landed yet) is refused and noted nowhere.

        Returns:
            how many wrapped DEK records were deleted.

        Raises:
            ValueError: no reason given, a malformed pseudonym, or no key of this patient to delete.
        """
        check_scope_key(patient_pseudonym)
        if not reason or not reason.strip():
            raise ValueError("shredding a patient needs a reason (e.g. the erasure request's reference)")
        if patient_pseudonym not in self.shredded() and not self._has_keys(patient_pseudonym):
            raise ValueError(f"no data key is stored for patient {patient_pseudonym} and none was shredded: nothing "
                             "to shred (check the patient id; a patient whose first data is still being written has "
                             "no key yet: run it again once that write has landed)")
        info = commit or CommitInfo(principal=self.principal, purpose="crypto-shredding")
        # Note the fact first: if the key is gone but the note is not, readers would fail on the dead cells; and
        # the key store refuses, from the note on, any key of the patient a writer still in flight brings back.
        self.patient_keys.note_shredded(patient_pseudonym, commit=info)
        dropped = self.cipher.shred(patient_pseudonym, commit=info)
        self.audit.record(AuditEvent(principal=self.principal, action=AuditAction.KEY_SHRED,
                                     row_keys=(patient_pseudonym,), decision=Decision.ALLOW,
                                     purpose=info.purpose, reason=reason,
                                     details={"key_store": self.patient_keys.uri, "deks_dropped": dropped}))
        return dropped

    def _has_keys(self, patient_pseudonym: str) -> bool:
        """True when the patient key store, or the DEK store of a lake not yet migrated, holds a key of theirs."""
        return bool(self.patient_keys.find([patient_pseudonym])
                    or self.store.records(scope="patient", scope_key=patient_pseudonym))

    # unsealed tables, metadata and the audit log ------------------------------------------------------
    # For layers that also keep tables with no sealed column (the ingestion ledger, de-identified releases):
    # their writes go through the lake's access hook (AuditLog.access_hook), which records one write event each
    # as this principal; read them with read(), which records its read event. Sealed writes and decrypting reads
    # record their own encrypt/decrypt events, which name the sealed columns.

    @cached_property
    def _recorded(self) -> Lake:
        return self.lake.with_access_hook(self.audit.access_hook(self.principal))

    def tables(self, zone: Zone | str) -> list[str]:
        """Names of the tables of a zone, sorted."""
        return self.lake.tables(Zone(zone))

    def exists(self, zone: Zone | str, table: str) -> bool:
        """True when the table has been written at least once."""
        return self.lake.exists(Zone(zone), table)

    def schema(self, zone: Zone | str, table: str) -> pa.Schema:
        """The table's schema as stored (sealed columns are binary)."""
        return self.lake.schema(Zone(zone), table)

    def version(self, zone: Zone | str, table: str) -> int:
        """The table's current version."""
        return self.lake.version(Zone(zone), table)

    def merge_unsealed(self, zone: Zone | str, table: str, data: Any, *, keys: Sequence[str],
                       commit: CommitInfo | None = None) -> MergeResult:
        """Upsert rows into a table that has no sealed column; one audited write.

        Raises:
            ValueError: the table is protected (its rows must be sealed: use :meth:`merge`).
        """
        self._refuse_if_protected(zone, table)
        info = commit or CommitInfo(principal=self.principal, purpose="unspecified")
        return self._recorded.merge(Zone(zone), table, data, keys=list(keys), commit=info)

    def overwrite_unsealed(self, zone: Zone | str, table: str, data: Any, *, commit: CommitInfo | None = None,
                           evolve_schema: bool = False) -> int:
        """Replace the rows of a table that has no sealed column (earlier versions stay readable); one audited write.

        Raises:
            ValueError: the table is protected (its rows must be sealed: use :meth:`overwrite`).
        """
        self._refuse_if_protected(zone, table)
        info = commit or CommitInfo(principal=self.principal, purpose="unspecified")
        return self._recorded.overwrite(Zone(zone), table, data, commit=info, evolve_schema=evolve_schema)

    def delete_rows(self, zone: Zone | str, table: str, *, where: str, commit: CommitInfo | None = None) -> int:
        """Delete the rows matching the SQL predicate ``where`` (sealed or not); one audited write; how many went.

        Earlier versions keep the rows until the table is vacuumed (an erasure vacuums: see ``keys shred``).
        """
        info = commit or CommitInfo(principal=self.principal, purpose="unspecified")
        return self._recorded.delete(Zone(zone), table, where=where, commit=info)

    def record(self, event: AuditEvent) -> int:
        """Append an event (e.g. a batch or release summary) to this lake's audit log; returns its seq."""
        return self.audit.record(event)

    def _refuse_if_protected(self, zone: Zone | str, table: str) -> None:
        known = self.protection(zone, table)
        if known is not None:
            raise ValueError(f"{Zone(zone)}.{table} is protected ({known.encrypted} sealed): write it sealed")


def _check_types(where: str, schema: pa.Schema, types: dict[str, pa.DataType]) -> None:
    """Refuse a sealed column whose type is not the one recorded for it: readers cast every cell to that type.

    A column of nulls (no values, no type) fits any, and a column first recorded as nulls takes any. The message
    names types only, never a value.
    """
    for column, recorded in types.items():
        if column not in schema.names or pa.types.is_null(recorded):
            continue  # Protection.check names it
        given = schema.field(column).type
        if pa.types.is_dictionary(given):
            given = given.value_type
        if not pa.types.is_null(given) and given != recorded:
            raise ValueError(f"{where}.{column} is sealed as {recorded}; refusing a batch that brings it as {given}")


def _as_table(data: Any) -> pa.Table:
    return to_arrow_table(data)

