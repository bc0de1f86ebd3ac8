"""Draft a data contract from an extract that has none: names, types, observed ranges, enumerations, keys, PHI.

The draft is deliberately strict about what it saw (observed numeric range, small enumerations, required
when no value was missing) so that anything new is quarantined for a person to look at, and generous about
PHI: a column is PHI when its *name* looks like an identifier (name, SSN, MRN, phone, email, address, ZIP,
birth date, member id…) or when most sampled *values* look like one (SSN, phone, email, ZIP patterns). The
de-identification layer refines this classification; ingestion only needs to know what to seal. Drafts are
saved under ``$MEDGUARD_HOME/contracts/<table>.draft.yaml`` for review.

A research table is read the way :mod:`ingestion.sources.tabular` will load it: column names made safe
(:func:`~ingestion.sources.tabular.safe_names`), ``?``/``NA``/empty cells missing, ``265,000`` a number,
``t``/``f``, ``TRUE``/``FALSE``, ``yes``/``no`` flags booleans. Lines the reader would quarantine (not UTF-8,
over the record size limit, not readable CSV) are left out of the sample.

Keys (the choices, documented):

- **The patient column** is the column whose safe name is, in this order of preference (a column with values
  before an empty one), ``patient_id``, ``patient``, ``person_id``, ``subject_id``, ``subject``,
  ``participant_id``, ``participant``, ``mrn``, ``medical_record_number``, ``id``, ``record_id`` (or any other
  ``<…>_patient_id``/``subject_id``…). It is text (an identifier, not a quantity: no range; an integer, still with
  no range, where a JSON or Parquet file stores it as a number), and PHI whatever its name, so it is sealed and
  pseudonymised into ``patient_pseudonym``. Every other ``id``/``…_id`` column is typed the same way.
- **The key** is the first identifier-like column (``id`` or ``…_id``) with a value on every sampled row, none
  repeated. When there is none, the draft declares :data:`~ingestion.sources.tabular.ROW_COLUMN`, a generated
  key the reader fills with each record's position, so identical rows are all kept.
- **A table with no patient column** (a published research table such as the heart-failure records) has no
  patient: its rows carry no ``patient_pseudonym``, any PHI column in it is sealed under the batch's keys, and no
  ``keys shred`` of a patient reaches them. A reviewer who knows a column names the patient sets
  ``patient_column`` in the draft and passes it with ``--contract``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingestion.contract import Column, Contract
from ingestion.sources._base import iter_lines
from ingestion.sources._encoding import UTF8_BOM, foreign_encoding
from ingestion.sources.tabular import MISSING, ROW_COLUMN, csv_delimiter, safe_name, safe_names, tabular_format
from pipeline.catalog import load_catalog
from pipeline.settings import Settings

__all__ = ["PATIENT_COLUMNS", "SAMPLE_VALUES", "classify_phi", "infer_contract", "sample_rows_for", "save_draft"]

_PHI_NAME = re.compile(
    r"(^|_)(first|last|given|family|middle|full|patient|maiden)?_?name$|(^|_)(ssn|social|mrn|medical_record|"
    r"phone|tel|telephone|mobile|fax|email|e_mail|address|street|addr|zip|zipcode|postal|postcode|city|"
    r"birth|dob|birth_date|birthdate|member|insurance|policy|license|licence|passport|account|ip_address|url|"
    r"device_serial|vin|plate|photo)(_|$)|(^|_)patient_id$|(^|_)person_id$", re.IGNORECASE)
_PHI_VALUES = {
    "ssn": re.compile(r"^\d{3}-\d{2}-\d{4}$"),
    "phone": re.compile(r"^(\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}$"),
    "email": re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"),
    "zip": re.compile(r"^\d{5}(-\d{4})?$"),
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_FLAGS = frozenset({"true", "false", "t", "f", "yes", "no", "y", "n"})
_WORDS = frozenset({"true", "false", "yes", "no"})
_ENUM_MAX = 12
_ENUM_MIN_ROWS = 50
# Safe column names that name the patient, most telling first.
PATIENT_COLUMNS = ("patient_id", "patientid", "patient", "person_id", "personid", "subject_id", "subjectid",
                   "subject", "participant_id", "participantid", "participant", "mrn", "medical_record_number",
                   "id", "record_id")
_PATIENT_LIKE = re.compile(r"(^|_)(patient|person|subject|participant)_?id$")
_ID_LIKE = re.compile(r"(^|_)id$")
_INT64 = 2**63
_RENAMES_LISTED = 10
_PHI_SAMPLE = 1000
_THOUSANDS = r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"
_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"
# Values sampled at most to draft a contract: 10,000 rows of 200 columns; a 2,000-column table gives 1,000 rows.
SAMPLE_VALUES = 2_000_000
_MIN_SAMPLE_ROWS = 100


def classify_phi(name: str, values: list[Any] | pa.Array) -> str | None:
    """Why a column is PHI (``name`` or the value pattern that matched), or None.

    ``values`` is a list of sampled values or an Arrow array of them; the patterns are matched on the first 1,000
    non-empty texts at once (``pyarrow.compute``), not value by value.
    """
    if _PHI_NAME.search(name):
        return "name"
    if isinstance(values, pa.Array):
        text = values.drop_null() if pa.types.is_string(values.type) else pa.array([], pa.string())
    else:
        text = pa.array([v for v in values if isinstance(v, str)][:_PHI_SAMPLE * 2], pa.string())
    sample = text.filter(pc.not_equal(text, "")).slice(0, _PHI_SAMPLE)
    if not len(sample):
        return None
    for label, pattern in _PHI_VALUES.items():
        if pc.sum(pc.match_substring_regex(sample, pattern.pattern)).as_py() >= 0.8 * len(sample):
            return label
    return None


def _value_kind(present: list[Any]) -> tuple[str, list[float] | None]:
    """The type of a column of Python values (JSON lines, Parquet), and its numbers when it is numeric."""
    if all(isinstance(v, bool) for v in present):
        return "boolean", None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        numbers = [float(v) for v in present]
        if any(n != n or n in (float("inf"), float("-inf")) for n in numbers):
            return "float", [n for n in numbers if n == n and abs(n) != float("inf")] or None
        return ("integer" if all(n.is_integer() for n in numbers) else "float"), numbers
    if all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in present):
        return _text_kind(pa.array([str(v) for v in present], pa.string()))  # numbers beside texts: as written
    return "string", None


def _text_kind(present: pa.Array) -> tuple[str, list[float] | None]:
    """The type of a column of texts with no nulls, decided over the whole column at once (``pyarrow.compute``)."""
    trimmed = pc.utf8_trim_whitespace(present)
    distinct = pc.unique(pc.utf8_lower(trimmed))
    if len(distinct) <= len(_FLAGS):
        flags = set(distinct.to_pylist())
        if flags <= _FLAGS and (flags & _WORDS or (flags & {"t", "y"} and flags & {"f", "n"})):
            return "boolean", None  # a column of only "F" is more likely a sex than a flag that is always false
    if pc.all(pc.match_substring_regex(present, _DATETIME.pattern)).as_py():
        return "datetime", None
    if pc.all(pc.match_substring_regex(present, _DATE.pattern)).as_py():
        return "date", None
    plain = pc.if_else(pc.match_substring_regex(trimmed, _THOUSANDS), pc.replace_substring(trimmed, ",", ""),
                       trimmed)
    if not pc.all(pc.match_substring_regex(plain, _NUMBER)).as_py():
        return "string", None  # includes "nan" and "inf" spelled out: nothing to range-check
    if pc.any(pc.match_substring_regex(plain, r"^[+-]?0\d")).as_py():
        return "string", None  # leading zeros: an identifier (MRN, ZIP), not a number
    numbers = pc.cast(plain, pa.float64())
    integral = pc.all(pc.match_substring_regex(plain, r"^[+-]?\d+$")).as_py()
    if integral and pc.max(pc.abs(numbers)).as_py() >= _INT64:
        return "string", None  # beyond int64: an identifier
    limits = pc.min_max(numbers)
    return ("integer" if integral else "float"), [limits["min"].as_py(), limits["max"].as_py()]


def _kind(values: list[Any] | pa.Array) -> tuple[str, list[float] | None]:
    if isinstance(values, pa.Array):
        present = values.drop_null()
        return _text_kind(present) if len(present) else ("string", None)
    present = [v for v in values if v is not None]
    return _value_kind(present) if present else ("string", None)


def _identifier_kind(values: list[Any] | pa.Array) -> str:
    """An identifier's type, with no range (ids grow): text as written (CSV), an integer when the file stores it as
    one (a JSON or Parquet number; a pandas float column of whole numbers)."""
    if isinstance(values, pa.Array):
        return "string"
    present = [v for v in values if v is not None]
    whole = all(isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in present)
    return "integer" if present and whole else "string"


# sampling ----------------------------------------------------------------------------------------------------


def sample_rows_for(sample_rows: int, width: int) -> int:
    """Rows sampled from a table ``width`` columns wide: ``sample_rows``, fewer when that many rows would hold more
    than :data:`SAMPLE_VALUES` values (never fewer than 100)."""
    return max(min(sample_rows, _MIN_SAMPLE_ROWS), min(sample_rows, SAMPLE_VALUES // max(width, 1)))


def _text_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of a text file, text None for a line the reader would quarantine."""
    with path.open("rb") as handle:
        problem = foreign_encoding(handle.read(4))
        if problem:
            raise ValueError(f"{path.name} {problem}")
        handle.seek(0)
        for number, raw, too_long in iter_lines(handle, max_bytes):
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if too_long:
                yield number, None
                continue
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _too_wide(path: Path, count: int, max_columns: int | None) -> None:
    if max_columns is not None and count > max_columns:
        raise ValueError(f"{path.name} has {count:,} columns, over the limit of {max_columns:,} (setting "
                         "ingestion.max_columns, MEDGUARD_INGESTION__MAX_COLUMNS); split the table or raise the limit")


