"""Make, check and prune encrypted backups (``medguard backup create|verify``, the backup DAG).

A backup is a folder ``<backup.dir>/<backup id>/``:

- ``archive.mgbak``: a tar stream of every member (:mod:`storage_security.backup._members`) then ``manifest.json``,
  encrypted to the backup public key (:mod:`storage_security.backup._envelope`);
- ``manifest.mgbak``: the manifest alone, encrypted the same way, so a restore can read a backup's shred list
  without decrypting its archive;
- ``SHA256SUMS``: digests of the two encrypted files, for a check without the private key;
- ``verified.json``: written by a successful :func:`verify_backup` (its level and time).

The manifest lists what was backed up (tables and their versions, every member's size and SHA-256, audit counts,
the shred list's pseudonyms), the medguard version, when, and a fingerprint of the settings. It holds no secret,
no cell value and no source file name; it is encrypted anyway.

**Consistency.** Each table is copied as of the version read when its turn comes (later commits are left out whole).
The audit tables' versions and the anchored head are read together under the audit writer's lock, as
``audit verify`` does, so the restored log verifies. The key store is copied after the data zones (a patient
written meanwhile has their key in the backup) under the key store's locks on a local lake, and a shred that
happens while a backup runs makes it fail (run it again): its data zones could hold rows the shred removed.

**Verification levels.** With the private key (``full``): every chunk is authenticated, every member's SHA-256 is
checked against the manifest, and every table opens at its recorded version with every file that version needs.
Without it (``outer``: the machine that makes backups is not meant to hold it): the digests in ``SHA256SUMS``
and the envelope's framing, which finds corruption and truncation, not a deliberate rewrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import SettingsError, StorageError
from pipeline.lake import SYSTEM_ZONE, Lake, Zone
from pipeline.settings import Settings
from storage_security.backup import _envelope as envelope
from storage_security.backup import _members as members
from storage_security.backup._envelope import BackupIntegrityError, ChunkAuthenticationError

ARCHIVE = "archive.mgbak"
MANIFEST = "manifest.mgbak"
SUMS = "SHA256SUMS"
VERIFIED = "verified.json"
MANIFEST_MEMBER = "manifest.json"
_PARTIAL = ".partial"
_READ = 1 << 20


@dataclass(frozen=True)
class BackupResult:
    """What :func:`create_backup` wrote: where, what it holds (counts only) and whether it made a key pair."""

    backup_id: str
    path: Path
    created_at: str
    tables: int
    members: int
    bytes: int
    encrypted_bytes: int
    key_store: str
    audit_events: int
    shredded: int
    private_key_created: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path),
                "private_key_created": str(self.private_key_created) if self.private_key_created else None}


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_backup` found: ``ok`` and one line per problem; ``level`` ``full`` or ``outer``."""

    path: Path
    backup_id: str
    level: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    tables: int = 0
    members: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


# keys and folders -----------------------------------------------------------------------------------

def backup_root(settings: Settings, target: str | Path | None = None) -> Path:
    """Where backups are written: ``target``, else ``backup.dir``, else ``<home>/backups``.

    Raises:
        SettingsError: an object-store URI (not supported yet: write locally and copy with the store's tools).
    """
    where = str(target or settings.backup.dir or Path(settings.home) / "backups")
    if "://" in where and not where.startswith("file://"):
        raise SettingsError(f"backup.dir (MEDGUARD_BACKUP__DIR) {where!r}: backups to an object store are not "
                            "supported yet; write them to a local folder and copy that with the store's own tools")
    return Path(where.removeprefix("file://")).expanduser().resolve()


def key_paths(settings: Settings) -> tuple[Path, Path]:
    """The backup key pair's files: (public, private)."""
    home = Path(settings.home)
    return (Path(settings.backup.public_key or home / "backup-key.pub").expanduser(),
            Path(settings.backup.private_key or home / "backup-key.pem").expanduser())


def ensure_public_key(settings: Settings) -> tuple[Any, Path | None]:
    """The backup public key; a new pair is made when neither file exists (returns the new private key's path)."""
    public, private = key_paths(settings)
    if public.exists():
        return envelope.load_public_key(public), None
    if private.exists():
        raise SettingsError(f"backup public key {public} is missing but a private key is at {private}: restore the "
                            "public key (or move the private key away to make a new pair)")
    envelope.generate_key_pair(public, private)
    return envelope.load_public_key(public), private


def list_backups(settings: Settings, target: str | Path | None = None) -> list[Path]:
    """The finished backups in the backup folder, oldest first (ids sort by creation time)."""
    root = backup_root(settings, target)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(_PARTIAL)
                  and (p / ARCHIVE).exists())


