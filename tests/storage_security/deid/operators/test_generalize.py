"""medguard_generalize: ages to bands (the one age-band function), ZIPs to three digits, dates to years."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from storage_security.deid.operators import (
    GeneralizeOperator,
    age_bands,
    ages_at,
    is_age_column,
    top_code_ages,
    zip3,
    zip3_column,
)

TEXT_CASES = [
    ("93", {"kind": "age"}, "90+"),
    ("47", {"kind": "age"}, "45-49"),
    ("47 years", {"kind": "age", "width": 10}, "40-49"),
    ("85", {"kind": "age", "width": 20}, "80-89"),          # no band reaches past 89
    ("unknown", {"kind": "age"}, "[AGE]"),
    ("01/02/1980", {"kind": "age", "reference_date": date(2025, 1, 1)}, "40-44"),
    ("10059-1234", {"kind": "zip"}, "100"),
    ("03601", {"kind": "zip"}, "000"),                     # a HIPAA low-population prefix
    ("12", {"kind": "zip"}, "[ZIP]"),
    ("November 02, 2024", {"kind": "date"}, "2024"),
    ("soon", {"kind": "date"}, "[DATE]"),
]


@pytest.mark.parametrize(("text", "params", "expected"), TEXT_CASES)
def test_when_a_mention_is_generalized_then_it_is_coarsened(text, params, expected):
    op = GeneralizeOperator()
    op.validate(params)
    assert op.operate(text, params) == expected


@pytest.mark.parametrize(("ages", "width", "bands"), [
    ([0, 4, 5, 44, 45, 89, 90, 104], 5, ["0-4", "0-4", "5-9", "40-44", "45-49", "85-89", "90+", "90+"]),
    ([44, 47, 85], 10, ["40-49", "40-49", "80-89"]),
    ([-1, None], 5, ["0-4", None]),
])
def test_when_ages_are_banded_then_bands_are_width_years_and_90_plus(ages, width, bands):
    assert age_bands(pa.array(ages, pa.int64()), width).to_pylist() == bands


@pytest.mark.parametrize(("birth", "band"), [
    (date(1980, 1, 2), "40-44"), (date(1980, 1, 1), "45-49"), (date(1934, 12, 31), "90+"), (date(2024, 6, 1), "0-4"),
    (None, None),
])
def test_when_birth_dates_are_banded_then_the_age_counts_from_the_reference_date(birth, band):
    op, params = GeneralizeOperator(), {"kind": "age", "reference_date": date(2025, 1, 1)}
    op.validate(params)
    assert op.operate_column(pa.array([birth], pa.date32()), params).to_pylist() == [band]
    as_text = pa.array([None if birth is None else birth.isoformat()])
    assert op.operate_column(as_text, params).to_pylist() == [band]


def test_when_a_birthday_is_on_the_reference_date_then_the_year_counts():
    births = pa.array([date(2000, 1, 1), date(2000, 1, 2), date(2000, 2, 1)])
    assert ages_at(births, date(2025, 1, 1)).to_pylist() == [25, 24, 24]


def test_when_zips_are_generalized_then_restricted_prefixes_become_000():
    values = ["60659", "82301", "8930", "12", None]
    assert [zip3(z) for z in values] == ["606", "000", "089", None, None]
    assert zip3_column(pa.array(values)).to_pylist() == ["606", "000", "089", None, None]
    assert zip3_column(pa.array([2134, 60659])).to_pylist() == ["021", "606"]  # a lost leading zero


@pytest.mark.parametrize(("values", "params", "expected"), [
    (pa.array(["2024-11-02", "2023-03-22T09:31:41Z", None]), {"kind": "date"}, [2024, 2023, None]),
    (pa.array([date(1999, 12, 31)]), {"kind": "date"}, [1999]),
    (pa.array([47, 93, None]), {"kind": "age"}, ["45-49", "90+", None]),
    (pa.array(["47", "n/a"]), {"kind": "age"}, ["45-49", None]),
    (pa.array([47.9]), {"kind": "age"}, ["45-49"]),
    (pa.array(["10059", "03601"]), {"kind": "zip"}, ["100", "000"]),
])
def test_when_a_column_is_generalized_then_nulls_stay_null(values, params, expected):
    assert GeneralizeOperator().operate_column(values, params).to_pylist() == expected


@pytest.mark.parametrize("params", [{"kind": "height"}, {}, {"kind": "age", "width": 0},
                                    {"kind": "age", "reference_date": "2025-01-01"}])
def test_when_params_are_invalid_then_validate_refuses(params):
    with pytest.raises(ValueError):
        GeneralizeOperator().validate(params)


@pytest.mark.parametrize(("name", "ages"), [("age", True), ("Age", True), ("AGE", True), ("patient_age", True),
                                            ("age_at_diagnosis", True), ("patientAge", True), ("stage", False),
                                            ("dosage", False), ("page", False), ("average", False)])
def test_when_a_column_name_is_read_then_only_the_word_age_marks_it_as_ages(name, ages):
    assert is_age_column(name) is ages


def test_when_ages_of_90_and_over_are_top_coded_then_numbers_become_90_and_text_90_plus():
    numbers, pooled = top_code_ages(pa.array([63, 93, 101, None, 89, 90]))
    assert numbers.to_pylist() == [63, 90, 90, None, 89, 90] and pooled == 3
    floats, pooled = top_code_ages(pa.array([60.667, 95.5, None]))
    assert floats.to_pylist() == [60.667, 90.0, None] and pooled == 1
    texts, pooled = top_code_ages(pa.array(["93", "101 years", "85-89", "90+", "unknown", None]))
    assert texts.to_pylist() == ["90+", "90+", "85-89", "90+", "unknown", None] and pooled == 2
