"""ProtectedLake's tables without sealed columns (ledgers, releases): one audited event per write, through the
lake's access hook; protected tables refused; metadata without reaching into the lake."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.lake import CommitInfo, Lake, LakeAccess
from storage_security.audit.log import AuditAction, AuditEvent
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake, Protection

PROT = Protection(encrypted=("name",), row_key="row_id", patient_key="patient")
RELEASE = pa.table({"patient_pseudonym": ["ps1_a", "ps1_b"], "age_band": ["40-49", "50-59"]})


@pytest.fixture
def plake(lake: Lake, keyring: LocalKeyring) -> ProtectedLake:
    return ProtectedLake(lake, keyring, principal="svc:deidentify")


def _events(plake: ProtectedLake) -> list[AuditEvent]:
    return [record.event for record in plake.audit.events()]


def test_when_an_unsealed_table_is_written_then_each_write_is_one_event_with_the_commits_facts(
        plake: ProtectedLake) -> None:
    who = CommitInfo(principal="svc:deidentify", purpose="research", dag_run="manual__1", batch_id="b1",
                     extra={"k": "5", "report": "x" * 1000})

    first = plake.overwrite_unsealed("deidentified", "patients", RELEASE, commit=who)
    merged = plake.merge_unsealed("deidentified", "patients", RELEASE.slice(0, 1), keys=["patient_pseudonym"],
                                  commit=who)

    events = _events(plake)
    assert [(e.action, e.zone, e.table_name, e.row_count) for e in events] == [
        (AuditAction.WRITE, "deidentified", "patients", 2), (AuditAction.WRITE, "deidentified", "patients", 1)]
    overwrite, merge = events
    assert overwrite.principal == "svc:deidentify" and overwrite.purpose == "research"
    assert overwrite.dag_run == "manual__1" and overwrite.columns == ("patient_pseudonym", "age_band")
    # Short commit facts are in the event; a long one (a whole report) stays in the commit's metadata only.
    assert dict(overwrite.details) == {"operation": "overwrite", "version": first, "batch_id": "b1", "k": "5"}
    assert merge.details["operation"] == "merge" and merge.details["updated"] == 1
    assert merged.version == 1 and plake.version("deidentified", "patients") == 1
    assert plake.lake.history("deidentified", "patients")[0]["medguard.report"] == "x" * 1000


def test_when_a_protected_table_is_written_unsealed_then_value_error_and_nothing_is_written(
        plake: ProtectedLake) -> None:
    rows = pa.table({"row_id": ["r1"], "patient": ["ps1_a"], "name": ["Ann Lee"]})
    plake.append("raw", "patients", rows, PROT)
    before = plake.version("raw", "patients")

    with pytest.raises(ValueError, match=r"raw\.patients is protected"):
        plake.overwrite_unsealed("raw", "patients", rows)
    with pytest.raises(ValueError, match="write it sealed"):
        plake.merge_unsealed("raw", "patients", rows, keys=["row_id"])

    assert plake.version("raw", "patients") == before
    assert b"Ann Lee" not in b"".join(str(v).encode() for v in plake.lake.read_arrow("raw", "patients").to_pylist())


def test_when_metadata_is_asked_then_it_comes_without_audit_events_and_never_lists_key_tables(
        plake: ProtectedLake) -> None:
    plake.append("raw", "patients", pa.table({"row_id": ["r1"], "patient": ["ps1_a"], "name": ["Ann"]}), PROT)
    plake.overwrite_unsealed("quarantine", "ledger", pa.table({"batch_id": ["b1"]}))
    recorded = len(_events(plake))

    assert plake.tables("raw") == ["patients"] and plake.tables("quarantine") == ["ledger"]
    assert plake.exists("raw", "patients") and not plake.exists("raw", "absent")
    assert plake.schema("raw", "patients").field("name").type == pa.binary()  # as stored: sealed
    assert plake.version("quarantine", "ledger") == 0
    with pytest.raises(ValueError, match="not a valid Zone"):
        plake.tables("_keys")
    assert len(_events(plake)) == recorded

    seq = plake.record(AuditEvent(principal="svc:deidentify", action=AuditAction.WRITE, details={"run": 1}))
    assert seq == recorded and _events(plake)[-1].details == {"run": 1}


def test_when_the_lake_given_has_an_access_hook_then_sealed_accesses_are_recorded_once_not_twice(
        lake: Lake, keyring: LocalKeyring) -> None:
    seen: list[LakeAccess] = []
    plake = ProtectedLake(lake.with_access_hook(seen.append), keyring, principal="svc:ingest")

    plake.append("raw", "patients", pa.table({"row_id": ["r1"], "patient": ["ps1_a"], "name": ["Ann"]}), PROT)
    plake.read("raw", "patients", decrypt=True)

    assert seen == []
    assert [e.action for e in _events(plake)] == [AuditAction.ENCRYPT, AuditAction.DECRYPT]
