"""Lay a backup back into an empty home (``medguard backup restore``), keeping shredded patients shredded.

Steps: decrypt the manifest (the private key is needed), refuse a target whose lake holds tables (or, without
``force``, a home that is not empty), stream every member to its place while checking its SHA-256 against the
manifest, restore the key store (the keyring file; for the local OpenBao its raft snapshot, see
:func:`storage_security.local_vault.openbao.raft_snapshot_restore`), put the anchored audit head back (under the
restored lake's id), check every table opens at its recorded version, then **re-apply later shreds**, record a
``restore`` audit event and verify the audit chain.

**Shredded stays shredded.** A backup taken before a patient was shredded still holds their wrapped key. The
patients shredded *after* the backup are found in every shred list newer than it: the configured lake's
``_keys/shredded`` and its audit log's ``key_shred`` events (when the target is another home and that lake is
readable), and the manifests of every newer backup in the backup folder. Each of them still in the restored lake
is erased again (:func:`storage_security.keys.lifecycle.erase_patient`: key deleted, derived rows removed, audited);
one the backup never held is noted shredded so no later load brings them back. This is the default; with
``reshred=False`` (``--no-reshred``) nothing is erased and the result lists them under ``not_reshredded``.
Where no newer shred list can be read, the result says so (``shred_sources``): re-run ``medguard keys shred``
from the erasure records kept elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import SettingsError, StorageError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings
from storage_security.backup import _members as members
from storage_security.backup import archive
from storage_security.backup._envelope import BackupIntegrityError

_READ = 1 << 20


@dataclass(frozen=True)
class RestoreResult:
    """What :func:`restore_backup` laid back and re-shredded (counts and pseudonyms, never a value)."""

    backup_id: str
    home: Path
    lake_root: str
    tables: int
    members: int
    bytes: int
    key_store: str
    reshredded: list[str] = field(default_factory=list)
    noted_shredded: list[str] = field(default_factory=list)
    not_reshredded: list[str] = field(default_factory=list)
    shred_sources: list[str] = field(default_factory=list)
    audit: str = ""
    audit_ok: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "home": str(self.home)}


def target_settings(settings: Settings, home: str | Path | None, lake_root: str | None = None) -> Settings:
    """The settings of the home to restore into: ``settings`` itself, or the same with another home.

    Paths under the configured home (lake, keyring, Airflow home) move with it; a lake elsewhere (an object
    store) needs ``lake_root`` so a restore never writes into the configured lake.
    """
    if home is None:
        return settings if lake_root is None else _validated(settings, {"lake_root": lake_root})
    old, new = Path(settings.home), Path(home).expanduser().resolve()
    if new == old:
        return target_settings(settings, None, lake_root)
    data = settings.model_dump()
    data["home"] = new

    def moves(value: Any) -> bool:
        return value is not None and "://" not in str(value) and Path(value).is_relative_to(old)

    if lake_root is not None:
        data["lake_root"] = lake_root
    elif moves(settings.lake_root):
        data["lake_root"] = None
    else:
        raise SettingsError(f"the configured lake {settings.lake_root} is not under the home {old}: give the "
                            "restored lake's root with --lake-root (a restore never writes into the configured lake)")
    if moves(settings.keyring.path):
        data["keyring"]["path"] = None
    if moves(settings.airflow_home):
        data["airflow_home"] = None
    return _validated(settings, data)


def _validated(settings: Settings, data: dict[str, Any]) -> Settings:
    merged = {**settings.model_dump(), **data}
    return Settings.model_validate(merged)


def restore_backup(settings: Settings, backup: str | Path, *, principal: str, home: str | Path | None = None,
                   lake_root: str | None = None, private_key_path: Path | None = None, force: bool = False,
                   reshred: bool = True) -> RestoreResult:
    """Restore a backup into ``home`` (default: the configured home); see the module docstring.

    Raises:
        SettingsError: the target is not empty (its lake holds tables; its home holds files, without ``force``).
        BackupIntegrityError: the backup fails authentication or a member its SHA-256 (nothing is kept then).
        StorageError: a restored table does not open at its recorded version.
    """
    folder = archive.resolve_backup(settings, backup)
    private = archive.private_key(settings, private_key_path)
    manifest = archive.read_manifest(folder, private)
    target = target_settings(settings, home, lake_root)
    made = _check_empty(target, force)
    try:
        with tempfile.TemporaryDirectory(prefix="medguard-restore-") as scratch:
            written, anchor, openbao_files = _lay_back(folder, private, manifest, target, Path(scratch))
            if manifest.get("key_store") == "openbao-raft":
                from storage_security.local_vault import openbao

                openbao.raft_snapshot_restore(target, openbao_files["raft.snap"], init=openbao_files["init.json"],
                                              approle=openbao_files["approle.json"])
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    problems = archive.check_tables(target.lake_root, manifest["tables"], _options(target))
    if problems:
        raise StorageError(f"restored into {target.home}, but: {'; '.join(problems)}")
    return _finish(settings, target, folder, private, manifest, anchor, written, principal=principal,
                   reshred=reshred)


def _options(settings: Settings) -> dict[str, str] | None:
    return {k: v.get_secret_value() for k, v in settings.storage_options.items()} or None


def _check_empty(target: Settings, force: bool) -> list[Path]:
    """Refuse a target that holds a lake (or, without force, anything); returns the folders this restore makes."""
    home = Path(target.home)
    if home.exists() and any(home.iterdir()) and not force:
        raise SettingsError(f"the target home {home} is not empty: restore into an empty home (--home), or pass "
                            "--force to restore into this one (its lake must still be empty)")
    lake = Lake(target)
    held = [f"{zone}.{table}" for zone in [*Zone, "_keys"] for table in lake.tables(zone)]
    if held:
        raise SettingsError(f"the target lake {lake.root} already holds tables ({', '.join(held[:3])}…): a restore "
                            "never writes over a lake; restore into an empty home or lake root")
    made = [] if home.exists() else [home]
    if target.lake_is_local:
        root = Path(str(target.lake_root).removeprefix("file://"))
        if not root.exists() and not root.is_relative_to(home):
            made.append(root)
    return made


def _lay_back(folder: Path, private: Any, manifest: dict[str, Any], target: Settings, scratch: Path
              ) -> tuple[int, bytes | None, dict[str, Path]]:
    """Write every member to its place, each checked against the manifest; (bytes, anchor, OpenBao files)."""
    listed = {m["name"]: m for m in manifest["members"]}
    open_lake = members.lake_writer(target)
    home = Path(target.home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    openbao_files: dict[str, Path] = {}
    anchor: bytes | None = None
    written = 0
    with archive.open_members(folder, private, manifest) as found:
        for name, stream in found:
            if name == archive.MANIFEST_MEMBER:
                continue
            if name not in listed:
                raise BackupIntegrityError(f"member {name}: not in the manifest")
            if name.startswith("lake/"):
                out = open_lake(name.removeprefix("lake/"))
                try:
                    digest = _copy(stream, out)
                finally:
                    out.close()
            elif name == "audit/anchor.json":
                data = stream.read()
                anchor, digest = data, hashlib.sha256(data).hexdigest()
            elif name == "keys/keyring.json":
                digest = _to_file(stream, Path(target.keyring.path))  # type: ignore[arg-type]
            elif name.startswith("openbao/"):
                local = scratch / name.removeprefix("openbao/")
                digest = _to_file(stream, local)
                openbao_files[local.name] = local
            elif name.startswith("home/"):
                digest = _to_file(stream, home / name.removeprefix("home/"))
            else:
                raise BackupIntegrityError(f"member {name}: unknown place (a newer backup format?)")
            if digest != listed[name]["sha256"]:
                raise BackupIntegrityError(f"member {name}: SHA-256 differs from the manifest")
            written += listed[name]["size"]
    return written, anchor, openbao_files


def _copy(stream: BinaryIO, out: Any) -> str:
    digest = hashlib.sha256()
    while block := stream.read(_READ):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()


def _to_file(stream: BinaryIO, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "xb") as out:  # never over an existing file
        digest = _copy(stream, out)
    path.chmod(0o600)
    return digest


def _finish(settings: Settings, target: Settings, folder: Path, private: Any, manifest: dict[str, Any],
            anchor: bytes | None, written: int, *, principal: str, reshred: bool) -> RestoreResult:
    from storage_security.audit._anchor import AnchoredHead
    from storage_security.audit.log import AuditAction, AuditEvent
    from storage_security.keys.lifecycle import erase_patient
    from storage_security.local_vault.openbao import KEY_ROTATION_ROLE
    from storage_security.protected import ProtectedLake

    plake = ProtectedLake.from_settings(target, principal=principal, role=KEY_ROTATION_ROLE)
    if anchor is not None:
        data = json.loads(anchor)
        plake.audit.anchor.write(AnchoredHead(seq=int(data["seq"]), hash=data["hash"], signature=data["signature"],
                                              key_ref=data["key_ref"],
                                              signed_at=datetime.fromisoformat(data["signed_at"])))
    later, sources = current_shred_list(settings, target, folder, private, manifest)
    missing = sorted(later - set(manifest.get("shredded", [])))
    reshredded, noted, left = [], [], []
    reason = f"re-applied after restoring backup {manifest['backup_id']}"
    for pseudonym in missing:
        if not reshred:
            left.append(pseudonym)
        elif plake.patient_keys.find([pseudonym]):
            erase_patient(plake, pseudonym, reason=reason)
            reshredded.append(pseudonym)
        else:
            plake.patient_keys.note_shredded(pseudonym)
            noted.append(pseudonym)
    plake.audit.record(AuditEvent(
        principal=principal, action=AuditAction.RESTORE, purpose="restore", row_count=len(manifest["members"]),
        details={"backup_id": manifest["backup_id"], "tables": len(manifest["tables"]),
                 "members": len(manifest["members"]), "bytes": written, "reshredded": len(reshredded),
                 "noted_shredded": len(noted), "not_reshredded": len(left)}))
    report = plake.audit.verify()
    return RestoreResult(backup_id=manifest["backup_id"], home=Path(target.home), lake_root=str(target.lake_root),
                         tables=len(manifest["tables"]), members=len(manifest["members"]), bytes=written,
                         key_store=manifest.get("key_store", ""), reshredded=reshredded, noted_shredded=noted,
                         not_reshredded=left, shred_sources=sources, audit=report.summary(), audit_ok=report.ok)


def current_shred_list(settings: Settings, target: Settings, folder: Path, private: Any,
                       manifest: dict[str, Any]) -> tuple[set[str], list[str]]:
    """Every pseudonym shredded in a shred list newer than the backup, and a line per place read (or not)."""
    from storage_security.keys.patient_keys import PatientKeyStore

    found: set[str] = set()
    sources: list[str] = []
    if str(settings.lake_root) != str(target.lake_root):
        try:
            lake = Lake(settings)
            listed = PatientKeyStore(lake).shredded()
            events = _shred_events(lake)
            found |= listed | events
            sources.append(f"configured lake: {len(listed)} in _keys/shredded, {len(events)} in key_shred events")
        except Exception as exc:  # the configured lake may be the one that was lost: say so, go on
            sources.append(f"configured lake: unreadable ({type(exc).__name__})")
    created = manifest["created_at"]
    for other in archive.list_backups(settings):
        if other == folder:
            continue
        try:
            theirs = archive.read_manifest(other, private)
        except BackupIntegrityError as exc:
            sources.append(f"backup {other.name}: unreadable ({exc})")
            continue
        if theirs["created_at"] > created:
            found |= set(theirs.get("shredded", []))
            sources.append(f"backup {other.name}: {len(theirs.get('shredded', []))} shredded")
    if not sources:
        sources.append("none: no newer shred list was found; re-run `medguard keys shred` for every erasure "
                       "recorded since the backup was taken")
    return found, sources


def _shred_events(lake: Lake) -> set[str]:
    from storage_security.audit.log import EVENTS_TABLE, AuditAction

    if not lake.exists(Zone.AUDIT, EVENTS_TABLE):
        return set()
    rows = lake.read_arrow(Zone.AUDIT, EVENTS_TABLE, columns=["row_keys"],
                           where=f"action = '{AuditAction.KEY_SHRED.value}'")
    return {key for keys in rows.column("row_keys").to_pylist() for key in (keys or [])}


__all__ = ["RestoreResult", "current_shred_list", "restore_backup", "target_settings"]
