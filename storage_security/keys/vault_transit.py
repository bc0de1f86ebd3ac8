"""The Vault/OpenBao Transit key provider: KEKs are Transit keys that wrap DEKs (``encrypt``, ``decrypt``).

Each KEK is a Transit key of type ``aes256-gcm96`` that never leaves Vault. Patients' DEKs are made locally
(32 random bytes) and wrapped many per request by ``transit/encrypt/<kek>`` with ``batch_input``; a batch DEK
comes from ``transit/datakey/plaintext/<kek>``. Either way Vault answers ``vault:v<N>:<base64>`` (the wrapped
form that may be stored; ``N`` is the KEK version). Unwrapping, wrapping and rewrapping after rotation use
``batch_input`` in chunks below OpenBao's default JSON limit (a request with 500 batch items already exceeds
its 1000-string cap).
"""

from __future__ import annotations

import base64
import binascii
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from pipeline.errors import CryptoError, DecryptionError, KeyAccessDeniedError
from storage_security.keys._vault import VaultClient
from storage_security.keys.base import DataKey, KeyVersions

DEK_BYTES = 32
KEK_TYPE = "aes256-gcm96"
# Signing keys (the model registry's): asymmetric, so a verifier needs the public key only, never a secret.
SIGNING_KEY_TYPE = "ed25519"
_SIGNATURE = re.compile(r"vault:v([1-9]\d*):([A-Za-z0-9+/=]+)")
# 1000 JSON strings per request by default in OpenBao: "batch_input" + 2 per item leaves room for 499 items.
MAX_BATCH = 499
DEFAULT_BATCH = 400
_IN_FLIGHT = 4  # batch requests sent at once by one call
_ENSURE_WORKERS = 8  # below requests' default pool of 10 connections per host
# Transit's own rule for key names (path pattern \w(([\w-.]+)?\w)?).
_KEY_NAME = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)
_WRAPPED = re.compile(r"vault:v[1-9]\d*:[A-Za-z0-9+/=]+")

# The local_vault/policies policy that should grant each operation, named in 403 errors.
_WRITER = "pipeline-writer"
_ROTATION = "key-rotation"


