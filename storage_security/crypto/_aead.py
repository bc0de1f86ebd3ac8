"""Raw AES-256-GCM (cryptography's ``AESGCM``): the one primitive under the cell format and the keyring.

Private: the rest of medguard uses the recipes built on it (:mod:`storage_security.crypto.envelope`,
:mod:`storage_security.keys.keyring`). Nonces are 96-bit and random, tags 128-bit; the bulk helpers take nonces
made by :func:`random_nonces` so that a column of cells costs one ``os.urandom`` call.

Where ``make install`` could build them (:mod:`storage_security.crypto._native_build`), :func:`seal_cells`,
:func:`open_cells`, :func:`contexts` and :func:`hmac_hex` run whole columns through OpenSSL in C, without the
GIL; :data:`NATIVE` says whether they are here, and callers keep the one-cell-at-a-time path for when not. Both
paths produce and accept the same bytes (tests check one against the other).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import CryptoError, DecryptionError

try:  # built by `make install`; absent, the callers seal and open one cell at a time through cryptography
    from storage_security.crypto import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the machine's compiler
    _native = None

NATIVE = _native is not None

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


class AuthenticationFailed(DecryptionError):
    """A ciphertext did not authenticate; ``index`` is its position in a bulk call (0 for a single one)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__("decryption failed")
        self.index = index


def check_key(key: bytes) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``key`` is 32 bytes."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"an AES-256-GCM key must be bytes, not {type(key).__name__}")
    if len(key) != KEY_SIZE:
        raise ValueError(f"an AES-256-GCM key must be {KEY_SIZE} bytes, got {len(key)}")


class AesGcm:
    """AES-256-GCM under one key; ``encrypt`` returns ``nonce || ciphertext || tag`` with a random nonce.

    Args:
        key: 32 bytes.

    Raises:
        TypeError: the key is not bytes.
        ValueError: the key is not 32 bytes long.
    """

    __slots__ = ("__weakref__", "_aesgcm")

    def __init__(self, key: bytes) -> None:
        check_key(key)
        self._aesgcm = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return "AesGcm(key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("AesGcm holds key material and cannot be pickled")

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """``nonce || ciphertext || tag`` with a fresh random 96-bit nonce."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aesgcm.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, data: bytes, associated_data: bytes) -> bytes:
        """The plaintext of ``nonce || ciphertext || tag``.

        Raises:
            AuthenticationFailed: too short, or the tag does not verify.
        """
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise AuthenticationFailed()
        try:
            return self._aesgcm.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], associated_data)
        except InvalidTag as exc:
            raise AuthenticationFailed() from exc

    def seal_many(self, nonces: list[bytes], plaintexts: list[bytes], aads: list[bytes]) -> list[bytes]:
        """``ciphertext || tag`` of each plaintext under its nonce and associated data (nonces not included)."""
        return list(map(self._aesgcm.encrypt, nonces, plaintexts, aads))

    def open_many(self, nonces: list[bytes], sealed: list[bytes], aads: list[bytes]) -> list[bytes]:
        """Plaintexts of :meth:`seal_many` output.

        Raises:
            AuthenticationFailed: naming the position of the first ciphertext that does not verify.
        """
        try:
            return list(map(self._aesgcm.decrypt, nonces, sealed, aads))
        except InvalidTag:
            pass
        return _first_failure([self] * len(sealed), nonces, sealed, aads)


class KeySet:
    """Many keys' cipher objects, gathered once for all the bulk calls of a column (a chunk of cells names a few
    of them by index: gathering a hundred thousand patients' keys again for each chunk cost more than sealing)."""

    __slots__ = ("_ciphers", "keys")

    def __init__(self, keys: Sequence[AesGcm]) -> None:
        self.keys = list(keys)
        self._ciphers = [key._aesgcm for key in self.keys]

    def __repr__(self) -> str:
        return f"KeySet({len(self.keys)} keys, <redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a KeySet holds key material and cannot be pickled")


def seal_rows(keys: KeySet, key_index: list[int], nonces: list[bytes], plaintexts: list[bytes],
              aads: list[bytes]) -> list[bytes]:
    """Like :meth:`AesGcm.seal_many`, each row under ``keys.keys[key_index[row]]``."""
    # The unbound method over the keys' own objects: no bound method per key, which for a chunk of many
    # patients' keys was garbage enough to set off the collector over the whole heap again and again.
    encrypt, ciphers = AESGCM.encrypt, keys._ciphers
    return [encrypt(ciphers[k], n, p, a) for k, n, p, a in zip(key_index, nonces, plaintexts, aads, strict=True)]