def resolve_backup(settings: Settings, backup: str | Path) -> Path:
    """A backup folder given as a path or as an id in the backup folder."""
    path = Path(backup).expanduser()
    if not path.is_dir() and "/" not in str(backup):
        path = backup_root(settings) / str(backup)
    if not (path / ARCHIVE).is_file() or not (path / MANIFEST).is_file():
        raise StorageError(f"{path} is not a medguard backup (no {ARCHIVE} and {MANIFEST} in it)")
    return path.resolve()


# create ---------------------------------------------------------------------------------------------

def create_backup(settings: Settings, *, principal: str, target: str | None = None) -> BackupResult:
    """Back up the lake, the key store and the audit log into one encrypted backup; audited (``backup`` event).

    Args:
        settings: whose home, lake and key provider to back up.
        principal: who asked (e.g. ``os:alice``, ``svc:airflow``), for the audit event.
        target: a backup folder instead of ``backup.dir``.

    Raises:
        StorageError: a table changed under the backup (a vacuum), or a patient was shredded meanwhile: run again.
        KeyProviderUnavailableError: the key provider (for the audit event, or the local OpenBao snapshot).
    """
    from storage_security.audit.log import AuditAction, AuditEvent, AuditLog
    from storage_security.keys.patient_keys import PatientKeyStore
    from storage_security.keys.providers import provider_from_settings

    public, new_private = ensure_public_key(settings)
    root = backup_root(settings, target)
    created = datetime.now(UTC)
    backup_id = f"mg-{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    lake = Lake(settings)
    provider = provider_from_settings(settings)
    audit = AuditLog(lake, provider)
    shredded_before = PatientKeyStore(lake).shredded()
    partial = root / f"{backup_id}{_PARTIAL}"
    partial.mkdir(parents=True, mode=0o700)
    try:
        with tempfile.TemporaryDirectory(prefix="medguard-backup-") as scratch:
            sources, tables, extra = _collect(settings, lake, audit, Path(scratch))
            shredded_after = PatientKeyStore(lake).shredded()
            if shredded_after != shredded_before:
                raise StorageError("a patient was shredded while the backup ran (its data zones may still hold the "
                                   "patient's rows): run `medguard backup create` again")
            manifest = {"format": 1, "backup_id": backup_id, "created_at": created.isoformat(),
                        "medguard_version": _version(), "settings_fingerprint": _fingerprint(settings),
                        "lake": {"root": "object store" if not settings.lake_is_local else "local",
                                 "engine": lake.engine}, "tables": tables, "shredded": sorted(shredded_after),
                        **extra}
            written = _write_archive(partial / ARCHIVE, public, backup_id, sources, manifest)
            _write_envelope(partial / MANIFEST, public, backup_id, "manifest", members.manifest_json(manifest))
        (partial / SUMS).write_text("".join(f"{_sha256_file(partial / name)}  {name}\n"
                                            for name in (ARCHIVE, MANIFEST)))
        final = root / backup_id
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    encrypted = sum((final / name).stat().st_size for name in (ARCHIVE, MANIFEST))
    result = BackupResult(backup_id=backup_id, path=final, created_at=created.isoformat(), tables=len(tables),
                          members=len(manifest["members"]), bytes=written, encrypted_bytes=encrypted,
                          key_store=extra["key_store"], audit_events=extra["audit"]["events"],
                          shredded=len(shredded_after), private_key_created=new_private)
    audit.record(AuditEvent(principal=principal, action=AuditAction.BACKUP, purpose="backup",
                            row_count=result.members,
                            details={"backup_id": backup_id, "tables": result.tables, "members": result.members,
                                     "bytes": written, "key_store": result.key_store,
                                     "audit_events": result.audit_events}))
    return result


