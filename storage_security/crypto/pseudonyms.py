"""Keyed pseudonyms for join keys: deterministic HMAC-SHA256 under a provider-held key, key version recorded.

A pseudonym reads ``ps1_<key version>_<32 hex digits>``: ``ps1`` is the scheme, the key version is the first
8 hex digits of the pseudonym key's id in the DEK store, and the digits are the first 128 bits of
HMAC-SHA256(key, "medguard.pseudonym.v1\\0" || UTF-8 text of the value). The same value under the same key
always gives the same pseudonym, so tables join on it; without the key nobody can compute or invert it.

The key is a DEK of scope ``pseudonym`` in the :class:`~storage_security.keys.dek_store.DekStore`, wrapped by the
provider's KEK like every other DEK. The first use of a key name creates it; if two processes race to
create it, both settle on the oldest record, so every process computes the same pseudonyms.
:class:`PseudonymKeys` unwraps every pseudonym key of a lake in one provider request the first time one is
needed, and wraps a new one in one more, so a job using several keys does not pay a request per key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from storage_security.crypto import _aead
from storage_security.keys.base import KeyProvider
from storage_security.keys.dek_store import DekRecord, DekStore, check_scope_key

__all__ = ["PSEUDONYM_SCHEME", "PseudonymKeys", "Pseudonymizer", "framed_keyed_hex", "keyed_hex"]

PSEUDONYM_SCHEME = "ps1"
_DOMAIN = b"medguard.pseudonym.v1\x00"
_DERIVE_DOMAIN = b"medguard.derive.v1\x00"
_DIGEST_BYTES = 16


def keyed_hex(key: bytes, prefix: bytes, messages: pa.Array) -> pa.StringArray:
    """HMAC-SHA256 under ``key`` of ``prefix`` followed by each message (binary or string, no nulls), as 64
    lowercase hex digits a row: in one native call where it was built, else one ``hmac`` call a row."""
    if _aead.NATIVE and len(key) <= 64:
        return _aead.hmac_hex(key, prefix, messages)
    base = hmac.new(key, prefix, hashlib.sha256)
    digests = []
    copy, append = base.copy, digests.append
    for message in messages.cast(pa.binary()).to_pylist():
        mac = copy()
        mac.update(message)
        append(mac.digest())
    return _aead.hex_strings(b"".join(digests).hex().encode(), len(messages))


def framed_keyed_hex(key: bytes, prefix: bytes, columns: list[pa.Array]) -> pa.StringArray | None:
    """:func:`keyed_hex` of each row framed from text ``columns`` (each value ``<code points>:<text>``, a null
    as one NUL byte, in order), in one native call; None where the native helpers were not built (the caller
    frames the rows itself and calls :func:`keyed_hex`)."""
    if not _aead.NATIVE or len(key) > 64:
        return None
    return _aead.framed_hmac_hex(key, prefix, columns)


class Pseudonymizer:
    """Deterministic keyed pseudonyms of values, one key per ``name``.

    Args:
        provider: the key provider whose KEK wraps the pseudonym key.
        store: the DEK store holding the wrapped key.
        name: which pseudonym key (e.g. ``patient``); different names give unrelated pseudonyms.
        kek_name: the KEK that wraps the key when it is first created.

    Raises:
        KeyProviderUnavailableError, KeyAccessDeniedError: the provider cannot unwrap or create the key.
        DecryptionError: the stored key does not unwrap (its KEK version was retired or destroyed).
    """

    def __init__(self, provider: KeyProvider, store: DekStore, *, name: str = "patient",
                 kek_name: str = "medguard-kek") -> None:
        self.name = check_scope_key(name)
        record = self._oldest(store)
        if record is None:
            data_key = provider.generate_data_key(kek_name)
            store.put([DekRecord(key_id=secrets.token_bytes(16).hex(), kek_name=kek_name, wrapped=data_key.wrapped,
                                 table="", column="", scope="pseudonym", scope_key=self.name)])
            record = self._oldest(store)
            assert record is not None
        self._use(record.key_id, provider.unwrap(record.kek_name, record.wrapped))

    @classmethod
    def from_key(cls, name: str, key_id: str, key: bytes) -> Pseudonymizer:
        """A pseudonymizer over an already unwrapped key (see :class:`PseudonymKeys`)."""
        self = cls.__new__(cls)
        self.name = check_scope_key(name)
        self._use(key_id, key)
        return self

    def _use(self, key_id: str, key: bytes) -> None:
        self.key_version = key_id[:8]
        self._prefix = f"{PSEUDONYM_SCHEME}_{self.key_version}_".encode()
        self._key = key
        self._derive = hmac.new(key, _DERIVE_DOMAIN, hashlib.sha256)

    def derive_key(self, label: str) -> bytes:
        """A 32-byte secret for another keyed digest, ``HMAC-SHA256(key, "medguard.derive.v1\\0" || label)``.

        Its domain differs from the pseudonyms' own, so no value's pseudonym reveals it; ingestion's keyed
        record hash takes its key from here (label ``record-hash``) without another key in the DEK store.
        """
        mac = self._derive.copy()
        mac.update(label.encode())
        return mac.digest()

    def _oldest(self, store: DekStore) -> DekRecord | None:
        return _oldest(store.records(scope="pseudonym", scope_key=self.name))

    def __repr__(self) -> str:
        return f"Pseudonymizer(name={self.name!r}, key_version={self.key_version!r}, key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("Pseudonymizer holds key material and cannot be pickled")

    def pseudonymize(self, values: pa.Array | pa.ChunkedArray | list[Any]) -> pa.Array:
        """The pseudonym of each value (by its text form); nulls stay null."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        array = values if isinstance(values, pa.Array) else pa.array(values)
        text = array.cast(pa.string()) if not pa.types.is_string(array.type) else array
        valid = text.is_valid().to_numpy(zero_copy_only=False) if text.null_count else None
        present = text.drop_null() if valid is not None else text
        count = len(present)
        width = len(self._prefix) + 2 * _DIGEST_BYTES
        out = np.empty((count, width), dtype=np.uint8)
        out[:, :len(self._prefix)] = np.frombuffer(self._prefix, dtype=np.uint8)
        if count:
            digits = np.frombuffer(keyed_hex(self._key, _DOMAIN, present).buffers()[2], dtype=np.uint8,
                                   count=64 * count).reshape(count, 64)
            out[:, len(self._prefix):] = digits[:, :2 * _DIGEST_BYTES]
        offsets = np.arange(count + 1, dtype=np.int32) * width
        result = pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
        if valid is None:
            return result
        positions = np.cumsum(valid, dtype=np.int64) - 1
        return result.take(pa.array(positions, mask=~valid))

    def pseudonym(self, value: Any) -> str | None:
        """The pseudonym of one value (None for None)."""
        return self.pseudonymize([value])[0].as_py()


