"""Checking on a Spark cluster: the per-chunk check of ingestion (conform, validate, hash) on executors.

With ``compute=spark`` a batch hands its chunks to :class:`SparkCheckPipeline` instead of
:class:`~ingestion.checking.CheckPipeline`. Chunks are taken a window at a time (two per core of the cluster), one
row per table of a chunk, and checked by ``mapInArrow`` with :func:`check_batches`: the same
:func:`~ingestion.checking.check_table` the embedded default runs in-process, one Great Expectations context per
executor Python worker. The verdicts come back to the driver in source order, where the batch deduplicates,
pseudonymises, seals and commits each chunk as it does in-process, so both paths write the same tables.

Why sealing stays on the driver: checking is the work worth moving. Measured in-process on 2,000 patients (keyring
provider, 5,000-row chunks), checking the 66,473 observations took 7.4 s and sealing their PHI columns 0.6 s (under
the patients' DEKs, one AES-GCM pass per column); the 2,000 patients 0.6 s and 0.3 s. Sealing on executors would add
a provider login and a DEK unwrap per executor, and new patients' DEKs must still be made and recorded once, by one
writer, before any cell uses them.

Records reach executors as they were read (a pickled :class:`~ingestion.sources._base.TableRows` in a binary
column: source values of any Python type, which one Arrow type per column could not carry) and verdicts come back
the same way; nothing is sealed or written on an executor, and no key leaves the driver.

Plaintext records pass through Spark: :func:`pipeline.spark.get_spark` turns on ``spark.io.encryption.enabled``
for ``compute=spark``, so the driver streams them to the JVM over an authenticated socket (not a temporary file)
and any spill is encrypted.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from ingestion.checking import CheckedTable, check_table
from ingestion.contract import Contract
from ingestion.sources._base import SourceChunk
from pipeline.settings import Settings

__all__ = ["JOB_GROUP", "SparkCheckPipeline", "check_batches"]

JOB_GROUP = "medguard-ingest-check"
_INPUT = pa.schema([("chunk", pa.int64()), ("table", pa.string()), ("rows", pa.binary())])
_OUTPUT = pa.schema([("chunk", pa.int64()), ("table", pa.string()), ("checked", pa.binary())])


def check_batches(contracts: dict[str, Contract]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: ``(chunk, table, rows)`` batches in, ``(chunk, table, checked)`` out.

    Pure: no table, key or file is touched, so it runs the same in a test, in a spawn pool or on an executor.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            chunks, tables = batch.column("chunk").to_pylist(), batch.column("table").to_pylist()
            payloads = batch.column("rows").to_pylist()
            checked = [pickle.dumps(check_table(contracts[table], pickle.loads(payload)))  # noqa: S301 - the driver's
                       for table, payload in zip(tables, payloads, strict=True)]
            yield pa.RecordBatch.from_arrays([pa.array(chunks, pa.int64()), pa.array(tables, pa.string()),
                                              pa.array(checked, pa.binary())], schema=_OUTPUT)

    return run


class SparkCheckPipeline:
    """Checks a stream of chunks on Spark's executors, in order; the interface of :class:`CheckPipeline`.

    Args:
        settings: the settings whose Spark session (``spark.master``) runs the checks.
        contracts: the contract of every table the source can fill.
        spark: the session (this process's :func:`~pipeline.spark.get_spark` by default).
        window: chunks sent to the cluster at once (two per core of the cluster by default); at most this many
            chunks are held in memory.
    """

    def __init__(self, settings: Settings, contracts: dict[str, Contract], *, spark: Any = None,
                 window: int | None = None) -> None:
        if spark is None:
            from pipeline.spark import get_spark

            spark = get_spark(settings)
        self.spark = spark
        self.contracts = contracts
        self.window = window or max(2, 2 * spark.sparkContext.defaultParallelism)

    def __enter__(self) -> SparkCheckPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks: Iterator[SourceChunk]) -> Iterator[tuple[SourceChunk, dict[str, CheckedTable]]]:
        """``(chunk, checked tables)`` for every chunk, in source order."""
        chunks = iter(chunks)
        while window := list(itertools.islice(chunks, self.window)):
            checked = self._check(window)
            for chunk in window:
                yield chunk, checked.get(chunk.index, {})

    def _check(self, window: list[SourceChunk]) -> dict[int, dict[str, CheckedTable]]:
        from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

        items = [(chunk.index, table, pickle.dumps(rows)) for chunk in window
                 for table, rows in chunk.tables.items() if table in self.contracts]
        if not items:
            return {}
        schema = StructType([StructField("chunk", LongType()), StructField("table", StringType()),
                             StructField("rows", BinaryType())])
        out = StructType([StructField("chunk", LongType()), StructField("table", StringType()),
                          StructField("checked", BinaryType())])
        context = self.spark.sparkContext
        context.setJobGroup(JOB_GROUP, f"check {len(window)} chunks from chunk {window[0].index}")
        try:
            frame = self.spark.createDataFrame(context.parallelize(items, numSlices=len(items)), schema)
            result = frame.mapInArrow(check_batches(self.contracts), out).toArrow()
        finally:
            context.setLocalProperty("spark.jobGroup.id", None)
        found: dict[int, dict[str, CheckedTable]] = {}
        for index, table, payload in zip(result.column("chunk").to_pylist(), result.column("table").to_pylist(),
                                         result.column("checked").to_pylist(), strict=True):
            found.setdefault(index, {})[table] = pickle.loads(payload)  # noqa: S301 - this job's own results
        return found