def open_rows(keys: KeySet, key_index: list[int], nonces: list[bytes], sealed: list[bytes],
              aads: list[bytes]) -> list[bytes]:
    """Like :meth:`AesGcm.open_many`, each row under ``keys.keys[key_index[row]]``."""
    decrypt, ciphers = AESGCM.decrypt, keys._ciphers
    try:
        return [decrypt(ciphers[k], n, c, a) for k, n, c, a in zip(key_index, nonces, sealed, aads, strict=True)]
    except InvalidTag:
        pass
    return _first_failure([keys.keys[k] for k in key_index], nonces, sealed, aads)


def _first_failure(keys: Sequence[AesGcm], nonces: list[bytes], sealed: list[bytes], aads: list[bytes]) -> list[bytes]:
    for index, (key, nonce, data, aad) in enumerate(zip(keys, nonces, sealed, aads, strict=True)):
        try:
            key._aesgcm.decrypt(nonce, data, aad)
        except InvalidTag as exc:
            raise AuthenticationFailed(index) from exc
    raise AssertionError("a bulk decryption failed but no single row does")


def random_nonces(count: int) -> np.ndarray:
    """``count`` random 96-bit nonces as a ``(count, 12)`` uint8 array, from one ``os.urandom`` call."""
    return np.frombuffer(os.urandom(NONCE_SIZE * count), dtype=np.uint8).reshape(count, NONCE_SIZE)


def nonce_list(nonces: np.ndarray) -> list[bytes]:
    """The rows of a ``(count, 12)`` uint8 array as ``bytes`` objects."""
    return np.ascontiguousarray(nonces).view(f"V{NONCE_SIZE}").ravel().tolist()



# native bulk helpers ---------------------------------------------------------------------------------------------

_OFFSETS_LIMIT = 2**31 - 1
_PARALLEL_MIN = 16_384  # rows per thread below which one thread is faster than handing work out
_THREADS = min(os.cpu_count() or 1, 8)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="medguard-aead")


