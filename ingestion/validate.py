"""Row-level validation of a chunk against its contract, vectorised over Arrow: types first, then the rules.

:func:`conform` turns raw source values into an Arrow table in the contract's types (a value that does not
convert is a ``<column>:type`` violation and becomes null); records that arrive in Arrow (a Parquet batch) are
cast by ``pyarrow.compute`` without a Python object per value. :class:`ChunkValidator` then evaluates every rule
of the contract as one vectorised check over the chunk's columns: required, enumerations, patterns (RE2;
patterns RE2 cannot run are evaluated once per distinct value with ``re``), lengths, ranges, ranges per code,
code systems (once per distinct code), calendar dates and order. Each rule is also a Great Expectations
expectation carrying its medguard rule name (``ssn:pattern``, ``value:range[8480-6]``…) in ``meta``: GX stays
the contract's language, and each chunk's counts are summarised into GX's validation result for the Data Docs.
The verdict of a row is the list of rules it broke.

What is stored with a batch is only counts and pass/fail per expectation, never the offending values (they may
be PHI), in the batch report and in the Data Docs alike.

Code systems (:mod:`ingestion.codes`, the one place they are defined): a column of one fixed system
(``code_system:``, e.g. ``icd10_code``) is checked against that system; a ``codes:`` pair (``code`` with its
row's ``code_system``) is checked against each row's own system, grouped by system, so a record is never rejected
for using another valid system; a system with no offline rules only needs a plausible code.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ingestion import codes
from ingestion.contract import Column, Contract
from ingestion.normalize import normalize_column
from ingestion.sources._base import TableRows

__all__ = ["ChunkResult", "ChunkValidator", "ExpectationOutcome", "conform"]

_DATE = "%Y-%m-%d"
_DATETIME = "%Y-%m-%dT%H:%M:%SZ"
_DATE_RE = r"\d{4}-\d{2}-\d{2}"
_DATETIME_RE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
_CLOCKED_RE = r"\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ"
_LOINC = r"^\d{1,5}-\d$"
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


# conformance ---------------------------------------------------------------------------------------------


def _to_string(value: Any) -> tuple[Any, bool]:
    if value is None or isinstance(value, str):
        return value, True
    if isinstance(value, date | datetime):
        return value.isoformat(), True
    return None, False


def _to_float(value: Any) -> tuple[Any, bool]:
    if value is None:
        return None, True
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None, False
    else:
        try:
            number = float(value)  # Decimal and numpy scalars
        except (TypeError, ValueError):
            return None, False
    if math.isnan(number):
        return None, True  # NaN is a missing value: the required rule speaks for it
    return (number, True) if math.isfinite(number) else (None, False)


def _to_integer(value: Any) -> tuple[Any, bool]:
    number, ok = _to_float(value)
    if not ok or number is None:
        return number, ok
    return (int(number), True) if float(number).is_integer() else (None, False)


def _to_boolean(value: Any) -> tuple[Any, bool]:
    if value is None or isinstance(value, bool):
        return value, True
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True, True
        if lowered in _FALSE:
            return False, True
    if isinstance(value, int) and value in (0, 1):
        return bool(value), True
    return None, False


def _to_json(value: Any) -> tuple[Any, bool]:
    if value is None:
        return None, True
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return None, False
        return value, True
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")), True
    except (TypeError, ValueError):
        return None, False


_CONVERT = {"string": _to_string, "date": _to_string, "datetime": _to_string, "float": _to_float,
            "integer": _to_integer, "boolean": _to_boolean, "json": _to_json}


def conform(rows: TableRows, contract: Contract) -> tuple[pa.Table, dict[int, list[tuple[str, str]]]]:
    """The rows as an Arrow table in the contract's types, and per row index the ``(rule, message)`` type
    violations (a value that does not convert becomes null).

    Records that arrive in Arrow (:attr:`TableRows.arrow`, a Parquet batch) are cast column by column with
    ``pyarrow.compute`` when the source type converts without loss (text to text, integers and floats to
    float, integral floats to integer); any other column, and dict records, go value by value. Whether a date
    names a real day is checked by the validator's ``<column>:format`` rule. Dates and date-times, and columns
    with a ``normalize`` rule (phone, US state, SSN), are brought to their canonical form
    (:mod:`ingestion.normalize`; a value with none is kept as written for the rules to judge); the system column
    of each ``codes`` pair takes its short name when the system is known (:func:`ingestion.codes.map_systems`). A
    column with a
    ``default`` gives it to its nulls (a row whose value did not convert is rejected for its type all the same).
    """
    violations: dict[int, list[tuple[str, str]]] = {}
    arrays = []
    count = len(rows)
    systems = {pair.system for pair in contract.codes}
    for name, column in contract.columns.items():
        if rows.arrow is not None:
            source = rows.arrow.column(name) if name in rows.arrow.column_names else None
            array, bad = _conform_arrow(source, column.type, count)
        else:
            array, bad = _conform_values(list(map(dict.get, rows.rows, repeat(name))), column.type)
        for index in bad:
            violations.setdefault(int(index), []).append((f"{name}:type", f"{name} is not a {column.type}"))
        form = column.normalize or (column.type if column.type in ("date", "datetime") else None)
        if form is not None:
            array = normalize_column(array, form)
        if name in systems:  # a per-row code system, as found: its short name when it is a known one
            array = codes.map_systems(array)
        if column.default is not None and array.null_count:
            array = pc.fill_null(array, pa.scalar(column.default, array.type))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=contract.arrow_schema), violations


def _conform_arrow(source: pa.ChunkedArray | None, kind: str, count: int) -> tuple[pa.Array, Any]:
    """One Arrow column in the contract's type, vectorised where the source type allows; else value by value."""
    target = _ARROW_TYPES[kind]
    if source is None or pa.types.is_null(source.type):
        return pa.nulls(count, target), []
    column = source.combine_chunks() if isinstance(source, pa.ChunkedArray) else source
    if pa.types.is_dictionary(column.type):  # Parquet's dictionary-encoded text: its values
        column = column.dictionary_decode()
    kind_of = column.type
    if kind in ("string", "date", "datetime") and (pa.types.is_string(kind_of) or pa.types.is_large_string(kind_of)):
        return column.cast(pa.string()), []
    if kind == "boolean" and pa.types.is_boolean(kind_of):
        return column, []
    if kind == "integer" and pa.types.is_integer(kind_of) and kind_of.bit_width <= 64 and (
            pa.types.is_signed_integer(kind_of) or kind_of.bit_width < 64):
        return column.cast(pa.int64()), []
    if kind in ("float", "integer") and (pa.types.is_integer(kind_of) or pa.types.is_floating(kind_of)):
        numbers = column.cast(pa.float64())
        infinite = pc.fill_null(pc.is_inf(numbers), False)
        unusable = pc.or_(infinite, pc.fill_null(pc.is_nan(numbers), False))  # NaN: missing, not wrong
        if kind == "integer":
            fractional = pc.fill_null(pc.and_(pc.invert(unusable), pc.not_equal(numbers, pc.floor(numbers))), False)
            too_big = pc.fill_null(pc.greater(pc.abs(numbers), 2.0**63 - 1024), False)
            infinite = pc.or_(pc.or_(infinite, fractional), pc.and_(pc.invert(unusable), too_big))
            unusable = pc.or_(unusable, infinite)
        kept = pc.if_else(unusable, pa.scalar(None, pa.float64()), numbers)
        bad = np.flatnonzero(infinite.to_numpy(zero_copy_only=False))
        return (kept if kind == "float" else kept.cast(pa.int64())), bad.tolist()
    return _conform_values(column.to_pylist(), kind)


