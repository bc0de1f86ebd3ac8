"""medguard_date_shift: a date moved by the patient's offset, in the form it came in (text, string, date, timestamp)."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import pyarrow as pa
import pytest

from storage_security.deid.operators import DateShiftOperator


@pytest.mark.parametrize(("text", "days", "expected"), [
    ("03/14/2023", 10, "03/24/2023"),
    ("2024-12-30", 5, "2025-01-04"),
    ("November 02, 2024", -2, "October 31, 2024"),
    ("02 Oct 1941", 1, "03 Oct 1941"),
    ("2024-02-28T23:30:00Z", 1, "2024-02-29T23:00:00Z"),  # the time of day coarsened to its hour
    ("last spring", 1, "[DATE]"),
    ("March 2024", 1, "[DATE]"),  # no day: not a full date, so not shifted but hidden
])
def test_when_a_mention_is_shifted_then_its_format_is_kept(text, days, expected):
    op = DateShiftOperator()
    op.validate({"days": days})
    assert op.operate(text, {"days": days}) == expected


@pytest.mark.parametrize(("values", "expected"), [
    (pa.array(["2024-12-30", "2023-03-22T09:31:41Z", "2023-03-22T09:31:41", "2023-03-22T09:31:41.250Z", None]),
     ["2025-01-04", "2023-03-27T09:00:00Z", "2023-03-27T09:00:00", "2023-03-27T09:00:00Z", None]),
    (pa.array(["2020-01-01T08:00:00+02:00"]), ["2020-01-06T08:00:00"]),  # an offset: the wall-clock time is kept
    (pa.array([date(2024, 2, 27), None]), [date(2024, 3, 3), None]),
    (pa.array([datetime(2024, 1, 1, 10)], pa.timestamp("us")), [datetime(2024, 1, 6, 10)]),
])
def test_when_a_column_is_shifted_then_its_type_and_form_are_kept(values, expected):
    out = DateShiftOperator().operate_column(values, {"days": 5})
    assert out.type == values.type and out.to_pylist() == expected


@pytest.mark.parametrize("values", [
    pa.array(["2023-03-22T16:27:32Z", "2023-03-22T03:17:42Z", "2023-03-22"]),
    pa.array(pd.to_datetime(["2023-03-22T16:27:32Z", "2023-03-22T03:17:42Z", None], utc=True)),
])
def test_when_a_time_is_shifted_then_no_minute_or_second_of_the_real_time_survives(values):
    shifted = DateShiftOperator().operate_column(values, {"days": 9}).to_pylist()
    out = pd.to_datetime(pd.Series(shifted), utc=True, format="ISO8601")
    real = pd.to_datetime(pd.Series(values.to_pylist()), utc=True, format="ISO8601")
    timed = real.notna() & (real.dt.minute + real.dt.second > 0)
    assert timed.any()
    assert (out[timed].dt.minute == 0).all() and (out[timed].dt.second == 0).all()
    # the hour and the day move by the shift: a length of stay keeps its hours
    assert ((out[timed] - real[timed].dt.floor("h")) == pd.Timedelta(days=9)).all()


def test_when_a_time_in_a_note_is_shifted_then_it_keeps_only_its_hour():
    assert DateShiftOperator().operate("2023-03-22T16:27:32", {"days": 1}) == "2023-03-23T16:00:00"


def test_when_each_row_has_its_offset_then_each_row_moves_by_its_own():
    stamps = pa.array(pd.to_datetime(["2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z", None], utc=True))
    days = pa.array([3, None, -4])
    op = DateShiftOperator()
    op.validate({"days": days})
    out = op.operate_column(stamps, {"days": days})
    assert out.type == stamps.type
    assert out.to_pylist() == [pd.Timestamp("2024-01-04T10:00:00Z"), None, None]


def test_when_iso_dates_are_shifted_then_mention_and_column_agree():
    texts = ["2024-12-30", "2023-03-22T09:31:41Z"]
    op = DateShiftOperator()
    assert op.operate_column(pa.array(texts), {"days": -40}).to_pylist() == [op.operate(t, {"days": -40})
                                                                              for t in texts]


@pytest.mark.parametrize("params", [{"days": 0}, {}, {"days": 5000}, {"days": "3"}, {"days": True},
                                    {"days": pa.array(["3"])}])
def test_when_the_offset_is_not_a_non_zero_day_count_then_validate_refuses(params):
    with pytest.raises(ValueError):
        DateShiftOperator().validate(params)


def test_when_a_column_holds_no_dates_then_the_shift_refuses():
    with pytest.raises(ValueError):
        DateShiftOperator().operate_column(pa.array(["not a date"]), {"days": 1})
