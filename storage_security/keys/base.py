"""The key-provider interface every layer encrypts through: data keys wrapped by key-encryption keys (KEKs).

A provider holds named KEKs (Vault Transit keys, or keys in a local keyring file), each with versions like
Vault's: rotation adds a version, ``min_decryption_version`` retires older ones, destroying a key removes it
and every version for good. Callers never see a KEK, only data keys (DEKs).

Patients' DEKs are made locally and wrapped many at a time under the one data KEK (:meth:`KeyProvider.wrap_many`,
:meth:`KeyProvider.unwrap_each`, :meth:`KeyProvider.rewrap`: Vault's ``batch_input``, at most
:data:`MAX_BATCH_ITEMS` a request), so Vault traffic grows with new patients in batches, not per patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Items per batch request: OpenBao's default JSON limits refuse a batch_input of 500 items.
MAX_BATCH_ITEMS = 400


@dataclass(frozen=True)
class DataKey:
    """A fresh 256-bit data key: ``plaintext`` stays in memory, ``wrapped`` is what may be stored.

    ``wrapped`` is self-describing (e.g. ``vault:v3:…`` or ``keyring:v3:…``): it names the KEK version.
    The object refuses pickling and never shows its plaintext in ``repr``.
    """

    key_name: str
    plaintext: bytes = field(repr=False)
    wrapped: str

    def __getstate__(self) -> None:
        raise TypeError("DataKey holds key material and cannot be pickled; send the wrapped key instead")

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("DataKey holds key material and cannot be pickled; send the wrapped key instead")


@dataclass(frozen=True)
class KeyVersions:
    """The versions of one KEK."""

    key_name: str
    latest: int
    min_decryption_version: int
    versions: tuple[int, ...]


@runtime_checkable
class KeyProvider(Protocol):
    """What the envelope layer, rotation, shredding and the audit log need from a key store.

    Every method raises :class:`pipeline.errors.KeyProviderUnavailableError` when the store cannot be
    reached and :class:`pipeline.errors.KeyAccessDeniedError` when it refuses; nothing falls back.
    """

    name: str

    def ensure_key(self, key_name: str) -> None:
        """Create the KEK if it does not exist (idempotent)."""

    def generate_data_key(self, key_name: str) -> DataKey:
        """A new random 32-byte DEK, plaintext and wrapped under the KEK's latest version."""

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        """The plaintext of a wrapped DEK. Raises DecryptionError when it does not unwrap."""

    def unwrap_many(self, key_name: str, wrapped: list[str]) -> list[bytes]:
        """Unwrap several DEKs in as few round trips as the store allows (Vault: batch_input, < 500 a call)."""

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        """Wrap locally made key material under the KEK's latest version, in order (Vault: ``encrypt`` with
        ``batch_input``, :data:`MAX_BATCH_ITEMS` a request)."""

    def unwrap_each(self, key_name: str, wrapped: list[str]) -> list[bytes | None]:
        """Unwrap what :meth:`wrap_many` wrapped, in batches; None for each item that does not unwrap, so one
        damaged item does not hide the others."""

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        """Re-wrap DEKs under the KEK's latest version without exposing their plaintext."""

    def rotate(self, key_name: str) -> int:
        """Add a KEK version; returns the new latest version."""

    def versions(self, key_name: str) -> KeyVersions:
        """The KEK's versions."""

    def set_min_decryption_version(self, key_name: str, version: int) -> None:
        """Refuse to unwrap anything wrapped under an older version from now on."""

    def destroy_key(self, key_name: str) -> None:
        """Delete the KEK and every version of it, leaving no copy in the store (crypto-shredding)."""

    def key_exists(self, key_name: str) -> bool:
        """True when the KEK exists."""

    def health(self) -> dict[str, object]:
        """Reachability and identity of the store, for ``medguard vault status`` / ``keys status``."""
