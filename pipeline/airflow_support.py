"""What medguard's DAG files share: task defaults, the failure alert, the Asset hand-offs and the secrets hand-off.

The DAG files in ``dags/`` stay thin: each task is one call into a layer, plus the orchestration glue here.

- :func:`task_defaults`: every task's retries, retry delay and execution timeout come from the ``orchestration``
  settings, and a failed task raises an alert (:func:`alert_on_failure`).
- The chain is one Asset per hand-off, emitted once per run by one task, so one upstream run starts each
  downstream DAG once: :data:`SOURCES_EXTRACT` (an extract folder landed) → ``medguard_ingest`` →
  :data:`RAW_BATCH` → ``medguard_deidentify`` → :data:`DEIDENTIFIED_BATCH` → ``medguard_train`` →
  :data:`MODEL_REGISTRY` → ``medguard_batch_diagnosis`` → :data:`PREDICTIONS`. Each event's ``extra`` carries what
  the run produced (batch ids, the Delta version of each table). A run on missing or empty input fails
  (:class:`~pipeline.errors.ValidationError` naming the folder or zone) before its emitting task, and a failed
  task emits nothing.
- :func:`task_settings`: with ``orchestration.secrets: vault`` the Vault credentials and the lake's storage
  options come from Airflow connections (:data:`VAULT_CONNECTION`, :data:`LAKE_CONNECTION`), which Airflow reads
  from its HashiCorp Vault secrets backend in production; with ``settings`` (the embedded default) from medguard's
  own settings.

Imports stay light (no engine, no Airflow at module level): DAG files import this module at every parse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipeline.errors import OrchestrationError, StorageError, ValidationError
from pipeline.settings import Settings, VaultSettings, get_settings

__all__ = ["AUDITOR_CONNECTION", "DEIDENTIFIED_BATCH", "KEY_ROTATION_CONNECTION", "LAKE_CONNECTION", "MODEL_REGISTRY",
           "PREDICTIONS", "RAW_BATCH", "SOURCES_EXTRACT", "VAULT_CONNECTION", "ConnectionLookup",
           "airflow_connection", "alert_on_failure", "connection_fields", "diagnosed_batch", "extract_inputs",
           "ingested_batch", "landed_extract", "published_batch", "registered_model", "require_tables",
           "require_verified", "table_versions", "task_defaults", "task_settings", "upstream_batches"]

# The Asset URIs of the chain (DAG files build their Assets from these).
SOURCES_EXTRACT = "medguard://sources/extract"
RAW_BATCH = "medguard://raw/batch"
DEIDENTIFIED_BATCH = "medguard://deidentified/batch"
MODEL_REGISTRY = "medguard://models/registry"
PREDICTIONS = "medguard://predictions/diagnoses"

# The Airflow connections read when ``orchestration.secrets`` is ``vault``: the pipeline's AppRole, the lake's
# store, and the AppRoles of the tasks that need more than the pipeline's (each falls back to ``medguard_vault``).
VAULT_CONNECTION = "medguard_vault"
LAKE_CONNECTION = "medguard_lake"
KEY_ROTATION_CONNECTION = "medguard_vault_key_rotation"
AUDITOR_CONNECTION = "medguard_vault_auditor"

ConnectionLookup = Callable[[str], Mapping[str, Any] | None]
"""Returns an Airflow connection's fields (``conn_type``, ``host``, ``port``, ``login``, ``password``,
``extra`` as a dict) by connection id, or None when there is no such connection."""

_LOG = logging.getLogger("medguard.airflow")
# The Airflow AWS connection's extra fields that name a delta-rs storage option.
_AWS_EXTRA = {"endpoint_url": "AWS_ENDPOINT_URL", "region_name": "AWS_REGION"}


# task defaults and the failure alert ------------------------------------------------------------------------------

def task_defaults(owner: str, settings: Settings | None = None) -> dict[str, Any]:
    """A DAG's ``default_args``: its owner, and retries, retry delay, timeout and failure alert from settings.

    Every medguard task is safe to retry (writes are idempotent per batch, rotation resumes), so each DAG takes
    ``orchestration.task_retries``.
    """
    orchestration = (settings or get_settings()).orchestration
    return {
        "owner": owner,
        "retries": orchestration.task_retries,
        "retry_delay": timedelta(seconds=orchestration.retry_delay_seconds),
        "execution_timeout": timedelta(minutes=orchestration.task_timeout_minutes),
        "on_failure_callback": alert_on_failure,
    }


def alert_on_failure(context: Mapping[str, Any]) -> None:
    """A task's failure callback: store an alert naming the DAG, task, run and try, and the error's type.

    The error's message is left out (it could quote a record). A callback that cannot store its alert (the key
    provider is down too) logs why and returns: Airflow has already marked the task failed.
    """
    ti = context.get("ti") or context.get("task_instance")
    if ti is None:
        return
    error = context.get("exception")
    facts = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
             "try_number": int(getattr(ti, "try_number", 0) or 0),
             "error": type(error).__name__ if error is not None else "unknown"}
    try:
        from storage_security.audit.monitoring import record_task_failure

        record_task_failure(task_settings(), **facts)
    except Exception:  # the alert is best effort: Airflow has recorded the failure itself
        _LOG.exception("could not store the failure alert of %s.%s (run %s)", facts["dag_id"], facts["task_id"],
                       facts["run_id"])


# Asset hand-offs ---------------------------------------------------------------------------------------------------

def extract_inputs(triggering_events: Mapping[Any, Sequence[Any]] | None, params: Mapping[str, Any],
                   settings: Settings) -> list[dict[str, str]]:
    """The extract folders an ingest run reads (``sources_dir``, ``tabular_format``), each an existing, non-empty
    folder.

    A run started by :data:`SOURCES_EXTRACT` reads the folder of each triggering event (``extra.sources_dir``, and
    ``extra.tabular_format`` when the event names one), oldest first; a run started by hand reads the
    ``sources_dir`` param (default ``$MEDGUARD_HOME/sources/demo``). ``params["tabular_format"]`` is the default
    format.

    Raises:
        ValidationError: an event names no folder, or a folder does not exist, is not a folder or is empty.
    """
    tabular = str(params.get("tabular_format") or "parquet")
    inputs: list[dict[str, str]] = []
    for asset, events in (triggering_events or {}).items():
        if getattr(asset, "uri", None) != SOURCES_EXTRACT:
            continue
        for event in events:
            extra = getattr(event, "extra", None) or {}
            if not extra.get("sources_dir"):
                raise ValidationError(f"the {SOURCES_EXTRACT} event of run {getattr(event, 'source_run_id', '?')} "
                                      "names no folder (extra.sources_dir)")
            inputs.append({"sources_dir": str(extra["sources_dir"]),
                           "tabular_format": str(extra.get("tabular_format") or tabular)})
    if not inputs:
        folder = params.get("sources_dir") or str(settings.home / "sources" / "demo")
        inputs = [{"sources_dir": str(folder), "tabular_format": tabular}]
    for extract in inputs:
        path = Path(extract["sources_dir"])
        if not path.is_dir():
            raise ValidationError(f"extract folder {path} does not exist or is not a folder (check sources_dir)")
        if not any(path.iterdir()):
            raise ValidationError(f"extract folder {path} is empty: nothing to ingest")
    return list({json.dumps(e, sort_keys=True): e for e in inputs}.values())


def landed_extract(folder: str | Path, formats: Sequence[str]) -> dict[str, str]:
    """The :data:`SOURCES_EXTRACT` event's ``extra`` for an extract written to ``folder``: the folder, and the
    tabular format ingestion should read (parquet when written, else csv, else jsonl)."""
    tabular = next((f for f in ("parquet", "csv", "jsonl") if f in formats), "parquet")
    return {"sources_dir": str(Path(folder).resolve()), "tabular_format": tabular}


def require_tables(settings: Settings, zone: str, tables: Iterable[str] | None = None) -> list[str]:
    """The tables of ``zone`` a run reads, after checking they exist (all of the zone's when ``tables`` is None).

    Raises:
        ValidationError: the zone holds no table, or one of ``tables`` does not exist.
    """
    from pipeline.lake import Lake

    lake = Lake(settings)
    present = lake.tables(zone)
    if not present:
        raise ValidationError(f"the {zone} zone of {settings.lake_root} holds no table: nothing to process")
    wanted = list(tables) if tables is not None else present
    missing = [table for table in wanted if table not in present]
    if missing:
        raise ValidationError(f"{zone} has no table {', '.join(missing)} (it holds {', '.join(present)})")
    return wanted


def table_versions(settings: Settings, zone: str, tables: Iterable[str] | None = None) -> dict[str, int]:
    """The current Delta version of each table of ``zone`` (every table by default): an event's ``extra``."""
    from pipeline.lake import Lake

    lake = Lake(settings)
    names = lake.tables(zone) if tables is None else [t for t in tables if lake.exists(zone, t)]
    return {table: lake.version(zone, table) for table in sorted(names)}


def ingested_batch(loads: Iterable[Iterable[Mapping[str, Any]]], inputs: Sequence[Mapping[str, str]],
                   settings: Settings) -> dict[str, Any]:
    """The :data:`RAW_BATCH` event's ``extra`` from the load tasks' results (per task, one
    ``ingest_extract`` result per folder): the folders, batch ids, rows accepted and raw table versions.

    Raises:
        ValidationError: no input was loaded, or every record was quarantined (raw did not change).
    """
    results = [result for load in loads for result in (load or [])]
    batches = [batch for result in results for batch in result.get("batches", [])]
    accepted: dict[str, int] = {}
    for result in results:
        for table, counts in result.get("tables", {}).items():
            accepted[table] = accepted.get(table, 0) + int(counts.get("accepted", 0))
    folders = [str(extract["sources_dir"]) for extract in inputs]
    where = ", ".join(folders)
    if not batches:
        raise ValidationError(f"no source input was found in {where}: nothing was loaded")
    if not any(accepted.values()):
        raise ValidationError(f"every record of {where} was quarantined: raw did not change")
    loaded = [table for table, rows in accepted.items() if rows]
    return {"sources_dirs": folders, "batches": batches, "accepted": dict(sorted(accepted.items())),
            "tables": table_versions(settings, "raw", loaded)}


def upstream_batches(triggering_events: Mapping[Any, Sequence[Any]] | None, uri: str, key: str) -> list[Any]:
    """``extra[key]`` of every triggering event of Asset ``uri`` (a list value is spread), oldest first."""
    found: list[Any] = []
    for asset, events in (triggering_events or {}).items():
        if getattr(asset, "uri", None) == uri:
            for event in events:
                value = (getattr(event, "extra", None) or {}).get(key)
                found += value if isinstance(value, list) else [value] if value is not None else []
    return found


def published_batch(settings: Settings, published: Mapping[str, Any],
                    triggering_events: Mapping[Any, Sequence[Any]] | None) -> dict[str, Any]:
    """The :data:`DEIDENTIFIED_BATCH` event's ``extra``: the Delta version of each table published, and the raw
    batches (of the :data:`RAW_BATCH` events) that started the run (none when started by hand)."""
    return {"tables": table_versions(settings, "deidentified", published),
            "raw_batches": upstream_batches(triggering_events, RAW_BATCH, "batches")}


def registered_model(registered: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`MODEL_REGISTRY` event's ``extra`` from ``step_register``'s result: the model version, the
    promotion decision and the current model afterwards, and the training tables' Delta versions."""
    promotion = registered.get("promotion") or {}
    return {"model_version": registered.get("model_version"), "decision": promotion.get("decision"),
            "current": promotion.get("current"), "metrics": registered.get("metrics"),
            "tables": registered.get("table_versions")}


def diagnosed_batch(diagnosed: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`PREDICTIONS` event's ``extra`` from ``diagnose``'s result: the model, the table and Delta version
    scored, rows and flags, and the Delta version of ``predictions/diagnoses`` written."""
    return {key: diagnosed.get(key) for key in ("model_version", "table", "table_version", "rows", "flagged",
                                                "predictions_version")}


def require_verified(verified: Mapping[str, Any]) -> Mapping[str, Any]:
    """A backup check's result (``ok``, ``problems``, ``backup_id``), passed on only when the backup verified.

    Raises:
        StorageError: the backup did not verify; the message lists its first problems.
    """
    if not verified.get("ok"):
        problems = "; ".join(str(p) for p in list(verified.get("problems") or [])[:5]) or "no detail"
        raise StorageError(f"backup {verified.get('backup_id', '?')} did not verify: {problems}")
    return verified


# secrets -----------------------------------------------------------------------------------------------------------

def airflow_connection(conn_id: str) -> Mapping[str, Any] | None:
    """The default :data:`ConnectionLookup`: Airflow's own (its secrets backend first, then its database)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return connection_fields(Connection.get(conn_id))
    except AirflowNotFoundException:
        return None


def connection_fields(conn: Any) -> dict[str, Any] | None:
    """The fields :func:`task_settings` reads from an Airflow ``Connection`` (any of Airflow's classes)."""
    if conn is None:
        return None
    return {"conn_type": conn.conn_type, "host": conn.host, "port": conn.port, "login": conn.login,
            "password": conn.password, "schema": conn.schema, "extra": conn.extra_dejson}


def task_settings(settings: Settings | None = None, *, lookup: ConnectionLookup | None = None,
                  vault_connection: str = VAULT_CONNECTION) -> Settings:
    """The settings a task runs with: ``settings`` itself, or with ``orchestration.secrets: vault`` its Vault
    credentials and the lake's storage options taken from Airflow connections.

    ``medguard_vault`` (required): ``host``/``port``, ``conn_type`` ``vaults`` or extra ``use_tls`` for https,
    extra ``auth_type`` ``approle`` (default: ``login`` is the role id, ``password`` the secret id) or ``token``
    (``password`` is the token), extra ``namespace``. ``medguard_lake`` (optional, an AWS connection): ``login``
    and ``password`` the access key pair, extra ``endpoint_url``, ``region_name`` and any upper-case delta-rs
    option (``AWS_ALLOW_HTTP``, ...) as it is.

    A task that needs another AppRole than the pipeline's names its connection (``vault_connection``:
    :data:`KEY_ROTATION_CONNECTION` for the key rotation, :data:`AUDITOR_CONNECTION` for the audit monitor);
    where that connection does not exist, ``medguard_vault`` is used.

    Args:
        settings: the settings to start from; the process-wide ones if omitted.
        lookup: reads a connection by id; :func:`airflow_connection` if omitted.
        vault_connection: the Vault connection this task logs in with.

    Raises:
        OrchestrationError: secrets come from Vault but ``medguard_vault`` is missing or incomplete.
    """
    settings = settings or get_settings()
    if settings.orchestration.secrets == "settings":
        return settings
    lookup = lookup or airflow_connection
    used = vault_connection
    vault = lookup(vault_connection)
    if vault is None and vault_connection != VAULT_CONNECTION:
        used, vault = VAULT_CONNECTION, lookup(VAULT_CONNECTION)
    if vault is None:
        raise OrchestrationError(f"orchestration.secrets is 'vault' but Airflow has no connection {used!r} "
                                 "(check the secrets backend's connections path)")
    update: dict[str, Any] = {"vault": _vault_settings(settings.vault, vault, used)}
    lake = lookup(LAKE_CONNECTION)
    if lake is not None:
        update["storage_options"] = _storage_options(lake)
    return settings.model_copy(update=update)


def _vault_settings(current: VaultSettings, conn: Mapping[str, Any], conn_id: str) -> VaultSettings:
    extra = dict(conn.get("extra") or {})
    if not conn.get("host"):
        raise OrchestrationError(f"Airflow connection {conn_id!r} has no host")
    tls = extra.get("use_tls")
    https = str(tls).lower() in ("true", "1", "yes") if tls is not None else conn.get("conn_type") == "vaults"
    addr = f"{'https' if https else 'http'}://{conn['host']}" + (f":{conn['port']}" if conn.get("port") else "")
    auth = extra.get("auth_type", "approle")
    if auth not in ("approle", "token"):
        raise OrchestrationError(f"Airflow connection {conn_id!r}: auth_type {auth!r} is not approle or token")
    if not conn.get("password") or (auth == "approle" and not conn.get("login")):
        need = "password (the token)" if auth == "token" else "login (role id) and password (secret id)"
        raise OrchestrationError(f"Airflow connection {conn_id!r} ({auth}) needs its {need}")
    fields: dict[str, Any] = {"addr": addr, "auth_method": auth, "namespace": extra.get("namespace")}
    if auth == "token":
        fields["token"] = conn["password"]
    else:
        fields.update(role_id=conn["login"], secret_id=conn["password"])
    try:
        return VaultSettings.model_validate({**current.model_dump(), **fields})
    except ValueError as exc:
        raise OrchestrationError(f"Airflow connection {conn_id!r} is not usable: {exc}") from exc


def _storage_options(conn: Mapping[str, Any]) -> dict[str, SecretStr]:
    extra = dict(conn.get("extra") or {})
    options = {name: _option(value) for name, value in extra.items() if name.isupper()}
    options.update({option: _option(extra[name]) for name, option in _AWS_EXTRA.items() if extra.get(name)})
    if conn.get("login"):
        options["AWS_ACCESS_KEY_ID"] = conn["login"]
    if conn.get("password"):
        options["AWS_SECRET_ACCESS_KEY"] = conn["password"]
    return {name: SecretStr(value) for name, value in options.items()}


def _option(value: Any) -> str:
    # Airflow reads `?AWS_ALLOW_HTTP=true` in a connection URI as JSON: the boolean goes back as delta-rs spells it.
    return str(value).lower() if isinstance(value, bool) else str(value)
