"""``medguard_generalize``: coarsen a value: an age to a 5-year band (``90+`` above 89), a ZIP to 3 digits, a date
to its year.

:func:`age_bands` is the one place ages become bands: the operator, the risk gate's wider bands and the
synthetic deidentified zone of the analytics tests all call it. :func:`top_code_ages` pools ages of 90 and over
in a column published as it is (a research table's ``age``). ZIP prefixes HIPAA Safe Harbor counts as low
population become ``000``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage_security.deid.operators._base import MedguardOperator, need
from storage_security.deid.operators._dates import parse_date, to_timestamps

# HIPAA Safe Harbor: 3-digit ZIP prefixes whose area held 20,000 people or fewer (2000 Census) become 000.
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831",
                             "878", "879", "884", "890", "893"})
OLDEST_BAND = 90  # Safe Harbor: every age from 90 up is one band, "90+"


def age_bands(ages: pa.Array, width: int = 5) -> pa.Array:
    """Ages (whole years) as ``width``-year bands: ``"40-44"``; 90 and over ``"90+"``; below 0 as 0; null stays null.

    No band reaches past 89 (``"80-89"`` at width 20), so a band never mixes ages under and over 90.
    """
    if width < 1:
        raise ValueError("an age band is at least 1 year wide")
    years = pc.max_element_wise(pc.cast(ages, pa.int64()), 0, skip_nulls=False)
    low = pc.multiply(pc.divide(years, width), width)
    high = pc.min_element_wise(pc.add(low, width - 1), OLDEST_BAND - 1, skip_nulls=False)
    band = pc.binary_join_element_wise(pc.cast(low, pa.string()), pc.cast(high, pa.string()), "-")
    return pc.if_else(pc.greater_equal(years, OLDEST_BAND), f"{OLDEST_BAND}+", band)


_AGE_NAME = re.compile(r"(?<![a-z])age(?![a-z])|(?<=[a-z])Age(?![a-z])")
_LEADING_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)")


def is_age_column(name: str) -> bool:
    """Whether a column's name says it holds ages: ``age``, ``Age``, ``age_years``, ``patient_age``,
    ``age_at_diagnosis``, ``patientAge`` — the word *age* on its own, not inside ``stage``, ``dosage`` or ``page``."""
    return bool(_AGE_NAME.search(name) or _AGE_NAME.search(name.lower()))


def top_code_ages(values: pa.Array) -> tuple[pa.Array, int]:
    """Safe Harbor's oldest category in a column of ages: every age of 90 and over becomes one value.

    Numbers become 90 (the column stays numeric, so a model can still use it; 90 reads "90 or older"); text whose
    leading number is 90 or more ("93", "101 years") becomes ``"90+"``, as :func:`age_bands` writes it. Anything
    else (a band, a null, words) is left as it is. Returns the column and how many values were pooled.
    """
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        old = pc.greater_equal(values, pa.scalar(OLDEST_BAND).cast(values.type))
        pooled = int(pc.sum(old).as_py() or 0)
        return pc.if_else(old, pa.scalar(OLDEST_BAND).cast(values.type), values), pooled
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values, 0
    texts = values.to_pylist()
    out, pooled = [], 0
    for text in texts:
        found = _LEADING_NUMBER.match(text) if text is not None else None
        if found and float(found.group(1)) >= OLDEST_BAND and text.strip() != f"{OLDEST_BAND}+":
            out.append(f"{OLDEST_BAND}+")
            pooled += 1
        else:
            out.append(text)
    return pa.array(out, values.type), pooled


def ages_at(births: pa.Array, reference: date) -> pa.Array:
    """The age in whole years at ``reference`` of each birth date (a date, timestamp or ISO string column)."""
    stamps = to_timestamps(births)
    month, day = pc.month(stamps), pc.day(stamps)
    before_birthday = pc.or_(pc.greater(month, reference.month),
                             pc.and_(pc.equal(month, reference.month), pc.greater(day, reference.day)))
    return pc.subtract(pc.subtract(reference.year, pc.year(stamps)), pc.cast(before_birthday, pa.int64()))


def zip3_column(values: pa.Array) -> pa.Array:
    """The first three digits of each ZIP (``000`` for a restricted prefix); null where it is no ZIP."""
    digits = pc.replace_substring_regex(values.cast(pa.string()), pattern=r"\D", replacement="")
    length = pc.utf8_length(digits)
    # A leading zero lost on the way through a spreadsheet or an integer column: 2134 is ZIP 02134.
    digits = pc.if_else(pc.is_in(length, pa.array([3, 4], length.type)),
                        pc.utf8_lpad(digits, width=5, padding="0"), digits)
    prefix = pc.utf8_slice_codeunits(digits, 0, 3)
    prefix = pc.if_else(pc.is_in(prefix, pa.array(sorted(RESTRICTED_ZIP3))), "000", prefix)
    is_zip = pc.is_in(pc.utf8_length(digits), pa.array([5, 9], length.type))
    return pc.if_else(is_zip, prefix, pa.scalar(None, pa.string()))


def zip3(value: Any) -> str | None:
    """One ZIP's first three digits, as :func:`zip3_column` gives them."""
    return None if value is None else zip3_column(pa.array([str(value)])).to_pylist()[0]


class GeneralizeOperator(MedguardOperator):
    """Coarsen by ``kind``: ``age`` (→ band, 90+), ``zip`` (→ 3 digits / 000), ``date`` (→ year).

    params: ``kind``; for ``age`` also ``width`` (default 5) and ``reference_date``: with it the values are birth
    dates and their age at that date is banded, without it they are ages. In a note an unusable value becomes
    ``[AGE]``, ``[ZIP]`` or ``[DATE]``; in a column, null (a column of years is integers).
    """

    NAME = "medguard_generalize"
    KINDS = ("age", "zip", "date")

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = need(params, "kind")
        if params["kind"] not in self.KINDS:
            raise ValueError(f"generalize 'kind' must be one of {self.KINDS}")
        width = params.get("width", 5)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError("generalize 'width' must be a positive integer")
        reference = params.get("reference_date")
        if reference is not None and not isinstance(reference, date):
            raise ValueError("generalize 'reference_date' must be a date")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        kind = params["kind"]
        if kind == "zip":
            return zip3(text) or "[ZIP]"
        parsed = parse_date(text)
        if kind == "date":
            return str(parsed[0].year) if parsed else "[DATE]"
        if params.get("reference_date") is not None:
            value = pa.array([parsed[0] if parsed else None], pa.timestamp("us"))
        else:
            value = pa.array([text])
        return self.operate_column(value, params).to_pylist()[0] or "[AGE]"

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        params = params or {}
        kind = params["kind"]
        if kind == "zip":
            return zip3_column(values)
        if kind == "date":
            return pc.year(to_timestamps(values))
        reference = params.get("reference_date")
        return age_bands(ages_at(values, reference) if reference is not None else _ages(values),
                         params.get("width", 5))


def _ages(values: pa.Array) -> pa.Array:
    """Ages given as numbers, or as text holding one ("47", "47 years"); null where there is none."""
    if pa.types.is_integer(values.type):
        return values
    if pa.types.is_floating(values.type):
        return pc.cast(pc.floor(values), pa.int64())
    digits = pc.replace_substring_regex(values.cast(pa.string()), pattern=r"\D", replacement="")
    digits = pc.if_else(pc.equal(digits, ""), pa.scalar(None, pa.string()), digits)
    return pc.cast(digits, pa.int64())
