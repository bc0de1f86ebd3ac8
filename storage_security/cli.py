"""Command groups of the storage & security layer: ``medguard vault``, ``medguard keys``, ``medguard audit``.

Registered with the spine's CLI through the ``medguard.commands`` entry points (see pyproject.toml). Heavy
imports stay inside the commands so that ``medguard --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.keys.base import KeyProvider

vault_app = typer.Typer(help="The local OpenBao server of the embedded default (Vault's API).", no_args_is_help=True)
keys_app = typer.Typer(help="Key lifecycle: init, rotate, re-encrypt, shred, status.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log: verify the chain, list alerts.", no_args_is_help=True)


def _remote_note(settings: Settings) -> str:
    if settings.vault.addr:
        return f" (note: vault.addr is {settings.vault.addr}, so the pipeline uses that Vault, not this one)"
    return ""


@vault_app.command("up")
def vault_up(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1024, max=65534, help="API port; the next port is the cluster port. "
                     "Default: vault.local_port (MEDGUARD_VAULT__LOCAL_PORT, 8201)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start the local OpenBao: initialise once, unseal, Transit + KEK, policies, AppRole. Running already is fine."""
    from storage_security.local_vault import openbao

    settings = settings_from(ctx)
    result = openbao.up(settings, port=port)
    first = ", initialised now: unseal key and root token in openbao/init.json (mode 0600)"
    emit(
        result,
        as_json,
        f"OpenBao {result['status']} at {result['addr']} (pid {result['pid']}, unsealed"
        f"{first if result['initialized_now'] else ''}){_remote_note(settings)}",
    )


