"""What a backup holds, as named members: the lake's tables (with their Delta logs), home files, key store files.

Member names are the archive's layout and the manifest's keys:

- ``lake/<zone>/<table>/…``: every file of every Delta table of every zone and of ``_keys``, the ``_delta_log``
  cut at the version recorded for that table (a commit that lands while the backup runs is left out whole);
- ``audit/anchor.json``: the audit log's anchored head (it lives outside the lake: a file or a Vault KV secret);
- ``keys/keyring.json``: the keyring file (keyring provider; its master key is never in a backup);
- ``openbao/raft.snap``, ``openbao/init.json``, ``openbao/approle.json``: the local OpenBao's raft snapshot and
  the unseal key and AppRole secrets that open it;
- ``home/<folder>/…``: the home's own state kept beside the lake (:data:`HOME_FOLDERS`).

The lake is read through a ``pyarrow`` file system: the local one for a directory, delta-rs's own object store
(``deltalake.fs.DeltaStorageHandler``, with ``settings.storage_options``) for ``s3://``, ``gs://``, ``abfs://``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pyarrow import fs as pafs

from pipeline.settings import Settings

# Home folders backed up with the lake: the model registry, principals/endpoints/tokens, accepted contracts.
HOME_FOLDERS = ("models", "access", "contracts")
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint(\.\d+\.\d+)?\.parquet)$")


@dataclass(frozen=True)
class Source:
    """One member to write: its name in the archive, its size, and how to open it for reading."""

    name: str
    size: int
    open: Callable[[], BinaryIO]


def lake_fs(settings: Settings) -> tuple[pafs.FileSystem, str]:
    """The file system holding the lake and the lake root's path inside it."""
    root = str(settings.lake_root).rstrip("/")
    if settings.lake_is_local:
        return pafs.LocalFileSystem(), root.removeprefix("file://")
    from deltalake.fs import DeltaStorageHandler

    options = {k: v.get_secret_value() for k, v in settings.storage_options.items()} or None
    return pafs.PyFileSystem(DeltaStorageHandler(root, options)), ""


def lake_writer(settings: Settings) -> Callable[[str], Any]:
    """Opens a file of the lake (a path relative to its root) for writing; parents are made as needed."""
    root = str(settings.lake_root).rstrip("/")
    if settings.lake_is_local:
        local, base = pafs.LocalFileSystem(), root.removeprefix("file://")

        def open_local(rel: str) -> Any:
            path = join(base, rel)
            local.create_dir(path.rsplit("/", 1)[0], recursive=True)
            return local.open_output_stream(path)

        return open_local
    from deltalake.fs import DeltaStorageHandler

    options = {k: v.get_secret_value() for k, v in settings.storage_options.items()} or None
    handler = DeltaStorageHandler(root, options)
    # deltalake 1.6's open_output_stream wraps its object-store stream in a pyarrow PythonFile, which hands it
    # pyarrow Buffers that the stream refuses (it takes bytes only): write to the stream underneath instead.
    raw = getattr(handler, "_handler", None)
    if raw is None:
        return handler.open_output_stream
    return lambda rel: raw.open_output_stream(rel, None)


def join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base else rel


def table_sources(fs: pafs.FileSystem, base: str, zone: str, table: str, version: int) -> list[Source]:
    """The files of one table as of ``version``: data files, and log entries up to that version."""
    folder = join(base, f"{zone}/{table}")
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    out: list[Source] = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(folder):].lstrip("/")
        if not _wanted(fs, info.path, rel, version):
            continue
        out.append(Source(f"lake/{zone}/{table}/{rel}", int(info.size or 0),
                          lambda path=info.path: fs.open_input_stream(path)))
    return out


def _wanted(fs: pafs.FileSystem, path: str, rel: str, version: int) -> bool:
    if rel.endswith(".tmp") or "/." in f"/{rel}":
        return False  # uncommitted temporaries and hidden files (locks)
    if not rel.startswith("_delta_log/"):
        return True
    name = rel.removeprefix("_delta_log/")
    entry = _LOG_ENTRY.match(name)
    if entry:
        return int(entry.group(1)) <= version
    if name == "_last_checkpoint":
        with fs.open_input_stream(path) as stream:
            try:
                return int(json.loads(stream.read())["version"]) <= version
            except (ValueError, KeyError, TypeError):
                return False
    return False


def folder_sources(folder: str, prefix: str) -> list[Source]:
    """Every file under a local folder, as members ``<prefix>/<relative path>``; [] when it does not exist."""
    local = pafs.LocalFileSystem()
    infos = local.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return [Source(f"{prefix}/{info.path[len(folder):].lstrip('/')}", int(info.size or 0),
                   lambda path=info.path: local.open_input_stream(path))
            for info in sorted(infos, key=lambda i: i.path) if info.type == pafs.FileType.File]


def file_source(name: str, path: Path) -> Source:
    return Source(name, path.stat().st_size, lambda: open(path, "rb"))


def bytes_source(name: str, data: bytes) -> Source:
    import io

    return Source(name, len(data), lambda: io.BytesIO(data))


def manifest_json(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
