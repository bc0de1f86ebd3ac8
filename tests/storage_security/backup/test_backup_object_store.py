"""A lake on an S3-compatible store (a moto server on 127.0.0.1) is backed up from the store's own listing and
restored into another prefix, where every table opens at its version and the sealed cells decrypt again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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
BUCKET = "medguard-backup-test"


@pytest.fixture
def s3_store() -> Iterator[dict[str, str]]:
    """A moto S3 server in its own process (delta-rs holds the GIL while it lists) with one bucket; its options."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed (requirements.lock's moto[server])")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310 - a local test server
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "AKIAMEDGUARDTEST",
               "AWS_SECRET_ACCESS_KEY": "s3cr3t-medguard-test", "AWS_ALLOW_HTTP": "true",
               "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_when_the_lake_is_on_an_object_store_then_it_is_backed_up_and_restored_into_another_prefix(
        s3_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.synthetic import generate

    master = LocalKeyring.generate_master_key()
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    settings = load_settings(home=tmp_path / "home", key_provider="keyring", lake_root=f"s3://{BUCKET}/prod",
                             storage_options=s3_store)
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
                           storage_options=s3_store)
    restored = Lake(target)
    assert "raw.patients" in versions and result.tables == len(versions)
    assert {f"{z}.{t}": restored.version(z, t) for z in (*Zone, SYSTEM_ZONE) for t in restored.tables(z)} == {
        name: version + (name in ("audit.events", "audit.heads")) for name, version in versions.items()}
    again = ProtectedLake.from_settings(target, principal="test:auditor")
    assert again.read("raw", "patients", decrypt=["mrn"], columns=["mrn"]).column(0).to_pylist() == mrns
    assert result.audit_ok, result.audit
