"""What every source reader yields: chunks of raw records per table, and records that could not be read.

Readers never raise on bad input: a line, bundle entry or message that cannot be parsed becomes a
:class:`Rejected` with its position and a reason that names no PHI value. Lines are read with a byte limit, so
a single huge line (a 10 MB blob with no newline) costs bounded memory: only its first bytes are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["PAYLOAD_KEEP_BYTES", "Chunker", "Rejected", "SourceChunk", "TableRows", "decode_line", "iter_lines",
           "lossy"]

# How much of an over-long line is kept as the quarantined payload (the rest is skipped, not buffered).
PAYLOAD_KEEP_BYTES = 64 * 1024
_SKIP_BYTES = 1 << 20


@dataclass
class Rejected:
    """A record that could not be read or mapped.

    Attributes:
        table: the table it was meant for (``bundles``/``messages`` for a whole unreadable bundle/message).
        position: where it is in the source (``line 12``, ``line 3 entry 5``, ``message 7 (line 7)``).
        rule: the broken rule, e.g. ``record:parse``, ``record:encoding``, ``record:size``, ``schema:columns``.
        reason: one sentence for a data engineer; never a PHI value.
        payload: the raw text (encrypted before it is written).
        patient_id: the source patient id when it could still be read (pseudonymised, never stored plain).
        payload_truncated: True when only the first bytes of an over-long record were kept.
    """

    table: str
    position: str
    rule: str
    reason: str
    payload: str
    patient_id: str | None = None
    payload_truncated: bool = False


@dataclass
class TableRows:
    """Raw records for one table with their source positions: dicts of source values, or one Arrow table.

    A reader whose source is columnar already (Parquet) hands its record batch over as ``arrow`` and leaves
    ``rows`` and ``positions`` empty: record ``i`` is then at ``row <first_row + i>``, and is turned into a
    dict only when it is quarantined (:meth:`record`). Everything else fills ``rows`` through :meth:`add`.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    arrow: Any = None  # a pyarrow.Table of source values, or None
    first_row: int = 1

    def add(self, row: dict[str, Any], position: str) -> None:
        self.rows.append(row)
        self.positions.append(position)

    def __len__(self) -> int:
        return self.arrow.num_rows if self.arrow is not None else len(self.rows)

    def position(self, index: int) -> str:
        """Where record ``index`` is in the source (``line 12``, ``row 7``)."""
        return f"row {self.first_row + index}" if self.arrow is not None else self.positions[index]

    def record(self, index: int) -> dict[str, Any]:
        """Record ``index`` as a dict of source values (for a quarantined row's payload)."""
        return self.records([index])[0]

    def records(self, indices: list[int]) -> list[dict[str, Any]]:
        """Records ``indices`` as dicts of source values, an Arrow batch's taken in one go."""
        if self.arrow is None:
            return [self.rows[index] for index in indices]
        return self.arrow.take(indices).to_pylist() if indices else []


@dataclass
class SourceChunk:
    """One chunk of a source: records per table, the rejected records, and how many units it covered.

    ``units`` counts the source's own units (lines, bundles, messages) with their table name, so that whole
    bundles and messages have an ``in`` count of their own (``bundles``/``messages``).
    """

    index: int
    tables: dict[str, TableRows] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    units: dict[str, int] = field(default_factory=dict)
    header_error: str | None = None

    def rows(self, table: str) -> TableRows:
        return self.tables.setdefault(table, TableRows())

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.tables.values()) + len(self.rejected)


# Records per chunk, at most, for readers that build a Python record per row (FHIR, HL7 v2, C-CDA, notes, CSV and
# JSON lines): a record costs a kilobyte or more of objects while it is checked, where an Arrow row of a Parquet
# extract costs its bytes. ``ingestion.chunk_rows`` above this only makes Arrow chunks larger.
RECORD_CHUNK_ROWS = 50_000


class Chunker:
    """Cuts a reader's records into chunks: the reader fills :attr:`chunk`, and takes each chunk that is done.

    ``per_record`` names the table whose ``units`` are the records themselves (a tabular line, a note file);
    readers whose units are bundles or messages count them into ``chunk.units`` as they go instead. A chunk
    holds ``chunk_rows`` records, at most :data:`RECORD_CHUNK_ROWS`.
    """

    def __init__(self, chunk_rows: int, *, per_record: str | None = None) -> None:
        self.chunk = SourceChunk(0)
        self._rows = min(chunk_rows, RECORD_CHUNK_ROWS)
        self._per_record = per_record

    def full(self) -> Iterator[SourceChunk]:
        """The current chunk once it holds ``chunk_rows`` records (none before); the next one is started."""
        if self.chunk.size >= self._rows:
            yield self._close()

    def rest(self) -> Iterator[SourceChunk]:
        """The last, partly filled chunk, if it holds anything."""
        if self.chunk.size or self.chunk.units:
            yield self._close()

    def _close(self) -> SourceChunk:
        done = self.chunk
        if self._per_record is not None:
            done.units[self._per_record] = done.size
        self.chunk = SourceChunk(done.index + 1)
        return done


def iter_lines(handle: IO[bytes], max_bytes: int, *, separator: bytes = b"\n") -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(line number, bytes without the separator, too_long)`` from a binary file.

    A line over ``max_bytes`` is yielded once with ``too_long=True`` and only its first
    :data:`PAYLOAD_KEEP_BYTES`; the rest of it is read in bounded pieces and discarded.
    """
    number = 0
    while True:
        line = handle.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(separator):
            kept = line[:PAYLOAD_KEEP_BYTES]
            while True:  # skip to the end of the line without holding it
                rest = handle.readline(_SKIP_BYTES)
                if not rest or rest.endswith(separator):
                    break
            yield number, kept, True
            continue
        if line.endswith(separator):
            line = line[: -len(separator)]
        if line.endswith(b"\r") and separator == b"\n":
            line = line[:-1]
        yield number, line, False


def decode_line(raw: bytes) -> tuple[str | None, str | None]:
    """Strict UTF-8: ``(text, None)`` or ``(None, reason)`` naming the first bad byte's offset (not the text)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); wrong encoding?"


def lossy(raw: bytes) -> str:
    """The bytes as text for a quarantined payload, undecodable bytes escaped (nothing is lost)."""
    return raw.decode("utf-8", errors="backslashreplace")
