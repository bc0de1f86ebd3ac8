"""Envelope encryption of Arrow columns: AES-256-GCM cells under cached DEKs wrapped by the provider's KEKs."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import (
    CryptoError,
    DecryptionError,
    KeyAccessDeniedError,
    KeyProviderUnavailableError,
)
from storage_security.crypto import _aead
from storage_security.keys.dek_store import DekRecord, DekStore, check_scope_key
from storage_security.keys.patient_keys import PatientKey, PatientKeyStore, bind_id, unbind

if TYPE_CHECKING:
    from pipeline.lake import CommitInfo
    from pipeline.settings import Settings
    from storage_security.keys.base import KeyProvider

__all__ = [
    "DEFAULT_DEK_TTL_SECONDS",
    "DEFAULT_MAX_INVOCATIONS",
    "FORMAT_VERSION",
    "KEY_ID_SIZE",
    "CellCipher",
    "patient_kek_name",
]

FORMAT_VERSION = 1
KEY_ID_SIZE = 16
MAX_KEY_ID_SIZE = 32
MAX_PLAINTEXT_BYTES = 16 * 2**20
MAX_ROW_KEY_BYTES = 1024
MAX_NAME_BYTES = 255
_HEADER_SIZE = 2 + KEY_ID_SIZE
_OVERHEAD = _HEADER_SIZE + _aead.NONCE_SIZE + _aead.TAG_SIZE
_MIN_CELL = 2 + 1 + _aead.NONCE_SIZE + _aead.TAG_SIZE
_MAX_CELL = 2 + MAX_KEY_ID_SIZE + _aead.NONCE_SIZE + MAX_PLAINTEXT_BYTES + _aead.TAG_SIZE
_AAD_DOMAIN = b"medguard.cell\x00"
_CONTEXT_SIZE = 16
# NIST SP 800-38D 8.3: at most 2^32 invocations of one key with random 96-bit nonces; stay a factor 2 below.
DEFAULT_MAX_INVOCATIONS = 2**31
DEFAULT_DEK_TTL_SECONDS = 900.0
_MAX_CACHED_KEYS = 1_000_000  # a million patients stay warm: 410 MB measured for their keys and both cache maps
_CHUNK = 8192  # cells per sealing pass: its temporaries stay in the CPU caches
_OFFSETS_LIMIT = 2**31 - 1
_BINARY_LIKE = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view, pa.types.is_fixed_size_binary)
_STRING_LIKE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def patient_kek_name(scope_key: str) -> str:
    """The per-patient KEK of lakes written before the data-KEK hierarchy (``medguard keys migrate`` moves them)."""
    return f"patient-{check_scope_key(scope_key)}"


@dataclass(eq=False, slots=True)
class _Dek:
    """A usable DEK: its id, its key, and what it may encrypt. Never pickled, never printed.

    The key is kept as its 32 bytes and a cipher object is made for each bulk call (:attr:`aead`): a cipher
    object costs about 3 KB, so a process that keeps a million patients' DEKs warm holds 3 GB of them, where
    the bytes and this record cost a few hundred bytes a patient.
    """

    key_id: bytes
    key: bytes = field(repr=False)
    table: str
    column: str
    scope_key: str
    created: float
    uses: int = 0
    scope: str = "batch"

    def __post_init__(self) -> None:
        _aead.check_key(self.key)

    @property
    def header(self) -> bytes:
        """What starts each of its cells: the format version, the key id's length and the key id."""
        return bytes((FORMAT_VERSION, len(self.key_id))) + self.key_id

    @property
    def aead(self) -> _aead.AesGcm:
        return _aead.AesGcm(self.key)

    def __repr__(self) -> str:
        return f"_Dek(key_id=<redacted>, table={self.table!r}, column={self.column!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a DEK cannot be pickled")


def _check_name(kind: str, name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} must be a non-empty str, got {name!r}")
    encoded = name.encode()
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"{kind} {name[:40]!r}… is longer than {MAX_NAME_BYTES} bytes")
    return encoded


def _aad_prefix(table: str, column: str) -> bytes:
    """The length-prefixed (table, column) part of a cell's context; validates both names."""
    t, c = _check_name("table", table), _check_name("column", column)
    return _AAD_DOMAIN + len(t).to_bytes(2, "big") + t + len(c).to_bytes(2, "big") + c


def _context(prefix: bytes, header: bytes) -> bytes:
    """The 16-byte context that starts each cell's associated data: it binds table, column and header."""
    return hashlib.sha256(prefix + header).digest()[:_CONTEXT_SIZE]


def _as_array(values: Any, what: str) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, list | tuple):
        return pa.array(values)
    raise TypeError(f"{what} must be a pyarrow Array, ChunkedArray or list, not {type(values).__name__}")


def _plaintexts(values: pa.Array) -> pa.Array:
    """The bytes each value is encrypted as: strings as UTF-8, binary as is, scalars as their Arrow text."""
    dtype = values.type
    if pa.types.is_dictionary(dtype):
        return _plaintexts(values.cast(dtype.value_type))
    if any(check(dtype) for check in _BINARY_LIKE + _STRING_LIKE):
        return values.cast(pa.binary())
    if pa.types.is_null(dtype):
        return pa.nulls(len(values), pa.binary())
    if pa.types.is_nested(dtype):
        raise TypeError(f"cannot encrypt a column of {dtype}: serialise nested values (e.g. to JSON) first")
    return values.cast(pa.string()).cast(pa.binary())


def _row_keys(row_keys: Any, count: int) -> tuple[pa.Array, pa.Array]:
    """Row keys as (UTF-8 bytes, text); every value needs one, at most 1 KiB."""
    keys = _as_array(row_keys, "row_keys")
    if len(keys) != count:
        raise ValueError(f"row_keys has {len(keys)} entries for {count} values")
    if keys.null_count:
        raise ValueError("row_keys must not contain nulls: every cell is bound to its row key")
    text = keys if pa.types.is_string(keys.type) else keys.cast(pa.string())
    encoded = text.cast(pa.binary())
    if count and pc.max(pc.binary_length(encoded)).as_py() > MAX_ROW_KEY_BYTES:
        raise ValueError(f"row keys must be at most {MAX_ROW_KEY_BYTES} bytes")
    return encoded, text


