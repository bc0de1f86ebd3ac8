"""The patient key store: one DEK per patient for life, batched provider calls, a bounded cache, final shredding."""

from __future__ import annotations

import base64
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import DecryptionError, StorageError
from pipeline.lake import SYSTEM_ZONE, Lake
from storage_security.audit.log import AuditAction
from storage_security.crypto.envelope import CellCipher
from storage_security.keys.dek_store import DekStore
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.patient_keys import PatientKey, PatientKeyStore, PatientShreddedError
from storage_security.protected import ProtectedLake, Protection

KEK = "medguard-kek"
PROT = Protection(encrypted=("name", "ssn"), row_key="row_id", patient_key="patient")


class Counting:
    """A keyring that counts the provider calls (one call stands for one Vault request of up to 400 items)."""

    def __init__(self, inner: LocalKeyring) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        self.calls.append(("wrap", len(plaintexts)))
        return self.inner.wrap_many(key_name, plaintexts)

    def unwrap_each(self, key_name: str, wrapped: list[str]) -> list[bytes | None]:
        self.calls.append(("unwrap", len(wrapped)))
        return self.inner.unwrap_each(key_name, wrapped)

    def generate_data_key(self, key_name: str):
        self.calls.append(("datakey", 1))
        return self.inner.generate_data_key(key_name)

    def take(self) -> list[tuple[str, int]]:
        calls, self.calls = self.calls, []
        return calls


def _cipher(provider, lake: Lake, **options) -> CellCipher:
    return CellCipher(provider, DekStore(lake), patient_keys=PatientKeyStore(lake), **options)


def _key_id(cell: bytes) -> str:
    return cell[2:2 + cell[1]].hex()


def _seal(cipher: CellCipher, table: str, patients: list[str]) -> pa.Array:
    return cipher.encrypt_column([f"{table} of {p}" for p in patients], table=table, column="v",
                                 row_keys=[f"{table}-{i}" for i in range(len(patients))], scope_key=patients)


def test_when_new_patients_are_sealed_then_their_deks_are_wrapped_in_one_call_and_reused_by_every_table(
    keyring: LocalKeyring, lake: Lake
) -> None:
    provider = Counting(keyring)
    cipher = _cipher(provider, lake)
    patients = [f"ps1_p{i}" for i in range(1000)]

    first = _seal(cipher, "patients", patients)
    assert provider.take() == [("wrap", 1000)]  # no lookup request: the store is a lake table
    second = _seal(cipher, "observations", patients * 3)
    assert provider.take() == []  # a warm process: known patients cost nothing

    assert [_key_id(c) for c in first.to_pylist()] == [_key_id(c) for c in second.to_pylist()[:1000]]
    assert len(PatientKeyStore(lake).records()) == 1000

    later = _cipher(provider, lake)  # another process, another run: the same DEKs, unwrapped in one call
    third = _seal(later, "encounters", patients[:10])
    assert provider.take() == [("unwrap", 10)]
    assert [_key_id(c) for c in third.to_pylist()] == [_key_id(c) for c in first.to_pylist()[:10]]
    assert len(PatientKeyStore(lake).records()) == 1000

    reader = _cipher(provider, lake)
    values = reader.decrypt_column(second, table="observations", column="v",
                                   row_keys=[f"observations-{i}" for i in range(3000)])
    assert values.to_pylist() == [f"observations of {p}" for p in patients * 3]
    assert provider.take() == [("unwrap", 1000)]


def test_when_the_cache_bound_is_reached_then_the_least_recently_used_deks_leave_memory(
    keyring: LocalKeyring, lake: Lake
) -> None:
    provider = Counting(keyring)
    cipher = _cipher(provider, lake, max_cached_keys=2)
    _seal(cipher, "patients", ["ps1_a", "ps1_b", "ps1_c"])
    assert len(cipher._known) == 2 and len(cipher._patients) == 2
    provider.take()
    _seal(cipher, "notes", ["ps1_c"])
    assert provider.take() == []  # the most recent stayed
    _seal(cipher, "notes", ["ps1_a"])
    assert provider.take() == [("unwrap", 1)]  # the oldest was forgotten and comes back from the store


