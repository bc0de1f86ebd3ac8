"""Row-level validation of a chunk against its contract: types first, then the rules through Great Expectations.

:func:`conform` turns raw source values into the contract's types (a value that does not convert is a
``<column>:type`` violation and becomes null). :class:`ChunkValidator` then builds a Great Expectations 1.x
suite from the contract and validates the chunk as a pandas batch in an ephemeral context, with
``result_format=COMPLETE`` so each failed expectation names its rows (``unexpected_index_list``). Every
expectation carries its medguard rule name (``ssn:pattern``, ``value:range[8480-6]``…) in ``meta``; the
verdict of a row is the list of rules it broke.

What is stored with a batch is only counts and pass/fail per expectation: GX's result also lists the offending
values, which may be PHI, so those are dropped before anything is kept or rendered (Data Docs included).

Code systems: ICD-10-CM codes must exist in ``simple_icd_10_cm``'s code list, LOINC codes must have the
``NNNNN-C`` form with a valid mod-10 check digit, NDC codes the 10-digit hyphenated forms (4-4-2, 5-3-2, 5-4-1)
or the 11-digit 5-4-2 form. For ICD and LOINC the expectation is "in the set of valid codes" where the set is
computed from the chunk's distinct codes (the code list has ~100k entries; the suite carries only those seen).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ingestion.contract import Column, Contract
from ingestion.sources._base import TableRows

__all__ = ["ChunkResult", "ChunkValidator", "ExpectationOutcome", "conform", "loinc_check_digit_ok"]

_DATE = "%Y-%m-%d"
_DATETIME = "%Y-%m-%dT%H:%M:%SZ"
_DATE_RE = r"\d{4}-\d{2}-\d{2}"
_DATETIME_RE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
_LOINC = r"^\d{1,5}-\d$"
_NDC = r"^(?:\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2})$"
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}
# Keys of a GX result that hold values or row positions: never stored, never rendered (they may be PHI).
_VALUE_KEYS = ("partial_unexpected_list", "unexpected_list", "partial_unexpected_counts",
               "partial_unexpected_index_list", "unexpected_index_list", "unexpected_index_query", "details",
               "observed_value")


def loinc_check_digit_ok(code: str) -> bool:
    """True when a LOINC code ``NNNNN-C`` carries the right mod-10 check digit."""
    if not isinstance(code, str) or not re.fullmatch(_LOINC, code):
        return False
    body, check = code.split("-")
    digits = body[::-1]
    doubled = str(int(digits[0::2][::-1] or "0") * 2)
    total = sum(int(d) for d in doubled + digits[1::2])
    return (10 - total % 10) % 10 == int(check)


@cache
def _icd_valid(code: str) -> bool:
    import simple_icd_10_cm as icd

    try:
        return bool(icd.is_valid_item(code))
    except Exception:  # the package raises on some malformed inputs
        return False


def _valid_codes(system: str, values: pd.Series) -> list[str]:
    distinct = [v for v in pd.unique(values.dropna()) if isinstance(v, str)]
    check = _icd_valid if system == "icd10cm" else loinc_check_digit_ok
    return sorted(v for v in distinct if check(v))


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


def conform(rows: TableRows, contract: Contract) -> tuple[pd.DataFrame, dict[int, list[tuple[str, str]]]]:
    """The rows in the contract's types, and per row index the ``(rule, message)`` type violations.

    A column whose values all have the expected Python types already (the common case: Parquet, JSON numbers,
    CSV text for text columns) is converted in one vectorised step; any other column value by value.
    Dates and timestamps that have the right shape but name no real instant (``2023-02-30``) break
    ``<column>:format`` here, since Great Expectations only checks their shape.
    """
    violations: dict[int, list[tuple[str, str]]] = {}
    data: dict[str, Any] = {}
    for name, column in contract.columns.items():
        values = [row.get(name) for row in rows.rows]
        converted, bad = _convert_column(values, column.type)
        for index in bad:
            violations.setdefault(index, []).append((f"{name}:type", f"{name} is not a {column.type}"))
        if column.type in ("date", "datetime"):
            fmt = _DATE if column.type == "date" else _DATETIME
            text = pd.Series(converted, dtype=object)
            shaped = text.str.fullmatch(_DATE_RE if column.type == "date" else _DATETIME_RE, na=False)
            parsed = pd.to_datetime(text.where(shaped), format=fmt, errors="coerce")
            for index in (shaped & parsed.isna()).to_numpy().nonzero()[0]:
                violations.setdefault(int(index), []).append(
                    (f"{name}:format", _describe("format", column, name, fmt=fmt)))
        data[name] = converted
    frame = pd.DataFrame(data, columns=list(contract.columns))
    for name, column in contract.columns.items():
        if column.type == "float":
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        elif column.type == "integer":
            frame[name] = frame[name].astype("Int64")
        else:
            frame[name] = frame[name].astype(object)
    return frame, violations


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
    # GX's own result with every value stripped, for Data Docs (see ChunkValidator.record).
    gx_result: Any = None


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
        return f"{name} is not a valid {facts['system']} code"
    if kind == "order":
        return f"{name} is earlier than {facts['before']}"
    return f"{name} breaks {kind}"


class ChunkValidator:
    """Validates chunks of one contract through an ephemeral Great Expectations context.

    Args:
        contract: the table's contract.
        docs_dir: where Data Docs (HTML) are built; None for no docs.
    """

    def __init__(self, contract: Contract, docs_dir: Path | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        self.contract = contract
        self.docs_dir = docs_dir
        self._context, self._batch_definition = _gx_asset(contract.table, str(docs_dir) if docs_dir else None)
        self._stored = 0
        self._ranged = {f"{r.column}:{bound}[{r.by}]": r for r in contract.ranges for bound in ("min", "max")}

    def _with_limits(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The chunk with, per ranged column, the low and high limit of each row's code (NaN: no limits)."""
        if not self.contract.ranges:
            return frame
        extra = {}
        for number, rng in enumerate(self.contract.ranges):
            low, high = _limit_columns(number)
            codes = frame[rng.by]
            extra[low] = codes.map({c: lim[0] for c, lim in rng.limits.items()}).astype("float64")
            extra[high] = codes.map({c: lim[1] for c, lim in rng.limits.items()}).astype("float64")
        return frame.assign(**extra)

    def _suite(self, frame: pd.DataFrame) -> tuple[Any, dict[str, tuple[str, str | None, bool]]]:
        import great_expectations as gx
        import great_expectations.expectations as gxe

        suite = gx.ExpectationSuite(name=f"medguard.{self.contract.table}.{self.contract.fingerprint}")
        rules: dict[str, tuple[str, str | None, bool]] = {}

        def add(expectation: Any, rule: str, column: str | None, message: str) -> None:
            expectation.meta = {"rule": rule, "message": message}
            suite.add_expectation(expectation)
            phi = bool(column and self.contract.columns[column].phi)
            rules[rule] = (message, column, phi)

        for name, col in self.contract.columns.items():
            if col.required:
                add(gxe.ExpectColumnValuesToNotBeNull(column=name), f"{name}:required", name,
                    _describe("required", col, name))
            if col.enum:
                add(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(col.enum)), f"{name}:enum", name,
                    _describe("enum", col, name, values=col.enum))
            if col.pattern:
                add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=col.pattern), f"{name}:pattern", name,
                    _describe("pattern", col, name, pattern=col.pattern))
            if col.type in ("date", "datetime"):
                # The shape here (a regex is vectorised; strftime parsing is one Python call per value); whether
                # the date exists on the calendar is checked in conform().
                fmt, shape = (_DATE, _DATE_RE) if col.type == "date" else (_DATETIME, _DATETIME_RE)
                add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=f"^{shape}$"), f"{name}:format",
                    name, _describe("format", col, name, fmt=fmt))
            if col.min_length is not None or col.max_length is not None:
                add(gxe.ExpectColumnValueLengthsToBeBetween(column=name, min_value=col.min_length,
                                                            max_value=col.max_length), f"{name}:length", name,
                    _describe("length", col, name, low=col.min_length, high=col.max_length))
            if col.min is not None or col.max is not None:
                add(gxe.ExpectColumnValuesToBeBetween(column=name, min_value=col.min, max_value=col.max),
                    f"{name}:range", name, _describe("range", col, name, low=col.min, high=col.max))
            if col.code_system == "loinc":
                add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=_LOINC), f"{name}:format", name,
                    f"{name} is not in LOINC's NNNNN-C form")
            if col.code_system == "ndc":
                add(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=_NDC), f"{name}:code_system", name,
                    _describe("code_system", col, name, system="NDC (10/11-digit hyphenated)"))
            elif col.code_system in ("icd10cm", "loinc"):
                system = "ICD-10-CM" if col.code_system == "icd10cm" else "LOINC (check digit)"
                add(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=_valid_codes(col.code_system, frame[name])),
                    f"{name}:code_system", name, _describe("code_system", col, name, system=system))
        for number, rng in enumerate(self.contract.ranges):
            # One pair of expectations per ranged column, against per-row limit columns looked up from the
            # code (see _with_limits), instead of one filtered expectation per code.
            low, high = _limit_columns(number)
            for bound, a, b in (("min", rng.column, low), ("max", high, rng.column)):
                add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True,
                                                                ignore_row_if="either_value_is_missing"),
                    f"{rng.column}:{bound}[{rng.by}]", rng.column,
                    f"{rng.column} is outside the limits for its {rng.by}")
        for order in self.contract.order:
            add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=order.after, column_B=order.before, or_equal=True,
                                                            ignore_row_if="either_value_is_missing"),
                f"{order.after}:order", order.after, _describe("order", None, order.after, before=order.before))
        return suite, rules

    def validate(self, frame: pd.DataFrame) -> ChunkResult:
        """Validate one typed chunk (index 0..n-1); returns row verdicts and per-expectation counts."""
        result = ChunkResult()
        if frame.empty:
            return result
        suite, rules = self._suite(frame)
        checked = self._with_limits(frame)
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": checked})
        validation = batch.validate(suite, result_format={"result_format": "COMPLETE"})
        result.gx_success = bool(validation.success)
        for item in validation.results:
            config = item.expectation_config
            rule = (config.meta or {}).get("rule", config.type)
            message, column, phi = rules.get(rule, (rule, None, False))
            detail = item.result or {}
            if item.exception_info and item.exception_info.get("raised_exception"):
                # An expectation that could not run fails the whole chunk's rows for that rule, loudly.
                indices = list(range(len(frame)))
                message = f"{message} (the check itself failed: {item.exception_info.get('exception_message')})"
            else:
                indices = detail.get("unexpected_index_list") or []
            result.outcomes.append(ExpectationOutcome(
                rule=rule, expectation=config.type, column=column, success=bool(item.success),
                element_count=int(detail.get("element_count", len(frame)) or 0),
                unexpected_count=int(detail.get("unexpected_count", len(indices)) or 0)))
            ranged = self._ranged.get(rule)
            for index in indices:
                row = int(index["index"] if isinstance(index, dict) else index)
                row_rule, text = rule, message
                if ranged is not None:  # name the code and its limits, as the contract states them
                    code = frame.at[row, ranged.by]
                    row_rule = f"{ranged.column}:range[{code}]"
                    low, high = ranged.limits[code]
                    text = _describe("code_range", None, ranged.column, low=low, high=high, by=ranged.by, code=code)
                if column and not phi and not rule.endswith(":required"):
                    value = frame.at[row, column]
                    text = f"{text} (value {str(value)[:60]!r})"
                result.violations.setdefault(row, []).append((row_rule, text))
            _strip_values(item)
        validation.meta.pop("batch_spec", None)
        result.gx_result = validation
        return result

    def record(self, result: ChunkResult, run_name: str) -> None:
        """Keep a chunk's result for the Data Docs (when this validator builds docs); it may come from a worker."""
        if self.docs_dir is None or result.gx_result is None:
            return
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        validation = result.gx_result
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=validation.suite_name),
            run_id=RunIdentifier(run_name=run_name), batch_identifier=self.contract.table)
        self._context.validation_results_store.set(key, validation)
        self._stored += 1

    def build_docs(self) -> Path | None:
        """Render the Data Docs of everything validated so far; returns the site's index.html."""
        if self.docs_dir is None or not self._stored:
            return None
        self._context.build_data_docs(site_names=["medguard"])
        index = self.docs_dir / "index.html"
        return index if index.is_file() else None


def _limit_columns(number: int) -> tuple[str, str]:
    # Contracts may not declare columns starting with "__", so these never collide with data.
    return f"__limit_low_{number}", f"__limit_high_{number}"


def _strip_values(item: Any) -> None:
    for key in _VALUE_KEYS:
        if item.result:
            item.result.pop(key, None)


@cache
def _gx_asset(table: str, docs_dir: str | None) -> tuple[Any, Any]:
    """One ephemeral context and dataframe asset per table and docs folder, per process (creating them is slow)."""
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    if docs_dir:
        context.add_data_docs_site(site_name="medguard", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    source = context.data_sources.add_pandas(f"medguard-{table}")
    asset = source.add_dataframe_asset(name=table)
    return context, asset.add_batch_definition_whole_dataframe("chunk")
