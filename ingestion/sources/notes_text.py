"""Clinical notes as text files: one note per ``.txt`` file, its keys in a header block above the text.

A note file starts with ``field: value`` lines naming the note's keys (``note_id``, ``patient_id``,
``encounter_id``, ``note_time``: the notes contract's columns), then one blank line, then the note's text,
kept byte for byte::

    note_id: N-000123
    patient_id: PAT000042
    encounter_id: ENC000311

    Pt seen today for follow-up of ...

``note_id`` defaults to the file name without ``.txt``. A file with no header block, a header line that is not
``field: value``, or a field the contract does not declare is one rejected record (``record:header`` or
``schema:columns``); so is a file that is not UTF-8 or is larger than the record size limit (only its first
bytes are kept). Files are read in name order, ``chunk_rows`` notes per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingestion.sources._base import PAYLOAD_KEEP_BYTES, Chunker, Rejected, SourceChunk, decode_line, lossy

__all__ = ["note_files", "read_note_files"]

_TABLE = "notes"
_BODY_FIELDS = ("text", "spans")


def note_files(path: Path) -> list[Path]:
    """The note files under ``path`` (a ``.txt`` file, or a directory of them), in name order."""
    return sorted(path.glob("*.txt")) if path.is_dir() else [path]


def read_note_files(path: Path, columns: list[str], *, chunk_rows: int,
                    max_record_bytes: int) -> Iterator[SourceChunk]:
    """Chunks of notes, one record per file."""
    chunks = Chunker(chunk_rows, per_record=_TABLE)
    for file in note_files(path):
        _read_one(chunks.chunk, file, columns, max_record_bytes)
        yield from chunks.full()
    yield from chunks.rest()


def _read_one(chunk: SourceChunk, file: Path, columns: list[str], max_bytes: int) -> None:
    position = f"file {file.name}"
    size = file.stat().st_size
    with file.open("rb") as handle:
        raw = handle.read(PAYLOAD_KEEP_BYTES if size > max_bytes else size)
    if size > max_bytes:
        chunk.rejected.append(Rejected(_TABLE, position, "record:size",
                                       f"{position} is {size:,} bytes, over the {max_bytes:,}-byte record limit; "
                                       "first bytes kept", lossy(raw), payload_truncated=True))
        return
    text, problem = decode_line(raw)
    if text is None:
        chunk.rejected.append(Rejected(_TABLE, position, "record:encoding", f"{position} {problem}", lossy(raw)))
        return
    head, blank, body = text.replace("\r\n", "\n").partition("\n\n")
    if not blank:
        chunk.rejected.append(Rejected(_TABLE, position, "record:header",
                                       f"{position} has no header block (field: value lines, then a blank line)",
                                       text))
        return
    row: dict[str, str | None] = {}
    for number, line in enumerate(head.split("\n"), start=1):
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            chunk.rejected.append(Rejected(_TABLE, position, "record:header",
                                           f"{position} header line {number} is not 'field: value'", text))
            return
        if name not in columns or name in _BODY_FIELDS:
            chunk.rejected.append(Rejected(_TABLE, position, "schema:columns",
                                           f"{position} header names {name[:40]!r}, which the notes contract "
                                           "does not declare as a key", text))
            return
        row[name] = value.strip() or None
    row.setdefault("note_id", file.name[: -len(".txt")] if file.name.endswith(".txt") else file.name)
    row["text"] = body
    chunk.rows(_TABLE).add(row, position)
