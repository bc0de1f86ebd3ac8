"""The embedded Delta engine: Delta tables through delta-rs (the ``deltalake`` package).

Reads go through ``deltalake.QueryBuilder`` rather than ``DeltaTable.to_pyarrow_table()``, which makes the
process abort at exit in most runs. delta-rs panics after ``fork()``: process pools that touch tables must use
the ``spawn`` start method.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from pipeline._arrow import plain_table
from pipeline.errors import StorageError

# Appends never conflict logically, but on a busy table a writer can lose the race for the next version
# number many times in a row; delta-rs retries the commit itself up to this many times.
_COMMIT_RETRIES = 100
# Two writers creating the same new table race for version 0; the loser retries as an append.
_CREATE_ATTEMPTS = 5


def _props(metadata: dict[str, str]) -> CommitProperties:
    return CommitProperties(custom_metadata=metadata, max_commit_retries=_COMMIT_RETRIES)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DeltaRsEngine:
    """Delta reads and writes on one machine (or object storage) without Spark."""

    name = "delta-rs"

    def exists(self, uri: str) -> bool:
        return DeltaTable.is_deltatable(uri)

    def _table(self, uri: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(uri, version=version)
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
    ) -> int:
        schema_mode = "merge" if evolve_schema else None
        if mode == "overwrite" and evolve_schema:
            schema_mode = "overwrite"
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                write_deltalake(
                    uri,
                    data,
                    mode=mode,  # type: ignore[arg-type]
                    predicate=predicate,
                    schema_mode=schema_mode,  # type: ignore[arg-type]
                    commit_properties=_props(metadata),
                )
                return self._table(uri).version()
            except CommitFailedError as exc:
                # Only a race to create the table (version 0) is worth another try at this level.
                if attempt == _CREATE_ATTEMPTS - 1 or isinstance(data, pa.RecordBatchReader):
                    raise StorageError(f"commit to {uri} failed: {exc}") from exc
                time.sleep(0.05 * (attempt + 1))
            except DeltaError as exc:
                raise StorageError(f"write ({mode}) to {uri} failed: {exc}") from exc
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                raise StorageError(f"write ({mode}) to {uri} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def merge(self, uri: str, data: pa.Table, *, keys: list[str], metadata: dict[str, str]) -> dict[str, int]:
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        try:
            metrics = (
                self._table(uri)
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
        }

    def delete(self, uri: str, *, where: str, metadata: dict[str, str]) -> int:
        try:
            metrics = self._table(uri).delete(where, commit_properties=_props(metadata))
        except DeltaError as exc:
            raise StorageError(f"delete from {uri} where {where!r} failed: {exc}") from exc
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

    def history(self, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._table(uri).history(limit)

    def snapshot_files(self, uri: str, version: int | None = None) -> list[str]:
        return self._table(uri, version).file_uris()

    def schema(self, uri: str) -> pa.Schema:
        return pa.schema([pa.field(f.name, f.type, f.nullable) for f in pa.schema(self._table(uri).schema().to_arrow())])

    def vacuum(self, uri: str, *, retention_hours: int, dry_run: bool, metadata: dict[str, str]) -> list[str]:
        try:
            return self._table(uri).vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,
                commit_properties=_props(metadata),
            )
        except DeltaError as exc:
            raise StorageError(f"vacuum of {uri} failed: {exc}") from exc
