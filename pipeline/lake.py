"""The Delta lake adapter: every read and write of a zone's table goes through :class:`Lake`.

Tables live at ``<lake root>/<zone>/<table>``; the root is a local directory or an object-store URI
(``s3://``, ``gs://``, ``abfs://``…, reached with ``settings.storage_options``). delta-rs is the engine by default;
with ``lake_engine=spark`` reads and writes go through delta-spark (and start-up fails if Delta's jars are missing).
Every commit carries who and why (:class:`CommitInfo`) in its metadata. Destructive operations are explicit and
keyword-only. Each read and write of a zone is reported to the lake's access hook (:class:`LakeAccess`), the one
place where an audit trail of table access is fed from.
"""

from __future__ import annotations

import copy
import getpass
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pandas as pd
import pyarrow as pa

from pipeline._arrow import is_spark_dataframe, to_arrow
from pipeline._delta_rs import DeltaRsEngine
from pipeline._delta_spark import hadoop_uri
from pipeline.errors import SettingsError, StorageError
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class Zone(StrEnum):
    """The lake's zones (see DESIGN.md "Lake zones")."""

    RAW = "raw"
    QUARANTINE = "quarantine"
    DEIDENTIFIED = "deidentified"
    PREDICTIONS = "predictions"
    AUDIT = "audit"


# Key metadata (wrapped data keys, table manifests, shred records) lives beside the zones, never in one: no zone
# listing, policy or analyst query reaches it, but it is read and written through Lake like any table (every
# method takes it as the zone, on either engine). Its accesses are not reported to the access hook: key operations
# are audited by the key code itself.
SYSTEM_ZONE = "_keys"

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class CommitInfo:
    """Who wrote a commit and why; stored in the Delta commit's metadata."""

    principal: str = field(default_factory=lambda: f"os:{getpass.getuser()}")
    purpose: str = "unspecified"
    dag_run: str | None = None
    batch_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def metadata(self, operation: str) -> dict[str, str]:
        meta = {f"medguard.{k}": str(v) for k, v in asdict(self).items() if v is not None and k != "extra"}
        meta.update({f"medguard.{k}": v for k, v in self.extra.items()})
        meta["medguard.operation"] = operation
        return meta


@dataclass(frozen=True)
class MergeResult:
    """Rows a merge inserted and updated, and the table version it produced."""

    inserted: int
    updated: int
    version: int


@dataclass(frozen=True)
class LakeAccess:
    """One read or write of a zone's table, as :class:`Lake` reports it to its access hook.

    Attributes:
        action: ``read``, ``write`` (append, overwrite, merge) or ``delete`` (delete, vacuum).
        operation: the Lake method: ``read``, ``append``, ``overwrite``, ``merge``, ``delete`` or ``vacuum``.
        zone: the zone's name (never :data:`SYSTEM_ZONE` nor ``audit``).
        table: the table's name.
        rows: rows read, written or deleted; None where counting would cost a Spark job (a Spark DataFrame
            written) or the engine does not say.
        columns: the columns read or written (empty for deletes).
        version: the table version written, or the version read (None: the latest).
        commit: who and why, as given to a write; None for reads.
        details: what else the operation reports: a merge's ``keys``, ``inserted`` and ``updated``; an append's
            ``txn`` (reported even when that txn was already committed and nothing was written); ``filtered``
            when a predicate chose the rows; a vacuum's ``retention_hours`` and ``files`` removed. Names and
            counts only, never a cell value.
    """

    action: Literal["read", "write", "delete"]
    operation: str
    zone: str
    table: str
    rows: int | None
    columns: tuple[str, ...]
    version: int | None = None
    commit: CommitInfo | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


# Called after each successful read or write of a zone's table, in the calling thread. An exception it raises
# reaches the caller: a read whose access cannot be recorded returns nothing (a write has already committed).
AccessHook = Callable[[LakeAccess], None]

# The audit zone holds the log an access hook writes to: its own reads and writes would report themselves forever.
_UNREPORTED = frozenset({SYSTEM_ZONE, "audit"})