def _in_parallel(count: int, call: Callable[[int, int], int]) -> list[int]:
    """Run ``call(start, stop)`` over ``[0, count)`` split across the machine's cores, returning each part's
    result in order. The native calls release the GIL, so the parts run at once; each writes only its own rows."""
    parts = max(1, min(_THREADS, count // _PARALLEL_MIN))
    if parts == 1:
        return [call(0, count)]
    bounds = np.linspace(0, count, parts + 1).astype(np.int64).tolist()
    futures = [_pool().submit(call, start, stop) for start, stop in itertools.pairwise(bounds)]
    return [future.result() for future in futures]


def binary_parts(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int64, as many as values + 1) and data bytes of a binary or string array, as numpy; checked
    (monotone, inside the data) before any of it reaches C."""
    if not (pa.types.is_binary(values.type) or pa.types.is_string(values.type)):
        values = values.cast(pa.binary())
    count = len(values)
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=count + 1, offset=4 * values.offset).astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else \
        np.zeros(1, np.uint8)
    if count and (offsets[0] < 0 or offsets[-1] > len(data) or np.any(offsets[1:] < offsets[:-1])):
        raise ValueError("malformed binary array")  # never handed to C
    return offsets, data


def _int64s(array: np.ndarray) -> Any:
    """A C pointer to an int64 array's first element (the array must outlive every use of the pointer)."""
    return _native.ffi.cast("int64_t *", _native.ffi.from_buffer(array))


def _index(key_index: np.ndarray | None, count: int, keys: int) -> np.ndarray:
    index = np.zeros(count, dtype=np.int64) if key_index is None else np.ascontiguousarray(key_index, np.int64)
    if len(index) != count or (count and (index.min() < 0 or index.max() >= keys)):
        raise ValueError("key index out of range")
    return index


def contexts(prefix: bytes, headers: bytes, header_size: int) -> np.ndarray:
    """The first 16 bytes of SHA-256(``prefix`` || header) for each ``header_size``-byte header, as rows."""
    count = len(headers) // header_size if header_size else 0
    if header_size <= 0 or count * header_size != len(headers):
        raise ValueError("headers must be whole rows of header_size bytes")
    out = np.empty((count, 16), dtype=np.uint8)
    ffi = _native.ffi
    header_at = ffi.cast("unsigned char *", ffi.from_buffer(headers))
    out_at = ffi.cast("unsigned char *", ffi.from_buffer(out))

    def hash_part(start: int, stop: int) -> int:
        return _native.lib.mg_contexts(prefix, len(prefix), header_at + header_size * start, header_size,
                                       stop - start, out_at + 16 * start)
    if count and any(_in_parallel(count, hash_part)):
        raise CryptoError("OpenSSL failed to hash the cell contexts")
    return out


def seal_cells(keys: bytes, headers: bytes, header_size: int, context_rows: np.ndarray,
               key_index: np.ndarray | None, plaintexts: pa.Array, row_keys: pa.Array) -> pa.Array:
    """``header || nonce || ciphertext || tag`` of each plaintext under ``keys[key_index[i]]`` (all under key 0
    when ``key_index`` is None), with associated data ``context || row key``; one ``binary`` cell per value.

    ``keys`` is the keys' 32-byte values laid end to end, ``headers`` and ``context_rows`` one row per key.
    """
    count, key_count = len(plaintexts), len(keys) // KEY_SIZE
    if key_count * KEY_SIZE != len(keys) or len(headers) != key_count * header_size or \
            context_rows.shape != (key_count, 16) or len(row_keys) != count:
        raise ValueError("keys, headers, contexts and row keys do not line up")
    index = _index(key_index, count, key_count)
    pt_off, pt_data = binary_parts(plaintexts)
    rk_off, rk_data = binary_parts(row_keys)
    out_off = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.diff(pt_off) + (header_size + NONCE_SIZE + TAG_SIZE), out=out_off[1:])
    if out_off[-1] > _OFFSETS_LIMIT:
        raise ValueError("more than 2 GiB of cells in one call")
    out = np.empty(max(int(out_off[-1]), 1), dtype=np.uint8)
    nonces = os.urandom(NONCE_SIZE * count)
    ffi = _native.ffi
    context_buffer = ffi.from_buffer(np.ascontiguousarray(context_rows))
    index_at, nonce_at = _int64s(index), ffi.cast("unsigned char *", ffi.from_buffer(nonces))
    pt_at, rk_at, out_at = _int64s(pt_off), _int64s(rk_off), _int64s(out_off)
    pt_buffer, rk_buffer, out_buffer = ffi.from_buffer(pt_data), ffi.from_buffer(rk_data), ffi.from_buffer(out)

    def seal(start: int, stop: int) -> int:
        return _native.lib.mg_seal(keys, headers, header_size, context_buffer, index_at + start,
                                   nonce_at + NONCE_SIZE * start, stop - start, pt_at + start, pt_buffer,
                                   rk_at + start, rk_buffer, out_at + start, out_buffer)
    if count and any(_in_parallel(count, seal)):
        raise CryptoError("OpenSSL failed to seal cells")
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(out_off.astype(np.int32)),
                                                      pa.py_buffer(out[:int(out_off[-1])])])


def open_cells(keys: bytes, context_rows: np.ndarray, key_index: np.ndarray, cells: pa.Array, head: np.ndarray,
               row_keys: pa.Array) -> pa.Array:
    """The plaintexts of checked cells (each ``head[i]`` header bytes, nonce, ciphertext, tag), one ``binary``
    value each.

    Raises:
        AuthenticationFailed: naming the position of the first cell that does not verify.
    """
    count, key_count = len(cells), len(keys) // KEY_SIZE
    if key_count * KEY_SIZE != len(keys) or context_rows.shape != (key_count, 16) or len(row_keys) != count:
        raise ValueError("keys, contexts and row keys do not line up")
    index = _index(key_index, count, key_count)
    heads = np.ascontiguousarray(head, dtype=np.int64)
    cell_off, cell_data = binary_parts(cells)
    rk_off, rk_data = binary_parts(row_keys)
    sizes = np.diff(cell_off) - heads - (NONCE_SIZE + TAG_SIZE)
    if len(heads) != count or (count and (heads.min() < 0 or sizes.min() < 0)):
        raise AuthenticationFailed(int(np.argmax(sizes < 0)) if count and sizes.min() < 0 else 0)
    out_off = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(sizes, out=out_off[1:])
    out = np.zeros(max(int(out_off[-1]), 1), dtype=np.uint8)
    ffi = _native.ffi
    context_buffer = ffi.from_buffer(np.ascontiguousarray(context_rows))
    index_at, cell_at, head_at = _int64s(index), _int64s(cell_off), _int64s(heads)
    rk_at, out_at = _int64s(rk_off), _int64s(out_off)
    cell_buffer, rk_buffer, out_buffer = ffi.from_buffer(cell_data), ffi.from_buffer(rk_data), ffi.from_buffer(out)

    def open_part(start: int, stop: int) -> int:
        failed = _native.lib.mg_open(keys, context_buffer, index_at + start, stop - start, cell_at + start,
                                     head_at + start, cell_buffer, rk_at + start, rk_buffer, out_at + start,
                                     out_buffer)
        return failed + start if failed >= 0 else failed
    results = _in_parallel(count, open_part) if count else []
    failures = [failed for failed in results if failed >= 0]
    if failures:
        raise AuthenticationFailed(int(failures[0]))
    if any(failed != -1 for failed in results):
        raise CryptoError("OpenSSL failed to open cells")
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(out_off.astype(np.int32)),
                                                      pa.py_buffer(out[:int(out_off[-1])])])