def _with_nulls(result: pa.Array, valid: np.ndarray | None) -> pa.Array:
    if valid is None:
        return result
    positions = np.cumsum(valid, dtype=np.int64) - 1
    return result.take(pa.array(positions, mask=~valid))


def _valid_mask(values: pa.Array) -> np.ndarray | None:
    if not values.null_count:
        return None
    return values.is_valid().to_numpy(zero_copy_only=False)


class CellCipher:
    """Encrypts and decrypts Arrow columns cell by cell, each cell bound to its table, column and row key.

    Like Tink's AEAD, callers never see a nonce or a key: they name the cell and get bytes back. Each cell is
    AES-256-GCM under a data key (DEK); DEKs are wrapped by a KEK of the key provider and stored wrapped in
    the :class:`~storage_security.keys.dek_store.DekStore` *before* the first cell under them is returned.

    Cell format, version 1 (every field is checked when parsing; all integers big-endian)::

        offset  size  field
        0       1     format version: 0x01
        1       1     key-id length K, 1 <= K <= 32 (writers of version 1 use K = 16)
        2       K     key id: random, names the DEK's record in the DEK store
        2+K     12    nonce: random, 96 bits
        14+K    n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the 16-byte tag

    A cell is 46 + n bytes as written; parsing rejects cells shorter than 31 bytes, shorter than 30 + K,
    or longer than 16 MiB of plaintext plus overhead. The GCM associated data is ``context || row key``
    where ``context`` is the first 16 bytes of
    ``SHA-256("medguard.cell\\0" || u16 len(table) || table || u16 len(column) || column || cell[0:2+K])``
    (names and row key in UTF-8). The context is fixed-size and every field in it is length-prefixed, so a
    cell moved to another table, column or row, or given another header, fails to decrypt; it is computed
    once per DEK, which keeps the per-cell associated data short.

    Plaintext encoding: strings are encrypted as UTF-8 and binary values as they are; other scalar types as
    their Arrow text form (``cast(string)``). The type is not stored: :meth:`decrypt_column` returns strings
    unless ``value_type`` names the type to cast back to, which is exact for integers, floats, booleans,
    decimals, dates and timestamps (Arrow cannot cast text back to times or durations: callers cast those
    themselves). Nulls stay null and are not encrypted. Row keys are bound by their text form
    (``cast(string)``), at most 1 KiB.

    DEKs: one per (table, column, batch) by default, made by the provider under ``kek_name``, reused until
    ``dek_ttl_seconds`` pass or it has encrypted ``max_invocations`` cells. With ``scope_key``, one random DEK per
    patient for life serves all of that patient's cells in every table and column: made here, wrapped with the
    other new patients' DEKs in one provider batch (:meth:`KeyProvider.wrap_many`) under ``kek_name`` and
    recorded in the :class:`~storage_security.keys.patient_keys.PatientKeyStore`; a patient already stored is
    unwrapped in batches, and a patient known to this process costs no provider request at all. :meth:`shred`
    deletes the patient's wrapped DEK for good, which makes their cells undecryptable in every table version.
    (Two processes meeting a new patient at once each record a DEK; both serve, both are shredded. A process
    counts a patient DEK's uses itself and makes another past ``max_invocations``.) Unwrapped DEKs stay in
    memory only, at most ``max_cached_keys`` of them (least recently used leave first), and decryption looks a
    DEK up again (one batched request) once ``dek_ttl_seconds`` have passed since it was fetched: so a patient
    shredded by another process stops decrypting in this one within that time.

    Args:
        provider: the key provider holding the KEKs.
        store: where wrapped DEKs are recorded.
        kek_name: the KEK for batch-scoped DEKs.
        batch_id: names this cipher's batch in DEK records; random when omitted.
        dek_ttl_seconds: how long a DEK is used and kept unwrapped in memory.
        max_invocations: cells one DEK may encrypt before a fresh one is made (at most 2^32).
        clock: monotonic seconds, injectable for tests.
        commit: who/why for the DEK store's commits.
        patient_keys: where patients' wrapped DEKs live; by default the patient key store of the DEK store's lake.
        max_cached_keys: unwrapped DEKs kept in memory.

    Raises:
        ValueError: a limit, name or batch id is invalid.
    """

    def __init__(
        self,
        provider: KeyProvider,
        store: DekStore,
        *,
        kek_name: str = "medguard-kek",
        batch_id: str | None = None,
        dek_ttl_seconds: float = DEFAULT_DEK_TTL_SECONDS,
        max_invocations: int = DEFAULT_MAX_INVOCATIONS,
        clock: Callable[[], float] = time.monotonic,
        commit: CommitInfo | None = None,
        patient_keys: PatientKeyStore | None = None,
        max_cached_keys: int = _MAX_CACHED_KEYS,
    ) -> None:
        if max_cached_keys < 1:
            raise ValueError("max_cached_keys must be at least 1")
        if not 1 <= max_invocations <= 2**32:
            raise ValueError("max_invocations must be 1 to 2^32 (NIST SP 800-38D bound for random nonces)")
        if dek_ttl_seconds <= 0:
            raise ValueError("dek_ttl_seconds must be positive")
        check_scope_key(kek_name)
        self._provider = provider
        self._store = store
        self.kek_name = kek_name
        self.batch_id = check_scope_key(batch_id) if batch_id is not None else f"b{secrets.token_hex(8)}"
        self._ttl = float(dek_ttl_seconds)
        self._max_invocations = int(max_invocations)
        self._clock = clock
        self._commit = commit
        self._lock = threading.RLock()
        self._patient_keys = patient_keys if patient_keys is not None else PatientKeyStore(store.lake)
        self._max_cached = int(max_cached_keys)
        self._active: dict[tuple[str, str, str, str], _Dek] = {}
        # Least recently used first (plain dicts keep insertion order; a use moves an entry to the end). Keyed by
        # pseudonym and by key id's bytes, the DEK itself holding when it was made or unwrapped: a million
        # patients' keys stay warm in a few hundred bytes each.
        self._patients: dict[str, _Dek] = {}
        self._known: dict[bytes, _Dek] = {}

    @classmethod
    def from_settings(cls, settings: Settings, provider: KeyProvider | None = None, **options: Any) -> CellCipher:
        """A cipher over the provider of ``settings`` (``key_provider``) and the lake's key stores."""
        from pipeline.lake import Lake

        if provider is None:
            from storage_security.keys.providers import provider_from_settings

            provider = provider_from_settings(settings)
        options.setdefault("kek_name", settings.vault.kek_name)
        options.setdefault("patient_keys", PatientKeyStore(Lake(settings)))
        return cls(provider, DekStore.from_settings(settings), **options)

    def __repr__(self) -> str:
        return (f"CellCipher(provider={getattr(self._provider, 'name', '?')!r}, kek_name={self.kek_name!r}, "
                f"batch_id={self.batch_id!r}, cached_keys={len(self._known)})")

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("CellCipher holds data keys and cannot be pickled; give Spark tasks wrapped keys only")

    # encryption ----------------------------------------------------------------------------------------

    def encrypt_column(self, values: pa.Array | pa.ChunkedArray | list[Any], *, table: str, column: str,
                       row_keys: pa.Array | pa.ChunkedArray | list[Any],
                       scope_key: str | pa.Array | list[Any] | None = None) -> pa.Array:
        """Encrypt a column: one ``binary`` cell per value, nulls stay null.

        Args:
            values: the column.
            table, column: where the cells will live (bound into each cell).
            row_keys: one per value, no nulls (bound into each cell).
            scope_key: None for batch-scoped DEKs; a patient pseudonym for the whole column; or one
                pseudonym per row (an array or list, non-null wherever the value is).

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError, CryptoError: the provider failed; nothing
                is returned, so nothing can be written in plaintext or under an unrecorded key.
            StorageError: the new DEKs could not be recorded.
            PatientShreddedError: a patient who needs a new DEK was crypto-shredded; none is recorded or used
                (:meth:`ProtectedLake.seal <storage_security.protected.ProtectedLake.seal>` then seals their
                values as nulls).
            TypeError, ValueError: caller mistakes (types, lengths, sizes, names).
        """
        return self._encrypt(table, {column: values}, row_keys, scope_key)[column]

    def encrypt_columns(self, columns: Mapping[str, pa.Array | pa.ChunkedArray | list[Any]], *, table: str,
                        row_keys: pa.Array | pa.ChunkedArray | list[Any],
                        scope_key: str | pa.Array | list[Any] | None = None) -> dict[str, pa.Array]:
        """Encrypt several columns of one table's rows: the cells of :meth:`encrypt_column` for each column.

        The row keys, the patients and their DEKs are worked out once for all the columns (one DEK lookup and
        one provider batch per call, not per column), so a table with many protected columns costs little more
        than its cells. Patient DEKs serve every column; batch-scoped DEKs (``scope_key=None``) stay one per
        (table, column). Every column is checked before any DEK is made.

        Args:
            columns: column name to values, all of the same length.
            table, row_keys, scope_key: as for :meth:`encrypt_column`; a per-row ``scope_key`` must be set
                wherever any of the columns has a value.

        Returns:
            Column name to its ``binary`` cells, nulls kept.

        Raises:
            As :meth:`encrypt_column`.
        """
        if scope_key is None:  # batch DEKs belong to one column each
            return {name: self._encrypt(table, {name: values}, row_keys, None)[name]
                    for name, values in columns.items()}
        return self._encrypt(table, columns, row_keys, scope_key)

    def _encrypt(self, table: str, columns: Mapping[str, Any], row_keys: Any, scope_key: Any) -> dict[str, pa.Array]:
        """Check every column, assign DEKs to all their valid cells in one pass, then seal column by column."""
        prepared: list[tuple[str, bytes, pa.Array, np.ndarray | None]] = []
        size: int | None = None
        for column, values in columns.items():
            prefix = _aad_prefix(table, column)
            array = _as_array(values, "values")
            if size is not None and len(array) != size:
                raise ValueError(f"column {column!r} has {len(array)} values, the others {size}")
            size = len(array)
            plaintexts = _plaintexts(array)
            prepared.append((column, prefix, plaintexts, _valid_mask(plaintexts)))
        if size is None:
            return {}
        encoded_keys, _ = _row_keys(row_keys, size)
        masks = [valid for *_, valid in prepared]
        any_valid = None if any(valid is None for valid in masks) else np.logical_or.reduce(masks)
        groups, row_group = self._scopes(scope_key, size, any_valid)
        if row_group is not None and any_valid is not None:  # back to one group per row (-1: no value anywhere)
            full = np.full(size, -1, dtype=np.int64)
            full[any_valid] = row_group
            row_group = full
        columns_in: list[tuple[str, bytes, pa.Array, pa.Array, np.ndarray | None, np.ndarray | None]] = []
        for column, prefix, plaintexts, valid in prepared:
            keys, groups_of = encoded_keys, row_group
            if valid is not None:
                plaintexts, keys = plaintexts.filter(valid), encoded_keys.filter(valid)
                groups_of = None if row_group is None else row_group[valid]
            if len(plaintexts):
                lengths = pc.binary_length(plaintexts)
                if pc.max(lengths).as_py() > MAX_PLAINTEXT_BYTES:
                    raise ValueError(f"a value of {table}.{column} is over {MAX_PLAINTEXT_BYTES} bytes")
                if pc.sum(lengths).as_py() + len(plaintexts) * _OVERHEAD > _OFFSETS_LIMIT:
                    raise ValueError(f"{table}.{column}: more than 2 GiB of cells; encrypt the column in smaller "
                                     "batches")
            columns_in.append((column, prefix, plaintexts, keys, valid, groups_of))
        counts = [len(item[2]) for item in columns_in]
        total = sum(counts)
        if total == 0:
            return {column: pa.nulls(size, pa.binary()) for column, *_ in columns_in}
        all_groups = None if row_group is None else np.concatenate([item[5] for item in columns_in])
        # Patient DEKs ignore the column (one slot per patient); batch callers pass one column.
        deks, dek_index = self._assign(table, columns_in[0][0], groups, all_groups, total)
        result: dict[str, pa.Array] = {}
        headers = [dek.header for dek in deks]
        # The native path wants the DEKs' headers of one size (they are, but for DEKs of old lakes).
        native = _aead.NATIVE and len({len(header) for header in headers}) == 1
        if native:
            key_bytes, header_bytes = b"".join(dek.key for dek in deks), b"".join(headers)
        else:
            keyset = _aead.KeySet([dek.aead for dek in deks])
        position = 0
        for (column, prefix, plaintexts, keys, valid, _groups), count in zip(columns_in, counts, strict=True):
            if count == 0:
                result[column] = pa.nulls(size, pa.binary())
                continue
            index = None if dek_index is None else dek_index[position:position + count]
            position += count
            if native:  # the whole column in one call, outside the GIL
                contexts = _aead.contexts(prefix, header_bytes, len(headers[0]))
                result[column] = _with_nulls(_aead.seal_cells(key_bytes, header_bytes, len(headers[0]), contexts,
                                                              index, plaintexts, keys), valid)
                continue
            contexts = _contexts(prefix, deks, index)
            # Chunks small enough that each step's temporaries stay in the CPU caches.
            sealed = [_seal(keyset, headers, contexts, None if index is None else index[start:start + _CHUNK],
                            plaintexts.slice(start, _CHUNK), keys.slice(start, _CHUNK))
                      for start in range(0, count, _CHUNK)]
            result[column] = _with_nulls(pa.concat_arrays(sealed), valid)
        return result

    def encrypt_cell(self, value: Any, *, table: str, column: str, row_key: Any,
                     scope_key: str | None = None) -> bytes | None:
        """One cell: the bytes of :meth:`encrypt_column` for a single value (None for None)."""
        cell = self.encrypt_column([value], table=table, column=column, row_keys=[row_key], scope_key=scope_key)
        return cell[0].as_py()

    def _scopes(self, scope_key: Any, count: int,
                valid: np.ndarray | None) -> tuple[list[tuple[str, str]], np.ndarray | None]:
        """The (scope, scope key) groups of the valid rows, and each valid row's group (None: all in group 0)."""
        if scope_key is None:
            return [("batch", self.batch_id)], None
        if isinstance(scope_key, str):
            return [("patient", check_scope_key(scope_key))], None
        keys = _as_array(scope_key, "scope_key")
        if len(keys) != count:
            raise ValueError(f"scope_key has {len(keys)} entries for {count} values")
        keys = keys.cast(pa.string())
        if valid is not None:
            keys = keys.filter(valid)
        if keys.null_count:
            raise ValueError("scope_key must be set for every non-null value")
        encoded = keys.dictionary_encode()
        names = encoded.dictionary.to_pylist()
        for name in names:
            check_scope_key(name)
        return [("patient", name) for name in names], encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)

    def _assign(self, table: str, column: str, groups: list[tuple[str, str]], row_group: np.ndarray | None,
                count: int) -> tuple[list[_Dek], np.ndarray | None]:
        """DEKs for the valid rows: reuse cached or stored ones, make and record new ones, count invocations.

        New DEKs are recorded (the patients' in one batch of provider requests) before any cell uses them; if
        the provider or a store fails, nothing is cached or counted and the error propagates.
        """
        counts = [count] if row_group is None else np.bincount(row_group, minlength=len(groups)).tolist()
        with self._lock:
            now = self._clock()
            plan: list[list[tuple[_Dek, int]]] = []
            missing: list[int] = []
            slots = [_slot(table, column, scope, key) for scope, key in groups]
            for index, (scope, key) in enumerate(groups):
                need, segments = counts[index], []
                current = self._current(scope, key, slots[index], now)
                if current is not None:
                    take = min(need, self._max_invocations - current.uses)
                    segments.append((current, take))
                    need -= take
                plan.append(segments)
                missing.append(need)
            # Patients this process holds no DEK for: their lifelong DEK from the store, unwrapped in batches.
            lookup = [key for (scope, key), need, segments in zip(groups, missing, plan, strict=True)
                      if scope == "patient" and need and not segments]
            stored = self._stored_patient_deks(lookup, now) if lookup else {}
            records: list[DekRecord] = []
            fresh: list[tuple[_Dek, bytes]] = []
            # Every new patient DEK's randomness in one call (at most one DEK per patient unless a patient's
            # cells here pass the invocation limit, which the generator below covers).
            randomness = _randomness(sum(1 for (scope, _key), need, segments in zip(groups, missing, plan, strict=True)
                                         if scope == "patient" and need and not segments))
            for index, (scope, key) in enumerate(groups):
                found = stored.get(key) if scope == "patient" and missing[index] and not plan[index] else None
                if found is not None:
                    take = min(missing[index], self._max_invocations - found.uses)
                    plan[index].append((found, take))
                    missing[index] -= take
                need = missing[index]
                while need > 0:
                    if scope == "batch":
                        dek, record = self._new_dek(self.kek_name, *slots[index], now)
                        records.append(record)
                    else:
                        dek, material = _new_patient_dek(key, now, randomness)
                        fresh.append((dek, material))
                    take = min(need, self._max_invocations)
                    plan[index].append((dek, take))
                    need -= take
            if fresh:
                self._record_patient_deks(fresh)
            self._store.put(records, commit=self._commit)
            for index, slot in enumerate(slots):
                for dek, take in plan[index]:
                    dek.uses += take
                    self._remember(dek)
                last = plan[index][-1][0]
                if groups[index][0] == "patient":
                    self._patients.pop(groups[index][1], None)
                    self._patients[groups[index][1]] = last
                else:
                    self._active.pop(slot, None)
                    self._active[slot] = last
            _trim(self._active, self._max_cached)  # many batches: forget the least recently used
            _trim(self._patients, self._max_cached)
            _trim(self._known, self._max_cached)
        return _layout(plan, row_group, counts)

    def _current(self, scope: str, key: str, slot: tuple[str, str, str, str], now: float) -> _Dek | None:
        """The DEK this process is using for a scope, if it may encrypt more (patients' DEKs have no TTL)."""
        if scope == "patient":
            dek = self._patients.pop(key, None)
            if dek is not None:
                self._patients[key] = dek  # most recently used
            return dek if dek is not None and dek.uses < self._max_invocations else None
        dek = self._active.get(slot)
        if dek is not None and now - dek.created < self._ttl and dek.uses < self._max_invocations:
            return dek
        return None

    def _stored_patient_deks(self, scope_keys: list[str], now: float) -> dict[str, _Dek]:
        """The newest DEK of each patient that has one in the store, unwrapped in batches of requests."""
        records = self._patient_keys.find(scope_keys)
        newest: dict[str, _Dek] = {}
        order: dict[str, object] = {}
        for record, dek in zip(records, self._unwrap_patients(records, now), strict=True):
            if dek is None:
                continue  # damaged or moved: this patient gets a fresh DEK; their old cells still fail
            if record.scope_key not in order or record.created_at > order[record.scope_key]:  # type: ignore[operator]
                order[record.scope_key] = record.created_at
                newest[record.scope_key] = dek
        return newest

    def _unwrap_patients(self, records: list[PatientKey], now: float) -> list[_Dek | None]:
        """Unwrap patient DEK records (one batch of requests per KEK); None where one does not unwrap."""
        by_kek: dict[str, list[int]] = {}
        for position, record in enumerate(records):
            by_kek.setdefault(record.kek_name, []).append(position)
        result: list[_Dek | None] = [None] * len(records)
        for kek, positions in by_kek.items():
            plaintexts = self._provider.unwrap_each(kek, [records[i].wrapped for i in positions])
            for position, plaintext in zip(positions, plaintexts, strict=True):
                record = records[position]
                key = unbind(plaintext, record.key_id, record.scope_key)
                if key is not None:
                    result[position] = _Dek(key_id=bytes.fromhex(record.key_id), key=key, table="",
                                            column="", scope_key=record.scope_key, created=now, scope="patient")
        return result

    def _record_patient_deks(self, fresh: list[tuple[_Dek, bytes]]) -> None:
        """Wrap new patient DEKs in one batch of provider requests and record them before any is used."""
        store = self._patient_keys
        wrapped = self._provider.wrap_many(self.kek_name, [material for _dek, material in fresh])
        if len(wrapped) != len(fresh):
            raise CryptoError(f"the key provider wrapped {len(wrapped)} of {len(fresh)} patient data keys")
        store.put_new([dek.key_id for dek, _material in fresh], [dek.scope_key for dek, _material in fresh],
                      self.kek_name, wrapped, commit=self._commit)

    def _ensure_keks(self, names: list[str]) -> None:
        ensure_many = getattr(self._provider, "ensure_keys", None)
        if callable(ensure_many):
            ensure_many(names)
            return
        for name in names:
            self._provider.ensure_key(name)

    def _new_dek(self, kek: str, table: str, column: str, scope: str, scope_key: str,
                 now: float) -> tuple[_Dek, DekRecord]:
        data_key = self._provider.generate_data_key(kek)
        if len(data_key.plaintext) != _aead.KEY_SIZE:
            raise CryptoError(f"the key provider returned a {len(data_key.plaintext)}-byte data key for {kek!r}; "
                              f"AES-256 needs {_aead.KEY_SIZE}")
        key_id = secrets.token_bytes(KEY_ID_SIZE)
        dek = _Dek(key_id=key_id, key=bytes(data_key.plaintext), table=table, column=column,
                   scope_key=scope_key, created=now, scope=scope)
        record = DekRecord(key_id=key_id.hex(), kek_name=kek, wrapped=data_key.wrapped, table=table, column=column,
                           scope=scope, scope_key=scope_key)
        return dek, record

    def _remember(self, dek: _Dek) -> None:
        """Cache a DEK by key id as the most recently used (the caller trims the cache once it is done)."""
        self._known.pop(dek.key_id, None)
        self._known[dek.key_id] = dek

    # decryption ----------------------------------------------------------------------------------------

    def decrypt_column(self, cells: pa.Array | pa.ChunkedArray | list[bytes | None], *, table: str, column: str,
                       row_keys: pa.Array | pa.ChunkedArray | list[Any],
                       value_type: pa.DataType | None = None) -> pa.Array:
        """Decrypt a column of cells made by :meth:`encrypt_column`; nulls stay null.

        Args:
            cells: binary cells.
            table, column, row_keys: where the cells are; must be what they were encrypted for.
            value_type: the type to cast the plaintexts back to; strings by default, ``pa.binary()`` for
                values that were binary.

        Raises:
            DecryptionError: "decryption failed for cell <table>.<column>[<row key>]" for the first cell that
                does not decrypt, whatever the reason (tampered, moved, truncated, unknown or shredded key);
                no plaintext of the column is returned then.
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider is unreachable or refuses.
            TypeError, ValueError: caller mistakes (cells not binary, row key count, uncastable value_type).
        """
        prefix = _aad_prefix(table, column)
        array = _as_array(cells, "cells")
        if pa.types.is_null(array.type):
            array = pa.nulls(len(array), pa.binary())
        if not any(check(array.type) for check in _BINARY_LIKE):
            raise TypeError(f"cells of {table}.{column} must be binary, not {array.type}")
        array = array.cast(pa.binary())
        encoded_keys, key_text = _row_keys(row_keys, len(array))
        valid = _valid_mask(array)
        rows = np.flatnonzero(valid) if valid is not None else None
        if valid is not None:
            array, encoded_keys = array.filter(valid), encoded_keys.filter(valid)

        def fail(position: int) -> DecryptionError:
            row = int(rows[position]) if rows is not None else position
            return DecryptionError(f"decryption failed for cell {table}.{column}[{key_text[row].as_py()}]")

        plaintexts = self._open(array, encoded_keys, prefix, table, column, fail)
        return _with_nulls(_decode(plaintexts, value_type, table, column), valid)

    def decrypt_cell(self, cell: bytes | None, *, table: str, column: str, row_key: Any,
                     value_type: pa.DataType | None = None) -> Any:
        """One cell of :meth:`decrypt_column`, as a Python value (None for None)."""
        if cell is not None and not isinstance(cell, bytes | bytearray):
            raise TypeError(f"a cell must be bytes, not {type(cell).__name__}")
        array = pa.array([cell], pa.binary())
        return self.decrypt_column(array, table=table, column=column, row_keys=[row_key],
                                   value_type=value_type)[0].as_py()

    def _open(self, cells: pa.Array, row_keys: pa.Array, prefix: bytes, table: str, column: str,
              fail: Callable[[int], DecryptionError]) -> pa.Array:
        """Check every cell's header, find the DEKs, then decrypt chunk by chunk."""
        count = len(cells)
        if count == 0:
            return pa.array([], pa.binary())
        offsets, data = _aead.binary_parts(cells)
        starts, lengths = offsets[:-1], np.diff(offsets)
        bad = (lengths < _MIN_CELL) | (lengths > _MAX_CELL)
        readable = np.flatnonzero(~bad)  # only cells long enough to hold a header are read
        version = np.zeros(count, dtype=np.int64)
        key_length = np.zeros(count, dtype=np.int64)
        version[readable] = data[starts[readable]]
        key_length[readable] = data[starts[readable] + 1]
        bad |= (version != FORMAT_VERSION) | (key_length < 1) | (key_length > MAX_KEY_ID_SIZE)
        bad |= lengths < 2 + key_length + _aead.NONCE_SIZE + _aead.TAG_SIZE
        if bad.any():
            raise fail(int(np.argmax(bad)))
        unique_ids, inverse = _key_ids(cells, data, starts, key_length)
        deks = self._resolve(unique_ids, table, column)
        unknown = np.array([dek is None for dek in deks])[inverse]
        if unknown.any():
            raise fail(int(np.argmax(unknown)))
        usable: list[_Dek] = [dek for dek in deks if dek is not None]
        uniform = bool(np.all(key_length == key_length[0]))
        if _aead.NATIVE and uniform:  # every cell in one call, outside the GIL
            header_size = 2 + int(key_length[0])
            contexts = _aead.contexts(prefix, b"".join(dek.header for dek in usable), header_size)
            try:
                return _aead.open_cells(b"".join(dek.key for dek in usable), contexts, inverse, cells,
                                        np.full(count, header_size, dtype=np.int64), row_keys)
            except _aead.AuthenticationFailed as exc:
                raise fail(exc.index) from None
        keyset = _aead.KeySet([dek.aead for dek in usable])
        plain: list[bytes] = []
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            chunk = slice(start, stop)
            try:
                plain += _open_chunk(keyset, inverse[chunk], cells.slice(start, stop - start),
                                     row_keys.slice(start, stop - start), key_length[chunk], uniform, prefix)
            except _aead.AuthenticationFailed as exc:
                raise fail(start + exc.index) from None
        sizes = lengths - (2 + key_length + _aead.NONCE_SIZE + _aead.TAG_SIZE)
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum(sizes, out=offsets[1:])
        return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(plain))])

    def _resolve(self, key_ids: list[str], table: str, column: str) -> list[_Dek | None]:
        """The DEK of each key id, from the cache or unwrapped through the provider; None when unusable."""
        with self._lock:
            now = self._clock()
            found: dict[str, _Dek | None] = {}
            for key in key_ids:
                key_id = bytes.fromhex(key)
                cached = self._known.get(key_id)
                # Patients' DEKs too: a patient shredded by another process stops decrypting here within the TTL.
                if cached is not None and now - cached.created < self._ttl:
                    found[key] = cached
                    del self._known[key_id]
                    self._known[key_id] = cached  # most recently used
            missing = [key for key in key_ids if key not in found]
            if missing:
                patients = list(self._patient_keys.get(missing).values())
                for record, dek in zip(patients, self._unwrap_patients(patients, now), strict=True):
                    if dek is not None:
                        self._remember(dek)
                        found[record.key_id] = dek
                missing = [key for key in missing if key not in found]
            if missing:  # batch and pseudonym DEKs, and patients' DEKs of a lake not yet migrated
                records = self._store.get(missing)
                by_kek: dict[str, list[DekRecord]] = {}
                for record in records.values():
                    by_kek.setdefault(record.kek_name, []).append(record)
                for kek, group in by_kek.items():
                    for record, plaintext in zip(group, self._unwrap(kek, group), strict=True):
                        if plaintext is None or len(plaintext) != _aead.KEY_SIZE:
                            continue
                        dek = _Dek(key_id=bytes.fromhex(record.key_id), key=bytes(plaintext),
                                   table=record.table, column=record.column, scope_key=record.scope_key,
                                   created=now, scope=record.scope)
                        self._remember(dek)
                        found[record.key_id] = dek
            _trim(self._known, self._max_cached)
        # A batch DEK only ever decrypts the table and column it was made for; a patient's DEK serves all of
        # that patient's cells (the associated data still binds each cell to its table, column and row).
        return [dek if dek is not None and _serves(dek, table, column) else None
                for dek in (found.get(key) for key in key_ids)]

    def _unwrap(self, kek: str, records: list[DekRecord]) -> list[bytes | None]:
        try:
            return list(self._provider.unwrap_many(kek, [r.wrapped for r in records]))
        except (KeyProviderUnavailableError, KeyAccessDeniedError):
            raise
        except CryptoError:
            pass  # one bad key fails a batch: find which, one by one
        result: list[bytes | None] = []
        for record in records:
            try:
                result.append(self._provider.unwrap(kek, record.wrapped))
            except (KeyProviderUnavailableError, KeyAccessDeniedError):
                raise
            except CryptoError:
                result.append(None)
        return result

    # key lifecycle -------------------------------------------------------------------------------------

    def shred(self, scope_key: str, *, commit: CommitInfo | None = None) -> int:
        """Crypto-shred a patient: delete their wrapped DEKs for good; returns how many records went.

        Every cell encrypted with ``scope_key`` becomes undecryptable in every version of every table. In a
        lake not yet migrated (``medguard keys migrate``) the patient's own KEK is destroyed as well. Safe to
        re-run if interrupted (nothing left to delete is no error).
        """
        check_scope_key(scope_key)
        self.evict(scope_key)
        dropped = self._patient_keys.shred(scope_key, commit=commit)
        legacy = self._store.records(scope="patient", scope_key=scope_key)
        if legacy:
            for kek in sorted({record.kek_name for record in legacy}):
                self._provider.destroy_key(kek)
            dropped += self._store.drop_scope(scope_key, scope="patient", commit=commit)
        self.evict(scope_key)
        return dropped

    def evict(self, scope_key: str | None = None) -> None:
        """Forget cached DEKs (of one scope key, or all): the next use fetches or makes them again."""
        with self._lock:
            for key, dek in list(self._known.items()):
                if scope_key is None or dek.scope_key == scope_key:
                    del self._known[key]
            for key, dek in list(self._active.items()):
                if scope_key is None or dek.scope_key == scope_key:
                    del self._active[key]
            if scope_key is None:
                self._patients.clear()
            else:
                self._patients.pop(scope_key, None)


