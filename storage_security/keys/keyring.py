"""The local keyring: a :class:`~storage_security.keys.base.KeyProvider` over a 0600 JSON file, for a machine
with no Vault.

Production uses Vault (or OpenBao) Transit; this keyring serves a single machine without one, and fast unit
tests. It behaves like Transit: named KEKs with versions, rotation, ``min_decryption_version``, and
``destroy_key`` that leaves no copy of the key in the file.

File layout (``format_version`` 1)::

    {"format": "medguard-keyring", "format_version": 1,
     "salt": b64(16 random bytes), "check": b64(HMAC-SHA256(check key, "medguard.keyring.v1")),
     "keys": {"<name>": {"latest": N, "min_decryption_version": M, "created_at": ISO-8601,
                         "versions": {"1": b64(nonce || AES-GCM(kek) || tag), ...}}}}

Each KEK version is 32 random bytes, stored AES-256-GCM encrypted under a wrapping key derived from the
master secret with HKDF-SHA256 (salt from the file); its associated data binds the key name and version, so
entries cannot be swapped. ``check`` lets a wrong master secret fail at open with a clear error. Wrapped DEKs
read ``keyring:v<N>:<base64(nonce || ciphertext || tag)>``, encrypted under KEK version N with the key name
as associated data.

Every change rewrites the file atomically (temporary file in the same directory, fsync, rename, fsync of the
directory) under an exclusive ``flock`` on ``<file>.lock``, so concurrent processes neither lose updates nor
see half-written files. The master secret comes from the environment variable named by
``keyring.master_key_env`` or from ``keyring.master_key_file``, never from code: see :meth:`LocalKeyring.from_settings`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CryptoError, DecryptionError, KeyProviderUnavailableError
from storage_security._locks import exclusive_lock
from storage_security.crypto._aead import KEY_SIZE, AesGcm
from storage_security.keys.base import DataKey, KeyVersions

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["LocalKeyring"]

FORMAT = "medguard-keyring"
FORMAT_VERSION = 1
MASTER_KEY_MIN_BYTES = 32
LOCK_TIMEOUT_SECONDS = 30.0
_SALT_BYTES = 16
# Unwrapped KEKs kept in memory: with a KEK per patient an unbounded cache grew by about 2.4 KiB a patient (+460
# MiB for 200,000 patients, measured); unwrapping one again costs one AES-GCM decryption.
_MAX_CACHED_KEKS = 16_384
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# "keyring:v<N>:" then base64 of nonce (12) + key material + tag (16): 80 base64 characters for a bare DEK.
_WRAPPED = re.compile(r"^keyring:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]{40,344}={0,2})$")
_MAX_WRAPPED_PLAINTEXT = 224
_CHECK_MESSAGE = b"medguard.keyring.v1"
_SETUP_HINT = (
    "set {env} to the master key printed by `medguard keys init`, or point keyring.master_key_file "
    "(MEDGUARD_KEYRING__MASTER_KEY_FILE) at a 0600 file holding it"
)


def _hkdf(master: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _kek_aad(name: str, version: int) -> bytes:
    return b"medguard.keyring.kek.v1\x00" + name.encode() + b"\x00" + str(version).encode()


def _dek_aad(name: str) -> bytes:
    return b"medguard.keyring.dek.v1\x00" + name.encode()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise ValueError(f"key name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'")
    return name


def _check_private(fd: int, path: Path, what: str) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        raise KeyProviderUnavailableError(
            f"{what} {path} is readable or writable by group/others (mode {mode:04o}); "
            f"refusing to use it: run `chmod 600 {path}`"
        )


def encode_master_key(master_key: bytes) -> str:
    """The text form of a master secret (URL-safe base64), as printed by ``medguard keys init``."""
    return base64.urlsafe_b64encode(master_key).decode("ascii")


def decode_master_key(text: str, source: str) -> bytes:
    """Parse the text form of a master secret.

    Raises:
        KeyProviderUnavailableError: not base64, or shorter than 32 bytes; the message names ``source``.
    """
    cleaned = text.strip().replace("+", "-").replace("/", "_")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(cleaned.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise KeyProviderUnavailableError(f"the keyring master key in {source} is not base64") from exc
    if len(key) < MASTER_KEY_MIN_BYTES:
        raise KeyProviderUnavailableError(
            f"the keyring master key in {source} is {len(key)} bytes; at least {MASTER_KEY_MIN_BYTES} are needed"
        )
    return key


class _NoSuchKey(CryptoError):
    """The keyring holds no KEK of that name."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LocalKeyring:
    """KEKs with versions in a 0600 keyring file; implements :class:`~storage_security.keys.base.KeyProvider`.

    Args:
        path: the keyring file, created by :meth:`init` (``medguard keys init``).
        master_key: the master secret, at least 32 bytes.

    Raises:
        TypeError: ``master_key`` is not bytes.
        ValueError: ``master_key`` is shorter than 32 bytes.
        KeyProviderUnavailableError: the file is missing, unreadable, group/world accessible, not a keyring,
            or does not open with this master key.
    """

    name = "keyring"

    def __init__(self, path: Path | str, master_key: bytes) -> None:
        if not isinstance(master_key, bytes | bytearray):
            raise TypeError(f"master_key must be bytes, not {type(master_key).__name__}")
        if len(master_key) < MASTER_KEY_MIN_BYTES:
            raise ValueError(f"master_key must be at least {MASTER_KEY_MIN_BYTES} bytes, got {len(master_key)}")
        self.path = Path(path)
        self._master = bytes(master_key)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.RLock()
        self._identity: tuple[int, int, int, int] | None = None
        self._state: dict[str, Any] = {}
        self._wrapping: AesGcm | None = None
        self._keks: dict[tuple[str, int], AesGcm] = {}
        self._load()

    # construction -------------------------------------------------------------------------------------

    @staticmethod
    def generate_master_key() -> bytes:
        """A new random 32-byte master secret."""
        return secrets.token_bytes(MASTER_KEY_MIN_BYTES)

    @classmethod
    def init(cls, path: Path | str, master_key: bytes) -> LocalKeyring:
        """Create a new, empty keyring file (mode 0600; its directory is created 0700 when missing).

        Raises:
            CryptoError: a file already exists at ``path``.
        """
        path = Path(path)
        if not isinstance(master_key, bytes | bytearray):
            raise TypeError(f"master_key must be bytes, not {type(master_key).__name__}")
        if len(master_key) < MASTER_KEY_MIN_BYTES:
            raise ValueError(f"master_key must be at least {MASTER_KEY_MIN_BYTES} bytes, got {len(master_key)}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        salt = secrets.token_bytes(_SALT_BYTES)
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "salt": _b64(salt),
            "check": _b64(cls._check_value(bytes(master_key), salt)),
            "keys": {},
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise CryptoError(f"a keyring already exists at {path}; it was not changed") from exc
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(path.parent)
        return cls(path, master_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKeyring:
        """Open the keyring of ``settings.keyring`` with the master secret from the environment or a key file.

        The environment variable named by ``keyring.master_key_env`` wins over ``keyring.master_key_file``.

        Raises:
            KeyProviderUnavailableError: no master secret is configured (the message says how to set one), the
                key file is group/world readable, or the keyring cannot be opened.
        """
        return cls(Path(settings.keyring.path), master_key_from_settings(settings))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"LocalKeyring(path={str(self.path)!r}, master_key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("LocalKeyring holds key material and cannot be pickled")

    # KeyProvider ---------------------------------------------------------------------------------------

    def ensure_key(self, key_name: str) -> None:
        """Create the KEK (version 1) if it does not exist."""
        self.ensure_keys([key_name])

    def ensure_keys(self, key_names: list[str]) -> None:
        """Create every missing KEK of ``key_names`` in one rewrite of the file."""
        for key_name in key_names:
            _check_name(key_name)
        with self._mutex:
            if all(name in self._fresh()["keys"] for name in key_names):
                return

            def add(state: dict[str, Any]) -> None:
                for key_name in key_names:
                    if key_name not in state["keys"]:
                        state["keys"][key_name] = {
                            "latest": 1, "min_decryption_version": 1, "created_at": _now(),
                            "versions": {"1": self._seal_kek(key_name, 1, secrets.token_bytes(KEY_SIZE))},
                        }

            self._mutate(add)

    def generate_data_key(self, key_name: str) -> DataKey:
        """A new random 32-byte DEK and its wrapping under the KEK's latest version."""
        with self._mutex:
            entry = self._entry(key_name)
            version = int(entry["latest"])
            plaintext = secrets.token_bytes(KEY_SIZE)
            wrapped = self._wrap(key_name, version, plaintext)
        return DataKey(key_name=key_name, plaintext=plaintext, wrapped=wrapped)

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        """The plaintext of a wrapped DEK.

        Raises:
            DecryptionError: malformed, wrapped under a destroyed or unknown KEK, under a version below
                ``min_decryption_version``, or not authentic.
        """
        return self.unwrap_many(key_name, [wrapped])[0]

    def unwrap_many(self, key_name: str, wrapped: list[str]) -> list[bytes]:
        """Unwrap several DEKs of one KEK (one read of the file)."""
        with self._mutex:
            try:
                entry = self._entry(key_name)
            except _NoSuchKey as exc:  # destroyed (shredded) or never created
                raise DecryptionError("decryption failed: the data key does not unwrap") from exc
            return [self._unwrap(key_name, entry, item) for item in wrapped]

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        """Wrap key material (at most 224 bytes each) under the KEK's latest version, in order."""
        if isinstance(plaintexts, bytes | bytearray | str):
            raise TypeError("expected a list of plaintexts, not a single value")
        for item in plaintexts:
            if not isinstance(item, bytes | bytearray):
                raise TypeError(f"a plaintext to wrap is bytes, not {type(item).__name__}")
            if not 1 <= len(item) <= _MAX_WRAPPED_PLAINTEXT:
                raise ValueError(f"a plaintext to wrap is 1 to {_MAX_WRAPPED_PLAINTEXT} bytes, not {len(item)}")
        with self._mutex:
            version = int(self._entry(key_name)["latest"])
            return [self._wrap(key_name, version, bytes(item)) for item in plaintexts]

    def unwrap_each(self, key_name: str, wrapped: list[str]) -> list[bytes | None]:
        """Unwrap what :meth:`wrap_many` wrapped; None for each item that does not unwrap."""
        with self._mutex:
            try:
                entry = self._entry(key_name)
            except _NoSuchKey:
                return [None] * len(wrapped)
            result: list[bytes | None] = []
            for item in wrapped:
                try:
                    result.append(self._open(key_name, entry, item))
                except DecryptionError:
                    result.append(None)
            return result

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        """Re-wrap DEKs (or what :meth:`wrap_many` wrapped) under the KEK's latest version."""
        with self._mutex:
            entry = self._entry(key_name)
            latest = int(entry["latest"])
            return [self._wrap(key_name, latest, self._open(key_name, entry, item)) for item in wrapped]

    def rotate(self, key_name: str) -> int:
        """Add a KEK version; new DEKs are wrapped under it. Returns the new latest version."""
        _check_name(key_name)
        result: list[int] = []

        def add_version(state: dict[str, Any]) -> None:
            entry = self._entry_copy(state, key_name)
            version = int(entry["latest"]) + 1
            entry["versions"][str(version)] = self._seal_kek(key_name, version, secrets.token_bytes(KEY_SIZE))
            entry["latest"] = version
            result.append(version)

        self._mutate(add_version)
        return result[0]

    def versions(self, key_name: str) -> KeyVersions:
        """Latest, minimum decryption and present versions of the KEK."""
        entry = self._entry(key_name)
        return KeyVersions(
            key_name=key_name,
            latest=int(entry["latest"]),
            min_decryption_version=int(entry["min_decryption_version"]),
            versions=tuple(sorted(int(v) for v in entry["versions"])),
        )

    def set_min_decryption_version(self, key_name: str, version: int) -> None:
        """Refuse to unwrap DEKs wrapped under versions below ``version`` from now on.

        Raises:
            ValueError: ``version`` is not between 1 and the latest version.
        """
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError("version must be an int")

        def set_min(state: dict[str, Any]) -> None:
            entry = self._entry_copy(state, key_name)
            if not 1 <= version <= int(entry["latest"]):
                raise ValueError(f"min_decryption_version of {key_name!r} must be 1 to {entry['latest']}, "
                                 f"got {version}")
            entry["min_decryption_version"] = version

        self._mutate(set_min)

    def destroy_key(self, key_name: str) -> None:
        """Delete the KEK and all its versions; the rewritten file keeps no copy. A missing key is no error."""
        _check_name(key_name)

        def drop(state: dict[str, Any]) -> None:
            state["keys"].pop(key_name, None)

        self._mutate(drop)
        with self._mutex:
            for cached in [k for k in self._keks if k[0] == key_name]:
                del self._keks[cached]

    def key_exists(self, key_name: str) -> bool:
        """True when the KEK exists."""
        _check_name(key_name)
        with self._mutex:
            return key_name in self._fresh()["keys"]

    def key_names(self) -> list[str]:
        """Names of every KEK in the keyring, sorted."""
        with self._mutex:
            return sorted(self._fresh()["keys"])

    def health(self) -> dict[str, object]:
        """Whether the file opens with the master secret, its mode and how many KEKs it holds."""
        try:
            with self._mutex:
                keys = len(self._fresh()["keys"])
            mode = stat.S_IMODE(self.path.stat().st_mode)
        except (KeyProviderUnavailableError, OSError) as exc:
            return {"provider": self.name, "ok": False, "path": str(self.path), "error": str(exc)}
        return {"provider": self.name, "ok": True, "path": str(self.path), "mode": f"{mode:04o}", "keys": keys}

    # internals -----------------------------------------------------------------------------------------

    @staticmethod
    def _check_value(master: bytes, salt: bytes) -> bytes:
        check_key = _hkdf(master, salt, b"medguard.keyring.v1 check")
        return hmac.new(check_key, _CHECK_MESSAGE, hashlib.sha256).digest()

    def _read(self) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise KeyProviderUnavailableError(
                f"no keyring at {self.path}: create it with `medguard keys init` (key_provider=keyring)"
            ) from exc
        except OSError as exc:
            raise KeyProviderUnavailableError(f"cannot open keyring {self.path}: {exc.strerror}") from exc
        try:
            _check_private(fd, self.path, "keyring")
            info = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        try:
            state = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyProviderUnavailableError(f"keyring {self.path} is not valid JSON") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise KeyProviderUnavailableError(f"{self.path} is not a medguard keyring")
        if state.get("format_version") != FORMAT_VERSION:
            raise KeyProviderUnavailableError(
                f"keyring {self.path} has format version {state.get('format_version')!r}; "
                f"this medguard reads version {FORMAT_VERSION}"
            )
        return state, _file_identity(info)

    def _load(self) -> None:
        state, identity = self._read()
        try:
            salt = _unb64(state["salt"])
            check = _unb64(state["check"])
            keys = state["keys"]
        except (KeyError, TypeError, binascii.Error, ValueError) as exc:
            raise KeyProviderUnavailableError(f"keyring {self.path} is damaged (header)") from exc
        if not isinstance(keys, dict):
            raise KeyProviderUnavailableError(f"keyring {self.path} is damaged (keys)")
        if self._wrapping is None or self._state.get("salt") != state["salt"]:
            if not hmac.compare_digest(self._check_value(self._master, salt), check):
                raise KeyProviderUnavailableError(
                    f"keyring {self.path} does not open with this master key: check the master key setting"
                )
            self._wrapping = AesGcm(_hkdf(self._master, salt, b"medguard.keyring.v1 kek-wrap"))
            self._keks.clear()
        self._state, self._identity = state, identity
        # A rewrite may have destroyed keys or versions: forget every cached KEK no longer in the file.
        for cached in list(self._keks):
            name, version = cached
            if str(version) not in keys.get(name, {}).get("versions", {}):
                del self._keks[cached]

    def _fresh(self) -> dict[str, Any]:
        # Other processes rewrite the file by rename, which changes its inode: reload when it changed (or its
        # mode did, so that a chmod to group/world access is refused at once).
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise KeyProviderUnavailableError(f"keyring {self.path} is gone: {exc.strerror}") from exc
        if _file_identity(info) != self._identity:
            self._load()
        return self._state

    def _entry_in(self, state: dict[str, Any], key_name: str) -> dict[str, Any]:
        _check_name(key_name)
        entry = state["keys"].get(key_name)
        if entry is None:
            raise _NoSuchKey(f"no key named {key_name!r} in keyring {self.path} (`medguard keys init` creates the KEK)")
        return entry

    def _entry_copy(self, state: dict[str, Any], key_name: str) -> dict[str, Any]:
        # A change edits a copy of the entry in the new state, never the entry the current state shares.
        entry = dict(self._entry_in(state, key_name))
        entry["versions"] = dict(entry["versions"])
        state["keys"][key_name] = entry
        return entry

    def _entry(self, key_name: str) -> dict[str, Any]:
        with self._mutex:
            return self._entry_in(self._fresh(), key_name)

    def _seal_kek(self, key_name: str, version: int, kek: bytes) -> str:
        assert self._wrapping is not None
        return _b64(self._wrapping.encrypt(kek, _kek_aad(key_name, version)))

    def _kek(self, key_name: str, entry: dict[str, Any], version: int) -> AesGcm:
        cached = self._keks.get((key_name, version))
        if cached is not None:
            return cached
        sealed = entry["versions"].get(str(version))
        if sealed is None:
            raise DecryptionError("decryption failed: the data key does not unwrap")
        assert self._wrapping is not None
        try:
            kek = AesGcm(self._wrapping.decrypt(_unb64(sealed), _kek_aad(key_name, version)))
        except (DecryptionError, binascii.Error, ValueError) as exc:
            raise KeyProviderUnavailableError(f"keyring {self.path} is damaged (key {key_name!r})") from exc
        self._keks[(key_name, version)] = kek
        while len(self._keks) > _MAX_CACHED_KEKS:  # the oldest unwrapped first
            del self._keks[next(iter(self._keks))]
        return kek

    def _wrap(self, key_name: str, version: int, plaintext: bytes) -> str:
        entry = self._entry(key_name)
        sealed = self._kek(key_name, entry, version).encrypt(plaintext, _dek_aad(key_name))
        return f"keyring:v{version}:{_b64(sealed)}"

    def _unwrap(self, key_name: str, entry: dict[str, Any], wrapped: str) -> bytes:
        plaintext = self._open(key_name, entry, wrapped)
        if len(plaintext) != KEY_SIZE:
            raise DecryptionError("decryption failed: not a keyring-wrapped data key")
        return plaintext

    def _open(self, key_name: str, entry: dict[str, Any], wrapped: str) -> bytes:
        match = _WRAPPED.match(wrapped) if isinstance(wrapped, str) else None
        if match is None:
            raise DecryptionError("decryption failed: not a keyring-wrapped data key")
        version = int(match.group(1))
        if version < int(entry["min_decryption_version"]) or version > int(entry["latest"]):
            raise DecryptionError("decryption failed: the data key does not unwrap")
        try:
            sealed = _unb64(match.group(2))
        except (binascii.Error, ValueError) as exc:
            raise DecryptionError("decryption failed: not a keyring-wrapped data key") from exc
        if len(sealed) < 12 + 16 + 1:
            raise DecryptionError("decryption failed: not a keyring-wrapped data key")
        try:
            return self._kek(key_name, entry, version).decrypt(sealed, _dek_aad(key_name))
        except DecryptionError as exc:
            raise DecryptionError("decryption failed: the data key does not unwrap") from exc

    def _mutate(self, change: Callable[[dict[str, Any]], None]) -> None:
        # The keyring is the key provider: a lock it cannot take makes the provider unavailable.
        with self._mutex, exclusive_lock(self._lock_path, timeout=LOCK_TIMEOUT_SECONDS,
                                         error=KeyProviderUnavailableError):
            # The latest state on disk, read under the lock (re-parsed only when another process rewrote it).
            # With a KEK per patient the file grows to about 240 MB per million patients, so a change
            # copies only the mapping of keys (``change`` replaces, never edits, the entries it alters), the
            # file is written with the C JSON encoder (no indent), and what was written becomes the state.
            current = self._fresh()
            state = {**current, "keys": dict(current["keys"])}
            change(state)
            _atomic_write(self.path, json.dumps(state, sort_keys=True, separators=(",", ":")).encode())
            self._state, self._identity = state, _file_identity(os.stat(self.path))


def _file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    # What changes when another process rewrites the file by rename, or chmods it.
    return info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a 0600 temporary file beside it, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def master_key_from_settings(settings: Settings) -> bytes:
    """The keyring master secret: the env var ``keyring.master_key_env``, else ``keyring.master_key_file``.

    Raises:
        KeyProviderUnavailableError: neither is set (the message says how to set one), the file is missing or
            group/world readable, or the value is not a base64 secret of at least 32 bytes.
    """
    env_name = settings.keyring.master_key_env
    value = os.environ.get(env_name)
    if value:
        return decode_master_key(value, f"${env_name}")
    key_file = settings.keyring.master_key_file
    if key_file is None:
        raise KeyProviderUnavailableError("no keyring master key: " + _SETUP_HINT.format(env=env_name))
    path = Path(key_file).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyProviderUnavailableError(
            f"cannot read the keyring master key file {path}: {exc.strerror}; " + _SETUP_HINT.format(env=env_name)
        ) from exc
    try:
        _check_private(fd, path, "keyring master key file")
        with os.fdopen(os.dup(fd), "r", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    finally:
        os.close(fd)
    return decode_master_key(text, str(path))


def write_master_key_file(path: Path, master_key: bytes) -> None:
    """Write a new master key file, mode 0600, refusing to replace an existing one.

    Raises:
        CryptoError: the file already exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise CryptoError(f"a master key file already exists at {path}; it was not changed") from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encode_master_key(master_key) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