def _collect(settings: Settings, lake: Lake, audit: Any, scratch: Path
             ) -> tuple[list[members.Source], list[dict[str, Any]], dict[str, Any]]:
    """Every member's source, the tables' manifest entries and the rest of the manifest, in a consistent order."""
    from storage_security._locks import exclusive_lock
    from storage_security.audit.log import EVENTS_TABLE
    from storage_security.keys.dek_store import store_lock

    fs, base = members.lake_fs(settings)
    sources: list[members.Source] = []
    tables: list[dict[str, Any]] = []

    def add_table(zone: str, table: str, version: int) -> None:
        found = members.table_sources(fs, base, zone, table, version)
        sources.extend(found)
        tables.append({"zone": zone, "table": table, "version": version, "files": len(found),
                       "bytes": sum(s.size for s in found)})

    # The audit log first: its tables' versions and the anchor read together, under the writer lock.
    lock = Path(settings.home) / "locks" / f"audit-{audit.lake_id}.lock"
    with exclusive_lock(lock, timeout=60.0):
        audit_versions = {t: lake.version(Zone.AUDIT, t) for t in lake.tables(Zone.AUDIT)}
        anchored = audit.anchor.read()
    for table, version in audit_versions.items():
        add_table(Zone.AUDIT.value, table, version)
    events, last_seq = 0, None
    if EVENTS_TABLE in audit_versions:
        seqs = lake.read_arrow(Zone.AUDIT, EVENTS_TABLE, version=audit_versions[EVENTS_TABLE], columns=["seq"])
        events = seqs.num_rows
        last_seq = max(seqs.column("seq").to_pylist(), default=None)
    if anchored is not None:
        data = {"seq": anchored.seq, "hash": anchored.hash, "signature": anchored.signature,
                "key_ref": anchored.key_ref, "signed_at": anchored.signed_at.isoformat(timespec="microseconds")}
        sources.append(members.bytes_source("audit/anchor.json", json.dumps(data, sort_keys=True).encode()))
    for zone in (Zone.RAW, Zone.QUARANTINE, Zone.DEIDENTIFIED, Zone.PREDICTIONS):
        for table in lake.tables(zone):
            add_table(zone.value, table, lake.version(zone, table))
    # The key store last (a key written meanwhile is kept), under its writers' locks: no shred vacuums under us.
    with contextlib.ExitStack() as held:
        for table in ("patient_keys", "deks"):
            held.enter_context(store_lock(lake, table)())
        for table in lake.tables(SYSTEM_ZONE):
            add_table(SYSTEM_ZONE, table, lake.version(SYSTEM_ZONE, table))
        # Read now, while the locks hold: a vacuum after this point cannot take a file from under the copy.
        sources = [_spooled(s, scratch) if s.name.startswith(f"lake/{SYSTEM_ZONE}/") else s for s in sources]
    key_store = _key_store_sources(settings, scratch, sources)
    for folder in members.HOME_FOLDERS:
        sources.extend(members.folder_sources(str(Path(settings.home) / folder), f"home/{folder}"))
    extra = {"audit": {"events": events, "last_seq": last_seq, "anchored_seq": anchored.seq if anchored else None,
                       "anchor": "audit/anchor.json" if anchored else None},
             "key_store": key_store, "key_provider": settings.key_provider}
    return sources, tables, extra


def _spooled(source: members.Source, scratch: Path) -> members.Source:
    """The source copied into the scratch folder (private, removed after the backup)."""
    copy = scratch / "spool" / source.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    with source.open() as stream, open(copy, "wb") as out:
        shutil.copyfileobj(stream, out, _READ)
    return members.file_source(source.name, copy)


def _key_store_sources(settings: Settings, scratch: Path, sources: list[members.Source]) -> str:
    """Add the key store's members; returns what it is (``keyring``, ``openbao-raft``, or an external Vault)."""
    if settings.key_provider == "keyring":
        ring = Path(settings.keyring.path)  # type: ignore[arg-type]
        if ring.exists():
            sources.append(members.bytes_source("keys/keyring.json", ring.read_bytes()))
        return "keyring"
    if settings.vault.addr:
        return "external vault (not in this backup: snapshot it with its own tools)"
    from storage_security.local_vault import openbao

    snapshot = scratch / "raft.snap"
    openbao.raft_snapshot_save(settings, snapshot)
    paths = openbao.local_paths(settings)
    sources.append(members.file_source("openbao/raft.snap", snapshot))
    for name in ("init.json", "approle.json"):
        sources.append(members.bytes_source(f"openbao/{name}", (paths.root / name).read_bytes()))
    return "openbao-raft"