class VaultTransitKeys:
    """A :class:`~storage_security.keys.base.KeyProvider` on Vault's (or OpenBao's) Transit secrets engine.

    Args:
        client: the authenticated-on-demand Vault client.
        mount: where the Transit engine is mounted (``settings.vault.transit_mount``).
        batch_size: items per ``batch_input`` request (1..499).

    Raises:
        ValueError: ``mount`` is empty or ``batch_size`` is out of range.
    """

    name = "vault"

    def __init__(self, client: VaultClient, *, mount: str = "transit", batch_size: int = DEFAULT_BATCH) -> None:
        if not mount.strip("/"):
            raise ValueError("the Transit mount must not be empty")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH} (OpenBao's JSON limit), not {batch_size}")
        self._client = client
        self._mount = mount.strip("/")
        self._batch_size = batch_size

    def __repr__(self) -> str:
        return f"VaultTransitKeys(addr={self._client.addr!r}, mount={self._mount!r})"

    def __getstate__(self) -> NoReturn:
        raise TypeError("VaultTransitKeys holds a Vault token and cannot be pickled; send wrapped keys instead")

    def __reduce__(self) -> NoReturn:
        raise TypeError("VaultTransitKeys holds a Vault token and cannot be pickled; send wrapped keys instead")

    @property
    def addr(self) -> str:
        """The Vault address this provider talks to."""
        return self._client.addr

    def ensure_key(self, key_name: str) -> None:
        """Create the KEK as an ``aes256-gcm96`` Transit key unless it exists.

        Raises:
            CryptoError: a key of that name exists but cannot encrypt and decrypt (e.g. a signing key).
        """
        info = self._key_info(key_name)
        if info is None:
            self._client.write(self._path("keys", key_name), {"type": KEK_TYPE}, policy=_ROTATION)
        elif not (info.get("supports_encryption") and info.get("supports_decryption")):
            raise CryptoError(
                f"Transit key {self._path('keys', key_name)} is of type {info.get('type')!r}, "
                "which cannot wrap data keys"
            )

    def ensure_keys(self, key_names: list[str]) -> None:
        """:meth:`ensure_key` for many KEKs (e.g. new patients' keys), a few requests in flight at once.

        Transit has no batch key creation; this bounds the round-trip latency, not the number of requests.
        """
        names = list(dict.fromkeys(key_names))
        for name in names:
            self._path("keys", name)  # every name is checked before anything is created
        if len(names) <= 1:
            for name in names:
                self.ensure_key(name)
            return
        with ThreadPoolExecutor(max_workers=min(_ENSURE_WORKERS, len(names))) as pool:
            list(pool.map(self.ensure_key, names))  # re-raises the first failure

    def generate_data_key(self, key_name: str) -> DataKey:
        """A fresh 32-byte DEK from ``datakey/plaintext``, with its wrapped form ``vault:vN:…``."""
        answer = self._client.write(self._path("datakey/plaintext", key_name), {"bits": DEK_BYTES * 8}, policy=_WRITER)
        data = _data(answer)
        plaintext = _decode_dek(data.get("plaintext"))
        wrapped = data.get("ciphertext")
        if plaintext is None or not isinstance(wrapped, str) or not _WRAPPED.fullmatch(wrapped):
            raise CryptoError(f"Vault answered {self._path('datakey/plaintext', key_name)} without a 32-byte data key")
        return DataKey(key_name=key_name, plaintext=plaintext, wrapped=wrapped)

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        """The plaintext of one wrapped DEK.

        Raises:
            DecryptionError: it does not unwrap (damaged, another KEK, a retired version, a destroyed KEK).
        """
        _check_wrapped([wrapped])
        path = self._path("decrypt", key_name)
        failed = f"decryption failed: the wrapped data key under KEK {key_name!r} does not unwrap"
        try:
            answer = self._client.write(path, {"ciphertext": wrapped}, policy=_WRITER, decrypting=True)
        except DecryptionError as exc:
            raise DecryptionError(failed) from exc
        plaintext = _decode_dek(_data(answer).get("plaintext"))
        if plaintext is None:
            raise DecryptionError(failed)
        return plaintext

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        """Wrap key material under the KEK's latest version: ``encrypt`` with ``batch_input``, in order.

        Raises:
            CryptoError: Vault answered an item without a ciphertext.
        """
        if isinstance(plaintexts, bytes | bytearray | str):
            raise TypeError("expected a list of plaintexts, not a single value")
        for item in plaintexts:
            if not isinstance(item, bytes | bytearray):
                raise TypeError(f"a plaintext to wrap is bytes, not {type(item).__name__}")
        path = self._path("encrypt", key_name)
        items = [{"plaintext": base64.b64encode(item).decode("ascii")} for item in plaintexts]
        wrapped: list[str] = []
        for start, results in self._batches(path, items, decrypting=False):
            for offset, result in enumerate(results):
                ciphertext = result.get("ciphertext")
                if result.get("error") or not isinstance(ciphertext, str) or not _WRAPPED.fullmatch(ciphertext):
                    raise CryptoError(f"Vault did not wrap item #{start + offset} of {len(items)} under KEK "
                                      f"{key_name!r}")
                wrapped.append(ciphertext)
        return wrapped

    def unwrap_each(self, key_name: str, wrapped: list[str]) -> list[bytes | None]:
        """Unwrap what :meth:`wrap_many` wrapped (``decrypt`` with ``batch_input``); None for items that do not."""
        _check_wrapped(wrapped)
        path = self._path("decrypt", key_name)
        items = [{"ciphertext": item} for item in wrapped]
        plaintexts: list[bytes | None] = []
        for _start, results in self._batches(path, items, decrypting=True):
            plaintexts += [None if result.get("error") else _decode(result.get("plaintext")) for result in results]
        return plaintexts

    def unwrap_many(self, key_name: str, wrapped: list[str]) -> list[bytes]:
        """Unwrap DEKs with ``batch_input``, ``batch_size`` per request, in order.

        Raises:
            DecryptionError: naming the position of the first wrapped key that does not unwrap.
        """
        _check_wrapped(wrapped)
        path = self._path("decrypt", key_name)
        plaintexts: list[bytes] = []
        for start, results in self._batches(path, [{"ciphertext": item} for item in wrapped], decrypting=True):
            for offset, result in enumerate(results):
                plaintext = None if result.get("error") else _decode_dek(result.get("plaintext"))
                if plaintext is None:
                    raise DecryptionError(
                        f"decryption failed: wrapped data key #{start + offset} of {len(wrapped)} under KEK "
                        f"{key_name!r} does not unwrap"
                    )
                plaintexts.append(plaintext)
        return plaintexts

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        """Re-wrap DEKs under the KEK's latest version inside Vault (``rewrap`` with ``batch_input``).

        Raises:
            DecryptionError: naming the position of the first wrapped key Vault cannot rewrap.
        """
        _check_wrapped(wrapped)
        path = self._path("rewrap", key_name)
        rewrapped: list[str] = []
        items = [{"ciphertext": item} for item in wrapped]
        for start, results in self._batches(path, items, decrypting=True, policy=_ROTATION):
            for offset, result in enumerate(results):
                ciphertext = result.get("ciphertext")
                if result.get("error") or not isinstance(ciphertext, str) or not _WRAPPED.fullmatch(ciphertext):
                    raise DecryptionError(
                        f"decryption failed: wrapped data key #{start + offset} of {len(wrapped)} under KEK "
                        f"{key_name!r} cannot be rewrapped"
                    )
                rewrapped.append(ciphertext)
        return rewrapped

    def rotate(self, key_name: str) -> int:
        """Add a KEK version (``keys/<name>/rotate``); returns the new latest version."""
        self._client.write(self._path("keys", key_name, "rotate"), policy=_ROTATION)
        return self.versions(key_name).latest

    def versions(self, key_name: str) -> KeyVersions:
        """The KEK's versions still held by Vault, its latest and its minimum decryption version.

        Raises:
            CryptoError: the KEK does not exist.
        """
        info = self._key_info(key_name)
        if info is None:
            raise CryptoError(f"Transit key {self._path('keys', key_name)} does not exist")
        try:
            held = tuple(sorted(int(version) for version in info.get("keys") or {}))
            return KeyVersions(
                key_name=key_name,
                latest=int(info["latest_version"]),
                min_decryption_version=int(info["min_decryption_version"]),
                versions=held,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoError(f"Vault answered {self._path('keys', key_name)} without key versions") from exc

    def set_min_decryption_version(self, key_name: str, version: int) -> None:
        """Refuse to unwrap anything wrapped under a version older than ``version`` (``keys/<name>/config``).

        Raises:
            ValueError: ``version`` is below 1.
            CryptoError: Vault refuses it (e.g. above the latest version).
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"min_decryption_version must be an integer of at least 1, not {version!r}")
        path = self._path("keys", key_name, "config")
        self._client.write(path, {"min_decryption_version": version}, policy=_ROTATION)

    def destroy_key(self, key_name: str) -> None:
        """Delete the KEK and every version of it from Vault (idempotent: a missing KEK is already destroyed).

        Transit refuses to delete a key until ``deletion_allowed`` is set, so this sets it first.
        """
        if self._key_info(key_name) is None:
            return
        config = self._path("keys", key_name, "config")
        self._client.write(config, {"deletion_allowed": True}, policy=_ROTATION)
        try:
            self._client.delete(self._path("keys", key_name))
        except KeyAccessDeniedError:
            # Allowed to configure but not to delete: leave the key as protected as it was.
            self._client.write(config, {"deletion_allowed": False}, policy=_ROTATION)
            raise

    def ensure_signing_key(self, key_name: str) -> None:
        """Create ``key_name`` as an ``ed25519`` Transit signing key unless it exists.

        Raises:
            CryptoError: a key of that name exists but is not an ed25519 key.
        """
        info = self._key_info(key_name)
        if info is None:
            self._client.write(self._path("keys", key_name), {"type": SIGNING_KEY_TYPE}, policy=_WRITER)
        elif info.get("type") != SIGNING_KEY_TYPE:
            raise CryptoError(f"Transit key {self._path('keys', key_name)} is of type {info.get('type')!r}, "
                              f"not {SIGNING_KEY_TYPE}")

    def sign(self, key_name: str, data: bytes) -> tuple[int, bytes]:
        """Sign ``data`` inside Vault (``sign/<key>``); returns (key version, raw 64-byte ed25519 signature).

        Raises:
            CryptoError: Vault answered without a signature.
        """
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"data to sign is bytes, not {type(data).__name__}")
        answer = self._client.write(self._path("sign", key_name), {"input": base64.b64encode(data).decode("ascii")},
                                    policy=_WRITER)
        match = _SIGNATURE.fullmatch(str(_data(answer).get("signature", "")))
        raw = _decode(match.group(2)) if match else None
        if match is None or raw is None:
            raise CryptoError(f"Vault answered {self._path('sign', key_name)} without a signature")
        return int(match.group(1)), raw

    def public_keys(self, key_name: str) -> dict[int, bytes]:
        """The raw ed25519 public key of each version of signing key ``key_name`` (metadata: no secret).

        Raises:
            CryptoError: the key does not exist or is not an ed25519 key.
        """
        info = self._key_info(key_name)
        if info is None or info.get("type") != SIGNING_KEY_TYPE:
            raise CryptoError(f"Transit key {self._path('keys', key_name)} is not an {SIGNING_KEY_TYPE} signing key")
        keys: dict[int, bytes] = {}
        for version, entry in (info.get("keys") or {}).items():
            raw = _decode((entry or {}).get("public_key")) if isinstance(entry, dict) else None
            if raw is not None and len(raw) == 32 and str(version).isdigit():
                keys[int(version)] = raw
        return keys

    def key_exists(self, key_name: str) -> bool:
        """True when the Transit key exists."""
        return self._key_info(key_name) is not None

    def health(self) -> dict[str, object]:
        """Reachability, seal state and version of the server, and who our token is (never the token)."""
        health = self._client.health()
        return {
            "provider": self.name,
            "addr": self._client.addr,
            "auth_method": self._client.auth_method,
            "transit_mount": self._mount,
            "initialized": health.get("initialized"),
            "sealed": health.get("sealed"),
            "standby": health.get("standby"),
            "version": health.get("version"),
            "cluster_name": health.get("cluster_name"),
            "token": self._client.lookup_self(),
        }

    def _key_info(self, key_name: str) -> dict[str, Any] | None:
        answer = self._client.read(self._path("keys", key_name), policy=_WRITER)
        return None if answer is None else _data(answer)

    def _batches(
        self, path: str, items: list[dict[str, str]], *, decrypting: bool, policy: str = _WRITER
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        starts = list(range(0, len(items), self._batch_size))

        def send(start: int) -> tuple[int, list[dict[str, Any]]]:
            chunk = items[start : start + self._batch_size]
            answer = self._client.write(
                path,
                {"batch_input": chunk},
                policy=policy,
                decrypting=decrypting,
                batch=True,
            )
            results = _data(answer).get("batch_results")
            if not isinstance(results, list) or len(results) != len(chunk):
                raise CryptoError(f"Vault answered {path} with {len(results or [])} results for {len(chunk)} items")
            return start, results

        if len(starts) <= 1:
            return [send(start) for start in starts]
        # A first ingestion wraps a key per new patient: 250 requests for 100,000 patients. A few in flight let
        # Vault's own threads work while this process waits (the client is shared safely between threads).
        with ThreadPoolExecutor(max_workers=min(_IN_FLIGHT, len(starts)), thread_name_prefix="vault-batch") as pool:
            return list(pool.map(send, starts))

    def _path(self, operation: str, key_name: str, suffix: str = "") -> str:
        if not isinstance(key_name, str) or not _KEY_NAME.fullmatch(key_name):
            raise ValueError(
                f"invalid KEK name {key_name!r}: use letters, digits, '_', '-' and '.', starting and ending "
                "with a letter, digit or '_'"
            )
        return "/".join(part for part in (self._mount, operation, key_name, suffix) if part)


def _data(answer: dict[str, Any] | None) -> dict[str, Any]:
    data = (answer or {}).get("data")
    return data if isinstance(data, dict) else {}


def _decode(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_dek(value: object) -> bytes | None:
    plaintext = _decode(value)
    return plaintext if plaintext is not None and len(plaintext) == DEK_BYTES else None


def _check_wrapped(wrapped: list[str]) -> None:
    if isinstance(wrapped, str | bytes):
        raise TypeError("expected a list of wrapped keys, not a single string")
    for item in wrapped:
        if not isinstance(item, str):
            raise TypeError(f"a wrapped key is a str like 'vault:v1:…', not {type(item).__name__}")
