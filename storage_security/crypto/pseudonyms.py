"""Keyed pseudonyms for join keys: deterministic HMAC-SHA256 under a provider-held key, key version recorded.

A pseudonym reads ``ps1_<key version>_<32 hex digits>``: ``ps1`` is the scheme, the key version is the first
8 hex digits of the pseudonym key's id in the DEK store, and the digits are the first 128 bits of
HMAC-SHA256(key, "medguard.pseudonym.v1\\0" || UTF-8 text of the value). The same value under the same key
always gives the same pseudonym, so tables join on it; without the key nobody can compute or invert it.

The key is a DEK of scope ``pseudonym`` in the :class:`~storage_security.keys.dek_store.DekStore`, wrapped by the
provider's KEK like every other DEK. The first use of a key name creates it; if two processes race to
create it, both settle on the oldest record, so every process computes the same pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import numpy as np
import pyarrow as pa

from storage_security.keys.base import KeyProvider
from storage_security.keys.dek_store import DekRecord, DekStore, check_scope_key

__all__ = ["PSEUDONYM_SCHEME", "Pseudonymizer"]

PSEUDONYM_SCHEME = "ps1"
_DOMAIN = b"medguard.pseudonym.v1\x00"
_DIGEST_BYTES = 16
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


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
        key = provider.unwrap(record.kek_name, record.wrapped)
        self.key_version = record.key_id[:8]
        self._prefix = f"{PSEUDONYM_SCHEME}_{self.key_version}_".encode()
        self._mac = hmac.new(key, _DOMAIN, hashlib.sha256)

    def _oldest(self, store: DekStore) -> DekRecord | None:
        records = [r for r in store.records(scope="pseudonym", scope_key=self.name) if not r.retired]
        return min(records, key=lambda r: (r.created_at, r.key_id), default=None)

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
        present = text.drop_null().cast(pa.binary()).to_pylist()
        base = self._mac
        digests = []
        for value in present:
            mac = base.copy()
            mac.update(value)
            digests.append(mac.digest()[:_DIGEST_BYTES])
        count = len(present)
        raw = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(count, _DIGEST_BYTES)
        width = len(self._prefix) + 2 * _DIGEST_BYTES
        out = np.empty((count, width), dtype=np.uint8)
        out[:, :len(self._prefix)] = np.frombuffer(self._prefix, dtype=np.uint8)
        out[:, len(self._prefix)::2] = _HEX[raw >> 4]
        out[:, len(self._prefix) + 1::2] = _HEX[raw & 0x0F]
        offsets = np.arange(count + 1, dtype=np.int32) * width
        result = pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
        if valid is None:
            return result
        positions = np.cumsum(valid, dtype=np.int64) - 1
        return result.take(pa.array(positions, mask=~valid))

    def pseudonym(self, value: Any) -> str | None:
        """The pseudonym of one value (None for None)."""
        return self.pseudonymize([value])[0].as_py()