class _Sample:
    """A file's column names as written and as made safe, and its sampled values column by column."""

    def __init__(self, header: list[str], names: list[str], columns: dict[str, list[Any] | pa.Array],
                 rows: int) -> None:
        self.header, self.names, self.columns, self.rows = header, names, columns, rows


def _sample_csv(path: Path, sample_rows: int, max_bytes: int, max_columns: int | None) -> _Sample:
    csv.field_size_limit(max_bytes)
    lines = _text_lines(path, max_bytes)
    first = next(lines, None)
    if first is None:
        return _Sample([], [], {}, 0)
    _number, text = first
    if text is None:
        raise ValueError(f"{path.name}: the header line is not UTF-8 text or is longer than the record limit; "
                         "convert the file to UTF-8 and ingest it again")
    delimiter = csv_delimiter(text)
    try:
        header = next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error as exc:
        raise ValueError(f"{path.name}: the header line is not readable CSV ({exc})") from exc
    _too_wide(path, len(header), max_columns)
    names = safe_names(header)
    wanted = sample_rows_for(sample_rows, len(names))
    records: list[list[str]] = []
    # Records are read as the reader reads them: one record may span lines (a quoted newline).
    reader = csv.reader((t + "\n" for _, t in lines if t is not None), delimiter=delimiter, strict=True)
    while len(records) < wanted:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            continue
        if len(fields) == len(names):
            records.append(fields)
    missing = pa.array(sorted(MISSING), pa.string())
    columns: dict[str, list[Any] | pa.Array] = {}
    for name, values in zip(names, zip(*records, strict=True) if records else [()] * len(names), strict=True):
        array = pa.array(values, pa.string())
        columns[name] = pc.if_else(pc.is_in(array, value_set=missing), pa.scalar(None, pa.string()), array)
    return _Sample(header, names, columns, len(records))


