"""A test key provider and the functions tests/storage_security/test_audit.py runs in spawned processes.

They live in their own small module so that a spawned process can import them by name (delta-rs panics after
fork, so the concurrency test spawns).
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import DecryptionError
from storage_security.keys.base import DataKey

_PREFIX = "fake:v1:"


class FakeKeyProvider:
    """Just enough of a KeyProvider for the audit log: data keys AES-GCM-wrapped under one in-memory KEK."""

    name = "fake"

    def __init__(self, master: bytes) -> None:
        self._kek = AESGCM(master)
        self.data_keys_generated = 0

    def ensure_key(self, key_name: str) -> None:
        """Every KEK name exists (they all share the one master key, bound by associated data)."""

    def generate_data_key(self, key_name: str) -> DataKey:
        plaintext = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        wrapped = _PREFIX + base64.b64encode(nonce + self._kek.encrypt(nonce, plaintext, key_name.encode())).decode()
        self.data_keys_generated += 1
        return DataKey(key_name=key_name, plaintext=plaintext, wrapped=wrapped)

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        try:
            blob = base64.b64decode(wrapped.removeprefix(_PREFIX), validate=True)
            return self._kek.decrypt(blob[:12], blob[12:], key_name.encode())
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(f"decryption failed for a data key of {key_name}") from exc


def start_together(barrier: Any) -> None:
    """Pool initializer: pay the imports first, then hold every worker until all are ready, so they race."""
    import storage_security.audit.log  # noqa: F401

    with contextlib.suppress(threading.BrokenBarrierError):  # a late worker only makes the race less tight
        barrier.wait(timeout=60)


def record_events(lake_root: str, home: str, master: bytes, worker: int, count: int, sign_every: int) -> list[int]:
    """Record ``count`` events one by one as ``svc:worker-<worker>``; returns the seqs they got."""
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from storage_security.audit.log import AuditEvent, AuditLog

    lake = Lake(load_settings(lake_root=lake_root, home=home))
    log = AuditLog(lake, FakeKeyProvider(master), sign_every=sign_every)
    return [
        log.record(AuditEvent(principal=f"svc:worker-{worker}", action="read", zone="raw",
                              table_name="encounters", row_count=i, details={"worker": worker, "i": i}))
        for i in range(count)
    ]
