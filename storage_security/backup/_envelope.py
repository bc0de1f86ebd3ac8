"""The encrypted envelope of a backup file: X25519 to the backup public key, HKDF-SHA256, AES-256-GCM in chunks.

The machine that makes backups holds only the public key, so it can write backups and never read them back.
A file is::

    MAGIC (8 bytes) | header length (4, big-endian) | header (canonical JSON) | chunk | chunk | …
    chunk = ciphertext length (4, big-endian) | AES-256-GCM ciphertext of at most ``chunk_bytes`` plaintext + tag

The header names the format, the algorithms, the chunk size, the sender's ephemeral X25519 public key and the
recipient key's id (the first 16 bytes of SHA-256 over its raw public key, hex) so a wrong private key is named
before any decryption. The data key is HKDF-SHA256 over the X25519 shared secret (salt: ephemeral || recipient
public keys). Chunk ``i``'s nonce is ``i`` (96 bits, big-endian; a fresh key per file, so never reused) and its
associated data is SHA-256(header) || ``i`` || final flag, so the header is authenticated by every chunk, and a
reordered, dropped, duplicated or truncated chunk (a cut tail lacks the final flag) fails like an altered byte.

Memory is bounded by one chunk on either side (1 MiB by default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import CryptoError

MAGIC = b"MGBAK\x00\x01\n"
FORMAT = 1
CHUNK_BYTES = 1 << 20
_TAG = 16
_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
_INFO = b"medguard.backup.v1"


class BackupIntegrityError(CryptoError):
    """A backup file is not intact: bad framing, a chunk failing authentication, a cut tail, a wrong key."""


def key_id(public: X25519PublicKey) -> str:
    """The recipient id a header carries: the first 16 bytes of SHA-256 over the raw public key, hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def generate_key_pair(public_path: Path, private_path: Path) -> None:
    """Write a new X25519 key pair as PEM: the private key 0600 (created exclusively, never overwritten)."""
    private = X25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_pem)


def load_public_key(path: Path) -> X25519PublicKey:
    """The backup public key (PEM). Raises CryptoError naming the file when it is not an X25519 public key."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CryptoError(f"backup public key {path}: not a readable PEM public key ({type(exc).__name__})") from exc
    if not isinstance(key, X25519PublicKey):
        raise CryptoError(f"backup public key {path}: an X25519 key is needed, not {type(key).__name__}")
    return key


def load_private_key(path: Path) -> X25519PrivateKey:
    """The backup private key (PEM, unencrypted PKCS#8). Raises CryptoError naming the file, never its content."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CryptoError(f"backup private key {path}: not a readable PEM private key ({type(exc).__name__})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise CryptoError(f"backup private key {path}: an X25519 key is needed, not {type(key).__name__}")
    return key


def _data_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(shared)


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


class EncryptingWriter:
    """A write-only binary stream that encrypts to ``public`` into ``out`` (call :meth:`close` to finish).

    Args:
        out: the destination, opened for binary writing (not closed here).
        public: the recipient's X25519 public key.
        meta: extra header fields (plain text, authenticated): ids and kinds only, never a secret or PHI.
    """

    def __init__(self, out: BinaryIO, public: X25519PublicKey, *, meta: dict[str, Any],
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        ephemeral = X25519PrivateKey.generate()
        eph_raw = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        rcpt_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        header = {**meta, "format": FORMAT, "kem": "X25519", "kdf": "HKDF-SHA256", "aead": "AES-256-GCM",
                  "chunk_bytes": chunk_bytes, "ephemeral_public_key": base64.b64encode(eph_raw).decode(),
                  "recipient": key_id(public)}
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        self._aead = AESGCM(_data_key(ephemeral.exchange(public), eph_raw, rcpt_raw))
        self._digest = hashlib.sha256(header_bytes).digest()
        self._out = out
        self._chunk = chunk_bytes
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        out.write(MAGIC + _LEN.pack(len(header_bytes)) + header_bytes)

    def __repr__(self) -> str:
        return f"EncryptingWriter(chunks={self._index})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("EncryptingWriter holds a data key and cannot be pickled")

    def write(self, data: bytes) -> int:
        self._buffer += data
        # Strictly more than one chunk buffered: what is left at close() is always the final chunk.
        while len(self._buffer) > self._chunk:
            self._emit(bytes(self._buffer[: self._chunk]), final=False)
            del self._buffer[: self._chunk]
        return len(data)

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buffer), final=True)
            self._buffer.clear()
            self._closed = True

    def _emit(self, plain: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index), plain, _aad(self._digest, self._index, final))
        self._out.write(_LEN.pack(len(sealed)) + sealed)
        self._index += 1


