"""Checking on a Spark cluster: the per-chunk check of ingestion (conform, validate, hash) on executors.

With ``compute=spark`` a batch hands its chunks to :class:`SparkCheckPipeline` instead of
:class:`~ingestion.checking.CheckPipeline`. Chunks go to the cluster a window at a time (two per core of the
cluster; the next window is checked while the loader commits this one), one row per table of a chunk, and are
checked by ``mapInArrow`` with :func:`check_batches`: the same :func:`~ingestion.checking.check_table` the
embedded default runs in-process, keyed record hashes included (each
executor derives the record-hash key from the lake's ``patient`` pseudonym key, unwrapped by its own key provider
once per Python worker; no key travels with a task). The verdicts come back to the driver in source order, where the
batch deduplicates, pseudonymises, seals and commits each chunk as it does in-process, so both paths write the same
tables.

Sealing stays on the driver. Measured in-process on 2,000 patients (keyring provider, 5,000-row chunks, warm
process): checking 66,473 observations takes 0.8 s and sealing their PHI columns 0.8 s; the 2,000 patients 0.02 s
and 0.9 s (before checking was vectorised: 7.4 s and 0.6 s for the observations). So the driver keeps about half of
the per-chunk work. It keeps it because a new patient's DEK must be made, wrapped and recorded once, by one writer,
before any cell uses it, and a sealed append goes through :class:`~storage_security.protected.ProtectedLake`
(manifest, audit), which seals what it is given; moving sealing out needs executors that unwrap their partition's
wrapped DEKs in one provider batch and a ProtectedLake entry point for cells sealed elsewhere.

Records reach executors as they were read (a pickled :class:`~ingestion.sources._base.TableRows` in a binary
column: dicts of source values, or the Parquet reader's Arrow table) and verdicts come back the same way; nothing
is sealed or written on an executor.

Plaintext records pass through Spark: :func:`pipeline.spark.get_spark` turns on ``spark.io.encryption.enabled``
for ``compute=spark``, so the driver streams them to the JVM over an authenticated socket (not a temporary file)
and any spill is encrypted.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from ingestion.checking import CheckedTable, HashKey, check_table
from ingestion.contract import Contract
from ingestion.sources._base import SourceChunk
from pipeline.settings import Settings

__all__ = ["JOB_GROUP", "SparkCheckPipeline", "check_batches"]

JOB_GROUP = "medguard-ingest-check"
_INPUT = pa.schema([("chunk", pa.int64()), ("table", pa.string()), ("rows", pa.binary())])
_OUTPUT = pa.schema([("chunk", pa.int64()), ("table", pa.string()), ("checked", pa.binary())])


def check_batches(contracts: dict[str, Contract], fields: dict[str, Any] | None = None,
                  ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: ``(chunk, table, rows)`` batches in, ``(chunk, table, checked)`` out.

    It calls :func:`~ingestion.checking.check_table` and touches no table or file. With ``fields`` (the settings of
    :func:`pipeline.spark.executor_settings`) it also computes the keyed record hashes: the executor derives the
    record-hash key from the lake's ``patient`` pseudonym key, unwrapped by its own provider once per Python worker
    (:func:`~storage_security.deid.spark.pseudonym_keys_on_executor`); without, the driver hashes.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        hash_key = None
        if fields is not None:
            from storage_security.deid.spark import pseudonym_keys_on_executor

            pseudonymizer = pseudonym_keys_on_executor(fields).get("patient")
            hash_key = HashKey(pseudonymizer.derive_key("record-hash"), version=pseudonymizer.key_version)
        for batch in batches:
            chunks, tables = batch.column("chunk").to_pylist(), batch.column("table").to_pylist()
            payloads = batch.column("rows").to_pylist()
            checked = [pickle.dumps(check_table(contracts[table], pickle.loads(payload), hash_key))  # noqa: S301
                       for table, payload in zip(tables, payloads, strict=True)]  # the driver's own records
            yield pa.RecordBatch.from_arrays([pa.array(chunks, pa.int64()), pa.array(tables, pa.string()),
                                              pa.array(checked, pa.binary())], schema=_OUTPUT)

    return run


class SparkCheckPipeline:
    """Checks a stream of chunks on Spark's executors, in order; the interface of :class:`CheckPipeline`.

    Args:
        settings: the settings whose Spark session (``spark.master``) runs the checks.
        contracts: the contract of every table the source can fill.
        spark: the session (this process's :func:`~pipeline.spark.get_spark` by default).
        window: chunks sent to the cluster at once (two per core of the cluster by default). While the loader seals
            and commits one window the executors check the next, so at most two windows are held in memory.
    """

    def __init__(self, settings: Settings, contracts: dict[str, Contract], *, spark: Any = None,
                 window: int | None = None) -> None:
        if spark is None:
            from pipeline.spark import get_spark

            spark = get_spark(settings)
        self.spark = spark
        self.settings = settings
        self.contracts = contracts
        self.window = window or max(2, 2 * spark.sparkContext.defaultParallelism)
        self._jobs = ThreadPoolExecutor(1, thread_name_prefix="medguard-spark-check")

    def __enter__(self) -> SparkCheckPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        # A window still being checked (the loader stopped early) finishes; nothing is started after it.
        self._jobs.shutdown(wait=True, cancel_futures=True)

    def run(self, chunks: Iterator[SourceChunk]) -> Iterator[tuple[SourceChunk, dict[str, CheckedTable]]]:
        """``(chunk, checked tables)`` for every chunk, in source order."""
        chunks = iter(chunks)
        window = list(itertools.islice(chunks, self.window))
        pending = self._jobs.submit(self._check, window) if window else None
        while window and pending is not None:
            checked = pending.result()
            following = list(itertools.islice(chunks, self.window))
            pending = self._jobs.submit(self._check, following) if following else None
            for chunk in window:
                yield chunk, checked.get(chunk.index, {})
            window = following

    def _check(self, window: list[SourceChunk]) -> dict[int, dict[str, CheckedTable]]:
        from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

        from pipeline.spark import executor_settings

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
            result = frame.mapInArrow(check_batches(self.contracts, executor_settings(self.settings)), out).toArrow()
        finally:
            context.setLocalProperty("spark.jobGroup.id", None)
        found: dict[int, dict[str, CheckedTable]] = {}
        for index, table, payload in zip(result.column("chunk").to_pylist(), result.column("table").to_pylist(),
                                         result.column("checked").to_pylist(), strict=True):
            found.setdefault(index, {})[table] = pickle.loads(payload)  # noqa: S301 - this job's own results
        return found
