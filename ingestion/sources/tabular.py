"""Tabular extracts (CSV, Parquet, JSON lines) read in chunks with bounded memory, their columns named safely.

CSV (``.csv``, ``.tsv``; comma, tab, semicolon or bar delimited, see :func:`csv_delimiter`) is read line by line
through :func:`iter_lines` and Python's ``csv`` module (so quoted fields, commas and injection strings such as
``=cmd|'/c calc'!A1`` come through verbatim and are never evaluated); every line is strict UTF-8 (a UTF-8
byte-order mark is dropped; a file that starts with a UTF-16 or UTF-32 one is refused whole as
``record:encoding``, see :mod:`ingestion.sources._encoding`). Parquet is streamed by record batch and each batch
stays in Arrow (:attr:`TableRows.arrow`); JSON lines one object per line.

What a research table needs, applied to every extract (and to the draft contracts :mod:`ingestion.infer` writes):

- **Column names.** A header that matches the contract is taken as it is. Otherwise every name is made a safe
  identifier (:func:`safe_names`: accents dropped, lowercase, runs of other characters one ``_``, a leading digit
  prefixed ``c_``, the loader's ``patient_pseudonym`` renamed ``patient_pseudonym_in_source``, a repeat suffixed
  ``_2``…), the names a drafted contract declares. A header that still differs from the contract's columns rejects
  every row with ``schema:columns``.
- **Missing values.** A CSV cell that is empty or exactly one of :data:`MISSING` (``?``, ``NA``, ``N/A``,
  ``#N/A``, ``NULL``, ``NaN``… the markers R, pandas and the UCI repository write) is null.
- **Numbers with thousands separators.** In a column the contract types as a number, a text value written
  ``265,000`` or ``1,234,567.5`` (groups of exactly three digits after each comma) is read as ``265000``. A file
  that writes decimal commas (``2,5``) is not a number column in that sense: its draft types the column as text.
- **A generated row key.** When the contract declares :data:`ROW_COLUMN` and the file has no such column, each
  record gets the number in its position (its line in a CSV or JSON-lines file, its row in Parquet), so that a
  table with no key keeps every row, identical ones included.
- **Width.** A file with more columns than ``max_columns`` (setting ``ingestion.max_columns``) is refused whole
  as one ``schema:columns`` record, before any row is read; chunks of a wide file hold fewer rows, so that a chunk
  holds at most :data:`CELLS_PER_CHUNK` values whatever the width (memory stays bounded, the work per row is
  linear in its columns).
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestion.contract import RESERVED
from ingestion.sources._base import Chunker, Rejected, SourceChunk, TableRows, decode_line, iter_lines, lossy
from ingestion.sources._encoding import UTF8_BOM, foreign_encoding
from ingestion.sources._keyed import SourceKeys

if TYPE_CHECKING:
    from ingestion.contract import Contract

__all__ = ["CELLS_PER_CHUNK", "MISSING", "ROW_COLUMN", "SEALED_CELLS_PER_CHUNK", "chunk_rows_for", "csv_delimiter",
           "read_tabular", "safe_name", "safe_names", "tabular_format", "thousands_number"]

_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".ndjson": "jsonl", ".json": "jsonl"}
# CSV cells that mean "no value": the markers R (NA), pandas (NA, N/A, #N/A, NULL, NaN) and the UCI machine
# learning repository (?) write. Matched exactly, case and all: "Na" (sodium) and "none" stay values.
MISSING = frozenset({"", "?", "NA", "N/A", "n/a", "#N/A", "NULL", "null", "NaN", "nan"})
ROW_COLUMN = "source_row"
# Values per chunk of a Parquet extract: 200,000 rows of a 15-column table; a 2,000-column table gets 1,500 rows a
# chunk. Fixed costs per chunk (a Delta commit per zone, audit events, key look-ups) made 50,000-row chunks of
# observations 10-15 % slower at 100,000 patients. Memory: one 100,000-row chunk of the patients table (about 2.2
# million values) raised the process's RSS by about 1 GB while checked and sealed; bench/ingest_bench.py's peak was
# 1.9 GB at 100,000 patients. CSV and JSON lines are also cut at RECORD_CHUNK_ROWS records.
CELLS_PER_CHUNK = 3_000_000
# Sealed values per chunk: a PHI value costs several times a plain one while in flight (its text, its cell, the
# Parquet writer's copy), so the patients table (12 sealed columns of 19) gets about 83,000 rows a chunk. At
# 1,000,000 patients its 157,000-row chunks raised peak RSS to 2.8 GB, 83,000-row ones to 2.2 GB, at the same
# speed; observations (3 of 14) keep their 200,000.
SEALED_CELLS_PER_CHUNK = 1_000_000
_NAME_MAX = 63
_CACHED_NAME = 256
_UNSAFE = re.compile(r"[^a-z0-9]+")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER_TYPES = ("integer", "float")
_LISTED = 10  # column names a reason lists before "and N more"
_DELIMITERS = (",", "\t", ";", "|")


def tabular_format(path: Path) -> str:
    """``csv``, ``parquet`` or ``jsonl`` from the file name.

    Raises:
        ValueError: an extension that is none of those.
    """
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: unknown extract format {path.suffix!r}; expected .csv, .tsv, .parquet or "
                         ".jsonl")
    return fmt


def safe_name(name: str) -> str:
    """``name`` as a safe column identifier: ``Serum Créatinine (mg/dL)`` -> ``serum_creatinine_mg_dl``."""
    # Only short names are cached: a hostile file's megabyte-long field names must not pile up in memory.
    return _cached_safe_name(name) if len(name) <= _CACHED_NAME else _safe_name(name)


@lru_cache(maxsize=4096)
def _cached_safe_name(name: str) -> str:
    return _safe_name(name)


def _safe_name(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", ascii_name.lower()).strip("_")[:_NAME_MAX].rstrip("_") or "column"
    if not text[0].isalpha():
        text = f"c_{text}"[:_NAME_MAX]
    return f"{text}_in_source" if text in RESERVED else text


def safe_names(names: Iterable[str]) -> list[str]:
    """Safe identifiers for a header, in order; a name that repeats an earlier one is suffixed ``_2``, ``_3``…"""
    taken: set[str] = set()
    last: dict[str, int] = {}  # the last suffix given per name, so a header of one name repeated stays linear
    out = []
    for name in names:
        base = candidate = safe_name(name)
        number = last.get(base, 1)
        while candidate in taken:
            number += 1
            candidate = f"{base[:_NAME_MAX - len(str(number)) - 1]}_{number}"
        last[base] = number
        taken.add(candidate)
        out.append(candidate)
    return out


def thousands_number(value: str) -> str | None:
    """``value`` without its thousands separators when it is a number written with them (``"265,000"``)."""
    return value.replace(",", "") if "," in value and _THOUSANDS.match(value.strip()) else None


def csv_delimiter(header_line: str) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of comma, tab, semicolon and bar there
    (a comma when none is, or on a tie)."""
    return max(_DELIMITERS, key=header_line.count) if any(d in header_line for d in _DELIMITERS) else ","