def _trim(cache: dict[Any, _Dek], bound: int) -> None:
    """Forget the least recently used entries of a cache past its bound, in one pass over its oldest entries
    (once per call that added entries: one entry at a time would rescan the dict's emptied front each time)."""
    if len(cache) > bound:
        for key in list(islice(cache, len(cache) - bound)):
            del cache[key]


def _randomness(deks: int) -> Iterator[bytes]:
    """Key and key-id bytes for new DEKs: ``deks`` of them from one ``os.urandom`` call, then one call each."""
    size = _aead.KEY_SIZE + KEY_ID_SIZE
    pool = os.urandom(size * deks)
    for start in range(0, len(pool), size):
        yield pool[start:start + size]
    while True:
        yield os.urandom(size)


def _new_patient_dek(scope_key: str, now: float, randomness: Iterator[bytes] | None = None) -> tuple[_Dek, bytes]:
    """A fresh random patient DEK and what gets wrapped for it (the DEK bound to its key id and patient)."""
    drawn = next(randomness) if randomness is not None else os.urandom(_aead.KEY_SIZE + KEY_ID_SIZE)
    plaintext, key_id = drawn[:_aead.KEY_SIZE], drawn[_aead.KEY_SIZE:]
    # Built field by field: the key is 32 bytes of urandom by construction, so the constructor's checks (a
    # tenth of making a hundred thousand patients' keys) are skipped; the fields are the constructor's own.
    dek = object.__new__(_Dek)
    dek.key_id, dek.key, dek.table, dek.column, dek.scope_key = key_id, plaintext, "", "", scope_key
    dek.created, dek.uses, dek.scope = now, 0, "patient"
    return dek, bind_id(plaintext, key_id, scope_key)


