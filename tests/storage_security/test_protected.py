"""Protected tables: sealed before writing, decrypted by column with types restored, shredding, fail closed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import DecryptionError, KeyProviderUnavailableError
from pipeline.lake import Lake
from storage_security.audit.log import AuditAction
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake, Protection

PROT = Protection(encrypted=("name", "ssn", "birth_date", "visits"), row_key="row_id", patient_key="patient")


def _patients() -> pa.Table:
    return pa.table({
        "row_id": ["r1", "r2", "r3", "r4"],
        "patient": ["ps1_a", "ps1_b", "ps1_a", None],
        "name": ["Ann Lee", "Bob Ray", None, "Cy Dunn"],
        "ssn": ["123-45-6789", "987-65-4321", "123-45-6789", "555-12-3456"],
        "birth_date": pa.array([dt.date(1950, 1, 2), dt.date(1987, 6, 5), dt.date(1950, 1, 2), None]),
        "visits": pa.array([3, 1, None, 7], pa.int64()),
        "facility_id": ["FAC-WEST", "FAC-EAST", "FAC-WEST", "FAC-EAST"],
    })


@pytest.fixture
def plake(lake: Lake, keyring: LocalKeyring) -> ProtectedLake:
    return ProtectedLake(lake, keyring, principal="test:writer")


def _files_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_when_a_table_is_written_then_no_plaintext_reaches_disk_and_reads_restore_values_and_types(
    plake: ProtectedLake, lake: Lake
) -> None:
    plake.append("raw", "patients", _patients(), PROT)

    blob = _files_under(Path(lake.root))
    for secret in (b"Ann Lee", b"Bob Ray", b"123-45-6789", b"987-65-4321", b"Cy Dunn"):
        assert secret not in blob
    assert b"FAC-WEST" in blob  # the plaintext columns are really there: the grep can find things

    stored = lake.read_arrow("raw", "patients")
    assert stored.schema.field("ssn").type == pa.binary()
    back = plake.read("raw", "patients", decrypt=True).sort_by("row_id")
    assert back.equals(_patients().select(back.column_names))
    assert back.schema.field("birth_date").type == pa.date32()


def test_when_only_some_columns_are_asked_for_then_only_they_are_decrypted_and_each_read_is_audited(
    plake: ProtectedLake,
) -> None:
    plake.append("raw", "patients", _patients(), PROT)
    back = plake.read("raw", "patients", decrypt=("name",), columns=["row_id", "name", "ssn"], purpose="treatment")
    assert back.column_names == ["row_id", "name", "ssn"]
    assert back.column("ssn").type == pa.binary()
    assert sorted(back.column("name").to_pylist(), key=str) == sorted(["Ann Lee", "Bob Ray", None, "Cy Dunn"],
                                                                      key=str)
    events = [r.event for r in plake.audit.events()]
    assert [e.action for e in events] == [AuditAction.ENCRYPT, AuditAction.DECRYPT]
    assert events[0].columns == PROT.encrypted and events[0].row_count == 4
    assert events[1].columns == ("name",) and events[1].purpose == "treatment"


def test_when_a_cell_is_copied_to_another_row_then_the_read_fails_naming_the_cell(
    plake: ProtectedLake, lake: Lake
) -> None:
    plake.append("raw", "patients", _patients(), PROT)
    stored = lake.read_arrow("raw", "patients").sort_by("row_id")
    ssn = stored.column("ssn").to_pylist()
    ssn[0], ssn[1] = ssn[1], ssn[0]
    tampered = stored.set_column(stored.schema.get_field_index("ssn"), "ssn", pa.array(ssn, pa.binary()))
    lake.overwrite("raw", "patients", tampered)
    with pytest.raises(DecryptionError, match=r"raw\.patients\.ssn\[r[12]\]"):
        plake.read("raw", "patients", decrypt=("ssn",))


def test_when_a_table_is_written_under_another_protection_then_it_is_refused(plake: ProtectedLake) -> None:
    plake.append("raw", "patients", _patients(), PROT)
    weaker = Protection(encrypted=("name",), row_key="row_id", patient_key="patient")
    with pytest.raises(ValueError, match="protected as"):
        plake.append("raw", "patients", _patients(), weaker)


def test_when_a_batch_brings_a_sealed_column_as_another_type_then_it_is_refused_and_no_value_is_quoted(
    plake: ProtectedLake, lake: Lake
) -> None:
    plake.append("raw", "patients", _patients(), PROT)
    version = lake.version("raw", "patients")
    as_text = _patients().set_column(4, "birth_date", pa.array(["SSN 123-45-6789 John Smith"] * 4))

    with pytest.raises(ValueError, match=r"raw\.patients\.birth_date is sealed as date32\[day\]") as caught:
        plake.append("raw", "patients", as_text, PROT)

    assert "123-45-6789" not in str(caught.value) and lake.version("raw", "patients") == version
    no_values = _patients().set_column(4, "birth_date", pa.nulls(4))  # a batch with no birth dates at all
    plake.append("raw", "patients", no_values.set_column(0, "row_id", pa.array(["r5", "r6", "r7", "r8"])), PROT)
    assert plake.read("raw", "patients", decrypt=True).num_rows == 8


@pytest.mark.parametrize(("protection", "message"), [
    (Protection(encrypted=("nope",), row_key="row_id"), "does not have"),
    (Protection(encrypted=("name",), row_key="patient"), "has nulls"),
    (Protection(encrypted=("name",), row_key="facility_id"), "not unique"),
])
def test_when_the_protection_does_not_fit_the_data_then_nothing_is_written(
    plake: ProtectedLake, lake: Lake, protection: Protection, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plake.append("raw", "patients", _patients(), protection)
    assert not lake.exists("raw", "patients")


def test_when_the_row_or_patient_key_is_listed_as_encrypted_then_the_protection_is_invalid() -> None:
    with pytest.raises(ValueError, match="bound into every cell"):
        Protection(encrypted=("row_id",), row_key="row_id")


def test_when_merging_the_same_batch_twice_then_rows_are_not_duplicated(plake: ProtectedLake) -> None:
    first = plake.merge("raw", "patients", _patients(), PROT, keys=["row_id"])
    again = plake.merge("raw", "patients", _patients(), PROT, keys=["row_id"])
    assert (first.inserted, again.inserted, again.updated) == (4, 0, 4)
    assert plake.read("raw", "patients", decrypt=True).num_rows == 4
    with pytest.raises(ValueError, match="encrypted"):
        plake.merge("raw", "patients", _patients(), PROT, keys=["ssn"])


class _Down:
    """A provider whose store is unreachable."""

    name = "down"

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise KeyProviderUnavailableError("key provider down: connection refused")
        return fail


def test_when_the_provider_is_unreachable_then_nothing_is_written(lake: Lake) -> None:
    plake = ProtectedLake(lake, _Down(), principal="test:writer")  # type: ignore[arg-type]
    with pytest.raises(KeyProviderUnavailableError, match="connection refused"):
        plake.append("raw", "patients", _patients(), PROT)
    assert not lake.exists("raw", "patients")
    assert not any(Path(lake.root).rglob("*.parquet"))


def test_when_a_patient_is_shredded_then_their_cells_read_null_in_every_version_and_others_survive(
    plake: ProtectedLake, lake: Lake, keyring: LocalKeyring
) -> None:
    plake.append("raw", "patients", _patients(), PROT)
    plake.append("raw", "patients", _patients().slice(0, 1).set_column(0, "row_id", pa.array(["r5"])), PROT)

    with pytest.raises(ValueError, match="reason"):
        plake.shred("ps1_a", reason=" ")
    assert plake.shred("ps1_a", reason="erasure request ER-1") == 1
    assert plake.shred("ps1_a", reason="erasure request ER-1") == 0  # an interrupted shred can be re-run

    for version in (0, 1):
        fresh = ProtectedLake(lake, keyring, principal="test:reader")  # a later process: no cached keys
        result = fresh.read_result("raw", "patients", decrypt=True, version=version)
        rows = {r["row_id"]: r for r in result.table.to_pylist()}
        assert result.shredded_rows == (2 if version == 0 else 3)
        for row in rows.values():
            if row["patient"] == "ps1_a":
                assert (row["name"], row["ssn"], row["birth_date"]) == (None, None, None)
        assert rows["r2"]["ssn"] == "987-65-4321" and rows["r4"]["name"] == "Cy Dunn"
    shreds = [r.event for r in plake.audit.events() if r.event.action == AuditAction.KEY_SHRED]
    assert len(shreds) == 2 and shreds[0].reason == "erasure request ER-1"


def test_when_pseudonyms_are_made_twice_then_they_agree_and_hide_the_value(plake: ProtectedLake,
                                                                             lake: Lake,
                                                                             keyring: LocalKeyring) -> None:
    first = plake.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2"]).to_pylist()
    again = ProtectedLake(lake, keyring, principal="other").pseudonymizer("patient").pseudonym("PAT1")
    assert first[0] == again and first[0] != first[1] and "PAT1" not in first[0]


def test_when_written_through_vault_then_the_table_reads_back(openbao, lake: Lake, tmp_path: Path) -> None:
    from storage_security.keys.vault_transit import VaultTransitKeys

    provider = VaultTransitKeys(openbao.client(), mount="transit")
    provider.ensure_key("medguard-kek")
    provider.ensure_key("medguard-audit")
    plake = ProtectedLake(lake, provider, principal="test:vault")
    plake.append("raw", "patients", _patients(), PROT)
    back = plake.read("raw", "patients", decrypt=True).sort_by("row_id")
    assert back.column("ssn").to_pylist() == _patients().column("ssn").to_pylist()
    assert plake.audit.verify().ok


def test_when_vault_denies_or_is_unreachable_then_nothing_is_written_and_a_rerun_after_recovery_adds_no_duplicates(
    openbao, lake: Lake
) -> None:
    from pipeline.errors import KeyAccessDeniedError
    from storage_security.keys._vault import RetryPolicy, VaultClient
    from storage_security.keys.vault_transit import VaultTransitKeys
    from storage_security.local_vault.openbao import free_port_pair

    good = VaultTransitKeys(openbao.client(), mount="transit")
    for name in ("medguard-kek", "medguard-audit"):
        good.ensure_key(name)
    root = openbao.client()
    root.write("sys/policies/acl/test-auditor-only", {"policy": 'path "transit/keys/*" { capabilities = ["read"] }'})
    token = root.write("auth/token/create", {"policies": ["test-auditor-only"], "ttl": "10m"})["auth"]["client_token"]
    denied = VaultTransitKeys(VaultClient(openbao.addr, token=token), mount="transit")
    unreachable = VaultTransitKeys(VaultClient(f"http://127.0.0.1:{free_port_pair()}", token="t", timeout=0.5,
                                               retry=RetryPolicy(attempts=2, base_delay=0.01)), mount="transit")

    for provider, error, words in ((denied, KeyAccessDeniedError, "403"),
                                   (unreachable, KeyProviderUnavailableError, "127.0.0.1")):
        with pytest.raises(error, match=words):
            ProtectedLake(lake, provider, principal="svc:ingest").merge("raw", "patients", _patients(), PROT,
                                                                        keys=["row_id"])
        assert not lake.exists("raw", "patients")
        assert not any(Path(lake.root).rglob("*.parquet"))

    recovered = ProtectedLake(lake, good, principal="svc:ingest")
    for _ in range(2):
        recovered.merge("raw", "patients", _patients(), PROT, keys=["row_id"])
    assert recovered.read("raw", "patients", decrypt=True).num_rows == 4
