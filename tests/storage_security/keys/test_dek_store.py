"""The DEK store: wrapped keys only, in a Delta table beside the zones; rewrap, retire and drop by scope."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from pipeline.errors import KeyProviderUnavailableError
from pipeline.lake import Lake
from pipeline.settings import Settings
from storage_security.keys.dek_store import DekRecord, DekStore, wrapped_version
from storage_security.keys.keyring import LocalKeyring

KEK = "medguard-kek"


@pytest.fixture
def store(lake: Lake) -> DekStore:
    return DekStore(lake)


def _record(keyring: LocalKeyring, *, kek: str = KEK, scope: str = "batch", scope_key: str = "b1",
            table: str = "patients", column: str = "name") -> DekRecord:
    return DekRecord(key_id=secrets.token_hex(16), kek_name=kek, wrapped=keyring.generate_data_key(kek).wrapped,
                     table=table, column=column, scope=scope, scope_key=scope_key)


def test_when_built_from_settings_then_it_lives_beside_the_zones(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    assert DekStore.from_settings(local).uri == f"{tmp_path}/lake/_keys/deks"


def test_when_nothing_was_stored_then_reads_are_empty(store: DekStore) -> None:
    assert not store.exists()
    assert store.get(["00" * 16]) == {} and store.records() == []
    assert store.drop_scope("p1") == 0 and store.retire(["00" * 16]) == 0
    assert store.summary()["deks"] == 0


def test_when_records_are_put_then_get_and_records_find_them(store: DekStore, keyring: LocalKeyring) -> None:
    keyring.ensure_key("patient-ps1_a")
    batch = [_record(keyring), _record(keyring, scope="patient", scope_key="ps1_a", kek="patient-ps1_a")]
    store.put(batch)
    assert store.get([r.key_id for r in batch] + ["ff" * 16, "not-hex'; DROP"]) == {r.key_id: r for r in batch}
    assert store.records(scope="patient") == [batch[1]]
    assert store.records(scope_key="b1") == [batch[0]]
    assert store.summary()["by_scope"] == {"batch": 1, "patient": 1, "pseudonym": 0}


def test_when_stored_then_files_hold_wrapped_keys_and_no_plaintext(
    store: DekStore, keyring: LocalKeyring, tmp_path: Path
) -> None:
    data_key = keyring.generate_data_key(KEK)
    store.put([DekRecord(key_id="ab" * 16, kek_name=KEK, wrapped=data_key.wrapped, table="t", column="c",
                         scope="batch", scope_key="b1")])
    stored = b"".join(p.read_bytes() for p in Path(store.uri).rglob("*") if p.is_file())
    assert data_key.plaintext not in stored and data_key.plaintext.hex().encode() not in stored


@pytest.mark.parametrize(
    "fields",
    [{"key_id": "XYZ"}, {"key_id": ""}, {"scope": "table"}, {"scope_key": "a'; DROP TABLE x; --"},
     {"scope_key": ""}, {"scope_key": "x" * 101}],
)
def test_when_record_fields_are_invalid_then_value_error(fields: dict[str, str]) -> None:
    base = {"key_id": "ab" * 16, "kek_name": KEK, "wrapped": "keyring:v1:x", "table": "t", "column": "c",
            "scope": "batch", "scope_key": "b1"}
    with pytest.raises(ValueError):
        DekRecord(**{**base, **fields})


def test_when_scope_is_dropped_then_only_its_records_go(store: DekStore, keyring: LocalKeyring) -> None:
    keyring.ensure_key("patient-a")
    keyring.ensure_key("patient-b")
    store.put([_record(keyring, kek="patient-a", scope="patient", scope_key="a"),
               _record(keyring, kek="patient-a", scope="patient", scope_key="a", column="dob"),
               _record(keyring, kek="patient-b", scope="patient", scope_key="b")])
    assert store.drop_scope("a") == 2
    assert [r.scope_key for r in store.records()] == ["b"]
    with pytest.raises(ValueError):
        store.drop_scope("a' OR '1'='1")
    assert store.drop_scope("b", scope="batch") == 0


def test_when_records_are_retired_then_the_flag_is_set_once(store: DekStore, keyring: LocalKeyring) -> None:
    records = [_record(keyring), _record(keyring)]
    store.put(records)
    assert store.retire([records[0].key_id]) == 1
    assert store.retire([records[0].key_id]) == 0
    assert {r.key_id: r.retired for r in store.records()} == {records[0].key_id: True, records[1].key_id: False}
    assert store.summary()["retired"] == 1


def test_when_kek_is_rotated_then_rewrap_all_moves_every_dek_to_latest_once(
    store: DekStore, keyring: LocalKeyring
) -> None:
    records = [_record(keyring) for _ in range(7)]
    store.put(records)
    keyring.rotate(KEK)
    assert store.summary({KEK: 2})["stale"] == 7

    report = store.rewrap_all(keyring, chunk_size=3)

    assert (report.rewrapped, report.already_current, report.missing_kek, report.keks) == (7, 0, 0, 1)
    after = {r.key_id: r for r in store.records()}
    assert all(wrapped_version(r.wrapped) == 2 for r in after.values())
    for record in records:  # same DEK, new wrapping; everything else untouched
        assert keyring.unwrap(KEK, after[record.key_id].wrapped) == keyring.unwrap(KEK, record.wrapped)
        assert after[record.key_id].created_at == record.created_at
    assert store.rewrap_all(keyring).to_dict() == {"rewrapped": 0, "already_current": 7, "missing_kek": 0, "keks": 1}


def test_when_rewrap_is_interrupted_then_a_rerun_completes_it(store: DekStore, keyring: LocalKeyring) -> None:
    store.put([_record(keyring) for _ in range(5)])
    keyring.rotate(KEK)

    class FailsAfterTwoChunks:
        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name: str):
            return getattr(keyring, name)

        def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
            self.calls += 1
            if self.calls > 2:
                raise KeyProviderUnavailableError("vault went away")
            return keyring.rewrap(key_name, wrapped)

    with pytest.raises(KeyProviderUnavailableError):
        store.rewrap_all(FailsAfterTwoChunks(), chunk_size=1)  # type: ignore[arg-type]
    assert sum(wrapped_version(r.wrapped) == 2 for r in store.records()) == 2

    report = store.rewrap_all(keyring, chunk_size=1)
    assert (report.rewrapped, report.already_current) == (3, 2)
    keyring.set_min_decryption_version(KEK, 2)
    assert all(len(keyring.unwrap(KEK, r.wrapped)) == 32 for r in store.records())


def test_when_another_rotation_rewraps_the_same_rows_meanwhile_then_its_values_are_kept(
    store: DekStore, keyring: LocalKeyring
) -> None:
    store.put([_record(keyring) for _ in range(3)])
    keyring.rotate(KEK)

    class RacedByAnotherRotation:
        def __getattr__(self, name: str):
            return getattr(keyring, name)

        def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
            store.rewrap_all(keyring)  # a concurrent `keys rotate` finishes first
            return keyring.rewrap(key_name, wrapped)

    report = store.rewrap_all(RacedByAnotherRotation())  # type: ignore[arg-type]
    winner = {r.key_id: r.wrapped for r in store.records()}
    assert report.rewrapped == 0  # its rows had changed since it read them: left alone
    assert all(wrapped_version(w) == 2 for w in winner.values())


def test_when_a_kek_was_destroyed_then_rewrap_skips_and_counts_its_records(
    store: DekStore, keyring: LocalKeyring
) -> None:
    keyring.ensure_key("patient-gone")
    store.put([_record(keyring), _record(keyring, kek="patient-gone", scope="patient", scope_key="gone")])
    keyring.destroy_key("patient-gone")
    keyring.rotate(KEK)
    report = store.rewrap_all(keyring)
    assert (report.rewrapped, report.missing_kek, report.keks) == (1, 1, 2)


@pytest.mark.parametrize(("wrapped", "version"), [("vault:v3:abc", 3), ("keyring:v12:x", 12), ("garbage", None)])
def test_when_wrapped_key_is_parsed_then_its_kek_version_is_read(wrapped: str, version: int | None) -> None:
    assert wrapped_version(wrapped) == version
