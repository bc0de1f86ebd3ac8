"""Dates as the operators meet them: written out in a note (many formats), or a column of a structured table."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DATE_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%m/%d/%Y", "%m-%d-%Y", "%B %d, %Y",
                "%b %d, %Y", "%d %b %Y", "%d %B %Y", "%b. %d, %Y", "%B %d %Y", "%m/%d/%y", "%B %Y", "%b %Y")
MAX_SHIFT_DAYS = 365
_DAY = 86_400


def parse_date(text: str) -> tuple[datetime, str] | None:
    """``text`` as a datetime and the format it was written in, or None."""
    cleaned = text.strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt), fmt
        except ValueError:
            continue
    return None


def shift_text_date(text: str, days: int) -> str | None:
    """The date in ``text`` moved by ``days``, in the format it was written in; None when it is not a full date."""
    parsed = parse_date(text)
    if parsed is None or "%d" not in parsed[1]:
        return None
    return (parsed[0] + timedelta(days=days)).strftime(parsed[1])


def to_timestamps(values: pa.Array) -> pa.Array:
    """A column of dates as timestamps: ISO strings parsed, dates at midnight, timestamps as they are.

    Raises:
        ValueError: the column holds neither dates, timestamps nor date strings (or a string that is no date).
    """
    if pa.types.is_timestamp(values.type):
        return values
    if pa.types.is_date(values.type):
        return pc.cast(values, pa.timestamp("us"))
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.timestamp("us"))
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise ValueError(f"a column of {values.type} holds no dates")
    try:
        return pc.cast(pc.replace_substring_regex(values, pattern="Z$", replacement=""), pa.timestamp("us"))
    except pa.ArrowInvalid:
        # Arrow's parser takes ISO 8601 without a UTC offset only; pandas reads the rest, value by value
        # (an offset is dropped: the wall-clock time is kept, as the shifted text keeps it).
        try:
            stamps = [None if v is None else pd.Timestamp(v).tz_localize(None).to_pydatetime()
                      for v in values.to_pylist()]
        except ValueError as exc:
            raise ValueError(f"not a date: {exc}") from None
        return pa.array(stamps, pa.timestamp("us"))


def shift_column(values: pa.Array, days: int | pa.Array) -> pa.Array:
    """Each date of ``values`` moved by ``days`` (one offset, or one per row), kept in its type.

    ISO strings stay strings (``YYYY-MM-DD``, or ``YYYY-MM-DDTHH:MM:SS`` with the ``Z`` they had), dates stay
    dates, timestamps keep their unit and time zone. A null value or a null offset gives null.
    """
    if isinstance(days, int):
        offset: pa.Array | pa.Scalar = pa.scalar(days * _DAY, pa.duration("s"))
    else:
        offset = pc.cast(pc.multiply(pc.cast(days, pa.int64()), _DAY), pa.duration("s"))
    if pa.types.is_timestamp(values.type):
        return pc.add(values, offset)
    moved = pc.add(to_timestamps(values), offset)
    if pa.types.is_date(values.type):
        return pc.cast(moved, values.type)
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    seconds = pc.cast(moved, pa.timestamp("s"), safe=False)  # the written form has no fraction of a second
    with_time = pc.binary_join_element_wise(pc.strftime(seconds, "%Y-%m-%dT%H:%M:%S"),
                                            pc.if_else(pc.ends_with(values, "Z"), "Z", ""), "")
    return pc.if_else(pc.equal(pc.utf8_length(values), 10), pc.strftime(seconds, "%Y-%m-%d"), with_time)
