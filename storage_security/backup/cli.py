"""``medguard backup create|verify|restore|list|prune``: the command line over :mod:`storage_security.backup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

backup_app = typer.Typer(help="Encrypted backups of the lake, key store and audit log: create, verify, restore.",
                         no_args_is_help=True)

PrivateKeyOption = Annotated[Path | None, typer.Option(
    "--private-key", help="The backup private key (PEM); default backup.private_key or <home>/backup-key.pem.")]


def _operator() -> str:
    import getpass

    return f"os:{getpass.getuser()}"


@backup_app.command("create")
def backup_create(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Option("--target", help="A backup folder instead of backup.dir.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Back up every zone's Delta tables (with their logs), the key store and the audit log, encrypted to the
    backup public key (a key pair is made on first use: move its private key offline)."""
    from storage_security.backup.archive import create_backup

    result = create_backup(settings_from(ctx), principal=_operator(), target=target)
    line = (f"backup {result.backup_id}: {result.tables} tables, {result.members} files, {result.bytes:,} bytes "
            f"({result.encrypted_bytes:,} encrypted), key store {result.key_store}, {result.audit_events:,} audit "
            f"events, at {result.path}")
    if result.private_key_created:
        line += (f"\nnew backup key pair: the private key is {result.private_key_created}; move it offline now "
                 "(restores need it; this machine only needs the public key)")
    emit(result.to_dict(), as_json, line)


@backup_app.command("verify")
def backup_verify(
    ctx: typer.Context,
    backup: Annotated[str, typer.Argument(help="The backup folder, or its id in backup.dir.")],
    private_key: PrivateKeyOption = None,
    outer_only: Annotated[bool, typer.Option(
        "--outer-only", help="Check only the digests and framing of the encrypted files (no private key).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Decrypt and check every member's SHA-256 and every table's version (with the private key), or without it
    the encrypted files' digests and framing; one line per problem, exit 1 on any."""
    from storage_security.backup._envelope import BackupIntegrityError
    from storage_security.backup.archive import verify_backup

    result = verify_backup(settings_from(ctx), backup, private_key_path=private_key, outer_only=outer_only)
    if result.ok:
        what = (f"{result.members} members, {result.tables} tables" if result.level == "full"
                else "digests and framing only (no private key)")
        emit(result.to_dict(), as_json, f"backup {result.backup_id} verified ({result.level}): {what}")
        return
    if as_json:
        emit(result.to_dict(), as_json, "")
    for problem in result.problems:
        typer.echo(f"medguard: backup {result.backup_id}: {problem}", err=True)
    raise BackupIntegrityError(f"backup {result.backup_id} failed verification ({len(result.problems)} problem(s))")


@backup_app.command("restore")
def backup_restore(
    ctx: typer.Context,
    backup: Annotated[str, typer.Argument(help="The backup folder, or its id in backup.dir.")],
    home: Annotated[Path | None, typer.Option("--home", help="An empty home to restore into (default: the "
                                                             "configured home, which must then be empty).")] = None,
    lake_root: Annotated[str | None, typer.Option(
        "--lake-root", help="The restored lake's root, when the configured lake is not under the home.")] = None,
    private_key: PrivateKeyOption = None,
    force: Annotated[bool, typer.Option("--force", help="Restore into a home that holds files (its lake must "
                                                        "still hold no table).")] = False,
    reshred: Annotated[bool, typer.Option(
        "--reshred/--no-reshred", help="Erase again every patient shredded after the backup was taken (default).",
    )] = True,
    as_json: JsonOption = False,
) -> None:
    """Lay the lake, key store and audit log back into an empty home, re-shred patients shredded since the backup,
    and verify the audit chain."""
    from pipeline.errors import AuditIntegrityError
    from storage_security.backup.restore import restore_backup

    result = restore_backup(settings_from(ctx), backup, principal=_operator(), home=home, lake_root=lake_root,
                            private_key_path=private_key, force=force, reshred=reshred)
    line = (f"restored backup {result.backup_id} into {result.home}: {result.tables} tables, {result.members} files; "
            f"re-shredded {len(result.reshredded)}, noted {len(result.noted_shredded)} shredded"
            + (f", NOT re-shredded {len(result.not_reshredded)} (--no-reshred)" if result.not_reshredded else "")
            + f" (shred lists: {'; '.join(result.shred_sources)}); {result.audit}")
    if as_json or result.audit_ok:
        emit(result.to_dict(), as_json, line)
    if not result.audit_ok:
        raise AuditIntegrityError(f"restored, but {result.audit}")


@backup_app.command("list")
def backup_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The backups in backup.dir, oldest first, and whether each was verified."""
    from storage_security.backup.archive import VERIFIED, list_backups

    found = [{"backup_id": p.name, "path": str(p), "verified": (p / VERIFIED).exists()}
             for p in list_backups(settings_from(ctx))]
    emit(found, as_json, "\n".join(f"{b['backup_id']}  {'verified' if b['verified'] else 'not verified'}"
                                   for b in found) or "no backups")


@backup_app.command("prune")
def backup_prune(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Remove backups older than backup.retention_days (never the newest verified one)."""
    from storage_security.backup.archive import prune_backups

    removed = prune_backups(settings_from(ctx))
    emit({"removed": removed}, as_json, f"removed {len(removed)} backup(s)" + (f": {', '.join(removed)}"
                                                                                if removed else ""))