def read_header(source: BinaryIO, where: str) -> tuple[dict[str, Any], bytes]:
    """The header of an envelope (and its raw bytes), the stream left at the first chunk."""
    start = source.read(len(MAGIC) + _LEN.size)
    if len(start) < len(MAGIC) + _LEN.size or start[: len(MAGIC)] != MAGIC:
        raise BackupIntegrityError(f"{where}: not a medguard backup file (bad magic)")
    (size,) = _LEN.unpack(start[len(MAGIC):])
    if size > _MAX_HEADER:
        raise BackupIntegrityError(f"{where}: header of {size} bytes is out of bounds (altered?)")
    raw = source.read(size)
    try:
        header = json.loads(raw)
        int(header["chunk_bytes"]), str(header["recipient"]), base64.b64decode(header["ephemeral_public_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupIntegrityError(f"{where}: the header is not readable (altered?)") from exc
    if header.get("format") != FORMAT or header.get("aead") != "AES-256-GCM":
        raise BackupIntegrityError(f"{where}: format {header.get('format')!r} / {header.get('aead')!r} unsupported")
    return header, raw


def _frames(source: BinaryIO, header: dict[str, Any], where: str) -> Iterator[tuple[int, bytes, bool]]:
    """(index, sealed chunk, is last in the file) for each chunk; framing errors raise."""
    limit = int(header["chunk_bytes"]) + _TAG
    index, pending = 0, None
    while True:
        length = source.read(_LEN.size)
        if not length:
            break
        if len(length) < _LEN.size:
            raise BackupIntegrityError(f"{where}: cut inside the length of chunk {index}")
        (size,) = _LEN.unpack(length)
        if size < _TAG or size > limit:
            raise BackupIntegrityError(f"{where}: chunk {index} claims {size} bytes (altered?)")
        sealed = source.read(size)
        if len(sealed) < size:
            raise BackupIntegrityError(f"{where}: cut inside chunk {index}")
        if pending is not None:
            yield pending[0], pending[1], False
        pending = (index, sealed)
        index += 1
    if pending is None:
        raise BackupIntegrityError(f"{where}: no chunk at all (cut after the header)")
    yield pending[0], pending[1], True


def scan(path: Path) -> int:
    """Check an envelope's framing without the private key; returns the chunk count.

    This proves the file is whole and well formed, not that it is authentic: only the private key can check the
    chunks' tags (see :func:`decrypt_chunks`).
    """
    with open(path, "rb") as source:
        header, _ = read_header(source, path.name)
        return sum(1 for _ in _frames(source, header, path.name))


class ChunkAuthenticationError(BackupIntegrityError):
    """A chunk fails authentication; ``index`` and ``chunk_bytes`` say which plaintext bytes it held."""

    def __init__(self, message: str, *, index: int, chunk_bytes: int) -> None:
        super().__init__(message)
        self.index = index
        self.chunk_bytes = chunk_bytes


def decrypt_chunks(source: BinaryIO, private: X25519PrivateKey, where: str) -> Iterator[bytes]:
    """The plaintext of an envelope, chunk by chunk, each authenticated before it is yielded.

    Raises:
        BackupIntegrityError: the file is encrypted to another key (named by id), or malformed, or cut.
        ChunkAuthenticationError: a chunk was altered (or the header was).
    """
    header, raw = read_header(source, where)
    mine = key_id(private.public_key())
    if header["recipient"] != mine:
        raise BackupIntegrityError(f"{where}: encrypted to backup key {header['recipient']}, but the private key "
                                   f"given is {mine}: use the private key of the backup key pair it was made with")
    eph_raw = base64.b64decode(header["ephemeral_public_key"])
    rcpt_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError as exc:
        raise BackupIntegrityError(f"{where}: the header's ephemeral key is not valid (altered?)") from exc
    aead = AESGCM(_data_key(shared, eph_raw, rcpt_raw))
    digest = hashlib.sha256(raw).digest()
    chunk_bytes = int(header["chunk_bytes"])
    for index, sealed, last in _frames(source, header, where):
        try:
            plain = aead.decrypt(_nonce(index), sealed, _aad(digest, index, last))
        except InvalidTag:
            if last:
                try:  # a final chunk sealed as non-final: the file was cut at a chunk boundary
                    aead.decrypt(_nonce(index), sealed, _aad(digest, index, False))
                except InvalidTag:
                    pass
                else:
                    raise BackupIntegrityError(f"{where}: cut after chunk {index}: the final chunk is missing") \
                        from None
            raise ChunkAuthenticationError(f"{where}: chunk {index} fails authentication (bytes altered)",
                                           index=index, chunk_bytes=chunk_bytes) from None
        yield plain


class DecryptingReader:
    """A read-only binary stream over :func:`decrypt_chunks` (for ``tarfile`` in stream mode)."""

    def __init__(self, source: BinaryIO, private: X25519PrivateKey, where: str) -> None:
        self._chunks = decrypt_chunks(source, private, where)
        self._buffer = bytearray()
        self._done = False
        self.position = 0  # plaintext bytes handed out so far

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("DecryptingReader holds a data key and cannot be pickled")

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                self._done = True
        if size < 0:
            size = len(self._buffer)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.position += len(out)
        return out

    def drain(self) -> None:
        """Read (and so authenticate) what is left."""
        while self.read(1 << 20):
            pass