def hex_strings(digits: bytes | np.ndarray, count: int) -> pa.StringArray:
    """``count`` strings of 64 hex digits each, from their digits laid end to end."""
    offsets = np.arange(0, 64 * (count + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(digits[:64 * count]))


def _hmac_blocks(key: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner block (key XOR ipad, then ``prefix``, the fixed start of every message) and outer
    block (key XOR opad), for a key of at most one SHA-256 block."""
    if len(key) > 64:
        raise ValueError("an HMAC key here is at most one SHA-256 block")
    block = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block) + prefix, bytes(b ^ 0x5C for b in block)


def hmac_hex(key: bytes, prefix: bytes, messages: pa.Array) -> pa.StringArray:
    """HMAC-SHA256 under ``key`` (at most 64 bytes) of ``prefix`` + each message, as 64 lowercase hex digits."""
    inner, outer = _hmac_blocks(key, prefix)
    count = len(messages)
    offsets, data = binary_parts(messages)
    out = np.empty(max(64 * count, 1), dtype=np.uint8)
    ffi = _native.ffi
    if count and _native.lib.mg_hmac_hex(inner, len(inner), outer, count, _int64s(offsets), ffi.from_buffer(data),
                                         ffi.from_buffer(out)) != 0:
        raise CryptoError("OpenSSL failed to compute record hashes")
    return hex_strings(out, count)


def framed_hmac_hex(key: bytes, prefix: bytes, columns: Sequence[pa.Array]) -> pa.StringArray:
    """:func:`hmac_hex` of each row framed from ``columns`` (strings, all of one length): each value as
    ``<code points>:<text>``, a null as one NUL byte, the columns in order."""
    inner, outer = _hmac_blocks(key, prefix)
    count = len(columns[0]) if columns else 0
    ffi = _native.ffi
    held: list[Any] = []  # every buffer handed to C stays alive through the call
    offsets, data, valid = [], [], []
    for column in columns:
        if not pa.types.is_string(column.type) or len(column) != count:
            raise ValueError("framed columns must be strings of one length")
        column_offsets, column_data = binary_parts(column)
        mask = column.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8) if column.null_count else None
        held += [column_offsets, column_data, mask]
        offsets.append(_int64s(column_offsets))
        data.append(ffi.from_buffer(column_data))
        valid.append(ffi.cast("unsigned char *", ffi.from_buffer(mask)) if mask is not None else ffi.NULL)
    out = np.empty(max(64 * count, 1), dtype=np.uint8)
    out_at = ffi.cast("unsigned char *", ffi.from_buffer(out))
    data_at = ffi.new("unsigned char *[]", data)

    def hash_part(start: int, stop: int) -> int:
        # Each part gets its own pointer tables, moved to its first row (the data buffers stay whole).
        part_offsets = ffi.new("int64_t *[]", [pointer + start for pointer in offsets])
        part_valid = ffi.new("unsigned char *[]", [pointer + start if pointer != ffi.NULL else ffi.NULL
                                                   for pointer in valid])
        return _native.lib.mg_framed_hmac_hex(inner, len(inner), outer, len(columns), part_offsets, data_at,
                                              part_valid, stop - start, out_at + 64 * start)
    if count and any(_in_parallel(count, hash_part)):
        raise CryptoError("OpenSSL failed to compute record hashes")
    return hex_strings(out, count)
