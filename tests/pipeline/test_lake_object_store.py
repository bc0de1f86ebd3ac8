"""Tests for pipeline/lake.py on an object store: a lake at ``s3://bucket/lake`` on a local S3 (moto_server).

moto runs as its own process: delta-rs's listing blocks while holding the GIL, so a server in a thread of the
test process would never answer it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import StorageError
from pipeline.lake import SYSTEM_ZONE, CommitInfo, Lake, LakeAccess, Zone
from pipeline.settings import Settings, load_settings

BUCKET = "medguard-test"
PATIENTS = pa.schema([("patient_pseudonym", pa.string()), ("age_band", pa.int64()), ("ssn_enc", pa.binary())])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one empty bucket."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed (requirements.lock's moto[server])")
    port = _free_port()
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
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def _options(endpoint: str) -> dict[str, str]:
    # Plain HTTP to the local server; no locking provider, so renames are allowed without one (one writer here).
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "AKIAMEDGUARDTEST",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-medguard-test", "AWS_ALLOW_HTTP": "true",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}


@pytest.fixture
def s3_settings(s3_endpoint: str, request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Settings of a lake under its own prefix of the bucket, one per test."""
    root = f"s3://{BUCKET}/{request.node.name.replace('[', '_').replace(']', '')[:60]}/lake"
    return load_settings(home=settings.home, lake_root=root, storage_options=_options(s3_endpoint))


def _patients(n: int, start: int = 0) -> pa.Table:
    return pa.Table.from_pylist([{"patient_pseudonym": f"ps1_p_{i:04x}", "age_band": 20 + i % 7,
                                  "ssn_enc": bytes([i % 256]) * 12} for i in range(start, start + n)], schema=PATIENTS)


def test_when_the_lake_is_on_s3_then_tables_schema_reads_and_appends_work(s3_settings: Settings) -> None:
    lake = Lake(s3_settings)
    assert lake.root.startswith(f"s3://{BUCKET}/")
    assert lake.tables(Zone.RAW) == []  # nothing written yet, not an error

    lake.append(Zone.RAW, "patients", _patients(3), commit=CommitInfo(principal="svc:test", purpose="ingest"))
    lake.append(Zone.RAW, "encounters", pa.table({"encounter_id": ["e1", "e2"], "patient_pseudonym": ["a", "b"]}))
    lake.append(Zone.QUARANTINE, "records", pa.table({"rule": ["missing id"]}))
    version = lake.append(Zone.RAW, "patients", _patients(2, start=3))

    assert lake.tables(Zone.RAW) == ["encounters", "patients"]
    assert lake.tables(Zone.QUARANTINE) == ["records"]
    assert lake.tables(Zone.DEIDENTIFIED) == []
    assert version == 1 and lake.version(Zone.RAW, "patients") == 1
    assert lake.schema(Zone.RAW, "patients").equals(PATIENTS)
    rows = lake.read_arrow(Zone.RAW, "patients").sort_by("patient_pseudonym")
    assert rows.equals(_patients(5))
    assert lake.read_arrow(Zone.RAW, "patients", version=0, columns=["age_band"]).num_rows == 3
    assert lake.history(Zone.RAW, "patients")[-1]["medguard.principal"] == "svc:test"


def test_when_the_lake_is_on_s3_then_merges_deletes_and_the_system_zone_work(s3_settings: Settings) -> None:
    seen: list[LakeAccess] = []
    lake = Lake(s3_settings, on_access=seen.append)

    lake.append(SYSTEM_ZONE, "manifests", _patients(2))
    lake.merge(Zone.DEIDENTIFIED, "patients", _patients(3), keys=["patient_pseudonym"])
    result = lake.merge(Zone.DEIDENTIFIED, "patients", _patients(2, start=2), keys=["patient_pseudonym"])
    deleted = lake.delete(Zone.DEIDENTIFIED, "patients", where="age_band = 20")

    assert (result.inserted, result.updated, deleted) == (1, 1, 1)
    assert lake.read_arrow(Zone.DEIDENTIFIED, "patients").num_rows == 3
    assert lake.tables(SYSTEM_ZONE) == ["manifests"]
    assert lake.exists(SYSTEM_ZONE, "manifests") and not lake.exists(SYSTEM_ZONE, "deks")
    assert all(SYSTEM_ZONE not in lake.tables(zone) for zone in Zone)
    assert [(a.operation, a.zone) for a in seen] == [
        ("merge", "deidentified"), ("merge", "deidentified"), ("delete", "deidentified"), ("read", "deidentified")]


def test_when_storage_options_come_from_the_environment_then_the_lake_uses_them_and_never_prints_them(
        s3_endpoint: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_STORAGE_OPTIONS", json.dumps(_options(s3_endpoint)))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", f"s3://{BUCKET}/from-env/lake")
    loaded = load_settings(home=settings.home)
    lake = Lake(loaded)

    lake.append(Zone.RAW, "notes", pa.table({"note_id": ["n1"]}))

    assert lake.tables(Zone.RAW) == ["notes"]
    printed = f"{loaded!r} {loaded.storage_options} {lake!r} {lake._engine!r}"
    assert "s3cr3t-medguard-test" not in printed and "AKIAMEDGUARDTEST" not in printed


def test_when_the_store_cannot_be_reached_then_storage_error_names_the_root(
        s3_endpoint: str, settings: Settings) -> None:
    options = {**_options(s3_endpoint), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens there
    lake = Lake(load_settings(home=settings.home, lake_root=f"s3://{BUCKET}/nowhere",
                              storage_options={**options, "AWS_MAX_RETRIES": "0", "AWS_RETRY_TIMEOUT": "1s"}))

    with pytest.raises(StorageError, match=r"cannot list s3://medguard-test/nowhere/raw"):
        lake.tables(Zone.RAW)