def _contexts(prefix: bytes, deks: list[_Dek], dek_index: np.ndarray | None) -> np.ndarray:
    """The 16-byte context of each DEK a column's cells use, as rows of a ``(len(deks), 16)`` matrix."""
    used = [0] if dek_index is None else np.unique(dek_index).tolist()
    base = hashlib.sha256(prefix)
    digests = []
    for slot in used:
        digest = base.copy()
        digest.update(deks[slot].header)
        digests.append(digest.digest()[:_CONTEXT_SIZE])
    contexts = np.zeros((len(deks), _CONTEXT_SIZE), dtype=np.uint8)
    contexts[used] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(used), _CONTEXT_SIZE)
    return contexts


def _seal(keyset: _aead.KeySet, header_bytes: list[bytes], contexts: np.ndarray, dek_index: np.ndarray | None,
          plaintexts: pa.Array,
          row_keys: pa.Array) -> pa.Array:
    """The cells of a chunk of valid values: ``header || nonce || ciphertext || tag`` each."""
    count = len(plaintexts)
    nonces = _aead.random_nonces(count)
    nonce_list, plain_list = _aead.nonce_list(nonces), plaintexts.to_pylist()
    if dek_index is None:
        aad_list = _aads(contexts[0].tobytes(), row_keys)
        sealed = keyset.keys[0].seal_many(nonce_list, plain_list, aad_list)
    else:
        aad_list = _aads(contexts[dek_index], row_keys)
        sealed = _aead.seal_rows(keyset, dek_index.tolist(), nonce_list, plain_list, aad_list)
    # Each cell is header || nonce || sealed: one join of the pieces makes the data buffer, and the offsets
    # follow from the plaintext lengths, so no per-cell Arrow conversion is needed.
    per_row = repeat(header_bytes[0], count) if dek_index is None else map(header_bytes.__getitem__,
                                                                            dek_index.tolist())
    data = b"".join(chain.from_iterable(zip(per_row, nonce_list, sealed, strict=True)))
    sizes = pc.binary_length(plaintexts).to_numpy(zero_copy_only=False).astype(np.int64) + _OVERHEAD
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _slot(table: str, column: str, scope: str, scope_key: str) -> tuple[str, str, str, str]:
    """The DEK cache slot of a scope: batch DEKs per (table, column), a patient's DEK shared by all their cells.

    Sharing keeps the provider calls per patient at one per TTL instead of one per table and column, which is
    what makes per-patient keys affordable; moved cells still fail, since the associated data binds them.
    """
    return (table, column, scope, scope_key) if scope == "batch" else ("", "", scope, scope_key)


