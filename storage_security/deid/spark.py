"""The Spark path of de-identification: PHI detection in notes and structured masking on executors.

Detection is the expensive part (a spaCy model over every note), so it is what runs on the cluster:
:func:`detect_spans_spark` adds a ``phi_spans`` column (JSON list of ``{start, end, label, score}``) with
``mapInArrow``; each executor's Python worker builds its AnalyzerEngine once, on the first batch, and reuses it
for every later batch. The surrogates themselves are keyed: keys never go to executors, so the spans come back
and :class:`~storage_security.deid.masking.NoteMasker` applies them where the keys are.

Structured columns (``compute=spark``): :func:`mask_table_spark` runs
:func:`~storage_security.deid.masking.mask_table` per Arrow batch with ``mapInArrow``. Its keyed operators
(pseudonyms, date offsets) need the pseudonym keys, which each executor unwraps from its own key provider, built
from settings without their secrets (:func:`pipeline.spark.executor_settings`); tasks carry no key. The risk gate
counts over the whole release, so it stays on the driver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

SPANS_COLUMN = "phi_spans"

__all__ = ["SPANS_COLUMN", "detect_notes", "detect_spans_spark", "mask_table_spark", "pseudonym_keys_on_executor",
           "spans_from_json"]

_executor_detector: Any = None


def _detector() -> Any:
    # One engine per executor Python worker, built on first use (never per batch or per row).
    global _executor_detector
    if _executor_detector is None:
        from storage_security.deid.detection import PhiDetector

        _executor_detector = PhiDetector("medguard")
    return _executor_detector


def _detect_batches(batches: Iterator[Any], text_column: str) -> Iterator[Any]:
    import pyarrow as pa

    detector = _detector()
    for batch in batches:
        texts = batch.column(text_column).to_pylist()
        present = [t if t is not None else "" for t in texts]
        spans = detector.detect_batch(present)
        encoded = [json.dumps([{**s.to_dict(), "recognizer": s.recognizer} for s in found]) for found in spans]
        yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(encoded, pa.string())],
                                         names=[*batch.schema.names, SPANS_COLUMN])


def detect_spans_spark(frame: Any, text_column: str = "text") -> Any:
    """``frame`` (a Spark DataFrame) with a ``phi_spans`` JSON column of the PHI found in ``text_column``."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([*frame.schema.fields, StructField(SPANS_COLUMN, StringType(), True)])
    return frame.mapInArrow(lambda batches: _detect_batches(batches, text_column), schema)


def spans_from_json(encoded: str | None) -> list[Any]:
    """The :class:`~storage_security.deid.detection.PhiSpan` list of one ``phi_spans`` cell."""
    from storage_security.deid.detection import PhiSpan

    return [PhiSpan(s["start"], s["end"], s["label"], float(s["score"]), s.get("recognizer", ""))
            for s in json.loads(encoded or "[]")]


