"""The DAGs' shared glue: task defaults from settings, the Asset hand-offs' checks and extras, the secrets hand-off."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.airflow_support import (
    KEY_ROTATION_CONNECTION,
    LAKE_CONNECTION,
    RAW_BATCH,
    SOURCES_EXTRACT,
    VAULT_CONNECTION,
    alert_on_failure,
    connection_fields,
    extract_inputs,
    ingested_batch,
    landed_extract,
    published_batch,
    require_tables,
    require_verified,
    task_defaults,
    task_settings,
)
from pipeline.errors import OrchestrationError, StorageError, ValidationError
from pipeline.lake import Lake
from pipeline.settings import Settings


@dataclass(frozen=True)
class _Asset:
    uri: str


@dataclass(frozen=True)
class _Event:
    extra: dict[str, Any] = field(default_factory=dict)
    source_run_id: str = "upstream-run"


@dataclass(frozen=True)
class _TaskInstance:
    dag_id: str
    task_id: str
    run_id: str
    try_number: int


def _vault_settings(settings: Settings) -> Settings:
    orchestration = settings.orchestration.model_copy(update={"secrets": "vault"})
    return settings.model_copy(update={"orchestration": orchestration})


def _lookup(connections: dict[str, dict[str, Any]]):
    asked: list[str] = []

    def lookup(conn_id: str) -> dict[str, Any] | None:
        asked.append(conn_id)
        return connections.get(conn_id)

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


# task defaults -----------------------------------------------------------------------------------------------------

def test_when_defaults_are_built_then_retries_delay_timeout_and_alert_come_from_settings(settings: Settings):
    orchestration = settings.orchestration.model_copy(
        update={"task_retries": 5, "retry_delay_seconds": 30, "task_timeout_minutes": 7})

    defaults = task_defaults("medguard-x", settings.model_copy(update={"orchestration": orchestration}))

    assert defaults["owner"] == "medguard-x"
    assert defaults["retries"] == 5
    assert defaults["retry_delay"] == timedelta(seconds=30)
    assert defaults["execution_timeout"] == timedelta(minutes=7)
    assert defaults["on_failure_callback"] is alert_on_failure


# the secrets hand-off ----------------------------------------------------------------------------------------------

def test_when_secrets_come_from_settings_then_no_connection_is_read(settings: Settings):
    lookup = _lookup({})

    assert task_settings(settings, lookup=lookup) is settings
    assert lookup.asked == []


def test_when_secrets_come_from_vault_then_the_approle_and_lake_credentials_are_the_connections(settings: Settings):
    lookup = _lookup({
        VAULT_CONNECTION: {"conn_type": "vaults", "host": "bao.hospital.example", "port": 8200,
                           "login": "role-123", "password": "secret-456", "extra": {"namespace": "medguard"}},
        LAKE_CONNECTION: {"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "s3-secret",
                          "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1",
                                    "AWS_ALLOW_HTTP": "true", "lowercase_ignored": "x"}},
    })

    got = task_settings(_vault_settings(settings), lookup=lookup)

    assert got.vault.addr == "https://bao.hospital.example:8200"
    assert got.vault.auth_method == "approle"
    assert got.vault.role_id == "role-123"
    assert got.vault.secret_id.get_secret_value() == "secret-456"
    assert got.vault.namespace == "medguard"
    assert {k: v.get_secret_value() for k, v in got.storage_options.items()} == {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3-secret",
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true"}
    assert "s3-secret" not in repr(got) and "secret-456" not in repr(got)
    # Everything else is the caller's settings.
    assert got.home == settings.home and got.lake_root == settings.lake_root


def test_when_the_vault_connection_uses_a_token_then_the_token_is_its_password(settings: Settings):
    lookup = _lookup({VAULT_CONNECTION: {"conn_type": "vault", "host": "127.0.0.1", "port": 8201,
                                         "password": "hvs.token", "extra": {"auth_type": "token"}}})

    got = task_settings(_vault_settings(settings), lookup=lookup)

    assert got.vault.addr == "http://127.0.0.1:8201"
    assert got.vault.auth_method == "token"
    assert got.vault.token.get_secret_value() == "hvs.token"
    assert got.storage_options == settings.storage_options  # no lake connection: the settings' options stay


def test_when_a_task_names_its_own_approle_connection_then_it_wins_and_else_the_pipeline_one_is_used(
        settings: Settings):
    pipeline = {"conn_type": "vault", "host": "bao", "port": 8200, "login": "pipeline-role", "password": "p"}
    rotation = {"conn_type": "vault", "host": "bao", "port": 8200, "login": "rotation-role", "password": "r"}
    both = _lookup({VAULT_CONNECTION: pipeline, KEY_ROTATION_CONNECTION: rotation})
    only_pipeline = _lookup({VAULT_CONNECTION: pipeline})

    chosen = task_settings(_vault_settings(settings), lookup=both, vault_connection=KEY_ROTATION_CONNECTION)
    fallback = task_settings(_vault_settings(settings), lookup=only_pipeline, vault_connection=KEY_ROTATION_CONNECTION)

    assert chosen.vault.role_id == "rotation-role"
    assert fallback.vault.role_id == "pipeline-role"
    assert only_pipeline.asked == [KEY_ROTATION_CONNECTION, VAULT_CONNECTION, LAKE_CONNECTION]


@pytest.mark.parametrize(("connections", "message"), [
    ({}, "no connection 'medguard_vault'"),
    ({VAULT_CONNECTION: {"conn_type": "vault", "login": "r", "password": "s"}}, "has no host"),
    ({VAULT_CONNECTION: {"conn_type": "vault", "host": "bao", "password": "s"}}, r"needs its login \(role id\)"),
    ({VAULT_CONNECTION: {"conn_type": "vault", "host": "bao", "login": "r", "password": "s",
                         "extra": {"auth_type": "github"}}}, "auth_type 'github'"),
])
def test_when_secrets_come_from_vault_and_the_connection_is_unusable_then_it_fails_closed(
        settings: Settings, connections: dict[str, Any], message: str):
    with pytest.raises(OrchestrationError, match=message):
        task_settings(_vault_settings(settings), lookup=_lookup(connections))


# the extract hand-off ----------------------------------------------------------------------------------------------

def test_when_ingest_is_started_by_extract_events_then_it_reads_their_folders(tmp_path: Path, settings: Settings):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "patients.csv").write_text("id\n")
    events = {_Asset(SOURCES_EXTRACT): [_Event({"sources_dir": str(first), "tabular_format": "csv"}),
                                        _Event({"sources_dir": str(second)})],
              _Asset("medguard://other"): [_Event({"sources_dir": "/elsewhere"})]}

    inputs = extract_inputs(events, {"sources_dir": "/ignored", "tabular_format": "jsonl"}, settings)

    assert inputs == [{"sources_dir": str(first), "tabular_format": "csv"},
                      {"sources_dir": str(second), "tabular_format": "jsonl"}]


def test_when_ingest_is_started_by_hand_then_it_reads_the_sources_dir_param(tmp_path: Path, settings: Settings):
    (tmp_path / "notes.jsonl").write_text("{}\n")

    assert extract_inputs({}, {"sources_dir": str(tmp_path), "tabular_format": "parquet"}, settings) == [
        {"sources_dir": str(tmp_path), "tabular_format": "parquet"}]


def test_when_sources_dir_has_a_typo_then_ingest_fails_naming_the_folder(tmp_path: Path, settings: Settings):
    with pytest.raises(ValidationError, match=r"extract folder .*/sourcse does not exist"):
        extract_inputs(None, {"sources_dir": str(tmp_path / "sourcse"), "tabular_format": "csv"}, settings)


def test_when_the_extract_folder_is_empty_then_ingest_fails(tmp_path: Path, settings: Settings):
    with pytest.raises(ValidationError, match="is empty: nothing to ingest"):
        extract_inputs(None, {"sources_dir": str(tmp_path), "tabular_format": "csv"}, settings)


def test_when_an_extract_event_names_no_folder_then_ingest_fails(settings: Settings):
    with pytest.raises(ValidationError, match=r"names no folder \(extra.sources_dir\)"):
        extract_inputs({_Asset(SOURCES_EXTRACT): [_Event({})]}, {"sources_dir": ""}, settings)


def test_when_an_extract_is_generated_then_its_event_names_the_folder_and_a_written_tabular_format(tmp_path: Path):
    assert landed_extract(tmp_path, ["csv", "fhir"]) == {"sources_dir": str(tmp_path), "tabular_format": "csv"}
    assert landed_extract(tmp_path, ["csv", "parquet"])["tabular_format"] == "parquet"


# batch extras and empty input --------------------------------------------------------------------------------------

def test_when_no_load_found_input_then_the_raw_batch_is_refused(settings: Settings):
    with pytest.raises(ValidationError, match="no source input was found in /x"):
        ingested_batch([[{"batches": [], "tables": {}}], []], [{"sources_dir": "/x"}], settings)


def test_when_every_record_was_quarantined_then_the_raw_batch_is_refused(settings: Settings):
    loads = [[{"batches": ["b1"], "tables": {"patients": {"in": 3, "accepted": 0, "quarantined": 3}}}]]

    with pytest.raises(ValidationError, match="every record of /x was quarantined"):
        ingested_batch(loads, [{"sources_dir": "/x"}], settings)


def test_when_loads_accepted_rows_then_the_raw_batch_names_batches_and_table_versions(lake: Lake):
    lake.append("raw", "patients", pa.table({"id": [1, 2]}))
    lake.append("raw", "patients", pa.table({"id": [3]}))
    loads = [[{"batches": ["b1"], "tables": {"patients": {"in": 3, "accepted": 3, "quarantined": 0},
                                              "notes": {"in": 1, "accepted": 0, "quarantined": 1}}}],
             [{"batches": ["b2"], "tables": {}}]]

    extra = ingested_batch(loads, [{"sources_dir": "/x"}], lake.settings)

    assert extra == {"sources_dirs": ["/x"], "batches": ["b1", "b2"], "accepted": {"notes": 0, "patients": 3},
                     "tables": {"patients": 1}}


def test_when_the_zone_is_empty_then_require_tables_fails_naming_it(lake: Lake):
    with pytest.raises(ValidationError, match=r"the raw zone of .* holds no table"):
        require_tables(lake.settings, "raw")


def test_when_a_wanted_table_is_missing_then_require_tables_fails_naming_it(lake: Lake):
    lake.append("deidentified", "patients", pa.table({"id": [1]}))

    with pytest.raises(ValidationError, match="deidentified has no table outcomes"):
        require_tables(lake.settings, "deidentified", ["outcomes"])
    assert require_tables(lake.settings, "deidentified") == ["patients"]


def test_when_deidentify_publishes_then_its_batch_names_versions_and_the_raw_batches(lake: Lake):
    lake.append("deidentified", "patients", pa.table({"id": [1]}))
    events = {_Asset(RAW_BATCH): [_Event({"batches": ["b1", "b2"]}), _Event({"batches": ["b3"]})]}

    extra = published_batch(lake.settings, {"patients": {"version": 0}}, events)

    assert extra == {"tables": {"patients": 0}, "raw_batches": ["b1", "b2", "b3"]}


def test_when_a_backup_does_not_verify_then_the_task_fails_with_its_problems():
    with pytest.raises(StorageError, match=r"backup mg-1 did not verify: lake/x\.parquet: checksum mismatch"):
        require_verified({"ok": False, "backup_id": "mg-1", "problems": ["lake/x.parquet: checksum mismatch"]})
    assert require_verified({"ok": True, "backup_id": "mg-2"})["backup_id"] == "mg-2"


# the secrets hand-off through Airflow's own Vault secrets backend, on a real OpenBao ---------------------------------

def test_when_airflow_reads_connections_from_openbao_then_the_task_settings_carry_them(openbao, settings: Settings):
    import hvac
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    # What an operator stores (README: `bao kv put airflow/connections/<id> conn_uri=...`), here under the dev
    # server's KV v2 mount `secret/`, in a folder of its own.
    folder = f"airflow-{uuid.uuid4().hex[:8]}/connections"
    kv = hvac.Client(url=openbao.addr, token=openbao.token).secrets.kv.v2
    kv.create_or_update_secret(path=f"{folder}/{VAULT_CONNECTION}", mount_point="secret", secret={
        "conn_uri": "vaults://role-abc:secret-def@bao.hospital.example:8200?auth_type=approle&namespace=medguard"})
    kv.create_or_update_secret(path=f"{folder}/{LAKE_CONNECTION}", mount_point="secret", secret={
        "conn_uri": "aws://AKIAEXAMPLE:s3%2Fsecret@?endpoint_url=http%3A%2F%2Fminio%3A9000&AWS_ALLOW_HTTP=true"})
    backend = VaultBackend(url=openbao.addr, token=openbao.token, mount_point="secret", connections_path=folder)

    got = task_settings(_vault_settings(settings),
                        lookup=lambda conn_id: connection_fields(backend.get_connection(conn_id)))

    assert (got.vault.addr, got.vault.role_id, got.vault.namespace) == (
        "https://bao.hospital.example:8200", "role-abc", "medguard")
    assert got.vault.secret_id.get_secret_value() == "secret-def"
    assert {k: v.get_secret_value() for k, v in got.storage_options.items()} == {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3/secret",
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ALLOW_HTTP": "true"}


def test_when_the_failure_alert_cannot_be_stored_then_the_callback_logs_why_and_returns(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    # The task's settings point at a Vault nobody listens on: the alert cannot be signed.
    monkeypatch.setenv("MEDGUARD_VAULT__ADDR", "http://127.0.0.1:9")
    ti = _TaskInstance("medguard_ingest", "find_extract", "manual__1", 1)

    with caplog.at_level("ERROR", logger="medguard.airflow"):
        alert_on_failure({"ti": ti, "exception": ValueError("a message that could quote a record")})

    assert "could not store the failure alert of medguard_ingest.find_extract (run manual__1)" in caplog.text
    assert "could quote a record" not in caplog.text