def test_when_a_wrapped_key_is_moved_to_another_patient_then_it_does_not_unwrap(
    keyring: LocalKeyring, lake: Lake
) -> None:
    cipher = _cipher(keyring, lake)
    cells = _seal(cipher, "patients", ["ps1_a", "ps1_b"])
    store = PatientKeyStore(lake)
    by_patient = {r.scope_key: r for r in store.records()}
    a, b = by_patient["ps1_a"], by_patient["ps1_b"]
    # Someone with write access to the key store swaps the two patients' wrapped keys.
    lake.overwrite(SYSTEM_ZONE, "patient_keys", pa.table({
        "key_id": [a.key_id, b.key_id], "scope_key": [a.scope_key, b.scope_key], "kek_name": [KEK, KEK],
        "wrapped": [b.wrapped.encode(), a.wrapped.encode()], "created_at": [a.created_at, b.created_at]}))

    reader = _cipher(keyring, lake)
    for index in range(2):
        with pytest.raises(DecryptionError, match=rf"patients\.v\[patients-{index}\]"):
            reader.decrypt_column(cells[index:index + 1], table="patients", column="v",
                                  row_keys=[f"patients-{index}"])


def _every_file(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in root.rglob("*") if path.is_file())


def test_when_a_patient_is_shredded_then_no_file_of_the_lake_holds_their_wrapped_key_and_no_version_decrypts(
    keyring: LocalKeyring, lake: Lake
) -> None:
    plake = ProtectedLake(lake, keyring, principal="test:ops")
    pseudonyms = plake.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2", "PAT3"]).to_pylist()
    for batch in range(3):  # several versions of the data table and several files in the key store
        plake.append("raw", "people", pa.table({
            "row_id": [f"r{batch}-{i}" for i in range(3)], "patient": pseudonyms,
            "name": [f"name {batch}-{i}" for i in range(3)], "ssn": [f"ssn {batch}-{i}" for i in range(3)]}), PROT)
        plake.patient_keys.put([PatientKey(key_id=f"{batch:02x}" * 16, scope_key="ps1_filler", kek_name=KEK,
                                           wrapped=keyring.wrap_many(KEK, [bytes(48)])[0])])
    victim = pseudonyms[0]
    [record] = [r for r in plake.patient_keys.records() if r.scope_key == victim]
    inner = record.wrapped.split(":", 2)[2]
    needles = {"wrapped": record.wrapped.encode(), "base64": inner.encode(), "raw": base64.b64decode(inner),
               "base64 of wrapped": base64.b64encode(record.wrapped.encode())[:-4]}
    keys_dir = Path(lake.root, SYSTEM_ZONE)
    assert needles["wrapped"] in _every_file(keys_dir)  # the search does find a live key
    log = _every_file(keys_dir / "patient_keys" / "_delta_log")
    assert b"minValues" in log and not [name for name, needle in needles.items() if needle in log]  # no stats

    assert plake.shred(victim, reason="erasure ER-1") == 1
    assert plake.shred(victim, reason="erasure ER-1, again") == 0  # re-runnable

    everything = _every_file(Path(lake.root))
    assert [name for name, needle in needles.items() if needle in everything] == []
    assert victim in plake.shredded() and victim not in {r.scope_key for r in plake.patient_keys.records()}
    reader = ProtectedLake(lake, keyring, principal="test:reader")  # a new process, nothing cached
    for version in range(lake.version("raw", "people") + 1):
        rows = reader.read("raw", "people", decrypt=True, version=version).to_pylist()
        assert {row["ssn"] is None for row in rows if row["patient"] == victim} == {True}
        assert all(row["ssn"] for row in rows if row["patient"] != victim)
    # Reading the dead cells without the shred note fails closed: the key is gone, not merely hidden.
    cells = lake.read_arrow("raw", "people", version=0)
    with pytest.raises(DecryptionError):
        reader.cipher.decrypt_column(cells.column("ssn"), table="raw.people", column="ssn",
                                     row_keys=cells.column("row_id"))
    event = next(r.event for r in reader.audit.events() if str(r.event.action) == "key_shred")
    assert event.reason == "erasure ER-1" and event.row_keys == (victim,)