def _conform_values(values: list[Any], kind: str) -> tuple[pa.Array, list[int]]:
    if values.count(None) == len(values):  # a column the source never fills (value_text of numeric results…)
        return pa.nulls(len(values), _ARROW_TYPES[kind]), []
    converted, bad = _convert_column(values, kind)
    if kind == "integer":  # beyond int64 is not an integer this pipeline can store
        for index, value in enumerate(converted):
            if value is not None and not -(2**63) <= value < 2**63:
                converted[index] = None
                bad.append(index)
        bad.sort()
    return pa.array(converted, _ARROW_TYPES[kind], from_pandas=True), bad


_ARROW_TYPES = {"string": pa.string(), "float": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(),
                "date": pa.string(), "datetime": pa.string(), "json": pa.string()}


def _convert_column(values: list[Any], kind: str) -> tuple[Any, list[int]]:
    """The converted values of one column and the indices that did not convert."""
    types = set(map(type, values))
    if kind in ("string", "date", "datetime") and types <= {str, type(None)}:
        return values, []
    if kind in ("float", "integer") and types <= {float, int, type(None)}:
        numbers = np.array([math.nan if v is None else v for v in values], dtype="float64")
        bad = np.isinf(numbers)
        if kind == "integer":
            bad |= np.isfinite(numbers) & (numbers != np.floor(numbers))
        if not bad.any():
            return (numbers if kind == "float" else
                    [None if math.isnan(v) else int(v) for v in numbers.tolist()]), []
    convert = _CONVERT[kind]
    converted, bad_rows = [], []
    for index, value in enumerate(values):
        result, ok = convert(value)
        if not ok:
            bad_rows.append(index)
        converted.append(result)
    return converted, bad_rows


