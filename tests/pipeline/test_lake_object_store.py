"""Tests for pipeline/lake.py on an object store: a lake at ``s3://bucket/lake`` on a local S3 (moto_server, started
by ``s3_endpoint`` in tests/conftest.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.errors import StorageError
from pipeline.lake import SYSTEM_ZONE, CommitInfo, Lake, LakeAccess, Zone
from pipeline.settings import Settings, load_settings

BUCKET = "medguard-test"
PATIENTS = pa.schema([("patient_pseudonym", pa.string()), ("age_band", pa.int64()), ("ssn_enc", pa.binary())])


@pytest.fixture
def s3_settings(s3_options: dict[str, str], request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Settings of a lake under its own prefix of the bucket, one per test."""
    root = f"s3://{BUCKET}/{request.node.name.replace('[', '_').replace(']', '')[:60]}/lake"
    return load_settings(home=settings.home, lake_root=root, storage_options=s3_options)


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
        s3_options: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_STORAGE_OPTIONS", json.dumps(s3_options))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", f"s3://{BUCKET}/from-env/lake")
    loaded = load_settings(home=settings.home)
    lake = Lake(loaded)

    lake.append(Zone.RAW, "notes", pa.table({"note_id": ["n1"]}))

    assert lake.tables(Zone.RAW) == ["notes"]
    printed = f"{loaded!r} {loaded.storage_options} {lake!r} {lake._engine!r}"
    assert "s3cr3t-medguard-test" not in printed and "AKIAMEDGUARDTEST" not in printed


def test_when_the_store_cannot_be_reached_then_storage_error_names_the_root(
        s3_options: dict[str, str], settings: Settings) -> None:
    options = {**s3_options, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens there
    lake = Lake(load_settings(home=settings.home, lake_root=f"s3://{BUCKET}/nowhere",
                              storage_options={**options, "AWS_MAX_RETRIES": "0", "AWS_RETRY_TIMEOUT": "1s"}))

    with pytest.raises(StorageError, match=r"cannot list s3://medguard-test/nowhere/raw"):
        lake.tables(Zone.RAW)


def test_when_spark_has_no_file_system_for_the_store_then_read_spark_still_returns_the_snapshot(
        s3_settings: Settings, spark: object) -> None:
    # pyspark ships no hadoop-aws here: Spark cannot open s3:// files itself, so the rows come through delta-rs.
    lake = Lake(s3_settings)
    lake.append(Zone.DEIDENTIFIED, "patients", _patients(4))
    lake.append(Zone.DEIDENTIFIED, "patients", _patients(3, start=4))

    latest = lake.read_spark(Zone.DEIDENTIFIED, "patients").toArrow().sort_by("patient_pseudonym")
    first = lake.read_spark(Zone.DEIDENTIFIED, "patients", version=0)

    assert latest.column("patient_pseudonym").to_pylist() == _patients(7).column("patient_pseudonym").to_pylist()
    assert first.count() == 4 and first.columns == PATIENTS.names


@pytest.mark.parametrize(("uri", "spark_uri"), [
    ("s3://bucket/lake/raw/patients", "s3a://bucket/lake/raw/patients"),
    ("s3://bucket/lake/raw/patients/part-0.parquet", "s3a://bucket/lake/raw/patients/part-0.parquet"),
    ("/home/me/.medguard/lake/raw/patients", "/home/me/.medguard/lake/raw/patients"),
    ("gs://bucket/lake/raw/patients", "gs://bucket/lake/raw/patients"),
])
def test_when_spark_opens_a_table_then_an_s3_uri_is_named_as_hadoops_s3a(uri: str, spark_uri: str) -> None:
    from pipeline._delta_spark import hadoop_uri

    assert hadoop_uri(uri) == spark_uri