def _serves(dek: _Dek, table: str, column: str) -> bool:
    if dek.scope == "patient":
        return dek.table == "" and dek.column == ""
    return dek.scope == "batch" and dek.table == table and dek.column == column


def _layout(plan: list[list[tuple[_Dek, int]]], row_group: np.ndarray | None,
            counts: list[int]) -> tuple[list[_Dek], np.ndarray | None]:
    """The distinct DEKs of a plan and each valid row's index into them (None when there is one DEK)."""
    deks: list[_Dek] = []
    slots: dict[int, int] = {}
    for segments in plan:
        for dek, _take in segments:
            if id(dek) not in slots:
                slots[id(dek)] = len(deks)
                deks.append(dek)
    if len(deks) == 1:
        return deks, None
    if row_group is not None and all(len(segments) == 1 for segments in plan):  # one DEK per group: no sort
        group_slot = np.array([slots[id(segments[0][0])] for segments in plan], dtype=np.int64)
        return deks, group_slot[row_group]
    total = sum(counts)
    order = np.arange(total) if row_group is None else np.argsort(row_group, kind="stable")
    dek_index = np.empty(total, dtype=np.int64)
    position = 0
    for segments in plan:
        for dek, take in segments:
            dek_index[order[position:position + take]] = slots[id(dek)]
            position += take
    return deks, dek_index


