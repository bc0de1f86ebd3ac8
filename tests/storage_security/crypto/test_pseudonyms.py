"""Keyed pseudonyms: deterministic per key, different per key, the key version in the pseudonym."""

from __future__ import annotations

import pickle
import re
import secrets
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import DecryptionError
from pipeline.lake import Lake
from storage_security.crypto.envelope import CellCipher
from storage_security.crypto.pseudonyms import Pseudonymizer
from storage_security.keys.dek_store import DekRecord, DekStore
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.patient_keys import PatientKeyStore

KEK = "medguard-kek"
PSEUDONYM = re.compile(r"^ps1_[0-9a-f]{8}_[0-9a-f]{32}$")


@pytest.fixture
def store(lake: Lake) -> DekStore:
    return DekStore(lake)


def test_when_values_are_pseudonymized_then_output_is_deterministic_and_records_the_key_version(
    keyring: LocalKeyring, store: DekStore
) -> None:
    first = Pseudonymizer(keyring, store)
    values = pa.array(["MRN001", None, "MRN002", "MRN001"])
    result = first.pseudonymize(values).to_pylist()

    assert result[1] is None and result[0] == result[3] != result[2]
    assert all(PSEUDONYM.match(p) for p in result if p is not None)
    [record] = store.records(scope="pseudonym")
    assert result[0].split("_")[1] == record.key_id[:8] == first.key_version
    again = Pseudonymizer(keyring, store)  # another process: the same stored key
    assert again.pseudonymize(values).to_pylist() == result
    assert again.pseudonym("MRN001") == result[0] and again.pseudonym(None) is None
    assert "MRN001" not in "".join(p for p in result if p)


def test_when_keys_differ_then_pseudonyms_differ(keyring: LocalKeyring, store: DekStore, tmp_path: Path) -> None:
    patient = Pseudonymizer(keyring, store, name="patient")
    provider_ids = Pseudonymizer(keyring, store, name="provider")
    elsewhere = Pseudonymizer(keyring, DekStore(tmp_path / "other-deks"))
    values = ["MRN001", "MRN002"]
    outputs = [p.pseudonymize(values).to_pylist() for p in (patient, provider_ids, elsewhere)]
    assert len({o[0] for o in outputs}) == 3 and len({o[0].split("_")[1] for o in outputs}) == 3


def test_when_values_are_not_strings_then_their_text_form_is_pseudonymized(
    keyring: LocalKeyring, store: DekStore
) -> None:
    pseudo = Pseudonymizer(keyring, store)
    assert pseudo.pseudonymize(pa.array([42, None], pa.int64())).to_pylist() == [pseudo.pseudonym("42"), None]
    assert pseudo.pseudonymize(pa.chunked_array([["a"], ["b"]])).to_pylist() == [pseudo.pseudonym("a"),
                                                                                pseudo.pseudonym("b")]
    assert pseudo.pseudonymize(pa.array([], pa.string())).to_pylist() == []


def test_when_two_processes_created_the_key_at_once_then_both_settle_on_the_oldest(
    keyring: LocalKeyring, store: DekStore
) -> None:
    pseudo = Pseudonymizer(keyring, store)
    racer = DekRecord(key_id=secrets.token_hex(16), kek_name=KEK, wrapped=keyring.generate_data_key(KEK).wrapped,
                      table="", column="", scope="pseudonym", scope_key="patient")
    store.put([racer])  # the losing process's key, created a moment later
    assert Pseudonymizer(keyring, store).key_version == pseudo.key_version


def test_when_pseudonyms_become_patient_scope_keys_then_cells_can_be_shredded_by_them(
    keyring: LocalKeyring, store: DekStore, lake: Lake
) -> None:
    pseudonym = Pseudonymizer(keyring, store).pseudonym("MRN001")
    patients = PatientKeyStore(lake)
    cipher = CellCipher(keyring, store, patient_keys=patients)
    cell = cipher.encrypt_cell("Ann", table="patients", column="name", row_key="1", scope_key=pseudonym)
    cipher.shred(pseudonym)
    with pytest.raises(DecryptionError):
        CellCipher(keyring, store, patient_keys=patients).decrypt_cell(cell, table="patients", column="name",
                                                                       row_key="1")
    assert len(store.records(scope="pseudonym")) == 1  # the pseudonym key itself is untouched


def test_when_the_pseudonym_key_version_is_retired_then_construction_fails(
    keyring: LocalKeyring, store: DekStore
) -> None:
    Pseudonymizer(keyring, store)
    keyring.rotate(KEK)
    keyring.set_min_decryption_version(KEK, 2)
    with pytest.raises(DecryptionError):
        Pseudonymizer(keyring, store)
    keyring.set_min_decryption_version(KEK, 1)
    assert store.rewrap_all(keyring).rewrapped == 1  # the right order: `keys rotate` rewraps it, then retire v1
    keyring.set_min_decryption_version(KEK, 2)
    assert Pseudonymizer(keyring, store).key_version


def test_when_a_pseudonymizer_is_pickled_or_printed_then_the_key_stays_hidden(
    keyring: LocalKeyring, store: DekStore
) -> None:
    pseudo = Pseudonymizer(keyring, store)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(pseudo)
    [record] = store.records()
    key = keyring.unwrap(KEK, record.wrapped)
    assert key.hex() not in repr(pseudo) and "redacted" in repr(pseudo)
