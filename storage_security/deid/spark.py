"""The Spark path of de-identification: PHI detection in notes on executors, one Presidio engine per executor.

Detection is the expensive part (a spaCy model over every note), so it is what runs on the cluster:
:func:`detect_spans_spark` adds a ``phi_spans`` column (JSON list of ``{start, end, label, score}``) with
``mapInArrow``; each executor's Python worker builds its AnalyzerEngine once, on the first batch, and reuses it
for every later batch. The surrogates themselves are keyed: keys never go to executors, so the spans come back
and :class:`~storage_security.deid.masking.NoteMasker` applies them where the keys are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

SPANS_COLUMN = "phi_spans"

__all__ = ["SPANS_COLUMN", "detect_notes", "detect_spans_spark", "spans_from_json"]

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
