"""Raw AES-256-GCM (cryptography's ``AESGCM``): the one primitive under the cell format and the keyring.

Private: the rest of medguard uses the recipes built on it (:mod:`storage_security.crypto.envelope`,
:mod:`storage_security.keys.keyring`). Nonces are 96-bit and random, tags 128-bit; the bulk helpers take nonces
made by :func:`random_nonces` so that a column of cells costs one ``os.urandom`` call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import DecryptionError

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