def test_when_a_key_store_write_failed_to_commit_then_a_shred_still_removes_the_patients_orphaned_key(
    keyring: LocalKeyring, lake: Lake
) -> None:
    plake = ProtectedLake(lake, keyring, principal="test:ops")
    pseudonyms = plake.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2"]).to_pylist()
    plake.append("raw", "people", pa.table({"row_id": ["r0", "r1"], "patient": pseudonyms, "name": ["a", "b"],
                                            "ssn": ["s0", "s1"]}), PROT)
    store = plake.patient_keys
    victim = next(r for r in store.records() if r.scope_key == pseudonyms[0])
    rewrapped = PatientKey(key_id=victim.key_id, scope_key=victim.scope_key, kek_name=KEK,
                           wrapped=keyring.rewrap(KEK, [victim.wrapped])[0], created_at=victim.created_at)
    # A rotation's commit fails after its data file landed (every next log entry is taken by a directory).
    slots = [Path(store.uri, "_delta_log", f"{v:020d}.json") for v in range(1, 40)]
    for slot in slots:
        slot.mkdir()
    with pytest.raises(StorageError):
        store.replace([rewrapped])
    for slot in slots:
        slot.rmdir()
    assert rewrapped.wrapped.encode() in _every_file(Path(store.uri))  # the orphan holds a live key

    assert plake.shred(pseudonyms[0], reason="erasure ER-6") == 1

    everything = _every_file(Path(lake.root))
    assert victim.wrapped.encode() not in everything and rewrapped.wrapped.encode() not in everything
    assert [r.scope_key for r in store.records()] == [pseudonyms[1]]


def _people(patients: list[str], tag: str) -> pa.Table:
    return pa.table({"row_id": [f"{tag}-{i}" for i in range(len(patients))], "patient": patients,
                     "name": [f"name {tag}-{i}" for i in range(len(patients))],
                     "ssn": [f"ssn {tag}-{i}" for i in range(len(patients))]})


class _Meanwhile:
    """A keyring that runs ``meanwhile`` once, right after wrapping a batch of new keys (before they are stored)."""

    def __init__(self, inner: LocalKeyring, meanwhile) -> None:
        self.inner, self.name, self.meanwhile = inner, inner.name, meanwhile

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        wrapped = self.inner.wrap_many(key_name, plaintexts)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return wrapped


def test_when_a_patient_is_shredded_while_a_writer_wraps_a_new_key_for_them_then_the_key_never_lands(
    keyring: LocalKeyring, lake: Lake
) -> None:
    ops = ProtectedLake(lake, keyring, principal="test:ops")
    victim, other = ops.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2"]).to_pylist()

    def meanwhile() -> None:  # another writer stores the victim's key, then the victim is shredded
        ProtectedLake(lake, keyring, principal="test:ingest-b").append("raw", "people", _people([victim], "b"), PROT)
        assert ops.shred(victim, reason="erasure ER-2") == 1

    writer = ProtectedLake(lake, _Meanwhile(keyring, meanwhile), principal="test:ingest-a")  # type: ignore[arg-type]
    writer.append("raw", "people", _people([victim, other], "a"), PROT)

    assert [r.scope_key for r in PatientKeyStore(lake).records()] == [other]
    stored = {r["row_id"]: r for r in lake.read_arrow("raw", "people").to_pylist()}
    assert stored["a-0"]["ssn"] is None and stored["a-0"]["name"] is None  # no cell sealed for the victim
    reader = ProtectedLake(lake, keyring, principal="test:reader")
    rows = {r["row_id"]: r for r in reader.read("raw", "people", decrypt=True).to_pylist()}
    assert (rows["a-0"]["ssn"], rows["b-0"]["ssn"], rows["a-1"]["ssn"]) == (None, None, "ssn a-1")


