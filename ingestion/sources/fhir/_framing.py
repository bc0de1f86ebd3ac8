"""JSON documents out of FHIR input files, each parsed within bounds or turned into a rejected record.

Framings, told apart by the file name: ``*.json`` (and ``*.json.gz``) is one document (a Bundle or a bare
resource, pretty-printed or not), read whole up to :data:`MAX_DOCUMENT_BYTES`; ``*.ndjson``/``*.jsonl`` (and
``.gz``) hold one document per line (FHIR Bulk Data ``$export`` output, one resource a line, or one Bundle a
line), streamed with the record-size limit on every line, decompressed size included. A ``.json`` file that holds
several lines of JSON is read as lines. A file given directly with another suffix is read whole when it fits and
as lines otherwise. A ``.gz`` file stops being read once it has inflated to :data:`MAX_INFLATION` times its size
(at least :data:`MAX_DOCUMENT_BYTES`): a decompression bomb costs bounded time as well as bounded memory.

Every document is decoded as strict UTF-8 (a leading byte-order mark is dropped) and its nesting depth is measured
on the bytes before it is parsed (:func:`json_depth`), so a document nested deeper than :data:`MAX_DEPTH` levels is
one ``record:depth`` rejection in time linear in its size: ``json.loads`` would otherwise recurse until Python's
limit and raise ``RecursionError`` out of the run.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ingestion.sources._base import PAYLOAD_KEEP_BYTES, Rejected, iter_lines, lossy

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "MAX_INFLATION", "SUFFIXES", "Document", "documents", "json_depth"]

SUFFIXES = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")
_LINE_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")
_WHOLE_SUFFIXES = (".json", ".json.gz")
# FHIR nests a few levels per element (Bundle > entry > resource > extension > value > coding is 11 JSON levels);
# a deep Questionnaire stays well under 100. Python's json recursion limit is near 1,000.
MAX_DEPTH = 100
# A whole-file document (a Bundle per .json file) may be larger than one ndjson line: a Synthea patient with a long
# history is 5-30 MB. Parsing costs about ten times the file in memory, so 64 MiB is the bound.
MAX_DOCUMENT_BYTES = 64 * 2**20
_BOM = b"\xef\xbb\xbf"
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_GZIP_ERRORS = (OSError, EOFError, zlib.error)
# Gzip'd FHIR ndjson inflates 10-30x; a file inflating past 200x its size is treated as a decompression bomb.
MAX_INFLATION = 200


@dataclass
class Document:
    """One JSON document: its position and parsed value, or the rejection saying why it could not be read."""

    position: str
    value: Any = None
    rejected: Rejected | None = None


def json_depth(data: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays and objects in ``data`` (JSON), brackets inside strings ignored.

    Linear in the size, in C-speed passes (escaped backslashes and quotes removed, strings cut out, brackets kept);
    returns early with a bound when the document holds too few brackets to be deeper than ``limit``.
    """
    opened = data.count(b"{") + data.count(b"[")
    if opened <= limit:
        return opened
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])  # even pieces lie outside strings
    brackets = np.frombuffer(outside.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("{")) | (brackets == ord("[")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def parse(raw: bytes, position: str, table: str, keep_bytes: int) -> Document:
    """``raw`` parsed as one JSON document, or a rejection (encoding, depth, syntax) for ``table``."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    payload, truncated = (raw, False) if len(raw) <= keep_bytes else (raw[:keep_bytes], True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Document(position, rejected=Rejected(
            table, position, "record:encoding", f"{position} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
            f"offset {exc.start}); wrong encoding?", lossy(payload), payload_truncated=truncated))
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        return Document(position, rejected=Rejected(
            table, position, "record:depth", f"{position} nests JSON {depth:,} levels deep; the limit is "
            f"{MAX_DEPTH} (FHIR needs far fewer)", lossy(payload), payload_truncated=truncated))
    try:
        return Document(position, json.loads(text))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        return Document(position, rejected=Rejected(
            table, position, "record:parse", f"{position} is not complete JSON ({exc.msg} at {where}); "
            "truncated?", lossy(payload), payload_truncated=truncated))
    except ValueError as exc:  # an integer of more than 4,300 digits: Python refuses to convert it
        return Document(position, rejected=Rejected(
            table, position, "record:parse", f"{position} holds a number too long to read "
            f"({type(exc).__name__})", lossy(payload), payload_truncated=truncated))
    except RecursionError:  # cannot happen below MAX_DEPTH; kept so a reader never raises
        return Document(position, rejected=Rejected(
            table, position, "record:depth", f"{position} nests JSON too deeply to parse", lossy(payload),
            payload_truncated=truncated))


def framing(file: Path) -> str:
    """``lines`` or ``whole``: how ``file`` is cut into documents, by its name (and size when the name says not)."""
    name = file.name.lower()
    if name.endswith(_LINE_SUFFIXES):
        return "lines"
    if name.endswith(_WHOLE_SUFFIXES):
        return "whole"
    return "whole" if file.stat().st_size <= MAX_DOCUMENT_BYTES else "lines"


def documents(file: Path, table: str, max_record_bytes: int, name: str | None = None) -> Iterator[Document]:
    """The documents of ``file`` in order; what cannot be read is rejected for ``table``.

    Positions name the file as ``name`` (a batch passes the file's keyed label: a file name can name a patient).
    """
    opener = _gzip_open if file.name.lower().endswith(".gz") else _plain_open
    name = file.name if name is None else name
    if framing(file) == "lines":
        yield from _lines(file, opener, table, max_record_bytes, name)
    else:
        yield from _whole(file, opener, table, max_record_bytes, name)


def _plain_open(file: Path) -> IO[bytes]:
    return file.open("rb")


def _gzip_open(file: Path) -> IO[bytes]:
    # A stream: readline/read with a size decompress only what they return. The budget stops a decompression
    # bomb (gzip inflates up to ~1,000x) after MAX_INFLATION times the file, time spent on it included.
    return _Inflated(gzip.open(file, "rb"), max(MAX_DOCUMENT_BYTES, MAX_INFLATION * file.stat().st_size))


class _InflationError(Exception):
    """More was decompressed from a .gz file than its budget allows."""


class _Inflated:
    """A decompressing handle that counts what it returns and raises :class:`_InflationError` past ``budget``."""

    def __init__(self, handle: IO[bytes], budget: int) -> None:
        self._handle, self._budget, self._returned = handle, budget, 0

    def _count(self, data: bytes) -> bytes:
        self._returned += len(data)
        if self._returned > self._budget:
            raise _InflationError
        return data

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._handle.readline(size))

    def read(self, size: int = -1) -> bytes:
        return self._count(self._handle.read(size))

    def __enter__(self) -> _Inflated:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _lines(file: Path, opener, table: str, max_record_bytes: int, name: str) -> Iterator[Document]:
    number = 0
    try:
        with opener(file) as handle:
            for number, raw, too_long in iter_lines(handle, max_record_bytes):
                if not raw.strip():
                    continue
                position = f"{name} line {number}"
                if too_long:
                    yield Document(position, rejected=Rejected(
                        table, position, "record:size", f"{position} is longer than the {max_record_bytes:,}-byte "
                        "record limit", lossy(raw), payload_truncated=True))
                    continue
                yield parse(raw, position, table, max_record_bytes)
    except _GZIP_ERRORS as exc:
        position = f"{name} line {number + 1}"
        yield Document(position, rejected=Rejected(
            table, position, "record:parse", f"{name} cannot be read after line {number:,}: the compressed "
            f"stream is corrupt or truncated ({type(exc).__name__})", ""))
    except _InflationError:
        position = f"{name} line {number + 1}"
        yield Document(position, rejected=Rejected(
            table, position, "record:size", f"{name} inflates to more than {MAX_INFLATION}x its size (a "
            f"decompression bomb?); not read past line {number:,}", ""))


def _whole(file: Path, opener, table: str, max_record_bytes: int, name: str) -> Iterator[Document]:
    position = name
    try:
        with opener(file) as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except _GZIP_ERRORS as exc:
        yield Document(position, rejected=Rejected(
            table, position, "record:parse", f"{position} is not a readable gzip file ({type(exc).__name__})", ""))
        return
    except _InflationError:
        yield Document(position, rejected=Rejected(
            table, position, "record:size", f"{position} inflates to more than {MAX_INFLATION}x its size (a "
            "decompression bomb?); not read", ""))
        return
    if len(raw) > MAX_DOCUMENT_BYTES:
        yield Document(position, rejected=Rejected(
            table, position, "record:size", f"{position} is larger than the {MAX_DOCUMENT_BYTES:,}-byte limit for "
            "one JSON document; split it, or export it as ndjson (one resource per line)",
            lossy(raw[:PAYLOAD_KEEP_BYTES]), payload_truncated=True))
        return
    document = parse(raw, position, table, max_record_bytes)
    if document.rejected is not None and _several_lines(raw):
        # Bulk output saved as .json: one document per line.
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if line.strip():
                yield parse(line.rstrip(b"\r"), f"{position} line {number}", table, max_record_bytes)
        return
    yield document


def _several_lines(raw: bytes) -> bool:
    """True when the first line of ``raw`` is a complete JSON object on its own (ndjson saved as .json)."""
    first = raw.split(b"\n", 1)[0].strip().removeprefix(_BOM)
    if not first.startswith(b"{") or not first.endswith(b"}") or json_depth(first) > MAX_DEPTH:
        return False
    try:
        return isinstance(json.loads(first), dict)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return False