class _Engine(Protocol):
    name: str

    def exists(self, uri: str) -> bool: ...
    def write(self, uri: str, data: Any, *, mode: str, metadata: dict[str, str], predicate: str | None = ...,
              evolve_schema: bool = ..., txn: tuple[str, int] | None = ...) -> int: ...
    def merge(self, uri: str, data: Any, *, keys: list[str], metadata: dict[str, str]) -> dict[str, int]: ...
    def delete(self, uri: str, *, where: str, metadata: dict[str, str]) -> int: ...
    def read(self, uri: str, *, version: int | None = ..., columns: list[str] | None = ...,
             where: str | None = ...) -> pa.Table: ...
    def version(self, uri: str) -> int: ...
    def transaction_version(self, uri: str, app_id: str) -> int | None: ...
    def history(self, uri: str, limit: int | None = ...) -> list[dict[str, Any]]: ...
    def snapshot_files(self, uri: str, version: int | None = ...) -> list[str]: ...
    def schema(self, uri: str) -> pa.Schema: ...
    def vacuum(self, uri: str, *, retention_hours: int, dry_run: bool, metadata: dict[str, str],
               full: bool = ...) -> list[str]: ...


class Lake:
    """The zones and tables of one lake root, read and written through one Delta engine.

    Every method takes a :class:`Zone` (or its name) or :data:`SYSTEM_ZONE` as the zone.

    Args:
        settings: defaults to the process settings.
        on_access: called with a :class:`LakeAccess` after each successful read and write of a zone's table
            (not for :data:`SYSTEM_ZONE` or the ``audit`` zone; not for metadata: exists, tables, schema,
            version, history). Feed an audit log from it.

    Raises:
        EngineUnavailableError: the Spark engine is selected and Delta's jars are not on Spark's classpath.
        SettingsError: the root is ``memory://``: delta-rs gives each table handle its own empty memory store,
            so nothing written there could be read again.
    """

    def __init__(self, settings: Settings | None = None, *, on_access: AccessHook | None = None) -> None:
        self.settings = settings or get_settings()
        self.root = str(self.settings.lake_root).rstrip("/")
        if self.root.startswith("memory://"):
            raise SettingsError(f"lake_root (MEDGUARD_LAKE_ROOT) {self.root!r}: delta-rs keeps a memory:// table "
                                "per handle, so nothing written there could be read again; use a directory or "
                                "an object store")
        self._on_access = on_access
        options = {k: v.get_secret_value() for k, v in self.settings.storage_options.items()}
        self._files = DeltaRsEngine(options)  # listings, on either engine
        self._engine: _Engine
        if self.settings.lake_engine == "spark":
            from pipeline._delta_spark import DeltaSparkEngine
            from pipeline.spark import get_spark

            self._engine = DeltaSparkEngine(get_spark(self.settings), options)
        else:
            self._engine = self._files

    def with_access_hook(self, on_access: AccessHook | None) -> Lake:
        """The same lake (root, engine, Spark session) reporting its accesses to ``on_access`` instead."""
        other = copy.copy(self)
        other._on_access = on_access
        return other

    def __repr__(self) -> str:
        return f"Lake(root={self.root!r}, engine={self.engine!r})"

    @property
    def engine(self) -> str:
        """The name of the Delta engine in use: ``delta-rs`` or ``spark``."""
        return self._engine.name

    def uri(self, zone: Zone | str, table: str) -> str:
        """Where a table lives.

        Raises:
            ValueError: unknown zone (a :class:`Zone` or :data:`SYSTEM_ZONE`), or a table name that is not
                lower_snake_case (no paths, no dots).
        """
        if not _TABLE_NAME.match(table):
            raise ValueError(f"table name {table!r} must be lower_snake_case: [a-z][a-z0-9_]*, at most 63 chars")
        return f"{self.root}/{_zone_name(zone)}/{table}"

    def exists(self, zone: Zone | str, table: str) -> bool:
        """True when the table has been written at least once."""
        return self._engine.exists(self.uri(zone, table))

    def tables(self, zone: Zone | str) -> list[str]:
        """Names of the Delta tables of a zone (or of :data:`SYSTEM_ZONE`), sorted; [] for an empty zone.

        Works on any root: a local directory or an object store, listed with ``settings.storage_options``.

        Raises:
            StorageError: the store cannot be reached or listed.
        """
        return self._files.list_tables(self.root, _zone_name(zone))

    def schema(self, zone: Zone | str, table: str) -> pa.Schema:
        """The table's current Arrow schema, read from its Delta log (no data files are read).

        Raises:
            StorageError: there is no such table.
        """
        return self._engine.schema(self.uri(zone, table))

    # writes ------------------------------------------------------------------------------------------

    def append(self, zone: Zone | str, table: str, data: Any, *, commit: CommitInfo | None = None,
               evolve_schema: bool = False, txn: tuple[str, int] | None = None) -> int:
        """Append rows, creating the table if needed; returns the new table version.

        Args:
            data: a pyarrow Table/RecordBatch/RecordBatchReader, a pandas or Spark DataFrame, or a list of dicts.
            evolve_schema: allow new columns (existing rows read them as null).
            txn: ``(app_id, version)``, recorded in the same commit as a Delta transaction identifier, so a
                writer that resumes can ask :meth:`transaction_version` what it already committed. The append
                is skipped (and the current version returned) when ``app_id`` already committed ``version``,
                by an earlier run or by a concurrent writer of the same txn: each engine checks this on the
                table snapshot it commits against.
        """
        return self._write(zone, table, data, mode="append", commit=commit, evolve_schema=evolve_schema, txn=txn)

    def transaction_version(self, zone: Zone | str, table: str, app_id: str) -> int | None:
        """The highest version ``app_id`` committed to the table through ``append(txn=...)``; None if none.

        The Spark engine reads them from the table's log through delta-rs; where that storage is out of
        delta-rs's reach it answers None, and Delta Spark still skips an already committed version itself when
        the append is attempted.
        """
        return self._engine.transaction_version(self.uri(zone, table), app_id)

    def committed(self, zone: Zone | str, table: str, txn: tuple[str, int]) -> bool:
        """True when ``txn``'s app id has already committed its version (or a later one) to the table."""
        done = self.transaction_version(zone, table, txn[0])
        return done is not None and done >= txn[1]

    def overwrite(self, zone: Zone | str, table: str, data: Any, *, commit: CommitInfo | None = None,
                  where: str | None = None, evolve_schema: bool = False) -> int:
        """Replace the table's rows (or only those matching ``where``); earlier versions stay readable."""
        return self._write(zone, table, data, mode="overwrite", commit=commit, evolve_schema=evolve_schema,
                           predicate=where)

    def merge(self, zone: Zone | str, table: str, data: Any, *, keys: list[str] | tuple[str, ...],
              commit: CommitInfo | None = None) -> MergeResult:
        """Upsert on ``keys``: rows whose keys exist are updated, the rest inserted.

        The table is created from ``data`` when it does not exist yet. Keys must be unique within ``data``.

        Raises:
            StorageError: the merge failed, or ``data`` holds the same key twice.
        """
        if not keys:
            raise ValueError("merge needs at least one key column")
        uri = self.uri(zone, table)
        arrow = self._materialise(data)
        missing = [k for k in keys if k not in arrow.column_names]
        if missing:
            raise ValueError(f"merge keys {missing} are not columns of the data for {zone}/{table}")
        duplicated = arrow.group_by(list(keys)).aggregate([([], "count_all")]).filter(
            pa.compute.field("count_all") > 1)
        if duplicated.num_rows:
            raise StorageError(f"merge into {zone}/{table}: {duplicated.num_rows} key(s) appear more than once "
                               f"in the data, e.g. {duplicated.slice(0, 1).to_pylist()[0]}")
        info = commit or CommitInfo()
        if not self._engine.exists(uri):
            version = self._engine.write(uri, arrow, mode="append", metadata=info.metadata("merge"))
            result = MergeResult(inserted=arrow.num_rows, updated=0, version=version)
        else:
            counts = self._engine.merge(uri, arrow, keys=list(keys), metadata=info.metadata("merge"))
            result = MergeResult(inserted=counts["inserted"], updated=counts["updated"], version=counts["version"])
        self._report("write", "merge", zone, table, rows=_rows(arrow), columns=_columns(arrow),
                     version=result.version, commit=info,
                     details={"keys": list(keys), "inserted": result.inserted, "updated": result.updated})
        return result

    def delete(self, zone: Zone | str, table: str, *, where: str, commit: CommitInfo | None = None) -> int:
        """Delete the rows matching the SQL predicate ``where``; returns how many were deleted."""
        if not where.strip():
            raise ValueError("delete needs a predicate; use overwrite to empty a table")
        info = commit or CommitInfo()
        deleted = self._engine.delete(self.uri(zone, table), where=where, metadata=info.metadata("delete"))
        self._report("delete", "delete", zone, table, rows=deleted, columns=(), commit=info)
        return deleted

    def vacuum(self, zone: Zone | str, table: str, *, retention_hours: int = 168, dry_run: bool = True,
               full: bool = False, commit: CommitInfo | None = None) -> list[str]:
        """Remove files no longer referenced by versions newer than the retention; a dry run by default.

        Vacuuming makes versions older than the retention unreadable (time travel ends there).

        Args:
            full: also remove files the log never referenced (older than the retention), such as the data file
                of a write whose commit failed or was interrupted. delta-rs removes only files the log marked
                removed unless asked; Spark's VACUUM always lists every file. A full vacuum with zero retention
                would remove the file of a write still in flight: callers hold a lock every writer takes.
        """
        if retention_hours < 0:
            raise ValueError("retention_hours must be >= 0")
        info = commit or CommitInfo()
        files = self._engine.vacuum(self.uri(zone, table), retention_hours=retention_hours, dry_run=dry_run,
                                    metadata=info.metadata("vacuum"), full=full)
        if not dry_run:
            self._report("delete", "vacuum", zone, table, rows=None, columns=(), commit=info,
                         details={"retention_hours": retention_hours, "files": len(files), "full": full})
        return files

    # reads -------------------------------------------------------------------------------------------

    def read_arrow(self, zone: Zone | str, table: str, *, version: int | None = None,
                   columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        """Read the table (or a past ``version`` of it) as an Arrow table."""
        result = self._engine.read(self.uri(zone, table), version=version, columns=columns, where=where)
        self._report("read", "read", zone, table, rows=result.num_rows, columns=tuple(result.column_names),
                     version=version, details={"filtered": where is not None})
        return result

    def read_pandas(self, zone: Zone | str, table: str, *, version: int | None = None,
                    columns: list[str] | None = None, where: str | None = None) -> pd.DataFrame:
        """Read the table (or a past ``version`` of it) as a pandas DataFrame."""
        return self.read_arrow(zone, table, version=version, columns=columns, where=where).to_pandas()

    def read_spark(self, zone: Zone | str, table: str, *, version: int | None = None) -> DataFrame:
        """Read the table (or a past ``version``) as a Spark DataFrame.

        With the Spark engine this is a Delta read. With delta-rs, Spark reads the Parquet files of the
        requested snapshot as listed by the Delta log (the same rows, no Delta jars needed) when its Hadoop
        configuration has a file system for the lake's scheme (always for a local lake; ``s3a`` for ``s3://`` when
        hadoop-aws is on the classpath, credentials from ``spark.hadoop.fs.s3a.*``). Otherwise delta-rs reads the
        snapshot (with ``storage_options``) and the driver hands it to Spark as Arrow: the same rows, bounded by
        the driver's memory.
        """
        from pipeline.spark import get_spark

        uri = self.uri(zone, table)
        if self.engine == "spark":
            frame = self._engine.read_frame(uri, version=version)  # type: ignore[attr-defined]
        else:
            spark = get_spark(self.settings)
            schema = self._engine.schema(uri)
            spark_schema = spark.createDataFrame(schema.empty_table()).schema
            if not _spark_can_open(spark, uri):
                rows = self._engine.read(uri, version=version)
                frame = spark.createDataFrame(rows) if rows.num_rows else spark.createDataFrame([], spark_schema)
            else:
                files = [hadoop_uri(f) for f in self._engine.snapshot_files(uri, version)]
                frame = (spark.read.schema(spark_schema).parquet(*files) if files
                         else spark.createDataFrame([], spark_schema))
        # The rows are counted by whatever job consumes the frame; the access is of every column.
        self._report("read", "read", zone, table, rows=None, columns=tuple(frame.columns), version=version,
                     details={"as": "spark"})
        return frame

    def version(self, zone: Zone | str, table: str) -> int:
        """The table's current version number."""
        return self._engine.version(self.uri(zone, table))

    def history(self, zone: Zone | str, table: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first, each with its version, operation and medguard who/why metadata."""
        entries = self._engine.history(self.uri(zone, table), limit)
        for entry in entries:
            user = entry.pop("userMetadata", None)
            if user:
                entry.update(json.loads(user))
        return entries

    # helpers -----------------------------------------------------------------------------------------

    def _report(self, action: Literal["read", "write", "delete"], operation: str, zone: Zone | str, table: str, *,
                rows: int | None, columns: tuple[str, ...], version: int | None = None,
                commit: CommitInfo | None = None, details: Mapping[str, Any] | None = None) -> None:
        name = _zone_name(zone)
        if self._on_access is None or name in _UNREPORTED:
            return
        self._on_access(LakeAccess(action=action, operation=operation, zone=name, table=table, rows=rows,
                                   columns=columns, version=version, commit=commit, details=dict(details or {})))

    def _materialise(self, data: Any) -> Any:
        if self.engine == "spark" and is_spark_dataframe(data):
            return data
        return to_arrow_table(data)

    def _write(self, zone: Zone | str, table: str, data: Any, *, mode: str, commit: CommitInfo | None,
               evolve_schema: bool, predicate: str | None = None, txn: tuple[str, int] | None = None) -> int:
        uri = self.uri(zone, table)
        if self.settings.lake_is_local:
            os.makedirs(uri.removeprefix("file://"), exist_ok=True)
        payload = data if (self.engine == "spark" and is_spark_dataframe(data)) else to_arrow(data)
        counted = [0]
        if self._on_access is not None and isinstance(payload, pa.RecordBatchReader):
            # A stream stays a stream: its rows are counted as the engine consumes them.
            payload = pa.RecordBatchReader.from_batches(payload.schema, _counting(payload, counted))
        info = commit or CommitInfo()
        version = self._engine.write(uri, payload, mode=mode, metadata=info.metadata(mode), predicate=predicate,
                                     evolve_schema=evolve_schema, txn=txn)
        details: dict[str, Any] = {}
        if txn is not None:
            # An append whose txn was already committed writes nothing; the report still names the txn.
            details["txn"] = [txn[0], txn[1]]
        if predicate is not None:
            details["filtered"] = True
        rows = counted[0] if isinstance(payload, pa.RecordBatchReader) else _rows(payload)
        self._report("write", mode, zone, table, rows=rows, columns=_columns(payload), version=version,
                     commit=info, details=details)
        return version


def to_arrow_table(data: Any) -> pa.Table:
    """``data`` in any form a Lake write takes (Arrow, pandas or Spark DataFrame, list of dicts) as one Arrow table.

    A RecordBatchReader is read to the end; use it where a whole table is needed at once (sealing, checks).

    Raises:
        TypeError: the data is of none of those forms.
    """
    arrow = to_arrow(data)
    return arrow.read_all() if isinstance(arrow, pa.RecordBatchReader) else arrow


def _zone_name(zone: Zone | str) -> str:
    """The folder of a zone; ValueError for anything but a :class:`Zone` or :data:`SYSTEM_ZONE`."""
    return SYSTEM_ZONE if zone == SYSTEM_ZONE else Zone(zone).value


def _spark_can_open(spark: Any, uri: str) -> bool:
    """True when Spark's Hadoop has a file system for ``uri`` (as :func:`hadoop_uri` names it)."""
    scheme = hadoop_uri(uri).split("://", 1)[0] if "://" in uri else "file"
    if scheme == "file":
        return True
    try:
        spark._jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, spark._jsc.hadoopConfiguration())
    except Exception:  # py4j reports UnsupportedFileSystemException as a generic Py4JJavaError
        return False
    return True


def _counting(reader: pa.RecordBatchReader, counted: list[int]) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        counted[0] += batch.num_rows
        yield batch


def _rows(data: Any) -> int | None:
    return data.num_rows if isinstance(data, pa.Table | pa.RecordBatch) else None


def _columns(data: Any) -> tuple[str, ...]:
    if isinstance(data, pa.Table | pa.RecordBatch | pa.RecordBatchReader):
        return tuple(data.schema.names)
    return tuple(getattr(data, "columns", ()))  # a Spark DataFrame