def _oldest(records: list[DekRecord]) -> DekRecord | None:
    return min((r for r in records if not r.retired), key=lambda r: (r.created_at, r.key_id), default=None)


class PseudonymKeys:
    """The pseudonym keys of one lake, unwrapped together on first use and kept in memory for the process.

    Args:
        provider: the key provider whose KEK wraps the keys.
        store: the DEK store holding them.
        kek_name: the KEK that wraps a key when it is first created.
    """

    def __init__(self, provider: KeyProvider, store: DekStore, *, kek_name: str = "medguard-kek") -> None:
        self._provider = provider
        self._store = store
        self._kek_name = kek_name
        self._lock = threading.Lock()
        self._loaded: dict[str, Pseudonymizer] | None = None

    def __repr__(self) -> str:
        return f"PseudonymKeys(loaded={None if self._loaded is None else sorted(self._loaded)}, keys=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("PseudonymKeys holds key material and cannot be pickled")

    def get(self, name: str) -> Pseudonymizer:
        """The pseudonymizer of ``name``, its key created (one provider request) the first time it is needed.

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider cannot unwrap or wrap the keys.
            DecryptionError: a stored key does not unwrap (its KEK version was retired or destroyed).
        """
        check_scope_key(name)
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            if name not in self._loaded:
                self._loaded[name] = self._create(name)
            return self._loaded[name]

    def _load(self) -> dict[str, Pseudonymizer]:
        by_name: dict[str, list[DekRecord]] = {}
        for record in self._store.records(scope="pseudonym"):
            by_name.setdefault(record.scope_key, []).append(record)
        oldest = [record for record in (_oldest(group) for group in by_name.values()) if record is not None]
        loaded: dict[str, Pseudonymizer] = {}
        for kek in sorted({record.kek_name for record in oldest}):
            group = [record for record in oldest if record.kek_name == kek]
            keys = self._provider.unwrap_many(kek, [record.wrapped for record in group])  # one request per KEK
            for record, key in zip(group, keys, strict=True):
                loaded[record.scope_key] = Pseudonymizer.from_key(record.scope_key, record.key_id, key)
        return loaded

    def _create(self, name: str) -> Pseudonymizer:
        key = os.urandom(32)
        [wrapped] = self._provider.wrap_many(self._kek_name, [key])
        record = DekRecord(key_id=secrets.token_bytes(16).hex(), kek_name=self._kek_name, wrapped=wrapped, table="",
                           column="", scope="pseudonym", scope_key=name)
        self._store.put([record])
        winner = _oldest(self._store.records(scope="pseudonym", scope_key=name))
        if winner is None or winner.key_id == record.key_id:
            return Pseudonymizer.from_key(name, record.key_id, key)
        # Another process created this key a moment earlier: everyone settles on the oldest record.
        return Pseudonymizer.from_key(name, winner.key_id, self._provider.unwrap(winner.kek_name, winner.wrapped))