def _sample_jsonl(path: Path, sample_rows: int, max_bytes: int, max_columns: int | None) -> _Sample:
    rows: list[dict[str, Any]] = []
    original: dict[str, str] = {}
    for _number, text in _text_lines(path, max_bytes):
        if text is None or not text.strip():
            continue
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        named = {safe_name(k): v for k, v in record.items()}
        if len(named) != len(record):
            continue  # two fields that name one column: the reader quarantines it
        for key in record:
            original.setdefault(safe_name(key), key)
        _too_wide(path, len(original), max_columns)
        rows.append(named)
        if len(rows) >= sample_rows_for(sample_rows, len(original)):
            break
    names = list(original)
    return _Sample(list(original.values()), names, {n: [row.get(n) for row in rows] for n in names}, len(rows))


def _sample_parquet(path: Path, sample_rows: int, max_columns: int | None) -> _Sample:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        header = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path.name} is not readable Parquet: {exc}") from exc
    _too_wide(path, len(header), max_columns)
    names = safe_names(header)
    wanted = sample_rows_for(sample_rows, len(names))
    batches = []
    count = 0
    for batch in parquet.iter_batches(batch_size=min(wanted, 65_536)):
        batches.append(batch.rename_columns(names))
        count += batch.num_rows
        if count >= wanted:
            break
    data = pa.Table.from_batches(batches, schema=pa.schema([f.with_name(n) for f, n in zip(
        parquet.schema_arrow, names, strict=True)])).slice(0, wanted)
    columns: dict[str, list[Any] | pa.Array] = {}
    for name in names:
        column = data.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        columns[name] = column.cast(pa.string()) if pa.types.is_large_string(column.type) else (
            column if pa.types.is_string(column.type) else column.to_pylist())
    return _Sample(header, names, columns, data.num_rows)


def _sample(path: Path, sample_rows: int, max_bytes: int, max_columns: int | None) -> _Sample:
    fmt = tabular_format(path)
    if fmt == "parquet":
        return _sample_parquet(path, sample_rows, max_columns)
    if fmt == "csv":
        return _sample_csv(path, sample_rows, max_bytes, max_columns)
    return _sample_jsonl(path, sample_rows, max_bytes, max_columns)