def detect_notes(settings: Any, texts: list[str | None]) -> list[list[Any]]:
    """The PHI spans of each text, detected on Spark (order kept)."""
    import pandas as pd

    from pipeline.spark import get_spark

    spark = get_spark(settings)
    local = pd.DataFrame({"_row": range(len(texts)), "text": texts})
    partitions = max(1, min(spark.sparkContext.defaultParallelism * 4, len(texts) // 200 or 1))
    frame = spark.createDataFrame(local).repartition(partitions)
    found = detect_spans_spark(frame).select("_row", SPANS_COLUMN).toPandas().sort_values("_row")
    return [spans_from_json(v) for v in found[SPANS_COLUMN]]


# structured columns ---------------------------------------------------------------------------------------------

MASK_JOB_GROUP = "medguard-deid-mask"
_executor_keys: dict[str, Any] = {}


def pseudonym_keys_on_executor(fields: dict[str, Any]) -> Any:
    """The lake's pseudonym keys (:class:`~storage_security.crypto.pseudonyms.PseudonymKeys`) on an executor.

    Built once per executor Python worker from its own key provider and the settings of
    :func:`pipeline.spark.executor_settings`; the keys are unwrapped together, in one provider request, when the
    first is needed. No key travels with a task.
    """
    from pipeline.lake import Lake
    from pipeline.spark import settings_on_executor
    from storage_security.crypto.pseudonyms import PseudonymKeys
    from storage_security.keys.dek_store import DekStore
    from storage_security.keys.providers import provider_from_settings

    key = json.dumps(fields, sort_keys=True)
    if key not in _executor_keys:
        settings = settings_on_executor(fields)
        _executor_keys[key] = PseudonymKeys(provider_from_settings(settings), DekStore(Lake(settings)),
                                            kek_name=settings.vault.kek_name)
    return _executor_keys[key]


def mask_batches(fields: dict[str, Any], rules: dict[str, dict[str, Any]], reference_date: Any) -> Any:
    """The ``mapInArrow`` function of structured masking: raw rows in, ``(first_row, masked)`` out.

    ``masked`` is the partition's :func:`~storage_security.deid.masking.mask_table` result as an Arrow IPC stream
    (its pandas types ride in the schema's metadata), so the driver rebuilds exactly what the in-process path makes.
    ``_mg_row`` (each row's position in the table) orders the partitions' results.
    """

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from storage_security.deid.masking import mask_table
        from storage_security.deid.operators import MaskingKeys

        keys = MaskingKeys(pseudonym_keys_on_executor(fields).get)
        for batch in batches:
            if not batch.num_rows:
                continue
            first = batch.column("_mg_row")[0].as_py()
            frame = pa.Table.from_batches([batch]).drop_columns(["_mg_row"]).to_pandas()
            masked = pa.Table.from_pandas(mask_table(frame, rules, keys, reference_date=reference_date),
                                          preserve_index=False)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, masked.schema) as writer:
                writer.write_table(masked)
            payload = pa.array([sink.getvalue().to_pybytes()], pa.binary())
            yield pa.RecordBatch.from_arrays([pa.array([first], pa.int64()), payload], names=["first_row", "masked"])

    return run


def mask_table_spark(settings: Any, frame: Any, rules: dict[str, dict[str, Any]], *, reference_date: Any) -> Any:
    """:func:`~storage_security.deid.masking.mask_table` of a large table (pandas) on Spark's executors.

    Each executor masks its slices of the table with keys it builds from its own provider
    (:func:`pseudonym_keys_on_executor`: no key or secret travels with a task). Masking is row by row (a pseudonym,
    a patient's date offset, a generalisation), so slices give what the whole table gives; the risk gate, which
    counts over the whole release, stays with the caller. Notes are not masked here (their surrogates avoid the
    release's real names, which the driver holds): their rules go to the note path.

    Returns:
        The masked table (pandas), rows in the order of ``frame``: what ``mask_table`` returns in-process.
    """
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql.types import BinaryType, LongType, StructField, StructType

    from pipeline.spark import executor_settings, get_spark

    if any(rule.get("op") == "notes" for rule in rules.values()):
        raise ValueError("mask_table_spark masks structured columns; notes go through the NoteMasker")
    spark = get_spark(settings)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("_mg_row", pa.array(range(table.num_rows), pa.int64()))
    context = spark.sparkContext
    context.setJobGroup(MASK_JOB_GROUP, f"mask {table.num_rows} rows")
    try:
        # Spark cuts the table into contiguous slices, one partition per core of the cluster; each of its Arrow
        # batches (spark.sql.execution.arrow.maxRecordsPerBatch rows) is masked on its own.
        source = spark.createDataFrame(table)
        out = StructType([StructField("first_row", LongType()), StructField("masked", BinaryType())])
        result = source.mapInArrow(mask_batches(executor_settings(settings), rules, reference_date), out).toArrow()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    order = sorted(zip(result.column("first_row").to_pylist(), result.column("masked").to_pylist(), strict=True))
    pieces = [pa.ipc.open_stream(payload).read_all() for _first, payload in order]
    if not pieces:
        return pd.DataFrame()
    return pa.concat_tables(pieces, promote_options="permissive").to_pandas()