def test_when_a_process_holds_a_patients_key_after_a_shred_elsewhere_then_its_writes_seal_nothing_for_them(
    keyring: LocalKeyring, lake: Lake
) -> None:
    server = ProtectedLake(lake, keyring, principal="test:server")  # a long-running process, keys in memory
    victim, other = server.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2"]).to_pylist()
    server.append("raw", "people", _people([victim, other], "0"), PROT)
    ProtectedLake(lake, keyring, principal="test:ops").shred(victim, reason="erasure ER-1")  # another process

    server.append("raw", "people", _people([victim, other], "late"), PROT)

    assert [r.scope_key for r in PatientKeyStore(lake).records()] == [other]
    late = {r["row_id"]: r for r in lake.read_arrow("raw", "people", where="row_id LIKE 'late-%'").to_pylist()}
    assert late["late-0"]["ssn"] is None and late["late-1"]["ssn"] is not None
    written = [r.event for r in server.audit.events() if r.event.action == AuditAction.ENCRYPT][-1]
    assert (written.row_count, written.details["shredded_rows"]) == (2, 1)  # the write says what it left out
    fresh_key = PatientKey(key_id="ab" * 16, scope_key=victim, kek_name=KEK,
                           wrapped=keyring.wrap_many(KEK, [bytes(48)])[0])
    with pytest.raises(PatientShreddedError, match=victim):
        PatientKeyStore(lake).put([fresh_key])
    assert [r.scope_key for r in PatientKeyStore(lake).records()] == [other]


def test_when_a_patient_is_shredded_by_another_process_then_a_running_one_stops_decrypting_them_within_the_ttl(
    keyring: LocalKeyring, lake: Lake
) -> None:
    now = [0.0]
    provider = Counting(keyring)
    server = _cipher(provider, lake, dek_ttl_seconds=60, clock=lambda: now[0])  # e.g. the query gateway
    victim, other = "ps1_victim", "ps1_other"
    cells = _seal(_cipher(keyring, lake), "people", [victim, other])

    def read() -> list[str | None]:
        return server.decrypt_column(cells, table="people", column="v", row_keys=["people-0", "people-1"]).to_pylist()

    assert read() == ["people of ps1_victim", "people of ps1_other"]
    ProtectedLake(lake, keyring, principal="test:ops").shred(victim, reason="erasure ER-1")  # another process
    provider.take()
    now[0] = 59.0
    assert read()[0] == "people of ps1_victim" and provider.take() == []  # within the TTL: no request, cached

    now[0] = 61.0
    with pytest.raises(DecryptionError, match=r"people\.v\[people-0\]"):
        read()
    assert server.decrypt_column(cells[1:], table="people", column="v", row_keys=["people-1"]).to_pylist() == [
        "people of ps1_other"]
    assert provider.take() == [("unwrap", 1)]  # the living patient is fetched again, once


def test_when_thousands_of_keys_are_looked_up_then_one_scan_finds_exactly_them(
    keyring: LocalKeyring, lake: Lake
) -> None:
    store = PatientKeyStore(lake)
    wrapped = keyring.wrap_many(KEK, [bytes(48)])[0]
    records = [PatientKey(key_id=f"{i:032x}", scope_key=f"ps1_p{i}", kek_name=KEK, wrapped=wrapped)
               for i in range(5000)]
    store.put(records[:2500])
    store.put(records[2500:])
    wanted = [r.key_id for r in records[::2]] + ["ff" * 16]

    found = store.get(wanted)

    assert sorted(found) == sorted(wanted[:-1]) and found[records[2].key_id].scope_key == "ps1_p2"
    assert sorted(r.scope_key for r in store.find([f"ps1_p{i}" for i in range(1, 5000, 2)])) == sorted(
        f"ps1_p{i}" for i in range(1, 5000, 2))