class _Hashing(io.RawIOBase):
    """Reads through a source, counting and hashing what passes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def _write_archive(path: Path, public: Any, backup_id: str, sources: list[members.Source],
                   manifest: dict[str, Any]) -> int:
    listed: list[dict[str, Any]] = []
    manifest["members"] = listed
    with open(path, "wb") as out:
        writer = envelope.EncryptingWriter(out, public, meta={"backup_id": backup_id, "kind": "archive"})
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for source in sources:
                info = tarfile.TarInfo(source.name)
                info.size, info.mode, info.mtime = source.size, 0o600, int(datetime.now(UTC).timestamp())
                start = tar.offset
                try:
                    with source.open() as stream:
                        hashing = _Hashing(stream)
                        tar.addfile(info, hashing)
                except (FileNotFoundError, OSError) as exc:
                    raise StorageError(f"{source.name} changed while the backup ran ({type(exc).__name__}: a vacuum "
                                       "or an overwrite): run `medguard backup create` again") from exc
                listed.append({"name": source.name, "size": source.size, "sha256": hashing.digest.hexdigest(),
                               "offset": start, "end": tar.offset})
            body = members.manifest_json(manifest)
            info = tarfile.TarInfo(MANIFEST_MEMBER)
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
        writer.close()
    return sum(m["size"] for m in listed)


def _write_envelope(path: Path, public: Any, backup_id: str, kind: str, data: bytes) -> None:
    with open(path, "wb") as out:
        writer = envelope.EncryptingWriter(out, public, meta={"backup_id": backup_id, "kind": kind})
        writer.write(data)
        writer.close()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(_READ):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    try:
        return importlib.metadata.version("medguard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fingerprint(settings: Settings) -> str:
    """SHA-256 of the settings as JSON with secrets masked (pydantic writes ``**********``): no secret in it."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


# read -----------------------------------------------------------------------------------------------

def read_manifest(path: Path, private: Any) -> dict[str, Any]:
    """A backup's manifest, decrypted from ``manifest.mgbak``."""
    with open(path / MANIFEST, "rb") as source:
        data = b"".join(envelope.decrypt_chunks(source, private, f"{path.name}/{MANIFEST}"))
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BackupIntegrityError(f"{path.name}/{MANIFEST}: not a manifest") from exc


def private_key(settings: Settings, path: Path | None = None) -> Any:
    """The backup private key from ``path`` or ``backup.private_key`` (default ``<home>/backup-key.pem``)."""
    chosen = Path(path) if path else key_paths(settings)[1]
    if not chosen.exists():
        raise SettingsError(f"the backup private key {chosen} does not exist: give it with --private-key "
                            "(or backup.private_key / MEDGUARD_BACKUP__PRIVATE_KEY)")
    return envelope.load_private_key(chosen)


@contextlib.contextmanager
def open_members(path: Path, private: Any, manifest: dict[str, Any]) -> Iterator[Iterator[tuple[str, BinaryIO]]]:
    """(name, stream) of each archive member in order, authenticated chunk by chunk as they are read.

    A chunk failing authentication raises :class:`BackupIntegrityError` naming the members it held.
    """
    with open(path / ARCHIVE, "rb") as source:
        reader = envelope.DecryptingReader(source, private, f"{path.name}/{ARCHIVE}")

        def walk() -> Iterator[tuple[str, BinaryIO]]:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    stream = tar.extractfile(info)
                    if stream is not None:
                        yield info.name, stream
            reader.drain()

        try:
            yield walk()
        except ChunkAuthenticationError as exc:
            raise BackupIntegrityError(f"{exc}; members in it: {_members_in(exc, manifest)}") from exc
        except tarfile.TarError as exc:
            raise BackupIntegrityError(f"{path.name}/{ARCHIVE}: not a readable archive ({exc})") from exc


def _members_in(exc: ChunkAuthenticationError, manifest: dict[str, Any]) -> str:
    low, high = exc.index * exc.chunk_bytes, (exc.index + 1) * exc.chunk_bytes
    names = [m["name"] for m in manifest.get("members", []) if m["offset"] < high and m["end"] > low]
    return ", ".join(names) or MANIFEST_MEMBER


# verify ---------------------------------------------------------------------------------------------

def verify_backup(settings: Settings, path: str | Path, *, private_key_path: Path | None = None,
                  outer_only: bool = False) -> VerifyResult:
    """Check a backup; ``full`` with the private key (when readable and not ``outer_only``), else ``outer``.

    Never raises for a damaged backup: every problem is one line in ``problems``. A successful check writes
    ``verified.json`` in the backup folder (what :func:`prune_backups` keeps the newest of).
    """
    folder = resolve_backup(settings, path)
    chosen = Path(private_key_path) if private_key_path else key_paths(settings)[1]
    if outer_only or not chosen.exists():
        result = _verify_outer(folder)
    else:
        result = _verify_full(folder, envelope.load_private_key(chosen))
    if result.ok:
        (folder / VERIFIED).write_text(json.dumps({"level": result.level,
                                                   "verified_at": datetime.now(UTC).isoformat()}))
    return result