@vault_app.command("down")
def vault_down(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Stop the local OpenBao; its data stays and the next `vault up` unseals it again."""
    from storage_security.local_vault import openbao

    result = openbao.down(settings_from(ctx))
    where = f" at {result['addr']} (pid {result['pid']})" if result["addr"] else ""
    emit(result, as_json, f"OpenBao {result['status']}{where}")


@vault_app.command("status")
def vault_status(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Whether the local OpenBao runs, its address, and whether it is sealed.

    Exits 0 only when it runs unsealed; not running, unreachable or sealed exits 1 (the status is still printed).
    """
    from pipeline.errors import KeyProviderUnavailableError
    from storage_security.local_vault import openbao

    settings = settings_from(ctx)
    result = openbao.status(settings)
    if result["running"]:
        line = (f"OpenBao {result['status']} at {result['addr']} (pid {result['pid']}, version {result['version']})"
                f"{_remote_note(settings)}")
    else:
        initialised = "initialised" if result["initialized"] else "never initialised"
        line = (f"OpenBao not running ({initialised}; home {result['home']}); start it with `medguard vault up`"
                f"{_remote_note(settings)}")
    if result["status"] == "unsealed":
        emit(result, as_json, line)
        return
    if as_json:
        emit(result, as_json, line)
    raise KeyProviderUnavailableError(line)


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Check the audit hash chain and its signed heads; exit non-zero naming the first bad event."""
    from pipeline.errors import AuditIntegrityError
    from pipeline.lake import Lake
    from storage_security.audit.log import AuditLog
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault.openbao import AUDITOR_ROLE

    settings = settings_from(ctx)
    # Verifying only unwraps the audit signing key: on the local OpenBao, log in with the auditor's AppRole.
    report = AuditLog(Lake(settings), provider_from_settings(settings, role=AUDITOR_ROLE)).verify()
    if as_json or report.ok:
        emit(report.to_dict(), as_json, report.summary())
    if not report.ok:
        raise AuditIntegrityError(report.summary())



def _keyring_init(settings: Settings) -> tuple[KeyProvider, dict[str, object]]:
    """Open or create the keyring file; a new master key goes to keyring.master_key_file or is shown once."""
    import os

    from storage_security.keys.keyring import (
        LocalKeyring,
        encode_master_key,
        master_key_from_settings,
        write_master_key_file,
    )

    path = settings.keyring.path
    assert path is not None  # settings fill it in: <home>/keyring.json
    result: dict[str, object] = {"provider": "keyring", "path": str(path), "created": not path.exists()}
    key_file = settings.keyring.master_key_file
    if path.exists():
        return LocalKeyring.from_settings(settings), result
    if os.environ.get(settings.keyring.master_key_env):
        master, source = master_key_from_settings(settings), f"${settings.keyring.master_key_env}"
    elif key_file is not None and key_file.exists():
        master, source = master_key_from_settings(settings), str(key_file)
    elif key_file is not None:
        master, source = LocalKeyring.generate_master_key(), f"{key_file} (new, mode 0600)"
        write_master_key_file(key_file, master)
    else:
        master, source = LocalKeyring.generate_master_key(), "generated (shown once, stored nowhere)"
        result["master_key"] = encode_master_key(master)
    result["master_key_source"] = source
    return LocalKeyring.init(path, master), result


@keys_app.command("init")
def keys_init(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Create the KEK (vault.kek_name); running again is fine.

    With key_provider=keyring this first creates the keyring file (mode 0600, keyring.path). Its master key
    comes from $MEDGUARD_KEYRING_MASTER_KEY or keyring.master_key_file when set (a missing key file is created,
    mode 0600); otherwise a new master key is printed ONCE and stored nowhere: keep it in a secret store and
    set MEDGUARD_KEYRING_MASTER_KEY to it. With key_provider=vault it creates the Transit key if missing.
    """
    settings = settings_from(ctx)
    kek = settings.vault.kek_name
    if settings.key_provider == "keyring":
        provider, result = _keyring_init(settings)
    else:
        from storage_security.keys.providers import provider_from_settings
        from storage_security.local_vault.openbao import KEY_ROTATION_ROLE

        provider, result = provider_from_settings(settings, role=KEY_ROTATION_ROLE), {"provider": "vault"}
    existed = provider.key_exists(kek)
    provider.ensure_key(kek)
    latest = provider.versions(kek).latest
    if not existed:
        from pipeline.lake import Lake
        from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision

        AuditLog(Lake(settings), provider).record(AuditEvent(
            principal=_operator(), action=AuditAction.KEY_CREATE, decision=Decision.ALLOW, purpose="key-setup",
            details={"kek": kek, "version": latest, "provider": provider.name}))
    result.update(kek=kek, kek_created=not existed, kek_latest_version=latest)
    line = f"KEK {kek!r} {'exists' if existed else 'created'} (latest version {latest}) in {result['provider']}"
    if result.get("created"):
        line = f"keyring created at {result['path']}; {line}"
    if "master_key" in result:
        line += (f"\nmaster key (shown once, stored nowhere; keep it in a secret store):\n{result['master_key']}\n"
                 f"then: export {settings.keyring.master_key_env}=<that key>")
    emit(result, as_json, line)


def _lifecycle_lake(settings: Settings, principal: str):
    """The protected lake as the key-rotation role (on the local OpenBao) for lifecycle commands."""
    from storage_security.local_vault.openbao import KEY_ROTATION_ROLE
    from storage_security.protected import ProtectedLake

    return ProtectedLake.from_settings(settings, principal=principal, role=KEY_ROTATION_ROLE)


def _operator() -> str:
    import getpass

    return f"os:{getpass.getuser()}"


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Rotate the data KEK and the audit KEK, rewrap every stored DEK, then retire the old KEK versions.

    No data is touched. If a rotation was interrupted, running this again finishes it instead of rotating again.
    """
    from storage_security.keys.lifecycle import rotate_with_settings

    report = rotate_with_settings(settings_from(ctx), principal=_operator())
    done = ", ".join(f"{k} → v{v}" for k, v in report.rotated.items()) or "none (finished an earlier rotation)"
    emit(report.to_dict(), as_json,
               f"rotated: {done}; rewrapped {report.rewrapped} DEKs ({report.already_current} already current), "
               f"{report.audit_keys_rewrapped} audit signing keys; decrypts from "
               + (", ".join(f"{k} v{v}" for k, v in report.min_decryption_version.items()) or "unchanged"))


@keys_app.command("reencrypt")
def keys_reencrypt(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="ZONE.TABLE, or TABLE for the raw zone.")],
    as_json: JsonOption = False,
) -> None:
    """Move a table's cells to fresh DEKs (a new table version) and retire its old DEKs."""
    from storage_security.keys.lifecycle import reencrypt_table

    zone, _, name = table.rpartition(".")
    settings = settings_from(ctx)
    report = reencrypt_table(_lifecycle_lake(settings, _operator()), zone or "raw", name)
    emit(report.to_dict(), as_json,
               f"{report.zone}.{report.table}: {report.rows} rows re-encrypted into version {report.version}; "
               f"{report.retired_deks} old DEKs retired")


@keys_app.command("shred")
def keys_shred(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="The patient id (as in the source) or its pseudonym (ps1_…).")],
    reason: Annotated[str, typer.Option("--reason", help="Why: the erasure request's reference (audited).")],
    as_json: JsonOption = False,
) -> None:
    """Erase a patient: delete their wrapped data key for good, so no version of any table decrypts their cells;
    drop the batch-keyed quarantine payloads that name them (re-keying the rest), and remove their rows from the
    deidentified and predictions zones (vacuumed) and the training snapshots. Irreversible and audited; running it
    again is harmless (and re-applies it after a backup restore).
    Fails, noting nothing, when no data key of that patient is stored and they were never shredded (a typo)."""
    from storage_security.keys.lifecycle import shred_patient

    settings = settings_from(ctx)
    result = shred_patient(_lifecycle_lake(settings, _operator()), patient, reason=reason)
    quarantine = result["quarantine"]
    emit(result, as_json, f"shredded patient {result['patient_pseudonym']}: {result['deks_dropped']} wrapped data "
               f"keys deleted from {result['key_store']} (vacuumed: no history left); quarantine: "
               f"{quarantine['scanned']} batch-keyed payloads scanned, {quarantine['matched']} dropped, "
               f"{quarantine['rekeyed']} re-keyed; rows removed: "
               f"{sum(result['tables'].values()) + sum(result['snapshots'].values())} "
               f"({', '.join(sorted([*result['tables'], *result['snapshots']])) or 'none'})")


