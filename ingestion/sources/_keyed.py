"""Keyed digests of what a source says: id-less records' keys, file names, and a batch's identity.

Synthea names its files after patients (``Aaron697_Brekke496_<uuid>.json``), and a record with no id of its own is
keyed by a digest of its content. Neither may reach the lake in a form anyone can read or confirm by guessing, so
a batch hands every reader a :class:`SourceKeys` derived from the lake's ``patient`` pseudonym key (wrapped by the
key provider; :meth:`~storage_security.crypto.pseudonyms.Pseudonymizer.derive_key`, label ``source-digest``), the
same root as the keyed ``_record_hash`` and the pseudonyms:

- :meth:`SourceKeys.file_name` names a file ``fd_<16 hex>``: HMAC-SHA256 of its name (its path relative to the
  folder ingested; folders are read flat). Quarantine positions and reasons, the ledger's ``source_path`` and a
  note's default ``note_id`` carry that label, never the name. An engineer finds the file again with
  :func:`locate` (``medguard ingest --locate fd_… --path FOLDER``), which needs the same key.
- :meth:`SourceKeys.content` keys an id-less record (``hmac:<32 hex>``): HMAC-SHA256 of the first 128 bits of the
  content's SHA-256 in hex, which is what the unkeyed ``sha256:<32 hex>`` of lakes written before held; so those
  can be re-keyed from the old value alone, and the same content gets the same key within one lake.
- :meth:`SourceKeys.batch` starts the keyed digest of a batch id (``bk<24 hex>``).

A reader used on its own (tests, a look at a file) gets :meth:`SourceKeys.local`: a random key for the content
digests (never an unkeyed one) and file names shown as they are, since nothing it yields is written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Any

__all__ = ["CONTENT_PREFIX", "FILE_LABEL", "LEGACY_BATCH_ID", "SourceKeys", "locate"]

CONTENT_PREFIX = "hmac:"
FILE_LABEL = re.compile(r"fd_[0-9a-f]{16}")
LEGACY_BATCH_ID = re.compile(r"^b[0-9a-f]{24}$")  # an unkeyed SHA-256 batch id, written before keyed digests
_CONTENT = b"medguard.source.content.v1\x00"
_FILE = b"medguard.source.file.v1\x00"
_BATCH = b"medguard.source.batch.v1\x00"


class SourceKeys:
    """The keyed digests a batch's readers use; its repr never shows the key, and it cannot be pickled.

    Args:
        secret: the 32-byte key (derived from the lake's provider-wrapped pseudonym key by :meth:`of_lake`).
        version: the pseudonym key's version it derives from (for messages only).
        label_files: name files by their keyed label (a batch) or by their name (a reader on its own).
    """

    def __init__(self, secret: bytes, *, version: str = "", label_files: bool = True) -> None:
        if len(secret) < 16:
            raise ValueError("a source key needs at least 16 bytes")
        self.version = version
        self.label_files = label_files
        self._content = hmac.new(secret, _CONTENT, hashlib.sha256)
        self._file = hmac.new(secret, _FILE, hashlib.sha256)
        self._batch = hmac.new(secret, _BATCH, hashlib.sha256)

    @classmethod
    def of_lake(cls, plake: Any) -> SourceKeys:
        """The keys of a lake: derived from its ``patient`` pseudonym key (no extra key, no extra provider request).

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider cannot unwrap the pseudonym key.
        """
        pseudonymizer = plake.pseudonymizer("patient")
        return cls(pseudonymizer.derive_key("source-digest"), version=pseudonymizer.key_version)

    @classmethod
    def local(cls) -> SourceKeys:
        """Keys for a reader used on its own: a random key, file names as they are (nothing is written)."""
        return cls(secrets.token_bytes(32), label_files=False)

    def __repr__(self) -> str:
        return f"SourceKeys(version={self.version!r}, label_files={self.label_files}, key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("SourceKeys holds key material and cannot be pickled")

    def content(self, data: bytes) -> str:
        """``hmac:<32 hex>``: the keyed digest of a record's content (see the module docstring)."""
        mac = self._content.copy()
        mac.update(hashlib.sha256(data).hexdigest()[:32].encode())
        return CONTENT_PREFIX + mac.hexdigest()[:32]

    def file_label(self, name: str) -> str:
        """``fd_<16 hex>``: the keyed label of a file's name, whatever :attr:`label_files` says."""
        mac = self._file.copy()
        mac.update(name.encode("utf-8", "surrogateescape"))
        return "fd_" + mac.hexdigest()[:16]

    def file_name(self, name: str) -> str:
        """How a position names a file: its keyed label in a batch, its name for a reader on its own."""
        return self.file_label(name) if self.label_files else name

    def batch(self) -> Any:
        """A fresh HMAC (domain ``batch``) to feed a batch's identity into; see :func:`ingestion.batch.batch_id_for`."""
        return self._batch.copy()


def locate(keys: SourceKeys, label: str, folder: Path) -> list[Path]:
    """The entries of ``folder`` (or ``folder`` itself) whose keyed label is ``label`` (a ``fd_…`` token, or any
    text holding one, such as a quarantine position).

    Raises:
        ValueError: ``label`` holds no ``fd_<16 hex>`` token, or ``folder`` does not exist.
    """
    found = FILE_LABEL.search(label)
    if found is None:
        raise ValueError("--locate takes a file label fd_<16 hex digits> (as in a quarantine position)")
    if not folder.exists():
        raise ValueError(f"{folder} does not exist")
    wanted = found.group(0)
    candidates = [folder, *sorted(folder.iterdir())] if folder.is_dir() else [folder]
    return [path for path in candidates if hmac.compare_digest(keys.file_label(path.name), wanted)]
