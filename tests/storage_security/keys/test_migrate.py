"""``keys migrate``: a lake written with one KEK per patient moves to the data KEK, resumably, with no cell rewritten.

The old lake is written the way the per-patient hierarchy wrote it: each patient's DEK made by the provider under
``patient-<pseudonym>`` and recorded in the DEK store, and cells sealed in the documented cell format (which the
hierarchy change leaves as it is) under that DEK.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import KeyProviderUnavailableError
from pipeline.lake import Lake
from storage_security.keys.dek_store import DekRecord
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.lifecycle import migrate_patient_keys, shred_patient
from storage_security.protected import ProtectedLake, Protection

PROT = Protection(encrypted=("ssn",), row_key="row_id", patient_key="patient")
WHERE = "raw.people"


def _cell(dek: bytes, key_id: bytes, column: str, row_key: str, value: str) -> bytes:
    """A cell in format version 1, as CellCipher's docstring specifies it."""
    header = bytes((1, len(key_id))) + key_id
    names = b"".join(len(n).to_bytes(2, "big") + n for n in (WHERE.encode(), column.encode()))
    context = hashlib.sha256(b"medguard.cell\x00" + names + header).digest()[:16]
    nonce = os.urandom(12)
    return header + nonce + AESGCM(dek).encrypt(nonce, value.encode(), context + row_key.encode())


def _legacy_lake(plake: ProtectedLake, patients: int) -> tuple[ProtectedLake, dict[str, str]]:
    """A raw table with one new-style batch, then rows of ``patients`` patients written the old way."""
    lake, keyring = plake.lake, plake.provider
    pseudonyms = plake.pseudonymizer("patient").pseudonymize([f"PAT{i}" for i in range(patients)]).to_pylist()
    plake.append("raw", "people", pa.table({"row_id": ["new-0"], "patient": [pseudonyms[0]], "ssn": ["new 0"]}),
                 PROT)
    records, rows = [], []
    for index, pseudonym in enumerate(pseudonyms):
        kek = f"patient-{pseudonym}"
        keyring.ensure_key(kek)
        data_key = keyring.generate_data_key(kek)
        key_id = secrets.token_bytes(16)
        records.append(DekRecord(key_id=key_id.hex(), kek_name=kek, wrapped=data_key.wrapped, table="", column="",
                                 scope="patient", scope_key=pseudonym))
        for n in range(2):
            row_key = f"old-{index}-{n}"
            rows.append({"row_id": row_key, "patient": pseudonym,
                         "ssn": _cell(data_key.plaintext, key_id, "ssn", row_key, f"ssn {index}-{n}")})
    plake.store.put(records)
    lake.append("raw", "people", pa.Table.from_pylist(rows, schema=pa.schema([
        ("row_id", pa.string()), ("patient", pa.string()), ("ssn", pa.binary())])))
    expected = {f"old-{i}-{n}": f"ssn {i}-{n}" for i in range(patients) for n in range(2)} | {"new-0": "new 0"}
    return plake, expected


def _ssn(plake: ProtectedLake) -> dict[str, str | None]:
    table = plake.read("raw", "people", decrypt=True)
    return dict(zip(table.column("row_id").to_pylist(), table.column("ssn").to_pylist(), strict=True))


class _FailsAfter:
    """A keyring whose wrap_many breaks after ``calls`` calls (a crash halfway through a migration)."""

    def __init__(self, inner: LocalKeyring, calls: int) -> None:
        self._inner, self._left = inner, calls
        self.name = inner.name

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        if self._left == 0:
            raise KeyProviderUnavailableError("key provider down: connection refused")
        self._left -= 1
        return self._inner.wrap_many(key_name, plaintexts)


def test_when_an_old_lake_is_migrated_then_it_reads_the_same_under_the_data_kek_and_the_patient_keks_go(
    lake: Lake, keyring: LocalKeyring
) -> None:
    plake, expected = _legacy_lake(ProtectedLake(lake, keyring, principal="test:ops"), patients=5)
    assert _ssn(ProtectedLake(lake, keyring, principal="test:reader")) == expected  # the old way still reads
    cells_before = lake.read_arrow("raw", "people").column("ssn")

    broken = ProtectedLake(lake, _FailsAfter(keyring, calls=1), principal="test:ops")  # type: ignore[arg-type]
    with pytest.raises(KeyProviderUnavailableError):
        migrate_patient_keys(broken, chunk_patients=2)  # the first chunk of 2 patients is committed, then a crash
    assert len(plake.patient_keys.records()) == 1 + 2

    report = migrate_patient_keys(plake, delete_patient_keks=True, chunk_patients=2)

    assert report.to_dict() == {"patients": 5, "deks_moved": 3, "already_moved": 2, "unreadable": 0,
                                "patient_keks_deleted": 5}
    assert plake.store.records(scope="patient") == []
    assert not [name for name in keyring.key_names() if name.startswith("patient-")]
    assert {r.kek_name for r in plake.patient_keys.records()} == {"medguard-kek"}
    assert len(plake.patient_keys.records()) == 6  # 5 migrated, 1 written new-style
    assert lake.read_arrow("raw", "people").column("ssn").equals(cells_before)  # no cell rewritten
    reader = ProtectedLake(lake, keyring, principal="test:reader")
    assert _ssn(reader) == expected
    again = migrate_patient_keys(plake, delete_patient_keks=True)
    assert again.to_dict() == {"patients": 0, "deks_moved": 0, "already_moved": 0, "unreadable": 0,
                               "patient_keks_deleted": 0}
    assert "key_rewrap" in {str(r.event.action) for r in reader.audit.events() if r.event.purpose == "key-migration"}

    victim = plake.pseudonymizer("patient").pseudonym("PAT3")
    shred_patient(reader, victim, reason="erasure ER-3")
    assert _ssn(ProtectedLake(lake, keyring, principal="test:reader")) == expected | {"old-3-0": None,
                                                                                       "old-3-1": None}


