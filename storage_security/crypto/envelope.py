"""Envelope encryption of Arrow columns: AES-256-GCM cells under cached DEKs wrapped by the provider's KEKs."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, repeat
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
_MAX_CACHED_KEYS = 100_000
_CHUNK = 8192  # cells per sealing pass: its temporaries stay in the CPU caches
_OFFSETS_LIMIT = 2**31 - 1
_BINARY_LIKE = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view, pa.types.is_fixed_size_binary)
_STRING_LIKE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def patient_kek_name(scope_key: str) -> str:
    """The provider KEK that wraps a patient's DEKs: destroying it shreds the patient."""
    return f"patient-{check_scope_key(scope_key)}"


@dataclass(eq=False)
class _Dek:
    """A usable DEK: its id, its cipher, and what it may encrypt. Never pickled, never printed."""

    key_id: bytes
    aead: _aead.AesGcm
    table: str
    column: str
    scope_key: str
    created: float
    uses: int = 0
    scope: str = "batch"

    @property
    def header(self) -> bytes:
        return bytes((FORMAT_VERSION, len(self.key_id))) + self.key_id

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


def _binary_parts(cells: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets and data bytes of a ``binary`` array, as numpy views."""
    offsets = np.frombuffer(cells.buffers()[1], dtype=np.int32)[cells.offset:cells.offset + len(cells) + 1]
    data_buffer = cells.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


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

    DEKs: one per (table, column, batch) by default; with ``scope_key`` one per patient for all of that
    patient's cells in every table and column (recorded with empty table and column), wrapped by the patient's
    own KEK :func:`patient_kek_name`, so :meth:`shred` (destroying that KEK) makes
    the patient's cells undecryptable in every table version. A DEK is reused from the in-memory cache until
    ``dek_ttl_seconds`` pass or it has encrypted ``max_invocations`` cells, then a fresh one is made.
    Decryption caches unwrapped DEKs for the same TTL.

    Args:
        provider: the key provider holding the KEKs.
        store: where wrapped DEKs are recorded.
        kek_name: the KEK for batch-scoped DEKs.
        batch_id: names this cipher's batch in DEK records; random when omitted.
        dek_ttl_seconds: how long a DEK is used and kept unwrapped in memory.
        max_invocations: cells one DEK may encrypt before a fresh one is made (at most 2^32).
        clock: monotonic seconds, injectable for tests.
        commit: who/why for the DEK store's commits.

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
    ) -> None:
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
        self._active: dict[tuple[str, str, str, str], _Dek] = {}
        self._known: dict[str, tuple[_Dek, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, provider: KeyProvider | None = None, **options: Any) -> CellCipher:
        """A cipher over the provider of ``settings`` (``key_provider``) and the lake's DEK store."""
        if provider is None:
            from storage_security.keys.providers import provider_from_settings

            provider = provider_from_settings(settings)
        options.setdefault("kek_name", settings.vault.kek_name)
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
            TypeError, ValueError: caller mistakes (types, lengths, sizes, names).
        """
        prefix = _aad_prefix(table, column)
        array = _as_array(values, "values")
        plaintexts = _plaintexts(array)
        encoded_keys, _ = _row_keys(row_keys, len(array))
        valid = _valid_mask(plaintexts)
        groups, row_group = self._scopes(scope_key, len(array), valid)
        if valid is not None:
            plaintexts, encoded_keys = plaintexts.filter(valid), encoded_keys.filter(valid)
        count = len(plaintexts)
        if count == 0:
            return pa.nulls(len(array), pa.binary())
        lengths = pc.binary_length(plaintexts)
        if pc.max(lengths).as_py() > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"a value of {table}.{column} is over {MAX_PLAINTEXT_BYTES} bytes")
        if pc.sum(lengths).as_py() + count * _OVERHEAD > _OFFSETS_LIMIT:
            raise ValueError(f"{table}.{column}: more than 2 GiB of cells; encrypt the column in smaller batches")
        deks, dek_index = self._assign(table, column, groups, row_group, count)
        # Chunks small enough that each step's temporaries stay in the CPU caches.
        sealed = [self._seal(deks, None if dek_index is None else dek_index[start:start + _CHUNK],
                             plaintexts.slice(start, _CHUNK), encoded_keys.slice(start, _CHUNK), prefix)
                  for start in range(0, count, _CHUNK)]
        return _with_nulls(pa.concat_arrays(sealed), valid)

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
        """DEKs for the valid rows: reuse fresh cached ones, make and record new ones, count invocations.

        New DEKs are recorded in the DEK store before any cell uses them; if the provider or the store
        fails, nothing is cached or counted and the error propagates.
        """
        counts = [count] if row_group is None else np.bincount(row_group, minlength=len(groups)).tolist()
        with self._lock:
            now = self._clock()
            plan: list[list[tuple[_Dek, int]]] = []
            missing: list[int] = []
            slots = [_slot(table, column, scope, key) for scope, key in groups]
            for index in range(len(groups)):
                need, segments = counts[index], []
                active = self._active.get(slots[index])
                if active is not None and now - active.created < self._ttl and active.uses < self._max_invocations:
                    take = min(need, self._max_invocations - active.uses)
                    segments.append((active, take))
                    need -= take
                plan.append(segments)
                missing.append(need)
            patient_keks = sorted({patient_kek_name(key) for (scope, key), need in zip(groups, missing, strict=True)
                                   if need and scope == "patient"})
            if patient_keks:
                self._ensure_keks(patient_keks)
            records: list[DekRecord] = []
            for index, (scope, key) in enumerate(groups):
                kek = self.kek_name if scope == "batch" else patient_kek_name(key)
                need = missing[index]
                while need > 0:
                    dek, record = self._new_dek(kek, *slots[index], now)
                    take = min(need, self._max_invocations)
                    plan[index].append((dek, take))
                    records.append(record)
                    need -= take
            self._store.put(records, commit=self._commit)
            for index, slot in enumerate(slots):
                for dek, take in plan[index]:
                    dek.uses += take
                    self._remember(dek, dek.created)
                self._active.pop(slot, None)
                self._active[slot] = plan[index][-1][0]
            while len(self._active) > _MAX_CACHED_KEYS:  # many patients: forget the least recently used
                del self._active[next(iter(self._active))]
        return _layout(plan, row_group, counts)

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
        dek = _Dek(key_id=key_id, aead=_aead.AesGcm(data_key.plaintext), table=table, column=column,
                   scope_key=scope_key, created=now, scope=scope)
        record = DekRecord(key_id=key_id.hex(), kek_name=kek, wrapped=data_key.wrapped, table=table, column=column,
                           scope=scope, scope_key=scope_key)
        return dek, record

    def _remember(self, dek: _Dek, at: float) -> None:
        key = dek.key_id.hex()
        self._known.pop(key, None)
        self._known[key] = (dek, at)
        while len(self._known) > _MAX_CACHED_KEYS:
            del self._known[next(iter(self._known))]

    def _seal(self, deks: list[_Dek], dek_index: np.ndarray | None, plaintexts: pa.Array, row_keys: pa.Array,
              prefix: bytes) -> pa.Array:
        count = len(plaintexts)
        nonces = _aead.random_nonces(count)
        nonce_list, plain_list = _aead.nonce_list(nonces), plaintexts.to_pylist()
        contexts = [_context(prefix, dek.header) for dek in deks]
        if dek_index is None:
            aad_list = _aads(contexts[0], row_keys)
            sealed = deks[0].aead.seal_many(nonce_list, plain_list, aad_list)
        else:
            context_rows = np.frombuffer(b"".join(contexts), dtype=np.uint8).reshape(len(deks), _CONTEXT_SIZE)
            aad_list = _aads(context_rows[dek_index], row_keys)
            sealed = _aead.seal_rows([dek.aead for dek in deks], dek_index.tolist(), nonce_list, plain_list,
                                     aad_list)
        # Each cell is header || nonce || sealed: one join of the pieces makes the data buffer, and the offsets
        # follow from the plaintext lengths, so no per-cell Arrow conversion is needed.
        header_bytes = [dek.header for dek in deks]
        per_row = repeat(header_bytes[0], count) if dek_index is None else map(header_bytes.__getitem__,
                                                                                dek_index.tolist())
        data = b"".join(chain.from_iterable(zip(per_row, nonce_list, sealed, strict=True)))
        sizes = pc.binary_length(plaintexts).to_numpy(zero_copy_only=False).astype(np.int64) + _OVERHEAD
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum(sizes, out=offsets[1:])
        return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])

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
        offsets, data = _binary_parts(cells)
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
        plain: list[bytes] = []
        for start in range(0, count, _CHUNK):
            stop = min(start + _CHUNK, count)
            chunk = slice(start, stop)
            try:
                plain += _open_chunk(usable, inverse[chunk], cells.slice(start, stop - start),
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
                cached = self._known.get(key)
                if cached is not None and now - cached[1] < self._ttl:
                    found[key] = cached[0]
            missing = [key for key in key_ids if key not in found]
            if missing:
                records = self._store.get(missing)
                by_kek: dict[str, list[DekRecord]] = {}
                for record in records.values():
                    by_kek.setdefault(record.kek_name, []).append(record)
                for kek, group in by_kek.items():
                    for record, plaintext in zip(group, self._unwrap(kek, group), strict=True):
                        if plaintext is None or len(plaintext) != _aead.KEY_SIZE:
                            continue
                        dek = _Dek(key_id=bytes.fromhex(record.key_id), aead=_aead.AesGcm(plaintext),
                                   table=record.table, column=record.column, scope_key=record.scope_key,
                                   created=now, scope=record.scope)
                        self._remember(dek, now)
                        found[record.key_id] = dek
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
        """Crypto-shred a patient: destroy their KEK, then drop their DEK records; returns records dropped.

        Every cell encrypted with ``scope_key`` becomes undecryptable in every version of every table. Safe
        to re-run if interrupted (destroying a missing KEK and dropping no records are no errors).
        """
        kek = patient_kek_name(scope_key)
        self._provider.destroy_key(kek)
        self.evict(scope_key)
        return self._store.drop_scope(scope_key, scope="patient", commit=commit)

    def evict(self, scope_key: str | None = None) -> None:
        """Forget cached DEKs (of one scope key, or all): the next use fetches or makes them again."""
        with self._lock:
            for key, (dek, _at) in list(self._known.items()):
                if scope_key is None or dek.scope_key == scope_key:
                    del self._known[key]
            for key, dek in list(self._active.items()):
                if scope_key is None or dek.scope_key == scope_key:
                    del self._active[key]


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
    total = sum(counts)
    order = np.arange(total) if row_group is None else np.argsort(row_group, kind="stable")
    dek_index = np.empty(total, dtype=np.int64)
    position = 0
    for segments in plan:
        for dek, take in segments:
            dek_index[order[position:position + take]] = slots[id(dek)]
            position += take
    return deks, dek_index


def _open_chunk(deks: list[_Dek], dek_index: np.ndarray, cells: pa.Array, row_keys: pa.Array,
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
        header_list = pc.binary_slice(cells, 0, head).to_pylist() if len(deks) > 1 else []
    else:
        raw = cells.to_pylist()
        heads = (2 + key_length).tolist()
        nonces = [cell[h:h + _aead.NONCE_SIZE] for cell, h in zip(raw, heads, strict=True)]
        sealed = [cell[h + _aead.NONCE_SIZE:] for cell, h in zip(raw, heads, strict=True)]
        header_list = [cell[:h] for cell, h in zip(raw, heads, strict=True)]
    if len(deks) == 1:  # every cell has the same header: one context
        first = cells[0].as_py()
        aads = _aads(_context(prefix, first[:2 + first[1]]), row_keys)
        return deks[0].aead.open_many(nonces, sealed, aads)
    contexts = {header: _context(prefix, header) for header in set(header_list)}
    context_rows = np.frombuffer(b"".join(contexts[h] for h in header_list), dtype=np.uint8)
    aads = _aads(context_rows.reshape(count, _CONTEXT_SIZE), row_keys)
    return _aead.open_rows([dek.aead for dek in deks], dek_index.tolist(), nonces, sealed, aads)


def _aads(context: bytes | np.ndarray, row_keys: pa.Array) -> list[bytes]:
    """The associated data of each cell, ``context || row key``: one context for all, or a row of contexts."""
    count = len(row_keys)
    offsets, data = _binary_parts(row_keys)
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
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"the plaintexts of {table}.{column} do not cast to {target}: {exc}") from exc