def _verify_outer(folder: Path) -> VerifyResult:
    problems: list[str] = []
    sums = folder / SUMS
    expected = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            expected[name] = digest
    else:
        problems.append(f"{SUMS}: missing")
    for name in (ARCHIVE, MANIFEST):
        if name in expected and _sha256_file(folder / name) != expected[name]:
            problems.append(f"{name}: SHA-256 differs from {SUMS} (bytes altered or cut)")
        try:
            envelope.scan(folder / name)
        except BackupIntegrityError as exc:
            problems.append(str(exc))
    return VerifyResult(path=folder, backup_id=folder.name, level="outer", ok=not problems, problems=problems)


def _verify_full(folder: Path, private: Any) -> VerifyResult:
    try:
        manifest = read_manifest(folder, private)
    except BackupIntegrityError as exc:
        return VerifyResult(path=folder, backup_id=folder.name, level="full", ok=False, problems=[str(exc)])
    listed = {m["name"]: m for m in manifest["members"]}
    problems: list[str] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="medguard-verify-") as scratch:
        try:
            with open_members(folder, private, manifest) as found:
                for name, stream in found:
                    if name == MANIFEST_MEMBER:
                        inner = json.loads(stream.read())
                        if inner.get("backup_id") != manifest["backup_id"] or inner.get("members") != \
                                manifest["members"]:
                            problems.append(f"{MANIFEST_MEMBER}: differs from {MANIFEST}")
                        continue
                    seen.add(name)
                    digest = _copy(stream, Path(scratch) / name if name.startswith("lake/") else None)
                    if name not in listed:
                        problems.append(f"member {name}: not in the manifest")
                    elif digest != listed[name]["sha256"]:
                        problems.append(f"member {name}: SHA-256 differs from the manifest")
        except BackupIntegrityError as exc:
            problems.append(str(exc))
            return VerifyResult(path=folder, backup_id=folder.name, level="full", ok=False, problems=problems,
                                tables=len(manifest["tables"]), members=len(listed))
        problems += [f"member {name}: listed in the manifest, missing from the archive"
                     for name in sorted(set(listed) - seen)]
        problems += check_tables(Path(scratch) / "lake", manifest["tables"])
    return VerifyResult(path=folder, backup_id=folder.name, level="full", ok=not problems, problems=problems,
                        tables=len(manifest["tables"]), members=len(listed))


def _copy(stream: BinaryIO, dest: Path | None) -> str:
    digest = hashlib.sha256()
    out = None
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(dest, "wb")  # noqa: SIM115 - closed below
    try:
        while block := stream.read(_READ):
            digest.update(block)
            if out is not None:
                out.write(block)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


def check_tables(lake_root: Path | str, tables: list[dict[str, Any]], storage_options: dict[str, str] | None = None
                 ) -> list[str]:
    """One line per table that does not open at its recorded version, or lacks a file that version reads."""
    from deltalake import DeltaTable

    problems = []
    for entry in tables:
        where = f"{entry['zone']}.{entry['table']}"
        uri = f"{str(lake_root).rstrip('/')}/{entry['zone']}/{entry['table']}"
        try:
            table = DeltaTable(uri, storage_options=storage_options)
            if table.version() != entry["version"]:
                problems.append(f"table {where}: at version {table.version()}, the manifest says {entry['version']}")
                continue
            if "://" not in uri:
                missing = [u for u in table.file_uris() if not os.path.exists(u.removeprefix("file://"))]
                if missing:
                    problems.append(f"table {where}: {len(missing)} data file(s) of version {entry['version']} "
                                    "missing")
        except Exception as exc:  # any failure to open is this table's problem
            problems.append(f"table {where}: does not open at version {entry['version']} ({type(exc).__name__})")
    return problems


# retention ------------------------------------------------------------------------------------------

def prune_backups(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Remove backups older than ``backup.retention_days``, never the newest verified one; returns removed ids.

    Unfinished ``.partial`` folders older than a day (a crashed ``create``) are removed too.
    """
    root = backup_root(settings)
    if not root.is_dir():
        return []
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=settings.backup.retention_days)
    found = list_backups(settings)
    verified = [p for p in found if (p / VERIFIED).exists()]
    keep = verified[-1] if verified else None
    removed = []
    for path in found:
        if path != keep and _created(path) < cutoff:
            shutil.rmtree(path)
            removed.append(path.name)
    for path in root.glob(f"*{_PARTIAL}"):
        if datetime.fromtimestamp(path.stat().st_mtime, UTC) < now - timedelta(days=1):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _created(path: Path) -> datetime:
    """When a backup was made, from its id (``mg-YYYYmmddTHHMMSSZ-…``), else the folder's time."""
    try:
        return datetime.strptime(path.name.split("-")[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
