"""A lake on an S3-compatible store (a moto server on 127.0.0.1) is backed up from the store's own listing and
restored into another prefix, where every table opens at its version and the sealed cells decrypt again."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.batch import ingest
from pipeline.lake import SYSTEM_ZONE, Lake, Zone
from pipeline.settings import load_settings
from storage_security.backup.archive import create_backup, verify_backup
from storage_security.backup.restore import restore_backup
from storage_security.keys.keyring import LocalKeyring, encode_master_key
from storage_security.protected import ProtectedLake

pytestmark = pytest.mark.integration
BUCKET = "medguard-test"  # the moto server of tests/conftest.py (s3_endpoint); each test its own prefix


def test_when_the_lake_is_on_an_object_store_then_it_is_backed_up_and_restored_into_another_prefix(
        s3_options: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.synthetic import generate

    master = LocalKeyring.generate_master_key()
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    settings = load_settings(home=tmp_path / "home", key_provider="keyring", lake_root=f"s3://{BUCKET}/prod",
                             storage_options=s3_options)
    ring = LocalKeyring.init(settings.keyring.path, master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    generate(tmp_path / "pop", patients=5, seed=3, formats=["csv"])
    plake = ProtectedLake.from_settings(settings, principal="test:ops")
    ingest(settings, source="tabular", path=tmp_path / "pop" / "patients.csv", table="patients", plake=plake,
           docs=False)
    mrns = plake.read("raw", "patients", decrypt=["mrn"], columns=["mrn"]).column(0).to_pylist()  # audited
    source = Lake(settings)
    versions = {f"{z}.{t}": source.version(z, t) for z in (*Zone, SYSTEM_ZONE) for t in source.tables(z)}

    backup = create_backup(settings, principal="test:ops")
    assert verify_backup(settings, backup.path).ok
    result = restore_backup(settings, backup.path, principal="test:drill", home=tmp_path / "restored",
                            lake_root=f"s3://{BUCKET}/drill")

    target = load_settings(home=tmp_path / "restored", key_provider="keyring", lake_root=f"s3://{BUCKET}/drill",
                           storage_options=s3_options)
    restored = Lake(target)
    assert "raw.patients" in versions and result.tables == len(versions)
    assert {f"{z}.{t}": restored.version(z, t) for z in (*Zone, SYSTEM_ZONE) for t in restored.tables(z)} == {
        name: version + (name in ("audit.events", "audit.heads")) for name, version in versions.items()}
    again = ProtectedLake.from_settings(target, principal="test:auditor")
    assert again.read("raw", "patients", decrypt=["mrn"], columns=["mrn"]).column(0).to_pylist() == mrns
    assert result.audit_ok, result.audit