# Great Expectations ----------------------------------------------------------------------------------------


@dataclass
class ExpectationOutcome:
    """Counts for one expectation on one chunk (no values)."""

    rule: str
    expectation: str
    column: str | None
    success: bool
    element_count: int
    unexpected_count: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class ChunkResult:
    """The verdicts of one chunk: rules broken per row index, and the per-expectation outcomes."""

    violations: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    gx_success: bool = True


def _describe(kind: str, column: Column | None, name: str, **facts: Any) -> str:
    if kind == "required":
        return f"{name} is required but missing"
    if kind == "enum":
        return f"{name} is not one of {list(facts['values'])}"
    if kind == "pattern":
        return f"{name} does not match the pattern {facts['pattern']}"
    if kind == "format":
        return f"{name} is not a valid {'date (YYYY-MM-DD)' if facts['fmt'] == _DATE else 'timestamp (ISO-8601 UTC)'}"
    if kind == "length":
        return f"{name} has a length outside [{facts['low']}, {facts['high']}]"
    if kind == "range":
        return f"{name} is outside [{facts['low']}, {facts['high']}]"
    if kind == "code_range":
        return f"{name} is outside [{facts['low']:g}, {facts['high']:g}] for {facts['by']} {facts['code']}"
    if kind == "code_system":
        return f"{name} is not a valid {facts['system']}"
    if kind == "order":
        return f"{name} is earlier than {facts['before']}"
    return f"{name} breaks {kind}"


@dataclass
class _Check:
    """One contract rule as a vectorised check: ``bad(table)`` marks the rows that break it."""

    rule: str
    column: str | None
    message: str
    expectation: Any  # the Great Expectations expectation that states the rule (the contract language)
    bad: Callable[[pa.Table], np.ndarray]
    # For a per-code range: (the ranged column's CodedRange, "min"/"max"); rows name the code and its limits.
    ranged: Any = None


