"""Conversions between the tabular types medguard accepts (Arrow, pandas, Spark) and plain Arrow tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

_PLAIN = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}


def plain_type(dtype: pa.DataType) -> pa.DataType:
    """Map Arrow view and large types that some engines return to the plain types every engine reads."""
    if dtype in _PLAIN:
        return _PLAIN[dtype]
    if pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype):
        return pa.binary()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype):
        return pa.list_(plain_type(dtype.value_type))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, plain_type(f.type), f.nullable) for f in dtype])
    return dtype


def plain_table(table: pa.Table) -> pa.Table:
    """Cast a table to plain Arrow types so that results compare equal whichever engine produced them."""
    schema = pa.schema([pa.field(f.name, plain_type(f.type), f.nullable) for f in table.schema])
    return table if schema.equals(table.schema) else table.cast(schema)


def is_spark_dataframe(data: Any) -> bool:
    """True for a pyspark DataFrame (classic or Connect) without importing pyspark eagerly."""
    return type(data).__module__.startswith("pyspark.sql") and hasattr(data, "toArrow")


def to_arrow(data: Any) -> pa.Table | pa.RecordBatchReader:
    """Accept a pyarrow Table/RecordBatch/RecordBatchReader, a pandas or Spark DataFrame, or a list of dicts.

    A RecordBatchReader is passed through unchanged so that large writes stream with bounded memory.

    Raises:
        TypeError: the data is of none of those types.
    """
    if isinstance(data, pa.Table | pa.RecordBatchReader):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if is_spark_dataframe(data):
        return data.toArrow()
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return pa.Table.from_pylist(data)
    raise TypeError(
        f"cannot write {type(data).__name__}: pass a pyarrow Table, RecordBatch or RecordBatchReader, "
        "a pandas or Spark DataFrame, or a list of dicts"
    )