def _open_chunk(keyset: _aead.KeySet, dek_index: np.ndarray, cells: pa.Array, row_keys: pa.Array,
                key_length: np.ndarray, uniform: bool, prefix: bytes) -> list[bytes]:
    """Plaintexts of a chunk of checked cells whose DEKs are known.

    Raises:
        AuthenticationFailed: with the position in the chunk of the first cell that does not verify.
    """
    count = len(cells)
    if uniform:
        head = 2 + int(key_length[0])
        nonce_cells = pc.binary_slice(cells, head, head + _aead.NONCE_SIZE)
        nonces = _aead.nonce_list(np.frombuffer(nonce_cells.buffers()[2], dtype=np.uint8,
                                                count=count * _aead.NONCE_SIZE).reshape(count, -1))
        # An explicit stop: binary_slice sizes its output buffer from it.
        sealed = pc.binary_slice(cells, head + _aead.NONCE_SIZE, _MAX_CELL).to_pylist()
        header_list = pc.binary_slice(cells, 0, head).to_pylist() if len(keyset.keys) > 1 else []
    else:
        raw = cells.to_pylist()
        heads = (2 + key_length).tolist()
        nonces = [cell[h:h + _aead.NONCE_SIZE] for cell, h in zip(raw, heads, strict=True)]
        sealed = [cell[h + _aead.NONCE_SIZE:] for cell, h in zip(raw, heads, strict=True)]
        header_list = [cell[:h] for cell, h in zip(raw, heads, strict=True)]
    if len(keyset.keys) == 1:  # every cell has the same header: one context
        first = cells[0].as_py()
        aads = _aads(_context(prefix, first[:2 + first[1]]), row_keys)
        return keyset.keys[0].open_many(nonces, sealed, aads)
    contexts = {header: _context(prefix, header) for header in set(header_list)}
    context_rows = np.frombuffer(b"".join(contexts[h] for h in header_list), dtype=np.uint8)
    aads = _aads(context_rows.reshape(count, _CONTEXT_SIZE), row_keys)
    return _aead.open_rows(keyset, dek_index.tolist(), nonces, sealed, aads)