def test_when_migrating_through_vault_then_dead_patient_keks_are_reported_and_the_rest_move(
    lake: Lake, vault_provider, kek_name: str
) -> None:
    from storage_security.audit.log import AuditLog

    def plake_of(principal: str) -> ProtectedLake:
        return ProtectedLake(lake, vault_provider, principal=principal, kek_name=kek_name,
                             audit=AuditLog(lake, vault_provider, key_name=f"{kek_name}-audit"))

    plake, expected = _legacy_lake(plake_of("test:ops"), patients=3)
    legacy = sorted({r.kek_name for r in plake.store.records(scope="patient")})
    try:
        vault_provider.destroy_key(legacy[0])  # an old shred cut short: the KEK is gone, its record is not

        report = migrate_patient_keys(plake, delete_patient_keks=True)

        assert report.to_dict() == {"patients": 3, "deks_moved": 2, "already_moved": 0, "unreadable": 1,
                                    "patient_keks_deleted": 2}
        assert not any(vault_provider.key_exists(name) for name in legacy)
        assert [r.kek_name for r in plake.store.records(scope="patient")] == [legacy[0]]
        dead = legacy[0].removeprefix("patient-")
        plake.shred(dead, reason="finish the old shred")
        got = _ssn(plake_of("test:reader"))
        rows = plake.lake.read_arrow("raw", "people").to_pylist()
        assert got == {k: (None if any(r["row_id"] == k and r["patient"] == dead for r in rows) else v)
                       for k, v in expected.items()}
    finally:
        for name in [*legacy, f"{kek_name}-audit"]:
            vault_provider.destroy_key(name)


class _ShredsDuringWrap:
    """A keyring that shreds a patient through ``ops`` once, after wrapping the first chunk's keys (before they are
    stored): a ``keys shred`` landing while ``keys migrate`` is halfway through a chunk."""

    def __init__(self, inner: LocalKeyring, ops: ProtectedLake, victim: str) -> None:
        self._inner, self._ops, self._victim = inner, ops, victim
        self.name = inner.name

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        wrapped = self._inner.wrap_many(key_name, plaintexts)
        if self._victim:
            victim, self._victim = self._victim, ""
            self._ops.shred(victim, reason="erasure ER-3")
        return wrapped


def test_when_a_patient_is_shredded_during_a_migration_then_their_key_is_not_brought_back(
    lake: Lake, keyring: LocalKeyring
) -> None:
    plake, expected = _legacy_lake(ProtectedLake(lake, keyring, principal="test:ops"), patients=3)
    victim = plake.pseudonymizer("patient").pseudonym("PAT2")
    ops = ProtectedLake(lake, keyring, principal="test:ops")
    migrating = ProtectedLake(lake, _ShredsDuringWrap(keyring, ops, victim),  # type: ignore[arg-type]
                              principal="test:migrate")

    report = migrate_patient_keys(migrating, delete_patient_keks=True)

    assert report.deks_moved == 2 and report.patient_keks_deleted == 2
    assert victim not in {r.scope_key for r in plake.patient_keys.records()}
    assert not keyring.key_exists(f"patient-{victim}")
    got = _ssn(ProtectedLake(lake, keyring, principal="test:reader"))
    assert got == expected | {"old-2-0": None, "old-2-1": None}
    # A later migration leaves the shredded patient alone too.
    assert migrate_patient_keys(plake).to_dict()["patients"] == 0


def test_when_a_shred_was_cut_short_after_its_note_then_migration_skips_the_patient(
    lake: Lake, keyring: LocalKeyring
) -> None:
    plake, _expected = _legacy_lake(ProtectedLake(lake, keyring, principal="test:ops"), patients=2)
    victim = plake.pseudonymizer("patient").pseudonym("PAT1")
    plake.patient_keys.note_shredded(victim)  # the shred stopped right after noting the patient

    report = migrate_patient_keys(plake)

    assert report.to_dict()["patients"] == 1 and report.deks_moved == 1
    assert victim not in {r.scope_key for r in plake.patient_keys.records()}
