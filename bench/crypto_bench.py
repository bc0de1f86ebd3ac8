"""Envelope encryption throughput against raw ``AESGCM`` calls on the same cells, and DEK fetches per 1M cells.

Encrypt and decrypt are timed in interleaved pairs (raw, then the column API, on the same cells) so that
drift hits both sides alike; the ratio compares the best time of each side (the usual estimate on a noisy
machine), with the spread of the per-pair ratios in its details. The raw side is only
the ``AESGCM.encrypt``/``decrypt`` calls, with nonces, plaintext bytes and associated data prepared outside
the timing: the floor any per-cell AES-GCM in Python pays. The column API side is everything: Arrow in,
nonces, associated data, cell headers, Arrow out.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage_security.crypto import _aead
from storage_security.crypto.envelope import CellCipher, _aad_prefix, _context
from storage_security.keys.base import DataKey
from storage_security.keys.dek_store import DekStore
from storage_security.keys.keyring import LocalKeyring

_BATCH = 100_000  # cells per encrypt_column call: one Arrow record batch
_TABLE, _COLUMN = "encounters", "patient_name"


class CountingProvider:
    """A key provider that counts DEK fetches (data keys generated, wrapped keys unwrapped) and delegates."""

    def __init__(self, inner: LocalKeyring) -> None:
        self._inner = inner
        self.name = inner.name
        self.generated = 0
        self.unwrapped = 0

    @property
    def fetches(self) -> int:
        return self.generated + self.unwrapped

    def generate_data_key(self, key_name: str) -> DataKey:
        self.generated += 1
        return self._inner.generate_data_key(key_name)

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        self.unwrapped += 1
        return self._inner.unwrap(key_name, wrapped)

    def unwrap_many(self, key_name: str, wrapped: list[str]) -> list[bytes]:
        self.unwrapped += len(wrapped)
        return self._inner.unwrap_many(key_name, wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _cells(count: int, offset: int = 0) -> tuple[pa.Array, pa.Array]:
    names = pa.array([f"Patient Surname-{i:08d}" for i in range(offset, offset + count)])
    row_keys = pa.array([f"ENC{i:012d}" for i in range(offset, offset + count)])
    return names, row_keys


def _throughput(cipher: CellCipher, cells: int, pairs: int) -> Iterator[tuple[str, float, str, str]]:
    values, row_keys = _cells(cells)
    aesgcm = AESGCM(AESGCM.generate_key(bit_length=256))
    plaintexts = values.cast(pa.binary()).to_pylist()
    context = _context(_aad_prefix(_TABLE, _COLUMN), bytes((1, 16)) + bytes(16))
    aads = [context + key for key in row_keys.cast(pa.binary()).to_pylist()]  # the column API's AAD layout
    nonces = _aead.nonce_list(_aead.random_nonces(cells))
    cipher.encrypt_column(values[:10], table=_TABLE, column=_COLUMN, row_keys=row_keys[:10])  # DEK made

    enc_raw, enc_api, dec_raw, dec_api = [], [], [], []
    for _ in range(pairs):
        started = time.perf_counter()
        sealed = list(map(aesgcm.encrypt, nonces, plaintexts, aads))
        enc_raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        encrypted = cipher.encrypt_column(values, table=_TABLE, column=_COLUMN, row_keys=row_keys)
        enc_api.append(time.perf_counter() - started)
        started = time.perf_counter()
        list(map(aesgcm.decrypt, nonces, sealed, aads))
        dec_raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        cipher.decrypt_column(encrypted, table=_TABLE, column=_COLUMN, row_keys=row_keys)
        dec_api.append(time.perf_counter() - started)
    detail = f"{cells:,} cells of ~22 bytes, one core, best of {pairs} interleaved runs"
    for op, raw, api in (("encrypt", enc_raw, enc_api), ("decrypt", dec_raw, dec_api)):
        yield (f"crypto.{op}_cells_per_s", cells / min(api), "cells/s", f"CellCipher.{op}_column, {detail}")
        yield (f"crypto.raw_{op}_cells_per_s", cells / min(raw), "cells/s", f"AESGCM.{op} calls alone, same cells")
        ratios = [r / a for r, a in zip(raw, api, strict=True)]
        yield (f"crypto.{op}_vs_raw", min(raw) / min(api), "x",
               f"best column API throughput / best raw AESGCM.{op} throughput over {pairs} interleaved pairs "
               f"(per-pair ratios: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
               f"max {max(ratios):.2f}); target >= 0.8")


def _fetches(root: Path, keyring: LocalKeyring, cells: int, patients: int) -> Iterator[tuple[str, float, str, str]]:
    counting = CountingProvider(keyring)
    store = DekStore(root / "deks-fetches")
    writer = CellCipher(counting, store)  # type: ignore[arg-type]
    encrypted = []
    for start in range(0, cells, _BATCH):
        values, row_keys = _cells(min(_BATCH, cells - start), start)
        encrypted.append((writer.encrypt_column(values, table=_TABLE, column=_COLUMN, row_keys=row_keys), row_keys))
    reader = CellCipher(counting, store)  # type: ignore[arg-type]  # a cold cache, as another process has
    for cells_batch, row_keys in encrypted:
        reader.decrypt_column(cells_batch, table=_TABLE, column=_COLUMN, row_keys=row_keys)
    per_million = 1e6 / cells
    yield ("crypto.dek_fetches_per_1m_cells", counting.fetches * per_million, "fetches",
           f"batch-scoped DEKs: {counting.generated} generated while encrypting {cells:,} cells in batches of "
           f"{_BATCH:,}, {counting.unwrapped} unwrapped by a fresh cipher decrypting them all")

    counting = CountingProvider(keyring)
    store = DekStore(root / "deks-patients")
    writer = CellCipher(counting, store)  # type: ignore[arg-type]
    count = min(cells, 100_000)
    values, row_keys = _cells(count)
    scope = pa.array([f"ps1_bench_{i % patients:06d}" for i in range(count)])
    sealed = writer.encrypt_column(values, table=_TABLE, column=_COLUMN, row_keys=row_keys, scope_key=scope)
    CellCipher(counting, store).decrypt_column(sealed, table=_TABLE, column=_COLUMN,  # type: ignore[arg-type]
                                               row_keys=row_keys)
    yield ("crypto.dek_fetches_per_patient", counting.fetches / patients, "fetches",
           f"patient-scoped DEKs: {count:,} cells of {patients:,} patients, one column, encrypt then decrypt "
           f"with a cold cache: one DEK per patient (shared by all their columns), whatever the number of cells")


def crypto_figures(cells: int = 1_000_000, pairs: int = 9,
                   patients: int = 1_000) -> Iterator[tuple[str, float, str, str]]:
    """Yield (name, value, unit, details) for the envelope-encryption benchmarks."""
    with tempfile.TemporaryDirectory(prefix="medguard-bench-crypto-") as tmp:
        root = Path(tmp)
        keyring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
        keyring.ensure_key("medguard-kek")
        yield from _throughput(CellCipher(keyring, DekStore(root / "deks")), min(cells, _BATCH * 2), pairs)
        yield from _fetches(root, keyring, cells, patients)
