"""NIST CAVS AES-256-GCM vectors (from the cryptography-vectors package) through ``storage_security.crypto._aead``.

Every case of ``gcmEncryptExtIV256.rsp`` and ``gcmDecrypt256.rsp`` is run: 96-bit, 1024-bit and 8-bit IVs,
empty and non-empty plaintext and associated data, tags of 32 to 128 bits, and the decrypt cases marked FAIL,
which must be rejected. cryptography (like most AES-GCM libraries) refuses IVs shorter than 64 bits, so the
8-bit-IV cases must be refused by ``_aead`` with ``ValueError`` rather than computed. The cases with 96-bit IVs
and 128-bit tags also go through ``AesGcm``, the class the cell format uses.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import cryptography_vectors
import pytest

from storage_security.crypto import _aead

ENCRYPT_FILE = os.path.join("ciphers", "AES", "GCM", "gcmEncryptExtIV256.rsp")
DECRYPT_FILE = os.path.join("ciphers", "AES", "GCM", "gcmDecrypt256.rsp")
CASES_PER_FILE = 7875


@dataclass(frozen=True)
class Case:
    count: int
    key: bytes
    iv: bytes
    plaintext: bytes | None  # None for a decrypt case marked FAIL
    aad: bytes
    ciphertext: bytes
    tag: bytes


def _parse(name: str) -> dict[str, list[Case]]:
    """Cases grouped by their section header, e.g. ``IVlen=96,PTlen=128,AADlen=0,Taglen=128``."""
    groups: dict[str, list[Case]] = defaultdict(list)
    params: dict[str, str] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if "Count" not in fields:
            return
        section = ",".join(f"{k}={params[k]}" for k in ("IVlen", "PTlen", "AADlen", "Taglen"))
        fail = fields.get("FAIL") == "FAIL"
        groups[section].append(Case(
            count=int(fields["Count"]),
            key=bytes.fromhex(fields["Key"]),
            iv=bytes.fromhex(fields["IV"]),
            plaintext=None if fail else bytes.fromhex(fields["PT"]),
            aad=bytes.fromhex(fields["AAD"]),
            ciphertext=bytes.fromhex(fields["CT"]),
            tag=bytes.fromhex(fields["Tag"]),
        ))
        fields.clear()

    with cryptography_vectors.open_vector_file(name, "r") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                flush()
                continue
            if line.startswith("["):
                flush()
                key, _, value = line.strip("[]").partition("=")
                params[key.strip()] = value.strip()
            elif line == "FAIL":
                fields["FAIL"] = "FAIL"
            else:
                key, _, value = line.partition("=")
                fields[key.strip()] = value.strip()
        flush()
    return dict(groups)


ENCRYPT = _parse(ENCRYPT_FILE)
DECRYPT = _parse(DECRYPT_FILE)


@pytest.mark.parametrize(("name", "groups"), [(ENCRYPT_FILE, ENCRYPT), (DECRYPT_FILE, DECRYPT)])
def test_when_vector_files_are_parsed_then_every_case_is_there(name: str, groups: dict[str, list[Case]]) -> None:
    cases = [case for group in groups.values() for case in group]
    assert len(cases) == CASES_PER_FILE, name
    assert {len(case.tag) for case in cases} == {4, 8, 12, 13, 14, 15, 16}
    assert {len(case.iv) for case in cases} == {1, 12, 128}


def test_when_decrypt_file_is_parsed_then_it_holds_cases_that_must_fail() -> None:
    failing = sum(case.plaintext is None for group in DECRYPT.values() for case in group)
    assert 0 < failing < CASES_PER_FILE


@pytest.mark.parametrize("section", sorted(ENCRYPT))
def test_when_nist_encrypt_vector_then_aead_reproduces_ciphertext_and_tag(section: str) -> None:
    for case in ENCRYPT[section]:
        assert case.plaintext is not None
        if len(case.iv) < 8:
            with pytest.raises(ValueError, match="IV"):
                _aead.gcm_encrypt(case.key, case.iv, case.plaintext, case.aad, tag_length=len(case.tag))
            continue
        ciphertext, tag = _aead.gcm_encrypt(case.key, case.iv, case.plaintext, case.aad, tag_length=len(case.tag))
        assert (ciphertext, tag) == (case.ciphertext, case.tag), f"{section} Count={case.count}"
        assert _aead.gcm_decrypt(case.key, case.iv, ciphertext, tag, case.aad) == case.plaintext


@pytest.mark.parametrize("section", sorted(DECRYPT))
def test_when_nist_decrypt_vector_then_aead_returns_plaintext_or_rejects(section: str) -> None:
    for case in DECRYPT[section]:
        if len(case.iv) < 8:
            with pytest.raises(ValueError, match="IV"):
                _aead.gcm_decrypt(case.key, case.iv, case.ciphertext, case.tag, case.aad)
        elif case.plaintext is None:
            with pytest.raises(_aead.AuthenticationFailed):
                _aead.gcm_decrypt(case.key, case.iv, case.ciphertext, case.tag, case.aad)
        else:
            assert _aead.gcm_decrypt(case.key, case.iv, case.ciphertext, case.tag, case.aad) == case.plaintext


_CELL_SECTIONS = sorted(s for s in ENCRYPT if s.startswith("IVlen=96,") and s.endswith("Taglen=128"))


@pytest.mark.parametrize("section", _CELL_SECTIONS)
def test_when_96_bit_iv_and_128_bit_tag_vector_then_the_cell_primitive_agrees(section: str) -> None:
    encrypt_cases, decrypt_cases = ENCRYPT[section], DECRYPT[section]
    for case in encrypt_cases:
        sealed = _aead.AesGcm(case.key).seal_many([case.iv], [case.plaintext], [case.aad])  # type: ignore[list-item]
        assert sealed == [case.ciphertext + case.tag]
    for case in decrypt_cases:
        aead = _aead.AesGcm(case.key)
        message = case.iv + case.ciphertext + case.tag
        if case.plaintext is None:
            with pytest.raises(_aead.AuthenticationFailed):
                aead.decrypt(message, case.aad)
            with pytest.raises(_aead.AuthenticationFailed) as failed:
                aead.open_many([case.iv, case.iv], [case.ciphertext + case.tag] * 2, [case.aad] * 2)
            assert failed.value.index == 0
        else:
            assert aead.decrypt(message, case.aad) == case.plaintext


def test_when_cell_sections_are_selected_then_every_length_combination_is_covered() -> None:
    assert len(_CELL_SECTIONS) == 25  # 5 plaintext lengths x 5 associated-data lengths


@pytest.mark.parametrize(
    ("key", "error"),
    [(b"k" * 16, ValueError), (b"k" * 31, ValueError), ("k" * 32, TypeError)],
)
def test_when_key_is_not_32_bytes_then_caller_error(key: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        _aead.AesGcm(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("tag_length", [0, 3, 17])
def test_when_tag_length_outside_gcm_then_value_error(tag_length: int) -> None:
    with pytest.raises(ValueError, match="tag"):
        _aead.gcm_encrypt(b"k" * 32, b"n" * 12, b"", b"", tag_length=tag_length)


def test_when_aead_is_pickled_or_printed_then_no_key_material_leaks() -> None:
    import pickle

    aead = _aead.AesGcm(b"\x42" * 32)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(aead)
    assert "42" not in repr(aead) and "redacted" in repr(aead)


def test_when_a_message_is_encrypted_twice_then_nonces_differ_and_both_decrypt() -> None:
    aead = _aead.AesGcm(os.urandom(32))
    first, second = aead.encrypt(b"same", b"ad"), aead.encrypt(b"same", b"ad")
    assert first[:_aead.NONCE_SIZE] != second[:_aead.NONCE_SIZE]
    assert aead.decrypt(first, b"ad") == aead.decrypt(second, b"ad") == b"same"
    with pytest.raises(_aead.AuthenticationFailed):
        aead.decrypt(first[:_aead.NONCE_SIZE + _aead.TAG_SIZE - 1], b"ad")
