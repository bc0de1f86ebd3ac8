"""The cluster Delta engine: Delta tables through Spark and delta-spark, used when ``lake_engine=spark``.

It needs Delta's jars on Spark's classpath; :func:`pipeline.spark.get_spark` refuses to start without them.
Commit metadata (who/why) goes into each commit's ``userMetadata`` as JSON. An ``s3://`` table is opened as
``s3a://`` (Hadoop's S3 file system, from hadoop-aws, configured through ``spark.hadoop.fs.s3a.*``); the log
stores paths relative to the table, so either engine reads what the other wrote.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline._arrow import plain_table
from pipeline.errors import StorageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


# Hadoop's names for the schemes delta-rs and the settings use.
_HADOOP_SCHEMES = {"s3": "s3a"}


def hadoop_uri(uri: str) -> str:
    """``uri`` as Spark's Hadoop file systems name it: ``s3://b/k`` is ``s3a://b/k``; anything else unchanged."""
    scheme, sep, rest = uri.partition("://")
    return f"{_HADOOP_SCHEMES[scheme]}://{rest}" if sep and scheme in _HADOOP_SCHEMES else uri


class DeltaSparkEngine:
    """Delta reads and writes through a Spark session that has delta-spark loaded."""

    name = "spark"

    def __init__(self, spark: SparkSession, storage_options: dict[str, str] | None = None) -> None:
        self._spark = spark
        # Only for reading transaction ids through delta-rs; Spark reaches object stores through its own
        # Hadoop configuration (spark.conf: spark.hadoop.fs.s3a.*).
        self._storage_options = storage_options

    def _frame(self, data: pa.Table | pa.RecordBatchReader | DataFrame) -> DataFrame:
        if isinstance(data, pa.RecordBatchReader):
            data = data.read_all()
        return self._spark.createDataFrame(data) if isinstance(data, pa.Table) else data

    def _delta(self, uri: str) -> Any:
        from delta.tables import DeltaTable

        if not DeltaTable.isDeltaTable(self._spark, hadoop_uri(uri)):
            raise StorageError(f"no Delta table at {uri}")
        return DeltaTable.forPath(self._spark, hadoop_uri(uri))

    def exists(self, uri: str) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self._spark, hadoop_uri(uri)))

    def write(
        self,
        uri: str,
        data: Any,
        *,
        mode: str,
        metadata: dict[str, str],
        predicate: str | None = None,
        evolve_schema: bool = False,
        txn: tuple[str, int] | None = None,
    ) -> int:
        writer = self._frame(data).write.format("delta").option("userMetadata", json.dumps(metadata))
        if txn:
            # Delta's idempotent writes: the commit is skipped when this app id already committed the version.
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        writer = writer.mode("errorifexists") if mode == "error" else writer.mode(mode)
        if predicate:
            writer = writer.option("replaceWhere", predicate)
        if evolve_schema:
            writer = writer.option("mergeSchema" if mode == "append" else "overwriteSchema", "true")
        try:
            writer.save(hadoop_uri(uri))
        except Exception as exc:  # Spark raises AnalysisException / Py4JJavaError
            raise StorageError(f"write ({mode}) to {uri} failed: {exc}") from exc
        return self.version(uri)

    def merge(self, uri: str, data: Any, *, keys: list[str], metadata: dict[str, str]) -> dict[str, int]:
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        self._spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", json.dumps(metadata))
        try:
            (
                self._delta(uri).alias("t").merge(self._frame(data).alias("s"), on)
                .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
            )
        finally:
            self._spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
        metrics = self.history(uri, 1)[0].get("operationMetrics") or {}
        return {
            "inserted": int(metrics.get("numTargetRowsInserted", 0)),
            "updated": int(metrics.get("numTargetRowsUpdated", 0)),
            "version": self.version(uri),
        }

    def delete(self, uri: str, *, where: str, metadata: dict[str, str]) -> int:
        self._spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", json.dumps(metadata))
        try:
            self._delta(uri).delete(where)
        finally:
            self._spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
        metrics = self.history(uri, 1)[0].get("operationMetrics") or {}
        return int(metrics.get("numDeletedRows", 0))

    def read_frame(self, uri: str, *, version: int | None = None) -> DataFrame:
        reader = self._spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(hadoop_uri(uri))

    def read(
        self, uri: str, *, version: int | None = None, columns: list[str] | None = None, where: str | None = None
    ) -> pa.Table:
        frame = self.read_frame(uri, version=version)
        if where:
            frame = frame.where(where)
        if columns:
            frame = frame.select(*columns)
        return plain_table(frame.toArrow())

    def version(self, uri: str) -> int:
        return int(self._delta(uri).history(1).collect()[0]["version"])

    def transaction_version(self, uri: str, app_id: str) -> int | None:
        # Delta Spark has no public reader for transaction ids, but they are plain `txn` actions in the
        # table's log, which the delta-rs engine reads (from the same storage, with the environment's
        # credentials). Where it cannot, "unknown" is still safe: Spark skips an already committed txnVersion
        # itself when the write is attempted; only the work of preparing it again is lost.
        from pipeline._delta_rs import DeltaRsEngine

        try:
            return DeltaRsEngine(self._storage_options).transaction_version(uri, app_id)
        except (StorageError, OSError):
            return None

    def history(self, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self._delta(uri).history(limit).collect() if limit else self._delta(uri).history().collect()
        return [row.asDict(recursive=True) for row in rows]

    def snapshot_files(self, uri: str, version: int | None = None) -> list[str]:
        return list(self.read_frame(uri, version=version).inputFiles())

    def schema(self, uri: str) -> pa.Schema:
        return self.read_frame(uri).limit(0).toArrow().schema

    def vacuum(self, uri: str, *, retention_hours: int, dry_run: bool, metadata: dict[str, str],
               full: bool = False) -> list[str]:
        # Spark's VACUUM lists every file of the table directory, so it is always full: ``full`` changes nothing.
        if dry_run:
            sql = f"VACUUM delta.`{hadoop_uri(uri)}` RETAIN {int(retention_hours)} HOURS DRY RUN"
            return [row[0] for row in self._spark.sql(sql).collect()]
        # Delta refuses a retention under its 168-hour default unless this check is off; Lake.vacuum is explicit and
        # keyword-only, and a crypto-shred must vacuum with zero retention so no deleted key survives in old files.
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = self._spark.conf.get(check, "true")
        self._spark.conf.set(check, "false")
        try:
            self._delta(uri).vacuum(retention_hours)
        finally:
            self._spark.conf.set(check, previous)
        return []
