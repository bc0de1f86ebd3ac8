"""The native bulk helpers against their references: cryptography's AES-GCM, hashlib, hmac and the DuckDB framing.

A lake written where the helpers were not built must read where they were, and the reverse: cells from either
path open on the other, record hashes and pseudonyms are the same digits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

import numpy as np
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ingestion import checking
from ingestion.checking import HashKey, record_hash_array
from storage_security.crypto import _aead
from storage_security.crypto.envelope import CellCipher
from storage_security.crypto.pseudonyms import Pseudonymizer
from storage_security.keys.dek_store import DekStore
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.patient_keys import PatientKeyStore

pytestmark = pytest.mark.skipif(not _aead.NATIVE, reason="the native helpers were not built here (make install "
                                                          "builds them with gcc and libssl-dev)")

HEADER = 18


def _keys(count: int) -> tuple[list[bytes], bytes, bytes]:
    keys = [os.urandom(32) for _ in range(count)]
    headers = [bytes((1, 16)) + os.urandom(16) for _ in range(count)]
    return keys, b"".join(keys), b"".join(headers)


PLAINTEXTS = ["", "a", "Ada Lovelace", "é" * 40, "x" * 5000, "日本語の名前", "\x00nul\x00",
              "y" * 15, "z" * 16, "w" * 17]


def test_when_cells_are_sealed_natively_then_cryptography_opens_each_one_with_its_own_key_nonce_and_context() -> None:
    keys, key_bytes, header_bytes = _keys(3)
    prefix = b"medguard.cell\x00\x00\x08patients\x00\x04name"
    contexts = _aead.contexts(prefix, header_bytes, HEADER)
    index = np.array([i % 3 for i in range(len(PLAINTEXTS))], dtype=np.int64)
    row_keys = pa.array([f"row-{i}" * (i + 1) for i in range(len(PLAINTEXTS))], pa.binary())
    cells = _aead.seal_cells(key_bytes, header_bytes, HEADER, contexts, index,
                             pa.array(PLAINTEXTS, pa.string()).cast(pa.binary()), row_keys).to_pylist()
    for i, (cell, plaintext) in enumerate(zip(cells, PLAINTEXTS, strict=True)):
        k = int(index[i])
        assert cell[:HEADER] == header_bytes[HEADER * k:HEADER * (k + 1)]
        context = hashlib.sha256(prefix + cell[:HEADER]).digest()[:16]
        assert contexts[k].tobytes() == context
        nonce, sealed = cell[HEADER:HEADER + 12], cell[HEADER + 12:]
        assert AESGCM(keys[k]).decrypt(nonce, sealed, context + row_keys[i].as_py()) == plaintext.encode()
        with pytest.raises(InvalidTag):
            AESGCM(keys[(k + 1) % 3]).decrypt(nonce, sealed, context + row_keys[i].as_py())
    assert len({cell[HEADER:HEADER + 12] for cell in cells}) == len(cells)  # fresh nonces


def test_when_cryptography_seals_cells_then_the_native_open_reads_them_and_names_the_first_tampered_one() -> None:
    keys, key_bytes, header_bytes = _keys(2)
    prefix = b"medguard.cell\x00\x00\x01t\x00\x01c"
    contexts = _aead.contexts(prefix, header_bytes, HEADER)
    index = np.array([0, 1, 1, 0, 1, 0, 0, 1, 0, 1], dtype=np.int64)
    row_keys = [f"k{i}".encode() for i in range(len(PLAINTEXTS))]
    cells = []
    for i, plaintext in enumerate(PLAINTEXTS):
        k, nonce = int(index[i]), os.urandom(12)
        sealed = AESGCM(keys[k]).encrypt(nonce, plaintext.encode(), contexts[k].tobytes() + row_keys[i])
        cells.append(header_bytes[HEADER * k:HEADER * (k + 1)] + nonce + sealed)
    heads = np.full(len(cells), HEADER, dtype=np.int64)
    opened = _aead.open_cells(key_bytes, contexts, index, pa.array(cells, pa.binary()), heads,
                              pa.array(row_keys, pa.binary()))
    assert opened.cast(pa.string()).to_pylist() == PLAINTEXTS
    for position in (3, 7):
        for at in (HEADER, HEADER + 12, len(cells[position]) - 1):  # nonce, ciphertext or tag
            bad = list(cells)
            flipped = bytearray(bad[position])
            flipped[at] ^= 1
            bad[position] = bytes(flipped)
            with pytest.raises(_aead.AuthenticationFailed) as failed:
                _aead.open_cells(key_bytes, contexts, index, pa.array(bad, pa.binary()), heads,
                                 pa.array(row_keys, pa.binary()))
            assert failed.value.index == position
    swapped = list(row_keys)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    with pytest.raises(_aead.AuthenticationFailed) as failed:
        _aead.open_cells(key_bytes, contexts, index, pa.array(cells, pa.binary()), heads,
                         pa.array(swapped, pa.binary()))
    assert failed.value.index == 5


def test_when_a_cell_is_shorter_than_nonce_and_tag_then_it_is_named_without_reaching_c() -> None:
    _keys_list, key_bytes, header_bytes = _keys(1)
    contexts = _aead.contexts(b"p", header_bytes, HEADER)
    with pytest.raises(_aead.AuthenticationFailed) as failed:
        _aead.open_cells(key_bytes, contexts, np.zeros(2, np.int64), pa.array([b"x" * 60, b"x" * 40], pa.binary()),
                         np.full(2, HEADER, np.int64), pa.array([b"a", b"b"], pa.binary()))
    assert failed.value.index == 1
    with pytest.raises(ValueError, match="out of range"):
        _aead.open_cells(key_bytes, contexts, np.array([0, 1], np.int64), pa.array([b"x" * 60] * 2, pa.binary()),
                         np.full(2, HEADER, np.int64), pa.array([b"a", b"b"], pa.binary()))


def test_when_rows_are_hashed_natively_then_the_digits_are_hmac_sha256_of_prefix_and_row() -> None:
    key, prefix = os.urandom(32), b'"observations"\x00'
    messages = pa.array(["", "5:hello", "é" * 100, "x" * 3000], pa.string()).slice(1)
    expected = [hmac.new(key, prefix + m.encode(), hashlib.sha256).hexdigest() for m in messages.to_pylist()]
    assert _aead.hmac_hex(key, prefix, messages).to_pylist() == expected


@pytest.mark.parametrize("rows", [0, 1, 5000])
def test_when_record_hashes_are_computed_natively_then_they_equal_the_framed_rows_hmac(rows: int) -> None:
    rng = np.random.default_rng(rows)
    values = ["", "é", "日本", "plain", "a:b", "\x00", None]
    data = pa.table({
        "text": pa.array([values[i] for i in rng.integers(0, len(values), rows)], pa.string()),
        "number": pa.array([None if i % 7 == 0 else float(i) / 3 for i in range(rows)], pa.float64()),
        "count": pa.array(list(range(rows)), pa.int64()),
        "when": pa.array([None if i % 5 == 0 else i * 86_400_000_000 for i in range(rows)], pa.timestamp("us", "UTC")),
    }).slice(0, rows)
    key = HashKey(os.urandom(32), version=1)
    native = record_hash_array("observations", data, key)
    framed = checking._framed_rows(data).cast(pa.binary()).to_pylist() if rows else []
    prefix = json.dumps("observations").encode() + b"\x00"
    assert native.to_pylist() == [hmac.new(key.secret, prefix + row, hashlib.sha256).hexdigest() for row in framed]


@pytest.mark.parametrize("native_writes", [True, False])
def test_when_a_lake_is_written_by_one_path_then_the_other_reads_it(
        keyring: LocalKeyring, lake, native_writes: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    store, patients = DekStore(lake), PatientKeyStore(lake)
    values = pa.array(["Ada", None, "Grace Hopper", "", "é" * 300], pa.string())
    row_keys = pa.array([f"r{i}" for i in range(5)])
    scopes = pa.array(["p1", "p2", "p1", "p3", "p2"])
    monkeypatch.setattr(_aead, "NATIVE", native_writes)
    cells = CellCipher(keyring, store, patient_keys=patients).encrypt_column(
        values, table="patients", column="name", row_keys=row_keys, scope_key=scopes)
    monkeypatch.setattr(_aead, "NATIVE", not native_writes)
    opened = CellCipher(keyring, store, patient_keys=patients).decrypt_column(
        cells, table="patients", column="name", row_keys=row_keys)
    assert opened.to_pylist() == values.to_pylist()


def test_when_pseudonyms_are_computed_natively_then_they_are_the_documented_hmac() -> None:
    key = os.urandom(32)
    pseudonymizer = Pseudonymizer.from_key("patient", "0123abcd" + "0" * 24, key)
    values = ["p-1", None, "é", ""]
    domain = b"medguard.pseudonym.v1\x00"
    expected = [None if v is None else
                "ps1_0123abcd_" + hmac.new(key, domain + v.encode(), hashlib.sha256).hexdigest()[:32]
                for v in values]
    assert pseudonymizer.pseudonymize(values).to_pylist() == expected


def test_when_a_column_is_large_enough_to_split_across_threads_then_cells_round_trip_and_failures_keep_positions(
        ) -> None:
    count = 4 * _aead._PARALLEL_MIN + 7
    keys, key_bytes, header_bytes = _keys(5)
    contexts = _aead.contexts(b"prefix", header_bytes, HEADER)
    index = np.arange(count, dtype=np.int64) // 1000 % 5
    plaintexts = pa.array([f"value {i}" * (i % 4) for i in range(count)], pa.string()).cast(pa.binary())
    row_keys = pa.array([f"r{i}".encode() for i in range(count)], pa.binary())
    cells = _aead.seal_cells(key_bytes, header_bytes, HEADER, contexts, index, plaintexts, row_keys)
    for i in (0, count // 2, count - 1):  # the reference opens cells from every part
        cell, k = cells[i].as_py(), int(index[i])
        assert AESGCM(keys[k]).decrypt(cell[HEADER:HEADER + 12], cell[HEADER + 12:],
                                       contexts[k].tobytes() + row_keys[i].as_py()) == plaintexts[i].as_py()
    heads = np.full(count, HEADER, dtype=np.int64)
    assert _aead.open_cells(key_bytes, contexts, index, cells, heads, row_keys).equals(plaintexts)
    late = count - 3
    bad = cells.to_pylist()
    bad[late] = bad[late][:-1] + bytes([bad[late][-1] ^ 1])
    with pytest.raises(_aead.AuthenticationFailed) as failed:
        _aead.open_cells(key_bytes, contexts, index, pa.array(bad, pa.binary()), heads, row_keys)
    assert failed.value.index == late
    texts = [pa.array([None if i % 9 == 0 else f"é{i}" for i in range(count)], pa.string()),
             pa.array([str(i) for i in range(count)], pa.string())]
    key = os.urandom(32)
    hashes = _aead.framed_hmac_hex(key, b"t\x00", texts).to_pylist()
    for i in (0, 1, count // 2, count - 1):
        row = ("\x00" if i % 9 == 0 else f"{len(f'é{i}')}:é{i}") + f"{len(str(i))}:{i}"
        assert hashes[i] == hmac.new(key, b"t\x00" + row.encode(), hashlib.sha256).hexdigest()