@keys_app.command("migrate")
def keys_migrate(
    ctx: typer.Context,
    delete_patient_keks: Annotated[bool, typer.Option(
        "--delete-patient-keks", help="Then delete each migrated patient's own KEK from the key provider.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Move a lake written with one KEK per patient to one data KEK: every patient's data keys are wrapped again
    under it into the patient key store (no cell changes). Resumable and audited: run it again after a failure."""
    from storage_security.keys.lifecycle import migrate_patient_keys

    settings = settings_from(ctx)
    report = migrate_patient_keys(_lifecycle_lake(settings, _operator()), delete_patient_keks=delete_patient_keks)
    emit(report.to_dict(), as_json,
         f"{report.patients} patients: {report.deks_moved} data keys moved under {settings.vault.kek_name!r} "
         f"({report.already_moved} already moved, {report.unreadable} unreadable), "
         f"{report.patient_keks_deleted} patient KEKs deleted")


@keys_app.command("status")
def keys_status(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Key provider health, the KEK's versions, and how many DEKs the lake's key stores hold (per scope); and which
    tables still hold rows of batches ingested before digests were keyed (unkeyed ``sha256:`` keys, file names).

    Exits 0 only when the provider is healthy (reachable, unsealed) and the KEK exists; otherwise 1.
    """
    from ingestion.batch import legacy_digests
    from pipeline.errors import KeyProviderUnavailableError
    from pipeline.lake import Lake
    from storage_security.keys.dek_store import DekStore
    from storage_security.keys.patient_keys import PatientKeyStore
    from storage_security.keys.providers import provider_from_settings

    settings = settings_from(ctx)
    try:
        provider = provider_from_settings(settings)
        name, health = provider.name, provider.health()
    except KeyProviderUnavailableError as exc:  # a server down is a status to report, in --json too
        name, health = settings.key_provider, {"ok": False, "error": str(exc)}
    if not health.get("ok", True) or health.get("sealed"):
        reason = health.get("error", "sealed" if health.get("sealed") else "not healthy")
        if as_json:
            emit({"provider": name, "health": health, "healthy": False}, True, "")
        raise KeyProviderUnavailableError(f"key provider {name} is unhealthy: {reason}")
    kek = settings.vault.kek_name
    kek_info: dict[str, object] = {"name": kek, "exists": provider.key_exists(kek)}
    latest: dict[str, int] = {}
    if kek_info["exists"]:
        versions = provider.versions(kek)
        latest[kek] = versions.latest
        kek_info.update(latest=versions.latest, min_decryption_version=versions.min_decryption_version,
                        versions=list(versions.versions))
        kek_text = f"latest v{versions.latest}, decrypts from v{versions.min_decryption_version}"
    else:
        kek_text = "missing: run `medguard keys init`"
    deks = DekStore.from_settings(settings).summary(latest)
    patient_keys = PatientKeyStore(Lake(settings)).summary(latest)
    by_scope = ", ".join(f"{scope} {count}" for scope, count in deks["by_scope"].items())
    legacy = legacy_digests(Lake(settings))
    legacy_text = ("" if not legacy else
                   f"\nunkeyed digests: {len(legacy)} tables hold rows of batches ingested before digests were keyed "
                   f"(batch id b<24 hex>): " + ", ".join(f"{t} {n:,} rows" for t, n in legacy.items())
                   + "; re-ingest their sources and drop those batches (README: unkeyed digests)")
    emit(
        {"provider": provider.name, "health": health, "kek": kek_info, "deks": deks, "patient_keys": patient_keys,
         "unkeyed_digests": legacy, "healthy": bool(kek_info["exists"])},
        as_json,
        f"{provider.name}: healthy; KEK {kek!r} {kek_text}\n"
        f"patient DEKs: {patient_keys['deks']} ({patient_keys['patients']} patients) under the data KEK, "
        f"{patient_keys['stale']} wrapped under an older version\n"
        f"other DEKs: {deks['deks']} ({by_scope}; {deks['patients']} patients not yet migrated, "
        f"{deks['retired']} retired, {deks.get('stale', 0)} wrapped under an older KEK version)" + legacy_text,
    )
    if not kek_info["exists"]:
        raise KeyProviderUnavailableError(f"the KEK {kek!r} is missing from {provider.name}: run `medguard keys init`")


@audit_app.command("alerts")
def audit_alerts(
    ctx: typer.Context,
    severity: Annotated[
        str | None,
        typer.Option("--severity", help="Only alerts at least this severe: low, medium, high or critical."),
    ] = None,
    run: Annotated[bool, typer.Option("--run", help="Run the detectors over the audit log first.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List activity alerts (bulk reads, off-hours access, new endpoints, denials, break glass, many facilities)."""
    from pipeline.lake import Lake
    from storage_security.audit.monitoring import SEVERITIES, ActivityMonitor, Thresholds

    settings = settings_from(ctx)
    if severity is not None and severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}")
    if run:
        ActivityMonitor.from_settings(settings).run()
    # Listing reads only the alerts table: no key provider needed.
    rows = ActivityMonitor(Lake(settings), None, Thresholds.from_settings(settings.access)).alerts(severity=severity)
    lines = [f"{row['event_time']:%Y-%m-%d %H:%M} [{row['severity']}] {row['detector']}: {row['summary']}"
             for row in rows]
    emit({"alerts": rows, "count": len(rows)}, as_json, "\n".join(lines) or "no alerts")
