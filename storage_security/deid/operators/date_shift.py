"""``medguard_date_shift``: a date moved by the patient's keyed offset, written back in the form it came in.

The same patient always gets the same offset (±1..365 days, never 0: :meth:`MaskingKeys.shift_days`), so the
intervals between a patient's dates survive.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from storage_security.deid.operators._base import MedguardOperator, need
from storage_security.deid.operators._dates import MAX_SHIFT_DAYS, shift_column, shift_text_date


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
        return shifted if shifted is not None else "[DATE]"

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        days = (params or {})["days"]
        if isinstance(days, pa.ChunkedArray):
            days = days.combine_chunks()
        return shift_column(values, days)
