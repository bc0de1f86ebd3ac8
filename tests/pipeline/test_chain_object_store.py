"""The whole chain on an object store: a lake at ``s3://`` on a local S3 server (moto_server, its own process).

A small population goes through every layer — ingest, de-identification, training, batch diagnosis — then a user's
checks run as the ``medguard`` command: an analyst's query through the gateway, a crypto-shred of one patient, the
audit chain's verification. Every table must be found through the store's listing, and nothing of the lake may land
on the local disk (the home keeps only what is local by design: keyring, audit anchor, run folders, models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.lake import SYSTEM_ZONE, Lake, Zone
from pipeline.settings import Settings, load_settings

MEDGUARD = str(Path(sys.executable).with_name("medguard"))
BUCKET = "medguard-test"
T2D_CONFIG = Path(__file__).parents[2] / "analytics" / "configs" / "t2d_within_1y.yaml"
# 1,000 patients of one tabular format: enough labelled patients survive the release's k-anonymity gate for both
# training splits to hold positives. 300 never did; at 600 the keyed split (its key is random per lake) left the
# calibration split 1 positive of 89 rows in one CI-style run of 1 December, and training refused it.
PATIENTS = 1000
# The smallest honest training: every step runs, with few trees, a two-fold one-candidate search, few attacks.
SMALL = {"n_estimators": 40, "attack_samples": 10,
         "cv": {"folds": 2, "grid": [{"max_depth": 3, "learning_rate": 0.1}]}}
# Promotion floors for a test population this small: judged on point estimates; a model near chance still fails.
FLOORS = {"judge_on": "point", "min_auroc": 0.6, "min_sensitivity": 0.3, "min_specificity": 0.3, "max_ece": 0.2,
          "n_boot": 20}


@pytest.fixture
def s3_home(keyring_home: tuple[Settings, object], s3_options: dict[str, str]) -> tuple[Settings, dict[str, str]]:
    """Settings of a keyring home whose lake is on the S3 server, and the environment a ``medguard`` command of that
    home needs (the keyring's master key is already in this process's environment)."""
    home = keyring_home[0].home
    root = f"s3://{BUCKET}/chain-{home.parent.name}/lake"
    settings = load_settings(home=home, key_provider="keyring", lake_root=root, storage_options=s3_options,
                             spark={"master": "local[2]", "ui_enabled": False, "driver_memory": "2g"},
                             governance=FLOORS, analytics={"bootstrap_draws": 20})
    env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_LAKE_ROOT": root, "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_STORAGE_OPTIONS": json.dumps(s3_options)}
    return settings, env


def _medguard(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([MEDGUARD, *args, "--json"], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.e2e  # every layer, and the medguard command, on one lake
def test_when_the_lake_is_on_s3_then_every_layer_runs_on_it_and_nothing_of_it_is_written_locally(
        s3_home: tuple[Settings, dict[str, str]], s3_endpoint: str, spark: object, tmp_path: Path) -> None:
    from analytics.flow import diagnose, train_pipeline
    from ingestion.batch import ingest_extract
    from pipeline.synthetic import generate
    from storage_security.deid.deidentify import publish_raw_zone
    from storage_security.protected import ProtectedLake

    settings, env = s3_home
    sources = tmp_path / "extract"
    generate(sources, patients=PATIENTS, seed=7, formats=("parquet",), defect_rate=0.02)
    lake = Lake(settings)

    ingested = ingest_extract(settings, source="tabular", sources_dir=sources, tabular_format="parquet")
    published = publish_raw_zone(settings=settings)
    trained = train_pipeline(settings, "outcomes", "t2d_within_1y", config_path=str(T2D_CONFIG), overrides=SMALL)
    # At 600 patients the test split holds a handful of positives and the keyed pseudonyms change it from run to run:
    # the candidate clears even these floors in most runs, not all (CI saw one stay a candidate). The store is under
    # test here, not the model: a candidate left unpromoted is promoted as an operator would, through the command,
    # whose signed index and audit event then live on the store too.
    assert trained["promotion"]["decision"] in {"promoted", "candidate"}, trained["promotion"]
    if trained["promotion"]["current"] != trained["model_version"]:
        assert trained["promotion"]["reasons"], trained["promotion"]
        _medguard(env, "models", "promote", trained["model_version"], "--force", "--reason", "store test")
    diagnosed = diagnose(settings, "outcomes")

    tables = ["conditions", "encounters", "medications", "observations", "outcomes", "patients"]
    assert lake.tables(Zone.RAW) == tables
    assert lake.tables(Zone.DEIDENTIFIED) == tables and sorted(published) == tables
    assert "records" in lake.tables(Zone.QUARANTINE)
    assert {"diagnoses", "current"} <= set(lake.tables(Zone.PREDICTIONS))
    assert lake.tables(Zone.AUDIT) and lake.tables(SYSTEM_ZONE)
    accepted = ingested["tables"]["patients"]["accepted"]
    # A record the extract repeats is accepted twice and loaded once.
    assert 0.9 * PATIENTS < lake.read_arrow(Zone.RAW, "patients", columns=["patient_id"]).num_rows <= accepted
    assert diagnosed["model_version"] == trained["model_version"]
    scored = lake.read_arrow(Zone.PREDICTIONS, "diagnoses", columns=["patient_pseudonym", "model_version"])
    assert scored.num_rows == lake.read_arrow(Zone.DEIDENTIFIED, "outcomes").num_rows > 100
    assert set(scored.column("model_version").to_pylist()) == {diagnosed["model_version"]}

    _medguard(env, "access", "add-principal", "ana", "--role", "analyst", "--purpose", "research")
    answer = _medguard(env, "query", "--as", "ana", "SELECT count(*) AS n FROM deidentified.patients")
    consented = lake.read_arrow(Zone.DEIDENTIFIED, "patients", where="consent_research").num_rows
    assert answer["rows"] == [{"n": consented}] and consented > 0

    patient = lake.read_arrow(Zone.RAW, "patients", columns=["patient_pseudonym"]).column(0)[0].as_py()
    shred = _medguard(env, "keys", "shred", patient, "--reason", "erasure request #1 (test)")
    assert shred["patient_pseudonym"] == patient and shred["deks_dropped"] == 1
    reader = ProtectedLake.from_settings(settings, principal="svc:test-reader")
    rows = reader.read_result(Zone.RAW, "patients", decrypt=True, where=f"patient_pseudonym = '{patient}'")
    assert rows.table.num_rows == rows.shredded_rows >= 1
    assert all(v is None for v in rows.table.column("ssn").to_pylist())
    for zone in (Zone.DEIDENTIFIED, Zone.PREDICTIONS):
        for table in lake.tables(zone):
            assert not lake.read_arrow(zone, table, where=f"patient_pseudonym = '{patient}'").num_rows, table

    verified = _medguard(env, "audit", "verify")
    assert verified["ok"] and verified["events"] > 20

    home = settings.home
    assert not (home / "lake").exists()
    assert not [p for p in home.rglob("_delta_log")]
    import boto3

    store = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                         region_name="us-east-1")
    prefix = settings.lake_root.removeprefix(f"s3://{BUCKET}/") + "/raw/patients/_delta_log/"
    assert store.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] > 0


def test_when_settings_carry_storage_options_then_airflow_tasks_get_them_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.orchestration import airflow_env

    monkeypatch.delenv("MEDGUARD_STORAGE_OPTIONS", raising=False)
    options = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    # As `medguard --config lake.yaml demo` loads them: from a file, not from the environment.
    settings = load_settings(home=tmp_path / "home", lake_root="s3://hospital-lake/medguard", storage_options=options)

    env = airflow_env(settings)

    assert env["MEDGUARD_LAKE_ROOT"] == "s3://hospital-lake/medguard"
    assert load_settings(home=tmp_path / "home", storage_options=json.loads(env["MEDGUARD_STORAGE_OPTIONS"])
                         ).storage_options == settings.storage_options