# the draft ----------------------------------------------------------------------------------------------------


def _present(values: list[Any] | pa.Array) -> int:
    return len(values) - values.null_count if isinstance(values, pa.Array) else sum(v is not None for v in values)


def _distinct(values: list[Any] | pa.Array) -> list[str]:
    if isinstance(values, pa.Array):
        return sorted(pc.unique(values.drop_null()).to_pylist())
    return sorted({str(v) for v in values if v is not None})


def _unique(values: list[Any] | pa.Array) -> bool:
    if isinstance(values, pa.Array):
        return len(pc.unique(values)) == len(values)
    return len({json.dumps(v, default=str) for v in values}) == len(values)


def _patient_column(names: list[str], present: dict[str, int]) -> str | None:
    # A column with values first (an empty "id" beside a filled "subject"), then by how telling its name is.
    candidates = [n for n in names if n in PATIENT_COLUMNS or _PATIENT_LIKE.search(n)]
    ranked = sorted(candidates, key=lambda n: (not present[n], PATIENT_COLUMNS.index(n) if n in PATIENT_COLUMNS
                                               else len(PATIENT_COLUMNS)))
    return ranked[0] if ranked else None


def infer_contract(path: str | Path, *, table: str, sample_rows: int = 10_000, max_columns: int | None = None,
                   max_record_bytes: int = 4 * 2**20) -> Contract:
    """A draft contract for ``table`` from the first ``sample_rows`` records of an extract (fewer for a very wide
    one: at most :data:`SAMPLE_VALUES` values are sampled).

    Raises:
        ValueError: the file has no header/columns, more than ``max_columns`` of them, is not UTF-8 (a UTF-16
            byte-order mark, a header line that does not decode) or not readable Parquet.
    """
    file = Path(path)
    sample = _sample(file, sample_rows, max_record_bytes, max_columns)
    names, rows = sample.names, sample.rows
    if not names:
        raise ValueError(f"{file.name}: no columns found to infer a contract from")
    present = {name: _present(sample.columns[name]) for name in names}
    patient = _patient_column(names, present)
    catalog = load_catalog()
    columns: dict[str, Column] = {}
    for name in names:
        values = sample.columns[name]
        # A column the column catalog knows has the catalog's type and PHI flag; only the others are guessed.
        known = catalog.column(table, name)
        identifier = name == patient or bool(_ID_LIKE.search(name))
        kind, numbers = (_identifier_kind(values), None) if identifier else _kind(values)
        if known:
            kind = known.type
        phi = known.phi if known else (name == patient or classify_phi(name, values) is not None)
        options: dict[str, Any] = {"type": kind, "required": bool(rows) and present[name] == rows, "phi": phi}
        if kind in ("integer", "float") and numbers:
            options.update(min=min(numbers), max=max(numbers))
        if kind == "string" and not phi and not identifier and rows >= _ENUM_MIN_ROWS:
            distinct = _distinct(values)
            if 0 < len(distinct) <= _ENUM_MAX:
                options["enum"] = tuple(distinct)
        columns[name] = Column(**options)
    key = next((n for n in names if _ID_LIKE.search(n) and columns[n].required and _unique(sample.columns[n])),
               None)
    notes = [f"Draft inferred from {file.name} ({rows} rows sampled); review it."]
    if key is None and ROW_COLUMN not in columns:
        key = ROW_COLUMN
        columns[ROW_COLUMN] = Column(type="integer", required=True)
        notes.append(f"No column is a unique id: {ROW_COLUMN} (the record's line, or row in Parquet) is the key.")
    notes.append(f"Patient column: {patient} (sealed)." if patient else
                 "No patient column: rows are linked to no patient (no pseudonym; no patient shred reaches them).")
    renamed = [(before, after) for before, after in zip(sample.header, names, strict=True) if before != after]
    if renamed:
        listed = ", ".join(f"{before[:40]!r} -> {after}" for before, after in renamed[:_RENAMES_LISTED])
        more = f" and {len(renamed) - _RENAMES_LISTED:,} more" if len(renamed) > _RENAMES_LISTED else ""
        notes.append(f"Columns renamed to safe names: {listed}{more}.")
    return Contract(table=table, description=" ".join(notes), key=key, patient_column=patient, columns=columns)


def save_draft(settings: Settings, contract: Contract) -> Path:
    """Write a draft contract under ``$MEDGUARD_HOME/contracts/`` and return its path."""
    folder = settings.home / "contracts"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{contract.table}.draft.yaml"
    target.write_text("# Draft contract inferred by medguard: review it, then pass it with --contract.\n"
                      + contract.to_yaml(), encoding="utf-8")
    return target
