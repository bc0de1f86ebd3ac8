"""Tabular extracts (CSV, Parquet, JSON lines) read in chunks of ``chunk_rows`` records with bounded memory.

CSV is read line by line through :func:`iter_lines` and Python's ``csv`` module (so quoted fields, commas and
injection strings such as ``=cmd|'/c calc'!A1`` come through verbatim and are never evaluated); every line is
strict UTF-8. A header that differs from the contract's columns rejects every row with ``schema:columns``.
Parquet is streamed by record batch and each batch stays in Arrow (:attr:`TableRows.arrow`); JSON lines
one object per line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from ingestion.sources._base import Chunker, Rejected, SourceChunk, TableRows, decode_line, iter_lines, lossy

__all__ = ["read_tabular", "tabular_format"]

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}


def tabular_format(path: Path) -> str:
    """``csv``, ``parquet`` or ``jsonl`` from the file name.

    Raises:
        ValueError: an extension that is none of those.
    """
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: unknown extract format {path.suffix!r}; expected .csv, .parquet or .jsonl")
    return fmt


def read_tabular(path: Path, table: str, columns: list[str], *, chunk_rows: int,
                 max_record_bytes: int) -> Iterator[SourceChunk]:
    """Chunks of raw records of ``table`` from one extract file."""
    fmt = tabular_format(path)
    if fmt == "csv":
        yield from _read_csv(path, table, columns, chunk_rows, max_record_bytes)
    elif fmt == "jsonl":
        yield from _read_jsonl(path, table, columns, chunk_rows, max_record_bytes)
    else:
        yield from _read_parquet(path, table, columns, chunk_rows)


def _header_problem(header: list[str], columns: list[str]) -> str | None:
    missing = [c for c in columns if c not in header]
    unknown = [c for c in header if c not in columns]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"lacks columns {missing}")
    if unknown:
        problems.append(f"has columns the contract does not declare {[c[:40] for c in unknown]}")
    if duplicated:
        problems.append(f"repeats columns {duplicated}")
    return "the header " + " and ".join(problems) if problems else None


class _Lines:
    """Decoded CSV lines for the csv module; lines that cannot be decoded are reported, not fed."""

    def __init__(self, handle, max_bytes: int) -> None:
        self._lines = iter_lines(handle, max_bytes)
        self._max_bytes = max_bytes
        self.current = 0
        self.bad: list[tuple[int, str, bytes, bool]] = []

    def take_bad(self, table: str) -> list[Rejected]:
        """The lines skipped since the last call, as rejected records."""
        taken = [_bad_line(table, number, rule, raw, too_long, self._max_bytes)
                 for number, rule, raw, too_long in self.bad]
        self.bad.clear()
        return taken

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        for number, raw, too_long in self._lines:
            self.current = number
            if too_long:
                self.bad.append((number, "record:size", raw, True))
                continue
            text, problem = decode_line(raw)
            if problem:
                self.bad.append((number, "record:encoding", raw, False))
                continue
            return text + "\n"
        raise StopIteration


def _read_csv(path: Path, table: str, columns: list[str], chunk_rows: int, max_bytes: int) -> Iterator[SourceChunk]:
    csv.field_size_limit(max_bytes)
    with path.open("rb") as handle:
        lines = _Lines(handle, max_bytes)
        reader = csv.reader(lines, strict=True)
        chunks = Chunker(chunk_rows, per_record=table)
        header_error = None
        header: list[str] = []
        try:
            header = next(reader)
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            header_error = _header_problem(header, columns)
        except StopIteration:
            header_error = None
        except csv.Error as exc:
            header_error = f"the header is not readable CSV ({exc})"
        unreadable = lines.take_bad(table)  # a header line that could not even be decoded
        chunks.chunk.rejected.extend(unreadable)
        if unreadable:
            header_error = header_error or "the header line is unreadable"
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
                elif len(fields) != len(header):
                    chunk.rejected.append(Rejected(
                        table, position, "schema:columns",
                        f"{position} has {len(fields)} fields, the header has {len(header)}",
                        _csv_payload(header, fields)))
                else:
                    chunk.rows(table).add({h: (v if v != "" else None) for h, v in zip(header, fields, strict=True)},
                                          position)
            yield from chunks.full()
        yield from chunks.rest()


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


def _read_jsonl(path: Path, table: str, columns: list[str], chunk_rows: int, max_bytes: int) -> Iterator[SourceChunk]:
    chunks = Chunker(chunk_rows, per_record=table)
    with path.open("rb") as handle:
        for number, raw, too_long in iter_lines(handle, max_bytes):
            position = f"line {number}"
            if too_long:
                chunks.chunk.rejected.append(_bad_line(table, number, "record:size", raw, True, max_bytes))
            elif raw.strip():
                text, problem = decode_line(raw)
                if problem:
                    chunks.chunk.rejected.append(_bad_line(table, number, "record:encoding", raw, False, max_bytes))
                else:
                    _json_record(chunks.chunk, table, columns, text, position)
            yield from chunks.full()
    yield from chunks.rest()


def _json_record(chunk: SourceChunk, table: str, columns: list[str], text: str, position: str) -> None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        chunk.rejected.append(Rejected(table, position, "record:parse",
                                       f"{position} is not valid JSON ({exc.msg} at column {exc.colno})", text))
        return
    if not isinstance(record, dict):
        chunk.rejected.append(Rejected(table, position, "record:parse",
                                       f"{position} is a JSON {type(record).__name__}, not an object", text))
        return
    unknown = [k for k in record if k not in columns]
    if unknown:
        chunk.rejected.append(Rejected(table, position, "schema:columns",
                                       f"{position} has fields the contract does not declare "
                                       f"{[k[:40] for k in unknown]}", text))
        return
    chunk.rows(table).add(record, position)


def _read_parquet(path: Path, table: str, columns: list[str], chunk_rows: int) -> Iterator[SourceChunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        chunk = SourceChunk(0)
        chunk.rejected.append(Rejected(table, "file", "record:parse", f"{path.name} is not readable Parquet: {exc}",
                                       ""))
        chunk.units[table] = 1
        yield chunk
        return
    problem = _header_problem(list(names), columns)
    offset = 0
    try:
        for index, batch in enumerate(parquet.iter_batches(batch_size=chunk_rows)):
            chunk = SourceChunk(index)
            if problem:
                for i, row in enumerate(batch.to_pylist(), start=offset + 1):
                    position = f"row {i}"
                    chunk.rejected.append(Rejected(table, position, "schema:columns", f"{position}: the file's "
                                                   f"schema {problem.removeprefix('the header ')}",
                                                   json.dumps(row, default=str, ensure_ascii=False)))
            elif batch.num_rows:
                # The batch stays in Arrow: conform and validate work on its columns, not on dicts.
                chunk.tables[table] = TableRows(arrow=pa.Table.from_batches([batch]), first_row=offset + 1)
            offset += batch.num_rows
            chunk.units[table] = chunk.size
            yield chunk
    except (OSError, pa.ArrowException) as exc:
        chunk = SourceChunk(offset // max(chunk_rows, 1) + 1)
        chunk.rejected.append(Rejected(table, f"after row {offset}", "record:parse",
                                       f"{path.name} is unreadable after row {offset}: {exc}", ""))
        chunk.units[table] = 1
        yield chunk