def _aads(context: bytes | np.ndarray, row_keys: pa.Array) -> list[bytes]:
    """The associated data of each cell, ``context || row key``: one context for all, or a row of contexts."""
    count = len(row_keys)
    offsets, data = _aead.binary_parts(row_keys)
    widths = np.diff(offsets)
    if count and np.all(widths == widths[0]):
        # Row keys of one width (the usual ids): lay the associated data out as rows of a matrix.
        width, start = int(widths[0]), int(offsets[0])
        rows = np.empty((count, _CONTEXT_SIZE + width), dtype=np.uint8)
        rows[:, :_CONTEXT_SIZE] = np.frombuffer(context, dtype=np.uint8) if isinstance(context, bytes) else context
        rows[:, _CONTEXT_SIZE:] = data[start:start + count * width].reshape(count, width)
        return rows.view(f"V{rows.shape[1]}").ravel().tolist()
    if isinstance(context, bytes):
        return pc.binary_join_element_wise(context, row_keys, b"").to_pylist()
    contexts = pa.Array.from_buffers(pa.binary(_CONTEXT_SIZE), count,
                                     [None, pa.py_buffer(np.ascontiguousarray(context))])
    return pc.binary_join_element_wise(contexts.cast(pa.binary()), row_keys, b"").to_pylist()