def chunk_rows_for(chunk_rows: int, width: int, sealed: int = 0) -> int:
    """Rows per chunk for a table ``width`` columns wide, ``sealed`` of them PHI: ``chunk_rows``, fewer when that
    many rows would hold more than :data:`CELLS_PER_CHUNK` values or :data:`SEALED_CELLS_PER_CHUNK` sealed ones."""
    return max(1, min(chunk_rows, CELLS_PER_CHUNK // max(width, 1), SEALED_CELLS_PER_CHUNK // max(sealed, 1)))


def read_tabular(path: Path, table: str, columns: list[str], *, chunk_rows: int, max_record_bytes: int,
                 contract: Contract | None = None, max_columns: int | None = None,
                 keys: SourceKeys | None = None) -> Iterator[SourceChunk]:
    """Chunks of raw records of ``table`` from one extract file.

    Args:
        columns: the contract's columns (what the records may carry).
        contract: the contract itself, when known: its number columns take thousands separators, and its
            :data:`ROW_COLUMN`, when the file has none, is filled with each record's position.
        max_columns: a file with more columns than this is refused whole (None: no limit).
        keys: how reasons name the file (a batch passes the lake's keys: its keyed label, see
            :mod:`ingestion.sources._keyed`); without, by its name.
    """
    name = (keys or SourceKeys.local()).file_name(path.name)
    sealed = len(contract.phi_columns) if contract is not None else 0
    layout = _Layout(table, columns, contract, max_columns, chunk_rows_for(chunk_rows, len(columns), sealed), name)
    fmt = tabular_format(path)
    if fmt == "parquet":
        yield from _read_parquet(path, layout)
        return
    with path.open("rb") as handle:
        problem = foreign_encoding(handle.read(4))
    if problem:
        yield layout.refuse("record:encoding", f"{name} {problem}")
        return
    if fmt == "csv":
        yield from _read_csv(path, layout, max_record_bytes)
    else:
        yield from _read_jsonl(path, layout, max_record_bytes)


class _Layout:
    """What a reader needs to know about the table: its columns, which are numbers, the row key, the limits."""

    def __init__(self, table: str, columns: list[str], contract: Contract | None, max_columns: int | None,
                 chunk_rows: int, file_name: str) -> None:
        self.table, self.columns, self.max_columns = table, columns, max_columns
        self.column_set = set(columns)
        self.numeric = frozenset(name for name, column in (contract.columns.items() if contract else ())
                                 if column.type in _NUMBER_TYPES)
        self.row_column = ROW_COLUMN if ROW_COLUMN in self.column_set else None
        self.patient_column = contract.patient_column if contract else None
        self.chunk_rows = chunk_rows
        self.file_name = file_name

    def scrub(self, exc: Exception, path: Path) -> str:
        """An exception's message with the file's path and name replaced by how this layout names the file."""
        return str(exc).replace(str(path), self.file_name).replace(path.name, self.file_name)

    def names(self, header: list[str]) -> tuple[list[str], str | None]:
        """The column names a header stands for (as written when they fit, else made safe), and what is wrong."""
        if len(header) > (self.max_columns or len(header)):
            return header, (f"{self.file_name} has {len(header):,} columns, over the limit of {self.max_columns:,} "
                            "(setting ingestion.max_columns); split the table or raise the limit")
        if self._problem(header) is None:
            return header, None
        names = safe_names(header)
        problem = self._problem(names)
        return names, None if problem is None else f"the header {problem}"

    def patient_of(self, record: dict[str, Any]) -> str | None:
        """The patient id of a parsed JSON record that fails on its fields, so its payload is sealed under that
        patient's key (a shred then reaches it); None when the record names none. Only for records parsed by
        name: a CSV line cut short or undecodable could yield another field, i.e. the wrong patient."""
        value = record.get(self.patient_column) if self.patient_column else None
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None

    def generates_row(self, names: Iterable[str]) -> bool:
        return self.row_column is not None and self.row_column not in names

    def refuse(self, rule: str, reason: str) -> SourceChunk:
        """The whole file as one rejected record (nothing of it is read)."""
        chunk = SourceChunk(0)
        chunk.rejected.append(Rejected(self.table, "file", rule, reason, ""))
        chunk.units[self.table] = 1
        return chunk

    def _problem(self, header: list[str]) -> str | None:
        wanted = [c for c in self.columns if c != self.row_column or c in header]
        return _header_problem(header, wanted, self.column_set)


def _header_problem(header: list[str], columns: list[str], known: set[str] | None = None) -> str | None:
    """What is wrong with a header against the contract's columns (missing, undeclared, repeated), or None.

    Linear in the number of columns (sets and one count), so a very wide header costs no more than reading it.
    """
    known = set(columns) if known is None else known
    present = set(header)
    missing = [c for c in columns if c not in present]
    unknown = [c for c in header if c not in known]
    duplicated = sorted(name for name, count in Counter(header).items() if count > 1)
    problems = []
    if missing:
        problems.append(f"lacks columns {_listed(missing)}")
    if unknown:
        problems.append(f"has columns the contract does not declare {_listed(unknown)}")
    if duplicated:
        problems.append(f"repeats columns {_listed(duplicated)}")
    return " and ".join(problems) if problems else None


def _listed(names: list[str]) -> str:
    shown = [name[:40] for name in names[:_LISTED]]
    return f"{shown}" + (f" and {len(names) - _LISTED:,} more" if len(names) > _LISTED else "")


class _Lines:
    """Decoded CSV lines for the csv module; lines that cannot be decoded are reported, not fed."""

    def __init__(self, handle, max_bytes: int) -> None:
        self._lines = iter_lines(handle, max_bytes)
        self._max_bytes = max_bytes
        self.current = 0
        self.bad: list[tuple[int, str, bytes, bool]] = []
        self._pending: str | None = None

    def peek(self) -> str:
        """The first readable line (kept: the next call of ``next`` returns it), or "" when there is none."""
        if self._pending is None:
            self._pending = next(self, "")
        return self._pending

    def take_bad(self, table: str) -> list[Rejected]:
        """The lines skipped since the last call, as rejected records."""
        taken = [_bad_line(table, number, rule, raw, too_long, self._max_bytes)
                 for number, rule, raw, too_long in self.bad]
        self.bad.clear()
        return taken

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if pending:
                return pending
            raise StopIteration
        for number, raw, too_long in self._lines:
            self.current = number
            if too_long:
                self.bad.append((number, "record:size", raw, True))
                continue
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            text, problem = decode_line(raw)
            if problem:
                self.bad.append((number, "record:encoding", raw, False))
                continue
            return text + "\n"
        raise StopIteration


def _read_csv(path: Path, layout: _Layout, max_bytes: int) -> Iterator[SourceChunk]:
    table = layout.table
    csv.field_size_limit(max_bytes)
    with path.open("rb") as handle:
        lines = _Lines(handle, max_bytes)
        reader = csv.reader(lines, delimiter=csv_delimiter(lines.peek()), strict=True)
        chunks = Chunker(layout.chunk_rows, per_record=table)
        header_error = None
        header: list[str] = []
        names: list[str] = []
        try:
            header = next(reader)
            names, header_error = layout.names(header)
        except StopIteration:
            header_error = None
        except csv.Error as exc:
            header_error = f"the header is not readable CSV ({exc})"
        unreadable = lines.take_bad(table)  # a header line that could not even be decoded
        if unreadable:
            header_error = header_error or "the header line is unreadable"
        if header_error and len(header) > (layout.max_columns or len(header)):
            yield layout.refuse("schema:columns", header_error)
            return
        chunks.chunk.rejected.extend(unreadable)
        numeric = [name in layout.numeric for name in names]
        generated = layout.generates_row(names)
        while True:
            chunk = chunks.chunk
            start = lines.current + 1
            try:
                fields = next(reader)
            except StopIteration:
                chunk.rejected.extend(lines.take_bad(table))
                break
            except csv.Error as exc:
                chunk.rejected.append(Rejected(table, f"line {lines.current}", "record:parse",
                                               f"line {lines.current} is not readable CSV: {exc}", ""))
                fields = None
            chunk.rejected.extend(lines.take_bad(table))
            if fields is not None and fields:
                start = max(start, lines.current - _extra_lines(fields))
                position = f"line {start}"
                if header_error:
                    chunk.rejected.append(Rejected(table, position, "schema:columns",
                                                   f"{position}: {header_error}", _csv_payload(header, fields)))
                elif len(fields) != len(names):
                    chunk.rejected.append(Rejected(
                        table, position, "schema:columns",
                        f"{position} has {len(fields)} fields, the header has {len(names)}",
                        _csv_payload(header, fields)))
                else:
                    row = _csv_row(names, numeric, fields)
                    if generated:
                        row[ROW_COLUMN] = start
                    chunk.rows(table).add(row, position)
            yield from chunks.full()
        yield from chunks.rest()


def _csv_row(names: list[str], numeric: list[bool], fields: list[str]) -> dict[str, str | None]:
    # Python per value: no Arrow kernel reads CSV records of arbitrary quoting line by line with these limits.
    row: dict[str, str | None] = {}
    for name, is_number, value in zip(names, numeric, fields, strict=True):
        if value in MISSING:
            row[name] = None
        elif is_number and "," in value:
            row[name] = thousands_number(value) or value
        else:
            row[name] = value
    return row


def _extra_lines(fields: list[str]) -> int:
    # A quoted field may span lines; the record starts that many lines before the current one.
    return sum(f.count("\n") for f in fields)


def _csv_payload(header: list[str], fields: list[str]) -> str:
    return json.dumps({"header": header, "fields": fields}, ensure_ascii=False)


def _bad_line(table: str, number: int, rule: str, raw: bytes, too_long: bool, max_bytes: int) -> Rejected:
    if too_long:
        reason = f"line {number} is longer than the {max_bytes:,}-byte record limit; first bytes kept"
    else:
        reason = f"line {number} " + (decode_line(raw)[1] or "is unreadable")
    return Rejected(table, f"line {number}", rule, reason, lossy(raw), payload_truncated=too_long)


def _read_jsonl(path: Path, layout: _Layout, max_bytes: int) -> Iterator[SourceChunk]:
    table = layout.table
    chunks = Chunker(layout.chunk_rows, per_record=table)
    with path.open("rb") as handle:
        for number, raw, too_long in iter_lines(handle, max_bytes):
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if too_long:
                chunks.chunk.rejected.append(_bad_line(table, number, "record:size", raw, True, max_bytes))
            elif raw.strip():
                text, problem = decode_line(raw)
                if problem:
                    chunks.chunk.rejected.append(_bad_line(table, number, "record:encoding", raw, False, max_bytes))
                else:
                    _json_record(chunks.chunk, layout, text, number)
            yield from chunks.full()
    yield from chunks.rest()


def _json_record(chunk: SourceChunk, layout: _Layout, text: str, number: int) -> None:
    table, position = layout.table, f"line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        chunk.rejected.append(Rejected(table, position, "record:parse",
                                       f"{position} is not valid JSON ({exc.msg} at column {exc.colno})", text))
        return
    except RecursionError:
        chunk.rejected.append(Rejected(table, position, "record:parse",
                                       f"{position} nests JSON deeper than the parser allows", text))
        return
    if not isinstance(record, dict):
        chunk.rejected.append(Rejected(table, position, "record:parse",
                                       f"{position} is a JSON {type(record).__name__}, not an object", text))
        return
    if layout.max_columns is not None and len(record) > layout.max_columns:
        chunk.rejected.append(Rejected(table, position, "schema:columns",
                                       f"{position} has {len(record):,} fields, over the limit of "
                                       f"{layout.max_columns:,} (setting ingestion.max_columns)", text,
                                       patient_id=layout.patient_of(record)))
        return
    if any(key not in layout.column_set for key in record):
        names = [safe_name(key) if key not in layout.column_set else key for key in record]
        unknown = [name for name in names if name not in layout.column_set]
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if unknown or repeated:
            problem = " and ".join(
                ([f"has fields the contract does not declare {_listed(unknown)}"] if unknown else [])
                + ([f"has fields that name the same column {_listed(repeated)}"] if repeated else []))
            chunk.rejected.append(Rejected(table, position, "schema:columns", f"{position} {problem}", text,
                                           patient_id=layout.patient_of(record)))
            return
        record = dict(zip(names, record.values(), strict=True))
    for name in layout.numeric.intersection(record):
        value = record[name]
        if isinstance(value, str) and "," in value:
            record[name] = thousands_number(value) or value
    if layout.generates_row(record):
        record[ROW_COLUMN] = number
    chunk.rows(table).add(record, position)


