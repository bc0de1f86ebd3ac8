"""NIST CAVS AES-256-GCM vectors (from the cryptography-vectors package) through the cell primitive ``AesGcm``.

Both files, ``gcmEncryptExtIV256.rsp`` and ``gcmDecrypt256.rsp``, hold 7,875 cases each: 96-bit, 1024-bit and
8-bit IVs, empty and non-empty plaintext and associated data, tags of 32 to 128 bits, and (decrypt file) cases
marked FAIL. They are run only through what the cell format calls:

- The cases the format can carry (96-bit IV, 128-bit tag; 375 per file) must come out of ``seal_many`` and
  ``seal_rows`` byte for byte, and ``decrypt``, ``open_many`` and ``open_rows`` must return their plaintext, or
  refuse them when NIST marks them FAIL (a bulk call naming the position of the first failing cell).
- Every other case, fed to ``decrypt`` as ``iv || ciphertext || tag``, must be refused: the format has no way to
  carry another IV length or a truncated tag, so such a message can never authenticate. Their encrypt side is not
  run: no medguard API takes a caller-chosen IV or tag length (nonces come from ``random_nonces``).

Each test walks every case of one file for one property and lists the failing cases by section and count.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import cryptography_vectors
import pytest

from storage_security.crypto._aead import (
    NONCE_SIZE,
    TAG_SIZE,
    AesGcm,
    AuthenticationFailed,
    KeySet,
    open_rows,
    seal_rows,
)

ENCRYPT_FILE = os.path.join("ciphers", "AES", "GCM", "gcmEncryptExtIV256.rsp")
DECRYPT_FILE = os.path.join("ciphers", "AES", "GCM", "gcmDecrypt256.rsp")
CASES_PER_FILE = 7875
FORMAT_CASES_PER_FILE = 375  # 5 plaintext lengths x 5 associated-data lengths x 15 cases, 96-bit IV, 128-bit tag


@dataclass(frozen=True)
class Case:
    section: str  # e.g. ``IVlen=96,PTlen=128,AADlen=0,Taglen=128``
    count: int
    key: bytes
    iv: bytes
    plaintext: bytes | None  # None for a decrypt case marked FAIL
    aad: bytes
    ciphertext: bytes
    tag: bytes

    @property
    def ident(self) -> str:
        return f"[{self.section}] Count={self.count}"

    @property
    def in_cell_format(self) -> bool:
        return len(self.iv) == NONCE_SIZE and len(self.tag) == TAG_SIZE

    @property
    def message(self) -> bytes:
        """The case laid out as ``AesGcm.decrypt`` reads a message: ``nonce || ciphertext || tag``."""
        return self.iv + self.ciphertext + self.tag


def _parse(name: str) -> list[Case]:
    cases: list[Case] = []
    params: dict[str, str] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if "Count" not in fields:
            return
        cases.append(Case(
            section=",".join(f"{k}={params[k]}" for k in ("IVlen", "PTlen", "AADlen", "Taglen")),
            count=int(fields["Count"]),
            key=bytes.fromhex(fields["Key"]),
            iv=bytes.fromhex(fields["IV"]),
            plaintext=None if fields.get("FAIL") == "FAIL" else bytes.fromhex(fields["PT"]),
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
            elif line.startswith("["):
                flush()
                key, _, value = line.strip("[]").partition("=")
                params[key.strip()] = value.strip()
            elif line == "FAIL":
                fields["FAIL"] = "FAIL"
            else:
                key, _, value = line.partition("=")
                fields[key.strip()] = value.strip()
        flush()
    return cases


FILES = {"encrypt": _parse(ENCRYPT_FILE), "decrypt": _parse(DECRYPT_FILE)}


def _failures(cases: list[Case], check: Callable[[Case], bool]) -> list[str]:
    return [case.ident for case in cases if not check(case)]


def _refused(call: Callable[[], object], index: int = 0) -> bool:
    try:
        call()
    except AuthenticationFailed as exc:
        return exc.index == index
    return False


@pytest.mark.parametrize("name", sorted(FILES))
def test_when_vector_files_are_parsed_then_every_case_is_there(name: str) -> None:
    cases = FILES[name]
    assert len(cases) == CASES_PER_FILE
    assert {len(case.tag) for case in cases} == {4, 8, 12, 13, 14, 15, 16}
    assert {len(case.iv) for case in cases} == {1, 12, 128}
    assert sum(case.in_cell_format for case in cases) == FORMAT_CASES_PER_FILE
    failing = sum(case.plaintext is None for case in cases)
    assert (failing == 0) if name == "encrypt" else (0 < failing < CASES_PER_FILE)


def test_when_nist_encrypt_vector_fits_the_cell_format_then_seal_many_and_seal_rows_reproduce_it() -> None:
    cases = [case for case in FILES["encrypt"] if case.in_cell_format]
    failures = _failures(cases, lambda case: AesGcm(case.key).seal_many(
        [case.iv], [case.plaintext], [case.aad]) == [case.ciphertext + case.tag])  # type: ignore[list-item]
    assert not failures, failures
    keys = KeySet([AesGcm(case.key) for case in cases])
    sealed = seal_rows(keys, list(range(len(cases))), [case.iv for case in cases],
                       [case.plaintext for case in cases], [case.aad for case in cases])  # type: ignore[misc]
    failures = [case.ident for case, got in zip(cases, sealed, strict=True) if got != case.ciphertext + case.tag]
    assert not failures, failures


@pytest.mark.parametrize("name", sorted(FILES))
def test_when_nist_vector_fits_the_cell_format_then_decrypt_open_many_and_open_rows_return_its_plaintext(
        name: str) -> None:
    cases = [case for case in FILES[name] if case.in_cell_format and case.plaintext is not None]
    assert cases
    failures = _failures(cases, lambda case: AesGcm(case.key).decrypt(case.message, case.aad) == case.plaintext)
    assert not failures, failures
    failures = _failures(cases, lambda case: AesGcm(case.key).open_many(
        [case.iv], [case.ciphertext + case.tag], [case.aad]) == [case.plaintext])
    assert not failures, failures
    keys = KeySet([AesGcm(case.key) for case in cases])
    opened = open_rows(keys, list(range(len(cases))), [case.iv for case in cases],
                       [case.ciphertext + case.tag for case in cases], [case.aad for case in cases])
    failures = [case.ident for case, got in zip(cases, opened, strict=True) if got != case.plaintext]
    assert not failures, failures


def test_when_nist_decrypt_vector_is_marked_fail_then_every_cell_path_refuses_it() -> None:
    cases = [case for case in FILES["decrypt"] if case.in_cell_format]
    bad = [case for case in cases if case.plaintext is None]
    assert bad
    failures = _failures(bad, lambda case: _refused(lambda: AesGcm(case.key).decrypt(case.message, case.aad)))
    assert not failures, failures
    # In a bulk call the error names the failing cell: here the second, after one that authenticates.
    good = next(case for case in cases if case.plaintext is not None)
    failures = _failures(bad, lambda case: _refused(lambda: open_rows(
        KeySet([AesGcm(good.key), AesGcm(case.key)]), [0, 1], [good.iv, case.iv],
        [good.ciphertext + good.tag, case.ciphertext + case.tag], [good.aad, case.aad]), index=1))
    assert not failures, failures
    failures = _failures(bad, lambda case: _refused(lambda: AesGcm(case.key).open_many(
        [case.iv, case.iv], [case.ciphertext + case.tag] * 2, [case.aad] * 2), index=0))
    assert not failures, failures


@pytest.mark.parametrize("name", sorted(FILES))
def test_when_nist_vector_has_another_iv_length_or_a_short_tag_then_decrypt_refuses_it(name: str) -> None:
    cases = [case for case in FILES[name] if not case.in_cell_format]
    assert len(cases) == CASES_PER_FILE - FORMAT_CASES_PER_FILE
    failures = _failures(cases, lambda case: _refused(lambda: AesGcm(case.key).decrypt(case.message, case.aad)))
    assert not failures, failures


@pytest.mark.parametrize(
    ("key", "error"),
    [(b"k" * 16, ValueError), (b"k" * 31, ValueError), ("k" * 32, TypeError)],
)
def test_when_key_is_not_32_bytes_then_caller_error(key: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        AesGcm(key)  # type: ignore[arg-type]


def test_when_aead_is_pickled_or_printed_then_no_key_material_leaks() -> None:
    aead = AesGcm(b"\x42" * 32)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(aead)
    assert "42" not in repr(aead) and "redacted" in repr(aead)


def test_when_a_message_is_encrypted_twice_then_nonces_differ_and_both_decrypt() -> None:
    aead = AesGcm(os.urandom(32))
    first, second = aead.encrypt(b"same", b"ad"), aead.encrypt(b"same", b"ad")
    assert first[:NONCE_SIZE] != second[:NONCE_SIZE]
    assert aead.decrypt(first, b"ad") == aead.decrypt(second, b"ad") == b"same"
    with pytest.raises(AuthenticationFailed):
        aead.decrypt(first[:NONCE_SIZE + TAG_SIZE - 1], b"ad")