def _key_ids(cells: pa.Array, data: np.ndarray, starts: np.ndarray,
             key_length: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The distinct key ids (hex) of the cells and, for each cell, the index of its key id among them."""
    uniform = bool(np.all(key_length == key_length[0]))
    lengths = [int(key_length[0])] if uniform else np.unique(key_length).tolist()
    names: list[str] = []
    index = np.empty(len(starts), dtype=np.int64)
    for length in lengths:
        if uniform:  # the usual case: slice the ids out in one pass, no index arrays
            rows = slice(None)
            ids = pc.binary_slice(cells, 2, 2 + length)
            matrix = np.frombuffer(ids.buffers()[2], dtype=np.uint8, count=len(ids) * length)
            matrix = matrix.reshape(len(ids), length)
        else:
            rows = np.flatnonzero(key_length == length)
            matrix = data[starts[rows, None] + 2 + np.arange(length)]
        if np.all(matrix == matrix[0]):  # one DEK for every cell, as batch-scoped columns have
            distinct, inverse = matrix[:1], np.zeros(len(matrix), dtype=np.int64)
        else:
            distinct, inverse = np.unique(np.ascontiguousarray(matrix).view(f"V{length}").ravel(),
                                          return_inverse=True)
        index[rows] = inverse.ravel() + len(names)
        names.extend(item.tobytes().hex() for item in distinct)
    return names, index


def _decode(plaintexts: pa.Array, value_type: pa.DataType | None, table: str, column: str) -> pa.Array:
    target = value_type or pa.string()
    if pa.types.is_binary(target):
        return plaintexts
    try:
        text = plaintexts.cast(pa.string())
        return text if pa.types.is_string(target) else text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # Arrow's message quotes the value that failed, plaintext PHI: raised outside, it is not even chained
    raise ValueError(f"the plaintexts of {table}.{column} do not cast to {target}")
