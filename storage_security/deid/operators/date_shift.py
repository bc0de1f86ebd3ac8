"""``medguard_date_shift``: a date moved by the patient's keyed offset, written back in the form it came in.

The same patient always gets the same offset (±1..365 days, never 0: :meth:`MaskingKeys.shift_days`), so the
intervals between a patient's dates survive. The time of day is coarsened to the hour it falls in
(:data:`TIME_RESOLUTION`): an exact admission minute and second (an ambulance run at 03:17:42) is as telling as the
date, while a length of stay or an order-to-result time keeps its hours.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage_security.deid.operators._base import MedguardOperator, need
from storage_security.deid.operators._dates import MAX_SHIFT_DAYS, parse_date, shift_column, shift_text_date

TIME_RESOLUTION = "hour"
"""A shifted time keeps its hour; minutes and seconds become 0 (a date with no time is left as it is)."""


class DateShiftOperator(MedguardOperator):
    """Move a date by ``params["days"]``; an unparseable date in a note becomes ``[DATE]``.

    params: ``days``, a non-zero number of days (for a note, or a whole column), or for a column an integer
    array of each row's offset (a null offset gives a null date).
    """

    NAME = "medguard_date_shift"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        days = need(params, "days")["days"]
        if isinstance(days, pa.Array | pa.ChunkedArray):
            if not pa.types.is_integer(days.type):
                raise ValueError("date shift 'days' per row must be integers")
        elif (not isinstance(days, int) or isinstance(days, bool) or days == 0
              or abs(days) > 10 * MAX_SHIFT_DAYS):
            raise ValueError("date shift 'days' must be a non-zero integer")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        shifted = shift_text_date(text, (params or {})["days"])
        if shifted is None:
            return "[DATE]"
        parsed = parse_date(shifted)
        if parsed is not None and "%M" in parsed[1]:
            return _to_hour(parsed[0]).strftime(parsed[1])
        return shifted

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        days = (params or {})["days"]
        if isinstance(days, pa.ChunkedArray):
            days = days.combine_chunks()
        return _coarsen_times(shift_column(values, days))


def _to_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _coarsen_times(values: pa.Array) -> pa.Array:
    """Times of day floored to the hour, in the column's own type (ISO strings keep their form and ``Z``)."""
    if pa.types.is_timestamp(values.type):
        return pc.floor_temporal(values, unit=TIME_RESOLUTION)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values  # dates have no time of day
    timed = pc.greater(pc.utf8_length(values), 10)
    floored = pc.replace_substring_regex(values, pattern=r"^(\d{4}-\d{2}-\d{2}T\d{2}):\d{2}:\d{2}",
                                         replacement=r"\1:00:00")
    return pc.if_else(timed, floored, values)