def _read_parquet(path: Path, layout: _Layout) -> Iterator[SourceChunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = layout.table
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        yield layout.refuse("record:parse", f"{layout.file_name} is not readable Parquet: {layout.scrub(exc, path)}")
        return
    names, problem = layout.names(list(names))
    if problem and len(names) > (layout.max_columns or len(names)):
        yield layout.refuse("schema:columns", problem)
        return
    generated = layout.generates_row(names)
    offset = 0
    try:
        for index, batch in enumerate(parquet.iter_batches(batch_size=layout.chunk_rows)):
            chunk = SourceChunk(index)
            if problem:
                for i, row in enumerate(batch.to_pylist(), start=offset + 1):
                    position = f"row {i}"
                    chunk.rejected.append(Rejected(table, position, "schema:columns", f"{position}: the file's "
                                                   f"schema {problem.removeprefix('the header ')}",
                                                   json.dumps(row, default=str, ensure_ascii=False)))
            elif batch.num_rows:
                # The batch stays in Arrow: conform and validate work on its columns, not on dicts.
                data = pa.Table.from_batches([batch]).rename_columns(names)
                if generated:
                    data = data.append_column(ROW_COLUMN, pa.array(range(offset + 1, offset + batch.num_rows + 1),
                                                                   pa.int64()))
                chunk.tables[table] = TableRows(arrow=data, first_row=offset + 1)
            offset += batch.num_rows
            chunk.units[table] = chunk.size
            yield chunk
    except (OSError, pa.ArrowException) as exc:
        chunk = SourceChunk(offset // max(layout.chunk_rows, 1) + 1)
        reason = f"{layout.file_name} is unreadable after row {offset}: {layout.scrub(exc, path)}"
        chunk.rejected.append(Rejected(table, f"after row {offset}", "record:parse", reason, ""))
        chunk.units[table] = 1
        yield chunk
