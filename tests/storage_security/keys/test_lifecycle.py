"""Key lifecycle: rotation keeps everything readable and resumes after an interruption; re-encryption; shredding."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import DecryptionError, KeyProviderUnavailableError
from pipeline.lake import Lake
from storage_security.keys.dek_store import wrapped_version
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.lifecycle import reencrypt_table, rotate_keys, shred_patient
from storage_security.protected import ProtectedLake, Protection

PROT = Protection(encrypted=("name", "ssn"), row_key="row_id", patient_key="patient")
KEKS = ("medguard-kek", "medguard-audit")


def _rows(plake: ProtectedLake, ids: list[str]) -> pa.Table:
    pseudonyms = plake.pseudonymizer("patient").pseudonymize([f"PAT{i[1:]}" for i in ids])
    return pa.table({"row_id": ids, "patient": [pseudonyms[0].as_py(), None, *pseudonyms[2:].to_pylist()],
                     "name": [f"name {i}" for i in ids], "ssn": [f"ssn {i}" for i in ids]})


def _cell_key_ids(lake: Lake, version: int | None = None) -> set[bytes]:
    cells = lake.read_arrow("raw", "patients", version=version).column("ssn").to_pylist()
    return {cell[2:2 + cell[1]] for cell in cells if cell is not None}


@pytest.fixture
def plake(lake: Lake, keyring: LocalKeyring) -> ProtectedLake:
    plake = ProtectedLake(lake, keyring, principal="test:ops")
    plake.append("raw", "patients", _rows(plake, ["r1", "r2", "r3"]), PROT)
    return plake


def test_when_keys_are_rotated_then_every_version_still_reads_and_old_kek_versions_are_retired(
    plake: ProtectedLake, lake: Lake, keyring: LocalKeyring
) -> None:
    plake.append("raw", "patients", _rows(plake, ["r4", "r5"]), PROT)
    before = {v: plake.read("raw", "patients", decrypt=True, version=v).sort_by("row_id") for v in (0, 1)}
    old_wrapped = plake.store.records(scope="batch")[0].wrapped
    assert plake.audit.sign_head() is not None  # the audit signing key exists, wrapped under the old version

    report = rotate_keys(keyring, plake.store, plake.audit, patient_keys=plake.patient_keys, kek_names=KEKS,
                         principal="test:ops")

    assert report.rotated == {"medguard-kek": 2, "medguard-audit": 2} and report.resumed == []
    assert report.rewrapped >= 2 and report.audit_keys_rewrapped == 1
    assert report.patient_keys_rewrapped == 3  # r1, r3, r4 (r2 and r5 have no patient): one DEK per patient
    assert {wrapped_version(r.wrapped) for r in plake.patient_keys.records()} == {2}
    assert report.min_decryption_version == {"medguard-kek": 2, "medguard-audit": 2}
    assert {wrapped_version(r.wrapped) for r in plake.store.records() if r.kek_name == "medguard-kek"} == {2}
    with pytest.raises(DecryptionError):  # the old version is retired: a stale copy of a DEK is useless
        keyring.unwrap("medguard-kek", old_wrapped)
    reader = ProtectedLake(lake, keyring, principal="test:reader")  # a new process: nothing cached
    for version, table in before.items():
        assert reader.read("raw", "patients", decrypt=True, version=version).sort_by("row_id").equals(table)
    assert reader.audit.verify().ok
    again = rotate_keys(keyring, plake.store, plake.audit, patient_keys=plake.patient_keys, kek_names=KEKS,
                        principal="test:ops")
    assert again.rotated == {"medguard-kek": 3, "medguard-audit": 3}


class _FailsAfter:
    """A keyring whose rewrap breaks after ``calls`` successful calls (a crash halfway through a rotation)."""

    def __init__(self, inner: LocalKeyring, calls: int) -> None:
        self._inner, self._left = inner, calls

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        if self._left == 0:
            raise KeyProviderUnavailableError("key provider down: connection refused")
        self._left -= 1
        return self._inner.rewrap(key_name, wrapped)


def test_when_a_rotation_is_interrupted_then_running_it_again_finishes_it_without_rotating_twice(
    plake: ProtectedLake, lake: Lake, keyring: LocalKeyring
) -> None:
    for index in range(3):  # DEKs from several batches: the rewrap takes several chunks
        ProtectedLake(lake, keyring, principal="test:ops").append(
            "raw", "patients", _rows(plake, [f"x{index}a", f"x{index}b"]), PROT)
    expected = plake.read("raw", "patients", decrypt=True).sort_by("row_id")
    from storage_security.keys.dek_store import DekStore

    store = DekStore(lake)
    broken = _FailsAfter(keyring, calls=0)
    with pytest.raises(KeyProviderUnavailableError):
        rotate_keys(broken, store, plake.audit, patient_keys=plake.patient_keys,  # type: ignore[arg-type]
                    kek_names=("medguard-kek",), principal="test:ops")
    assert keyring.versions("medguard-kek").latest == 2
    assert keyring.versions("medguard-kek").min_decryption_version == 1  # nothing retired halfway

    report = rotate_keys(keyring, store, plake.audit, patient_keys=plake.patient_keys, kek_names=("medguard-kek",),
                         principal="test:ops")

    assert report.resumed == ["medguard-kek"] and report.rotated == {}
    assert keyring.versions("medguard-kek").latest == 2
    assert report.min_decryption_version == {"medguard-kek": 2}
    reader = ProtectedLake(lake, keyring, principal="test:reader")
    assert reader.read("raw", "patients", decrypt=True).sort_by("row_id").equals(expected)


def test_when_a_table_is_reencrypted_then_cells_move_to_fresh_deks_and_the_old_version_still_reads(
    plake: ProtectedLake, lake: Lake, keyring: LocalKeyring
) -> None:
    before = plake.read("raw", "patients", decrypt=True).sort_by("row_id")
    old_ids = _cell_key_ids(lake)

    report = reencrypt_table(plake, "raw", "patients")

    assert (report.rows, report.version) == (3, 1) and report.retired_deks >= 1
    patient_ids = {bytes.fromhex(r.key_id) for r in plake.patient_keys.records()}
    assert (_cell_key_ids(lake) - patient_ids).isdisjoint(old_ids)  # batch cells moved to fresh DEKs
    assert _cell_key_ids(lake) & patient_ids == old_ids & patient_ids  # patients keep their lifelong DEK
    retired = {r.key_id for r in plake.store.records() if r.retired}
    assert {key.hex() for key in old_ids - patient_ids} <= retired
    reader = ProtectedLake(lake, keyring, principal="test:reader")
    assert reader.read("raw", "patients", decrypt=True).sort_by("row_id").equals(before)
    assert reader.read("raw", "patients", decrypt=True, version=0).sort_by("row_id").equals(before)
    lake.append("raw", "plain", pa.table({"a": [1]}))
    with pytest.raises(ValueError, match="no encrypted columns"):
        reencrypt_table(plake, "raw", "plain")


def test_when_a_patient_is_shredded_by_patient_id_then_only_their_cells_die(
    plake: ProtectedLake, lake: Lake, keyring: LocalKeyring
) -> None:
    result = shred_patient(plake, "PAT1", reason="GDPR erasure #7")
    assert result["patient_pseudonym"] == plake.pseudonymizer("patient").pseudonym("PAT1")
    assert result["deks_dropped"] == 1
    assert result["patient_pseudonym"] not in {r.scope_key for r in plake.patient_keys.records()}
    rows = {r["row_id"]: r for r in ProtectedLake(lake, keyring, principal="t").read(
        "raw", "patients", decrypt=True).to_pylist()}
    assert rows["r1"]["ssn"] is None and rows["r2"]["ssn"] == "ssn r2" and rows["r3"]["ssn"] == "ssn r3"
    assert shred_patient(plake, result["patient_pseudonym"], reason="again")["deks_dropped"] == 0


@pytest.mark.parametrize("typo", ["PAT9", "PAT 1", "pat1", "ps1_0000abcd_" + "0" * 32])
def test_when_a_shred_names_no_stored_patient_then_it_fails_and_notes_nothing(
    plake: ProtectedLake, lake: Lake, typo: str
) -> None:
    with pytest.raises(ValueError, match="nothing to shred"):
        shred_patient(plake, typo, reason="GDPR erasure #8")

    assert plake.shredded() == set()
    assert len(plake.patient_keys.records()) == 2
    with pytest.raises(ValueError, match="no patient id"):
        shred_patient(plake, "  ", reason="GDPR erasure #8")


def test_when_the_patient_id_has_surrounding_blanks_then_the_patient_is_shredded(plake: ProtectedLake) -> None:
    pseudonym = plake.pseudonymizer("patient").pseudonym("PAT1")

    result = shred_patient(plake, " PAT1\n", reason="GDPR erasure #9")

    assert (result["patient_pseudonym"], result["deks_dropped"]) == (pseudonym, 1)
    assert plake.shredded() == {pseudonym}
    assert shred_patient(plake, pseudonym, reason="again")["deks_dropped"] == 0  # a re-run still succeeds


def test_when_rotating_through_vault_then_everything_stays_readable(openbao, lake: Lake) -> None:
    from storage_security.keys.vault_transit import VaultTransitKeys

    provider = VaultTransitKeys(openbao.client(), mount="transit")
    names = ("rot-kek-vault", "rot-audit-vault")
    for name in names:
        provider.ensure_key(name)
    from storage_security.audit.log import AuditLog

    audit = AuditLog(lake, provider, key_name=names[1])
    plake = ProtectedLake(lake, provider, principal="test:ops", kek_name=names[0], audit=audit)
    plake.append("raw", "patients", _rows(plake, ["r1", "r2", "r3"]), PROT)
    expected = plake.read("raw", "patients", decrypt=True).sort_by("row_id")
    try:
        report = rotate_keys(provider, plake.store, audit, patient_keys=plake.patient_keys, kek_names=names,
                             principal="test:ops")
        assert report.min_decryption_version == dict.fromkeys(names, 2)
        reader = ProtectedLake(lake, provider, principal="test:reader", kek_name=names[0],
                               audit=AuditLog(lake, provider, key_name=names[1]))
        assert reader.read("raw", "patients", decrypt=True).sort_by("row_id").equals(expected)
        assert reader.audit.verify().ok
    finally:
        for name in names:
            provider.destroy_key(name)