def _flags(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as numpy, null counted as False (a missing value breaks no rule but required)."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _matches(column: pa.Array | pa.ChunkedArray, pattern: str) -> pa.Array:
    """``re.search`` of ``pattern`` per value, vectorised (RE2); patterns RE2 lacks run once per distinct value."""
    text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    try:
        return pc.match_substring_regex(text, pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        distinct = pc.unique(text.drop_null())
        compiled = re.compile(pattern)
        good = pa.array([compiled.search(v) is not None for v in distinct.to_pylist()], pa.bool_())
        return pc.if_else(text.is_valid(), pc.is_in(text, distinct.filter(good)), pa.scalar(None, pa.bool_()))


def _once_per_value(column: pa.Array | pa.ChunkedArray,
                    judge: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """``judge`` (a flag per value) over a column; over its distinct values, joined back, when values repeat (a
    visit's id and time on each of its results): hashing is several times cheaper than a regular expression."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(column) >= 4096:
        sample = column.slice(0, 2048)
        if 4 * len(pc.unique(sample)) <= len(sample):
            encoded = pc.dictionary_encode(column)  # one hash pass: the distinct values and where each row's is
            if not len(encoded.dictionary):
                return np.zeros(len(column), dtype=bool)
            at = encoded.indices
            # A null row breaks no rule here (required speaks for it).
            return judge(encoded.dictionary)[pc.fill_null(at, 0).to_numpy(zero_copy_only=False)] & _flags(at.is_valid())
    return judge(column)


def _not_matching(name: str, pattern: str) -> Callable[[pa.Table], np.ndarray]:
    return lambda data: _once_per_value(data.column(name), lambda text: _flags(pc.invert(_matches(text, pattern))))


def _not_a_day(name: str, fmt: str, shape: str) -> Callable[[pa.Table], np.ndarray]:
    # The shape with the clock's bounds (hours 00-23, minutes and seconds 00-59); the calendar is checked once
    # per distinct day: Arrow's strptime rolls 2023-02-30 over to March 2nd, so a real day prints back as written.
    bounded = "^" + (_CLOCKED_RE if shape == _DATETIME_RE else shape) + "$"

    def judge(text: pa.Array) -> np.ndarray:
        shaped = pc.match_substring_regex(text, bounded)
        days = pc.utf8_slice_codeunits(pc.if_else(shaped, text, pa.scalar(None, pa.string())), 0, 10)
        distinct = pc.unique(days.drop_null())
        parsed = pc.strptime(distinct, format=_DATE, unit="s", error_is_null=True)
        real = distinct.filter(_flags(pc.equal(pc.strftime(parsed, format=_DATE), distinct)))
        return _flags(text.is_valid()) & ~(_flags(shaped) & _flags(pc.is_in(days, value_set=real)))

    return lambda data: _once_per_value(data.column(name), judge)


def _not_in_code_system(name: str, system: str) -> Callable[[pa.Table], np.ndarray]:
    return lambda data: codes.invalid_codes(data.column(name), system)


def _not_in_row_system(pair: Any, fixed: dict[str, str]) -> Callable[[pa.Table], np.ndarray]:
    # A code that sits in the column of its system's fixed column (loinc_code beside code) is judged there, by its
    # own rule, and not twice.
    def bad(data: pa.Table) -> np.ndarray:
        code, system = data.column(pair.code), data.column(pair.system)
        skip = np.zeros(data.num_rows, dtype=bool)
        for short, column in fixed.items():
            skip |= _flags(pc.and_(pc.equal(system, short), pc.equal(code, data.column(column))))
        return codes.invalid_codes(code, system, skip=skip)
    return bad


def _out_of_bounds(name: str, low: float | None, high: float | None) -> Callable[[pa.Table], np.ndarray]:
    def bad(data: pa.Table) -> np.ndarray:
        column = data.column(name)
        if pa.types.is_string(column.type):  # a length rule
            column = pc.utf8_length(column)
        flags = np.zeros(data.num_rows, dtype=bool)
        if low is not None:
            flags |= _flags(pc.less(column, low))
        if high is not None:
            flags |= _flags(pc.greater(column, high))
        return flags
    return bad


def _outside_code_limits(rng: Any) -> tuple[Callable[[pa.Table], np.ndarray], Callable[[pa.Table], np.ndarray]]:
    """The min and the max check of a per-code range; they share each chunk's codes and converted values."""
    ranged = list(rng.limits)
    known = pa.array(ranged, pa.string())
    lows = pa.array([rng.bounds(code)[0] for code in ranged], pa.float64())
    highs = pa.array([rng.bounds(code)[1] for code in ranged], pa.float64())
    expected = [rng.unit_of(code) for code in ranged]
    last: list[Any] = [None, None, None]  # the chunk last seen, its limit positions and its values in those units

    def prepared(data: pa.Table) -> tuple[pa.Array, pa.Array]:
        if last[0] is not data:
            at = pc.index_in(pc.cast(data.column(rng.by), pa.string()), value_set=known)
            value = pc.cast(data.column(rng.column), pa.float64())
            if rng.unit is not None and any(expected):
                value = pc.multiply(value, _unit_factors(at, data.column(rng.unit), expected))
            last[:] = [data, at, value]
        return last[1], last[2]

    def below(data: pa.Table) -> np.ndarray:
        at, value = prepared(data)
        return _flags(pc.less(value, pc.take(lows, at)))

    def above(data: pa.Table) -> np.ndarray:
        at, value = prepared(data)
        last[:] = [None, None, None]  # the max check runs after the min check: hold no chunk past it
        return _flags(pc.greater(value, pc.take(highs, at)))
    return below, above


def _unit_factors(at: pa.Array, units: pa.Array | pa.ChunkedArray, expected: list[str | None]) -> pa.Array:
    """Per row, what turns its value into its code's limits' unit: 1 with no unit or the same one, the conversion
    factor of a convertible unit, null (not checked) otherwise. One factor per (code, distinct unit), in a table
    indexed by both: no Python per row."""
    units = units.combine_chunks() if isinstance(units, pa.ChunkedArray) else units
    encoded = pc.dictionary_encode(units)
    written = encoded.dictionary
    table = np.array([[1.0] + [codes.unit_factor(unit, want) if want else 1.0 for unit in written.to_pylist()]
                      for want in expected], dtype=float).reshape(len(expected), len(written) + 1)
    code_at = pc.fill_null(at, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    unit_at = pc.fill_null(pc.add(encoded.indices, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)  # 0: none
    factors = table[code_at, unit_at]
    return pa.array(factors, pa.float64(), mask=np.isnan(factors))


class ChunkValidator:
    """Validates chunks of one contract with ``pyarrow.compute``; Great Expectations states the rules and renders.

    The contract becomes a Great Expectations suite (:meth:`suite`), one expectation per rule with its medguard
    rule name in ``meta``; each expectation is evaluated as a vectorised check over the chunk's Arrow columns
    (types, required, enumerations, patterns, lengths, ranges, ranges per code, code systems, calendar dates,
    order). Running the suite through GX itself cost a third of ingestion's time (pandas, one metric graph per
    chunk); instead, each chunk's counts are summarised into GX's own validation result
    (:meth:`record`), so the Data Docs render as before, from counts only.

    Args:
        contract: the table's contract.
        docs_dir: where Data Docs (HTML) are built; None for no docs.
    """

    def __init__(self, contract: Contract, docs_dir: Path | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        self.contract = contract
        self.docs_dir = docs_dir
        self._stored = 0
        self._checks: list[_Check] | None = None

    def _rules(self) -> list[_Check]:
        if self._checks is None:
            self._checks = _checks(self.contract)
        return self._checks

    def suite(self) -> Any:
        """The contract as a Great Expectations suite (the rule name of each expectation is in its ``meta``)."""
        import great_expectations as gx

        suite = gx.ExpectationSuite(name=f"medguard.{self.contract.table}.{self.contract.fingerprint}")
        for check in self._rules():
            suite.add_expectation(check.expectation)
        return suite

    def validate(self, data: pa.Table | pd.DataFrame) -> ChunkResult:
        """Validate one typed chunk (rows 0..n-1); returns row verdicts and per-expectation counts."""
        if isinstance(data, pd.DataFrame):
            data = pa.Table.from_pandas(data, schema=self.contract.arrow_schema, preserve_index=False)
        result = ChunkResult()
        if data.num_rows == 0:
            return result
        phi = {name for name, col in self.contract.columns.items() if col.phi}
        for check in self._rules():
            message = check.message
            try:
                bad = check.bad(data)
            except Exception as exc:  # a check that could not run fails the whole chunk's rows for its rule, loudly
                bad = np.ones(data.num_rows, dtype=bool)
                message = f"{message} (the check itself failed: {exc})"
            rows = np.flatnonzero(bad)
            result.outcomes.append(ExpectationOutcome(
                rule=check.rule, expectation=check.expectation.expectation_type, column=check.column,
                success=not len(rows), element_count=data.num_rows, unexpected_count=len(rows)))
            if not len(rows):
                continue
            result.gx_success = False
            take = pa.array(rows, pa.int64())
            shown = (data.column(check.column).take(take).to_pylist()
                     if check.column and check.column not in phi and not check.rule.endswith(":required") else None)
            by_code = data.column(check.ranged.by).take(take).to_pylist() if check.ranged is not None else None
            for position, row in enumerate(rows.tolist()):
                row_rule, text = check.rule, message
                if by_code is not None:  # name the code and its limits, as the contract states them
                    code = by_code[position]
                    low, high = check.ranged.bounds(code)
                    row_rule = f"{check.ranged.column}:range[{code}]"
                    text = _describe("code_range", None, check.ranged.column, low=low, high=high,
                                     by=check.ranged.by, code=code)
                if shown is not None:
                    text = f"{text} (value {str(shown[position])[:60]!r})"
                result.violations.setdefault(row, []).append((row_rule, text))
        return result

    def record(self, result: ChunkResult, run_name: str) -> None:
        """Keep a chunk's counts for the Data Docs as a Great Expectations validation result (no values)."""
        if self.docs_dir is None or not result.outcomes:
            return
        from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        context = _gx_context(self.contract.table, str(self.docs_dir))
        by_rule = {check.rule: check for check in self._rules()}
        results = []
        for outcome in result.outcomes:
            check = by_rule[outcome.rule]
            total = outcome.element_count
            results.append(ExpectationValidationResult(
                success=outcome.success, expectation_config=check.expectation.configuration,
                result={"element_count": total, "unexpected_count": outcome.unexpected_count,
                        "unexpected_percent": 100.0 * outcome.unexpected_count / total if total else 0.0,
                        "missing_count": 0, "missing_percent": 0.0}))
        passed = sum(1 for r in results if r.success)
        name = f"medguard.{self.contract.table}.{self.contract.fingerprint}"
        validation = ExpectationSuiteValidationResult(
            success=passed == len(results), results=results, suite_name=name,
            statistics={"evaluated_expectations": len(results), "successful_expectations": passed,
                        "unsuccessful_expectations": len(results) - passed,
                        "success_percent": 100.0 * passed / len(results) if results else 100.0},
            meta={"run_id": RunIdentifier(run_name=run_name), "active_batch_definition": None,
                  "checked_by": "medguard ingestion.validate (pyarrow.compute)"})
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=name),
            run_id=RunIdentifier(run_name=run_name), batch_identifier=self.contract.table)
        context.validation_results_store.set(key, validation)
        self._stored += 1

    def build_docs(self) -> Path | None:
        """Render the Data Docs of everything validated so far; returns the site's index.html."""
        if self.docs_dir is None or not self._stored:
            return None
        _gx_context(self.contract.table, str(self.docs_dir)).build_data_docs(site_names=["medguard"])
        index = self.docs_dir / "index.html"
        return index if index.is_file() else None


def _checks(contract: Contract) -> list[_Check]:
    """The contract's rules in suite order, each with its expectation and its vectorised check."""
    import great_expectations.expectations as gxe

    checks: list[_Check] = []

    def add(expectation: Any, rule: str, column: str | None, message: str, bad: Callable[[pa.Table], np.ndarray],
            ranged: Any = None) -> None:
        expectation.meta = {"rule": rule, "message": message}
        checks.append(_Check(rule, column, message, expectation, bad, ranged))

    for name, col in contract.columns.items():
        if col.required:
            add(gxe.ExpectColumnValuesToNotBeNull(column=name), f"{name}:required", name,
                _describe("required", col, name), lambda data, n=name: _flags(data.column(n).is_null()))
        if col.enum:
            values = pa.array(list(col.enum), pa.string())
            add(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(col.enum)), f"{name}:enum", name,
                _describe("enum", col, name, values=col.enum),
                lambda data, n=name, v=values: _flags(data.column(n).is_valid())
                & ~_flags(pc.is_in(pc.cast(data.column(n), pa.string()), value_set=v)))
        if col.pattern:
            add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=col.pattern), f"{name}:pattern", name,
                _describe("pattern", col, name, pattern=col.pattern), _not_matching(name, col.pattern))
        if col.type in ("date", "datetime"):
            fmt, shape = (_DATE, _DATE_RE) if col.type == "date" else (_DATETIME, _DATETIME_RE)
            add(gxe.ExpectColumnValuesToMatchStrftimeFormat(column=name, strftime_format=fmt), f"{name}:format",
                name, _describe("format", col, name, fmt=fmt), _not_a_day(name, fmt, shape))
        if col.min_length is not None or col.max_length is not None:
            add(gxe.ExpectColumnValueLengthsToBeBetween(column=name, min_value=col.min_length,
                                                        max_value=col.max_length), f"{name}:length", name,
                _describe("length", col, name, low=col.min_length, high=col.max_length),
                _out_of_bounds(name, col.min_length, col.max_length))
        if col.min is not None or col.max is not None:
            add(gxe.ExpectColumnValuesToBeBetween(column=name, min_value=col.min, max_value=col.max),
                f"{name}:range", name, _describe("range", col, name, low=col.min, high=col.max),
                _out_of_bounds(name, col.min, col.max))
        if col.code_system == "loinc":
            add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=_LOINC), f"{name}:format", name,
                f"{name} is not in LOINC's NNNNN-C form", _not_matching(name, _LOINC))
        if col.code_system is not None:
            system = codes.describe(col.code_system)
            # GX states it as "in the set of valid codes"; the set is the code system's (ingestion.codes: shapes
            # vectorised, check digits once per distinct code).
            add(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[f"<valid {system}s>"],
                                                meta={"code_system": col.code_system}),
                f"{name}:code_system", name, _describe("code_system", col, name, system=system),
                _not_in_code_system(name, col.code_system))
    fixed = {col.code_system: name for name, col in contract.columns.items() if col.code_system is not None}
    for pair in contract.codes:
        # GX states it as "each (code, system) pair in the set of valid codes of their system".
        add(gxe.ExpectColumnPairValuesToBeInSet(column_A=pair.code, column_B=pair.system,
                                                value_pairs_set=[("<a valid code>", "<of the row's system>")],
                                                ignore_row_if="either_value_is_missing",
                                                meta={"code_system_column": pair.system}),
            f"{pair.code}:code_system", pair.code,
            f"{pair.code} is not a valid code of its {pair.system} (see ingestion.codes)",
            _not_in_row_system(pair, fixed))
    for rng in contract.ranges:
        low, high = _limit_columns(rng)
        below, above = _outside_code_limits(rng)
        for bound, a, b, check in (("min", rng.column, low, below), ("max", high, rng.column, above)):
            add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True,
                                                            ignore_row_if="either_value_is_missing"),
                f"{rng.column}:{bound}[{rng.by}]", rng.column, f"{rng.column} is outside the limits for its {rng.by}",
                check, ranged=rng)
    for order in contract.order:
        add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=order.after, column_B=order.before, or_equal=True,
                                                        ignore_row_if="either_value_is_missing"),
            f"{order.after}:order", order.after, _describe("order", None, order.after, before=order.before),
            lambda data, o=order: _flags(pc.less(data.column(o.after), data.column(o.before))))
    return checks


def _limit_columns(rng: Any) -> tuple[str, str]:
    # How the per-code limits read in the Data Docs: the low and high limit of each row's code.
    return f"{rng.by}:low_limit_of_{rng.column}", f"{rng.by}:high_limit_of_{rng.column}"


@cache
def _gx_context(table: str, docs_dir: str) -> Any:
    """One ephemeral context with a Data Docs site per table and docs folder, per process (slow to create)."""
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    context.add_data_docs_site(site_name="medguard", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context
