"""The restore drill (issue 22, item 6): a home with a small population ingested (generated CSV and a Synthea FHIR
bundle) and de-identified, one patient shredded, backed up, a second patient shredded after the backup; restored
into empty homes: every table at its version, every audit event, the chain intact, both patients unreadable."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingestion.batch import ingest
from pipeline.errors import DecryptionError
from pipeline.lake import SYSTEM_ZONE, Lake, Zone
from pipeline.settings import Settings, load_settings
from storage_security.audit.log import AuditAction, AuditLog
from storage_security.backup import _envelope as envelope
from storage_security.backup.archive import (
    ARCHIVE,
    BackupResult,
    create_backup,
    private_key,
    read_manifest,
    verify_backup,
)
from storage_security.backup.restore import restore_backup
from storage_security.keys.keyring import LocalKeyring, encode_master_key
from storage_security.keys.lifecycle import shred_patient
from storage_security.keys.patient_keys import PatientKeyStore
from storage_security.protected import ProtectedLake

pytestmark = pytest.mark.integration

SYNTHEA = Path(__file__).parents[2] / "fixtures" / "fhir" / "synthea" / (
    "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json")
ZONES = (*Zone, SYSTEM_ZONE)


@dataclass(frozen=True)
class Drill:
    settings: Settings
    base: Path
    backup: BackupResult
    versions: dict[str, int]  # every table's version when the backup was taken
    events: list[tuple[int, str]]  # (seq, hash) of every audit event then
    early: str  # shredded before the backup
    late: str  # shredded after it
    master_key: str


def _versions(lake: Lake) -> dict[str, int]:
    return {f"{zone}.{table}": lake.version(zone, table) for zone in ZONES for table in lake.tables(zone)}


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.synthetic import generate
    from storage_security.deid.deidentify import publish_raw_zone

    base = tmp_path_factory.mktemp("backup-drill")
    master = LocalKeyring.generate_master_key()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
        settings = load_settings(home=base / "home", key_provider="keyring", deidentify={"k_anonymity": 2})
        ring = LocalKeyring.init(settings.keyring.path, master)
        ring.ensure_key("medguard-kek")
        ring.ensure_key("medguard-audit")
        generate(base / "pop", patients=24, seed=7, formats=["csv"])
        plake = ProtectedLake.from_settings(settings, principal="test:ops")
        for name in ("patients", "encounters"):
            ingest(settings, source="tabular", path=base / "pop" / f"{name}.csv", table=name, plake=plake, docs=False)
        fhir = base / "fhir"
        fhir.mkdir()
        (fhir / "bundle.ndjson").write_text(json.dumps(json.loads(SYNTHEA.read_text("utf-8"))) + "\n", "utf-8")
        ingest(settings, source="fhir", path=fhir, plake=plake, docs=False)
        publish_raw_zone(settings=settings)
        people = plake.read("raw", "patients", columns=["patient_pseudonym"]).column(0).to_pylist()
        early, late = people[0], people[1]
        shred_patient(plake, early, reason="erasure ER-1")
        lake = Lake(settings)
        versions = _versions(lake)
        events = [(r.seq, r.hash) for r in AuditLog(lake, ring).events()]
        backup = create_backup(settings, principal="test:ops")
        shred_patient(ProtectedLake.from_settings(settings, principal="test:ops"), late, reason="erasure ER-2")
        yield Drill(settings, base, backup, versions, events, early, late, encode_master_key(master))


def _unreadable(plake: ProtectedLake, pseudonym: str) -> None:
    """The patient has no key, their raw cells do not decrypt, and no de-identified row of theirs is left."""
    assert not plake.patient_keys.find([pseudonym])
    protection = plake.protection("raw", "patients")
    assert protection is not None
    raw = plake.lake.read_arrow("raw", "patients", where=f"patient_pseudonym = '{pseudonym}'")
    assert raw.num_rows >= 1  # the sealed row is still there; only its key is gone
    for column in protection.encrypted:
        for cell, key in zip(raw.column(column).to_pylist(), raw.column(protection.row_key).to_pylist(), strict=True):
            if cell is not None:
                with pytest.raises(DecryptionError):
                    plake.cipher.decrypt_cell(cell, table="raw.patients", column=column, row_key=key)
    for table in plake.lake.tables(Zone.DEIDENTIFIED):
        data = plake.lake.read_arrow(Zone.DEIDENTIFIED, table)
        if "patient_pseudonym" in data.column_names:
            assert pseudonym not in data.column("patient_pseudonym").to_pylist(), table


def _readable(plake: ProtectedLake, pseudonym: str) -> bool:
    rows = plake.read("raw", "patients", decrypt=["mrn"], where=f"patient_pseudonym = '{pseudonym}'").to_pylist()
    return bool(rows) and rows[0]["mrn"] is not None


def test_when_a_backup_is_restored_without_reshred_then_every_table_and_event_is_back_at_its_version(
        drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", drill.master_key)
    result = restore_backup(drill.settings, drill.backup.path, principal="test:drill", home=drill.base / "plain",
                            reshred=False)

    target = load_settings(home=drill.base / "plain", key_provider="keyring")
    assert _versions(Lake(target)) == {name: version + (name == "audit.events") + (name == "audit.heads")
                                       for name, version in drill.versions.items()}  # + the restore event
    restored = ProtectedLake.from_settings(target, principal="test:auditor")
    records = restored.audit.events()
    assert [(r.seq, r.hash) for r in records[:-1]] == drill.events
    assert records[-1].event.action == AuditAction.RESTORE
    assert records[-1].event.details["backup_id"] == drill.backup.backup_id
    assert restored.audit.verify().ok and result.audit_ok
    _unreadable(restored, drill.early)
    # The patient shredded after the backup is back, readable: what the default re-shred prevents.
    assert result.not_reshredded == [drill.late] and _readable(restored, drill.late)
    assert _readable(restored, restored.read("raw", "patients", columns=["patient_pseudonym"]).column(0)
                     .to_pylist()[2])


def test_when_a_backup_is_restored_then_a_patient_shredded_after_it_is_shredded_again(
        drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", drill.master_key)
    result = restore_backup(drill.settings, drill.backup.path, principal="test:drill", home=drill.base / "drill")

    assert result.reshredded == [drill.late] and result.not_reshredded == []
    assert result.shred_sources and "configured lake" in result.shred_sources[0]
    target = load_settings(home=drill.base / "drill", key_provider="keyring")
    restored = ProtectedLake.from_settings(target, principal="test:auditor")
    _unreadable(restored, drill.early)
    _unreadable(restored, drill.late)
    assert {drill.early, drill.late} <= PatientKeyStore(restored.lake).shredded()
    report = restored.audit.verify()
    assert report.ok, report.summary()
    actions = [r.event.action for r in restored.audit.events()]
    assert actions[-1] == AuditAction.RESTORE and AuditAction.KEY_SHRED in actions[len(drill.events):]


def test_when_a_byte_of_the_archive_is_flipped_then_verify_names_the_member(drill: Drill, tmp_path: Path) -> None:
    copy = tmp_path / drill.backup.backup_id
    shutil.copytree(drill.backup.path, copy)
    manifest = read_manifest(copy, private_key(drill.settings))
    member = max((m for m in manifest["members"] if m["name"].startswith("lake/raw/patients/")),
                 key=lambda m: m["size"])
    plain = member["end"] - member["size"] // 2 - 512  # inside the member's data
    with open(copy / ARCHIVE, "r+b") as archive_file:
        header, _ = envelope.read_header(archive_file, ARCHIVE)
        chunk = plain // header["chunk_bytes"]
        where = archive_file.tell() + chunk * (4 + header["chunk_bytes"] + 16) + 4 + plain % header["chunk_bytes"]
        archive_file.seek(where)
        byte = archive_file.read(1)
        archive_file.seek(where)
        archive_file.write(bytes([byte[0] ^ 0x01]))

    full = verify_backup(drill.settings, copy)
    outer = verify_backup(drill.settings, copy, outer_only=True)

    assert not full.ok and full.level == "full"
    assert any("fails authentication" in p and member["name"] in p for p in full.problems), full.problems
    assert not outer.ok and outer.problems == [f"{ARCHIVE}: SHA-256 differs from SHA256SUMS (bytes altered or cut)"]
    assert verify_backup(drill.settings, drill.backup.path).ok  # the original is intact


def test_when_the_wrong_private_key_is_given_then_verify_and_restore_say_so(drill: Drill, tmp_path: Path) -> None:
    envelope.generate_key_pair(tmp_path / "other.pub", tmp_path / "other.pem")

    result = verify_backup(drill.settings, drill.backup.path, private_key_path=tmp_path / "other.pem")

    assert not result.ok and len(result.problems) == 1
    assert "encrypted to backup key" in result.problems[0] and "the private key given is" in result.problems[0]
    with pytest.raises(envelope.BackupIntegrityError, match="encrypted to backup key"):
        restore_backup(drill.settings, drill.backup.path, principal="test:drill", home=tmp_path / "never",
                       private_key_path=tmp_path / "other.pem")
    assert not (tmp_path / "never").exists()


def test_when_the_cli_verifies_and_restores_then_it_answers_in_json_and_refuses_a_used_home(
        drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import app

    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", drill.master_key)
    monkeypatch.setenv("MEDGUARD_HOME", str(drill.settings.home))
    monkeypatch.setenv("MEDGUARD_KEY_PROVIDER", "keyring")
    runner = CliRunner()

    verified = runner.invoke(app, ["backup", "verify", drill.backup.backup_id, "--json"])
    refused = runner.invoke(app, ["backup", "restore", str(drill.backup.path), "--home", str(drill.settings.home)])

    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["ok"] is True and json.loads(verified.stdout)["level"] == "full"
    assert refused.exit_code == 1
    assert refused.stderr.startswith("medguard: error: the target home") and refused.stderr.count("\n") == 1


def test_when_a_backup_is_made_then_the_source_log_records_it_with_counts_and_no_contents(
        drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", drill.master_key)
    lake = Lake(drill.settings)
    ring = LocalKeyring.from_settings(drill.settings)

    backups = [r.event for r in AuditLog(lake, ring).events() if r.event.action == AuditAction.BACKUP]

    assert len(backups) == 1
    event = backups[0]
    assert event.principal == "test:ops" and event.row_keys == ()
    assert event.details["backup_id"] == drill.backup.backup_id
    assert event.details["members"] == drill.backup.members and event.details["tables"] == len(drill.versions)
    assert not {drill.early, drill.late, str(drill.base)} & {str(v) for v in event.details.values()}
