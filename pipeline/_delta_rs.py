"""The embedded Delta engine: Delta tables through delta-rs (the ``deltalake`` package).

Reads go through ``deltalake.QueryBuilder`` rather than ``DeltaTable.to_pyarrow_table()``, which makes the
process abort at exit in most runs. delta-rs panics after ``fork()``: process pools that touch tables must use
the ``spawn`` start method. Object stores (``s3://``, ``gs://``, ``abfs://``…) are reached with the storage options
the engine is built with (endpoint, region, credentials), the same for every read, write and listing.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler
from pyarrow import fs as pafs

from pipeline._arrow import plain_table
from pipeline.errors import StorageError

# Appends never conflict logically, but on a busy table a writer can lose the race for the next version
# number many times in a row; delta-rs retries the commit itself up to this many times.
_COMMIT_RETRIES = 100
# Two writers creating the same new table race for version 0; the loser retries against the winner's table.
_CREATE_ATTEMPTS = 5
# Opening a table reads every commit since its last checkpoint, one request each on an object store: at delta-rs's
# default of a checkpoint every 100 commits, a table written one small commit at a time (the audit log, the key
# stores) cost up to ~190 requests per open on S3 (measured). Every 10 commits, as Delta Spark does by default.
_TABLE_CONFIGURATION = {"delta.checkpointInterval": "10"}


def _props(metadata: dict[str, str], retries: int = _COMMIT_RETRIES,
           txn: tuple[str, int] | None = None) -> CommitProperties:
    transactions = [Transaction(app_id=txn[0], version=txn[1])] if txn else None
    return CommitProperties(custom_metadata=metadata, max_commit_retries=retries, app_transactions=transactions)


def _committed(table: DeltaTable, txn: tuple[str, int] | None) -> bool:
    done = table.transaction_version(txn[0]) if txn is not None else None
    return done is not None and done >= txn[1]  # type: ignore[index]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DeltaRsEngine:
    """Delta reads and writes on one machine (or object storage) without Spark."""

    name = "delta-rs"

    def __init__(self, storage_options: dict[str, str] | None = None) -> None:
        self._options = dict(storage_options or {}) or None

    def __repr__(self) -> str:  # the options hold credentials
        return f"DeltaRsEngine(storage_options={sorted(self._options or {})})"

    def exists(self, uri: str) -> bool:
        try:
            return DeltaTable.is_deltatable(uri, self._options)
        except (DeltaError, OSError) as exc:
            raise StorageError(f"cannot reach {uri}: {exc}") from exc

    def list_tables(self, root: str, folder: str) -> list[str]:
        """Names of the Delta tables directly under ``<root>/<folder>``, sorted; any store delta-rs reaches.

        The listing goes through delta-rs's own object store (``deltalake.fs.DeltaStorageHandler``), so it uses
        the credentials and endpoint that reads and writes use.
        """
        local = root.removeprefix("file://") if root.startswith("file://") or "://" not in root else None
        if local is not None and not os.path.isdir(local):
            return []  # a local lake nothing has been written to yet (an object store has no folders to miss)
        try:
            store = pafs.PyFileSystem(DeltaStorageHandler(root, self._options))
            entries = store.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            names = [e.base_name for e in entries if e.type == pafs.FileType.Directory]
            return sorted(n for n in names if self.exists(f"{root}/{folder}/{n}"))
        except (DeltaError, OSError) as exc:
            raise StorageError(f"cannot list {root}/{folder}: {exc}") from exc

    def _table(self, uri: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(uri, version=version, storage_options=self._options)
        except TableNotFoundError as exc:
            raise StorageError(f"no Delta table at {uri}") from exc
        except DeltaError as exc:
            raise StorageError(f"cannot open Delta table {uri} at version {version}: {exc}") from exc

    def write(
        self,
        uri: str,
        data: pa.Table | pa.RecordBatchReader,
        *,
        mode: str,
        metadata: dict[str, str],
        predicate: str | None = None,
        evolve_schema: bool = False,
        txn: tuple[str, int] | None = None,
    ) -> int:
        schema_mode = "merge" if evolve_schema else None
        if mode == "overwrite" and evolve_schema:
            schema_mode = "overwrite"
        for attempt in range(_CREATE_ATTEMPTS):
            table = self._table(uri) if self.exists(uri) else None
            if table is not None and _committed(table, txn):  # an earlier run, or a creation race's winner
                return table.version()
            try:
                if table is None:
                    # Creating: mode "error" makes the loser of a race for version 0 fail (and retry below
                    # against the winner's table) rather than commit at a version it cannot know.
                    write_deltalake(
                        uri,
                        data,
                        mode="error",
                        predicate=predicate if mode == "overwrite" else None,
                        configuration=_TABLE_CONFIGURATION,
                        commit_properties=_props(metadata, retries=0, txn=txn),
                        storage_options=self._options,
                    )
                    return 0
                # Writing through the DeltaTable leaves it at the version this commit produced, which
                # re-reading the table would not report when other writers commit concurrently.
                write_deltalake(
                    table,
                    data,
                    mode=mode,  # type: ignore[arg-type]
                    predicate=predicate,
                    schema_mode=schema_mode,  # type: ignore[arg-type]
                    commit_properties=_props(metadata, txn=txn),
                )
                return table.version()
            except DeltaError as exc:
                if txn is not None and self.exists(uri):
                    # Delta refuses a commit when a concurrent one carried the same app id, and a creator can
                    # lose the race for version 0: if the other writer committed this very txn, its rows are
                    # there once, and this append has happened.
                    current = self._table(uri)
                    if _committed(current, txn):
                        return current.version()
                # Only a lost race to create the table is worth another try at this level; a stream that
                # has been read cannot be written again.
                lost_race = table is None and (isinstance(exc, CommitFailedError) or self.exists(uri))
                if not lost_race or attempt == _CREATE_ATTEMPTS - 1 or isinstance(data, pa.RecordBatchReader):
                    raise StorageError(f"write ({mode}) to {uri} failed: {exc}") from exc
                time.sleep(0.05 * (attempt + 1))
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                raise StorageError(f"write ({mode}) to {uri} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def merge(self, uri: str, data: pa.Table, *, keys: list[str], metadata: dict[str, str]) -> dict[str, int]:
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        table = self._table(uri)
        try:
            metrics = (
                table
                .merge(data, predicate=on, source_alias="s", target_alias="t", commit_properties=_props(metadata))
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        except DeltaError as exc:
            raise StorageError(f"merge into {uri} on {keys} failed: {exc}") from exc
        return {
            "inserted": int(metrics.get("num_target_rows_inserted", 0)),
            "updated": int(metrics.get("num_target_rows_updated", 0)),
            "version": table.version(),  # the merge's own commit, even when others commit concurrently
        }

    def delete(self, uri: str, *, where: str, metadata: dict[str, str]) -> int:
        try:
            metrics = self._table(uri).delete(where, commit_properties=_props(metadata))
        except DeltaError as exc:
            raise StorageError(f"delete in {uri} (predicate {where!r}) failed: {exc}") from exc
        return int(metrics.get("num_deleted_rows", 0))

    def read(
        self, uri: str, *, version: int | None = None, columns: list[str] | None = None, where: str | None = None
    ) -> pa.Table:
        table = self._table(uri, version)
        select = ", ".join(_quote(c) for c in columns) if columns else "*"
        sql = f"SELECT {select} FROM snapshot"  # noqa: S608 - names are quoted; predicates come from code
        if where:
            sql += f" WHERE {where}"
        try:
            reader = QueryBuilder().register("snapshot", table).execute(sql)
            result = pa.table(reader)
        except Exception as exc:  # delta-rs/DataFusion raise a variety of untyped errors here
            raise StorageError(f"read of {uri} failed: {exc}") from exc
        if result.num_columns == 0:  # an empty table can come back without its schema
            result = self._empty(table, columns)
        return plain_table(result)

    def _empty(self, table: DeltaTable, columns: list[str] | None) -> pa.Table:
        schema = pa.schema(table.schema().to_arrow())
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()

    def version(self, uri: str) -> int:
        return self._table(uri).version()

    def transaction_version(self, uri: str, app_id: str) -> int | None:
        if not self.exists(uri):
            return None
        return self._table(uri).transaction_version(app_id)

    def history(self, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._table(uri).history(limit)

    def snapshot_files(self, uri: str, version: int | None = None) -> list[str]:
        return self._table(uri, version).file_uris()

    def schema(self, uri: str) -> pa.Schema:
        return pa.schema(self._table(uri).schema().to_arrow())

    def vacuum(self, uri: str, *, retention_hours: int, dry_run: bool, metadata: dict[str, str],
               full: bool = False) -> list[str]:
        try:
            return self._table(uri).vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,
                commit_properties=_props(metadata),
                full=full,  # without it delta-rs keeps files the log never referenced (uncommitted writes)
            )
        except DeltaError as exc:
            raise StorageError(f"vacuum of {uri} failed: {exc}") from exc
