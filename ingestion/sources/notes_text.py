"""Clinical notes as text files: one note per ``.txt`` file, its keys in a header block above the text.

A note file starts with ``field: value`` lines naming the note's keys (``note_id``, ``patient_id``,
``encounter_id``, ``note_time``: the notes contract's columns), then one blank line, then the note's text,
kept byte for byte::

    note_id: N-000123
    patient_id: PAT000042
    encounter_id: ENC000311

    Pt seen today for follow-up of ...

``note_id`` defaults to the file name without ``.txt`` (in a batch: the file's keyed label ``fd_…``, as its
position names it, since a file name can name a patient; see :mod:`ingestion.sources._keyed`). A file with no
header block, a header line that is not ``field: value``, or a field the contract does not declare is one
rejected record (``record:header`` or ``schema:columns``); so is a file that is not UTF-8 (a UTF-16 file is named
as such, see :mod:`ingestion.sources._encoding`; a UTF-8 byte-order mark is dropped) or is larger than the record
size limit (only its first bytes are kept). Files are read in name order, ``chunk_rows`` notes per chunk.

A folder is listed by :func:`~ingestion.sources._files.input_files`: only regular ``.txt`` files directly inside
it are read; a symbolic link or special file among them is refused as a ``files`` record and never opened (a link
in a notes folder once made ingestion read and store the local OpenBao's root-token file), and a folder's files
are opened with ``O_NOFOLLOW`` so that one swapped for a link after the listing is refused too. A single file
given directly is read as given, links resolved: pointing at it was the user's choice.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ingestion.sources._base import PAYLOAD_KEEP_BYTES, Chunker, Rejected, SourceChunk, decode_line, lossy
from ingestion.sources._encoding import UTF8_BOM, foreign_encoding
from ingestion.sources._files import FILES, input_files
from ingestion.sources._keyed import SourceKeys

__all__ = ["note_files", "read_note_files"]

_TABLE = "notes"
_BODY_FIELDS = ("text", "spans")
_SUFFIXES = (".txt",)


def note_files(path: Path) -> list[Path]:
    """The note files under ``path`` (a ``.txt`` file, or a directory's regular ``.txt`` files), in name order."""
    return input_files(path, _SUFFIXES).files


def read_note_files(path: Path, columns: list[str], *, chunk_rows: int, max_record_bytes: int,
                    keys: SourceKeys | None = None) -> Iterator[SourceChunk]:
    """Chunks of notes, one record per file (and one ``files`` record per refused folder entry).

    ``keys`` name the files (a batch passes the lake's); without, file names are shown.
    """
    keys = keys or SourceKeys.local()
    inputs = input_files(path, _SUFFIXES, keys)
    chunks = Chunker(chunk_rows, per_record=_TABLE)
    inputs.report_refused(chunks.chunk)
    listed = path.is_dir()
    for file in inputs.files:
        _read_one(chunks.chunk, file, columns, max_record_bytes, listed, keys)
        yield from chunks.full()
    yield from chunks.rest()


def _refuse(chunk: SourceChunk, name: str, rule: str, reason: str) -> None:
    chunk.rejected.append(Rejected(FILES, name, rule, f"{name} {reason}", ""))
    chunk.units[FILES] = chunk.units.get(FILES, 0) + 1


def _read_one(chunk: SourceChunk, file: Path, columns: list[str], max_bytes: int, listed: bool,
              keys: SourceKeys) -> None:
    label = keys.file_name(file.name)
    position = f"file {label}"
    # A folder's entry is opened without following a link, and without blocking on a FIFO: it was a regular file
    # when listed and must still be one.
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if listed else 0)
    try:
        descriptor = os.open(file, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse(chunk, label, "file:symlink", "became a symbolic link after the folder was listed; links are "
                    "not followed")
        else:
            _refuse(chunk, label, "file:unreadable", f"could not be opened ({exc.strerror})")
        return
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            _refuse(chunk, label, "file:special", "is not a regular file (a folder, FIFO or device); not read")
            return
        size = status.st_size
        raw = handle.read(PAYLOAD_KEEP_BYTES if size > max_bytes else size)
    if size > max_bytes:
        chunk.rejected.append(Rejected(_TABLE, position, "record:size",
                                       f"{position} is {size:,} bytes, over the {max_bytes:,}-byte record limit; "
                                       "first bytes kept", lossy(raw), payload_truncated=True))
        return
    foreign = foreign_encoding(raw[:4])
    if foreign:
        chunk.rejected.append(Rejected(_TABLE, position, "record:encoding", f"{position} {foreign}", lossy(raw)))
        return
    text, problem = decode_line(raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw)
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
    row.setdefault("note_id", label if keys.label_files
                   else file.name[: -len(".txt")] if file.name.endswith(".txt") else file.name)
    row["text"] = body
    chunk.rows(_TABLE).add(row, position)
