"""HL7 v2 messages as vendors send them (v2.3 to v2.8) into the conformed tables.

Framing. A file holds one message or many: segments end with CR, LF or CRLF; messages may be MLLP-framed
(``0x0b`` … ``0x1c 0x0d``), wrapped in file and batch envelopes (FHS/BHS … BTS/FTS, which are skipped), or simply
follow one another (a message starts at each MSH). When a file's first MSH ends with a bare CR, the file is read
as "one message per line" (segments end with CR, messages with LF, as our generator and many interface engines
write): a line break then also ends a message, so a message whose MSH is broken cannot swallow its neighbours.
The file is read in blocks and no message longer than ``max_record_bytes`` is held in memory: it is quarantined
(``record:size``) with its first bytes, and the next message loads.

Parsing. The field separator and encoding characters are read from each message's MSH-1 and MSH-2 (never assumed
to be ``|^~\\&``); fields split into repetitions, components and subcomponents, and escapes (``\\F\\ \\S\\ \\T\\
\\R\\ \\E\\ \\Xhh…\\ \\.br\\``…) are decoded after splitting. MSH-18 ``8859/1`` messages are read as Latin-1,
others as strict UTF-8. A field holding ``""`` (HL7's explicit null) is a missing value.

Mapping (values AS FOUND: HL7 TS strings, coding-system names such as ``LN``/``I10``/``CVX``, phones as written;
the conform step normalises them):
  * PID -> patients; PV1 -> encounters (PV1-2 I->IMP, O/R/B->AMB, E->EMER, P->PRENC);
  * OBX -> observations (NM, SN, ST/TX/FT, CE/CWE, TS/DT values; OBX-6 unit, OBX-7 range, OBX-8 flag, OBR
    context: order number, time, category); an ORU's OBR -> diagnostic_reports (the panel its OBX belong to:
    observation ids start with its report id); AL1 -> allergies; DG1 -> conditions;
  * ORM O01: RXO -> medications (kind ``order``); an order without RXO (a lab or imaging order) -> procedures
    with the order's status (``preparation`` for a new order), since it names a service to be done;
  * VXU V04: RXA -> immunizations (CVX as found in RXA-5).
A message carrying any segment the reader does not map (Z-segments, NK1, NTE, PD1, PV2…), or an OBX whose value
is an encapsulated document (ED) or a reference (RP), is also kept whole, sealed, in ``resources``
(``resource_type`` = the message code, e.g. ``ADT``), so nothing the sender wrote is lost.

Failures. A message that cannot be read (no MSH, garbled segment, bad encoding characters, unsupported type or
version, segments out of order) is one rejected ``messages`` record positioned ``message N (file line L)`` whose
reason names the segment; a segment that cannot be mapped (an OBX with an unknown value type) is one rejected row
of its table. The other messages of the file still load. Reasons never carry a field value.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ingestion.sources._base import PAYLOAD_KEEP_BYTES, Chunker, Rejected, SourceChunk, lossy
from ingestion.sources._encoding import UTF8_BOM, foreign_encoding
from ingestion.sources._files import InputFiles, input_files
from ingestion.sources._keyed import SourceKeys

__all__ = ["MESSAGES", "SUFFIXES", "hl7_files", "read_hl7"]

MESSAGES = "messages"
SUFFIXES = (".hl7", ".hl7v2")
_BLOCK = 1 << 16
_BREAK = re.compile(rb"\r\n|[\r\n\x0b\x1c]")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_ENVELOPE = {b"FHS", b"BHS", b"BTS", b"FTS"}
_VERSION = re.compile(r"2\.\d(\.\d)?")
# Supported message types; a missing trigger event is taken from EVN-1 (ADT) or is the type's only one.
_TRIGGERS = {"ADT": {"A01", "A03", "A04", "A05", "A08", "A28", "A31"}, "ORU": {"R01"}, "ORM": {"O01"},
             "VXU": {"V04"}}
_DEFAULT_TRIGGER = {"ORU": "R01", "ORM": "O01", "VXU": "V04"}
# Segments turned into rows or used as context; a message with any other segment is also kept whole.
_MAPPED = {"MSH", "EVN", "PID", "PV1", "ORC", "OBR", "OBX", "AL1", "DG1", "RXA", "RXO", "IN1"}
# Segments of a patient's group: they need a PID before them.
_PATIENT_SEGMENTS = {"PD1", "NK1", "PV1", "PV2", "AL1", "DG1", "RXA", "IN1", "GT1", "PR1"}
# LOINC codes of the FHIR vital-signs profile.
_VITALS = {"85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4", "29463-7",
           "39156-5", "85354-9", "8480-6", "8462-4", "3141-9", "8287-5", "8306-3"}
_IMAGING = {"RAD", "CT", "MR", "US", "NMR", "NMS", "XRC", "VUS", "CUS", "RX", "OUS"}
_PATIENT_CLASS = {"I": "IMP", "O": "AMB", "R": "AMB", "B": "AMB", "E": "EMER", "P": "PRENC"}
_SEX = {"F": "F", "M": "M", "O": "O", "U": "U", "A": "O", "N": "U"}
_RACE = {"1002-5": "American Indian or Alaska Native", "2028-9": "Asian", "2054-5": "Black or African American",
         "2076-8": "Native Hawaiian or Other Pacific Islander", "2106-3": "White", "2131-1": "Other Race"}
_ETHNICITY = {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino", "H": "Hispanic or Latino",
              "N": "Not Hispanic or Latino"}
_ALLERGY_CATEGORY = {"DA": "medication", "FA": "food", "EA": "environment", "AA": "environment",
                     "PA": "environment", "LA": "environment"}
_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}
# ORC-1 order control (and ORC-5 order status) -> medication request / procedure status.
_MED_STATUS = {"NW": "active", "OK": "active", "SC": "active", "IP": "active", "CA": "cancelled",
               "CR": "cancelled", "OC": "cancelled", "DC": "stopped", "OD": "stopped", "HD": "on-hold",
               "OH": "on-hold", "CM": "completed"}
_PROC_STATUS = {"NW": "preparation", "OK": "preparation", "SC": "preparation", "IP": "in-progress",
                "CA": "not-done", "CR": "not-done", "OC": "not-done", "DC": "stopped", "OD": "stopped",
                "HD": "on-hold", "OH": "on-hold", "CM": "completed"}
# OBR-25 result status -> FHIR DiagnosticReport status.
_REPORT_STATUS = {"O": "registered", "I": "registered", "S": "registered", "A": "partial", "R": "partial",
                  "P": "preliminary", "C": "corrected", "F": "final", "X": "cancelled"}
_VALUE_TYPES = {"NM", "SN", "ST", "TX", "FT", "CE", "CWE", "CNE", "CF", "TS", "DT", "DTM", "TM", "ID", "IS",
                "CX", "XCN", "XPN", "XAD", "XTN", "ED", "RP", "NA", "MA", "CP", "MO", "SI", "TN", "AD", "PN",
                "CK", "CN", "DR", "EI"}
_CODED = {"CE", "CWE", "CNE", "CF"}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_COMPARED = re.compile(r"(<=|>=|<|>|=)\s*[+-]?(\d+(\.\d*)?|\.\d+)")
_ESCAPE_TEXT = {".br": "\n", ".sp": "\n", ".ce": "\n", ".sk": " ", ".fi": "", ".nf": "", "H": "", "N": ""}


def hl7_files(path: Path) -> list[Path]:
    """The message files under ``path``: the file itself, or the folder's regular ``*.hl7``/``*.hl7v2`` files."""
    return input_files(path, SUFFIXES).files


def read_hl7(path: Path, *, chunk_rows: int, max_record_bytes: int,
             keys: SourceKeys | None = None) -> Iterator[SourceChunk]:
    """Chunks of mapped records from the messages under ``path`` (a file or a folder of message files).

    ``keys`` name the files in positions (a batch passes the lake's, see :mod:`ingestion.sources._keyed`: a file
    name can name a patient); without, file names are shown.
    """
    keys = keys or SourceKeys.local()
    found: InputFiles = input_files(path, SUFFIXES, keys)
    chunks = Chunker(chunk_rows)
    found.report_refused(chunks.chunk)
    index = 0
    recent = _Recent()
    for file in found.files:
        name = keys.file_name(file.name)
        with file.open("rb") as handle:
            head = handle.read(4)
            foreign = foreign_encoding(head)
            if foreign is not None:  # a UTF-16/32 file: refused once, naming the encoding, not line by line
                index += 1
                chunks.chunk.units[MESSAGES] = chunks.chunk.units.get(MESSAGES, 0) + 1
                _reject(chunks.chunk, f"message {index} ({name} line 1)", "record:encoding", foreign, "")
                continue
            handle.seek(len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0)
            for unit in _units(handle, max_record_bytes):
                index += 1
                chunk = chunks.chunk
                chunk.units[MESSAGES] = chunk.units.get(MESSAGES, 0) + 1
                _unit(chunk, unit, f"message {index} ({name} line {unit.line})", max_record_bytes, index,
                      recent)
                yield from chunks.full()
    yield from chunks.rest()


# framing ------------------------------------------------------------------------------------------------------


@dataclass
class _Unit:
    """One message as read: its segments' bytes and lines, or what stopped it from being one."""

    line: int
    segments: list[bytes] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    size: int = 0
    too_long: bool = False
    orphan: bool = False  # segments with no MSH before them
    last_line: int = 0
    batch_id: str | None = None


def _segments(handle: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None, bytes, bool]]:
    """``(line, segment bytes, the break after it, too_long)`` for each non-blank segment of a binary file, and
    ``(line, None, break, False)`` at each MLLP block start or end (``0x0b``, ``0x1c``).

    Lines are counted by LF. A segment longer than ``max_bytes`` keeps only its first bytes; the rest is read
    in blocks and dropped, so a file with no separator at all costs bounded memory.
    """
    line = 1
    pending = bytearray()
    start_line = 1
    too_long = False

    def take(piece: bytes) -> None:
        nonlocal too_long
        if len(pending) + len(piece) > max_bytes:
            too_long = True
            piece = piece[: max(0, PAYLOAD_KEEP_BYTES - len(pending))]
        pending.extend(piece)

    while block := handle.read(_BLOCK):
        if block.endswith(b"\r"):  # keep a CRLF in one block
            block += handle.read(1)
        start = 0
        for match in _BREAK.finditer(block):
            take(block[start:match.start()])
            brk = match.group()
            if pending.strip():
                yield start_line, bytes(pending).lstrip(b" \t"), brk, too_long
            if brk in (b"\x0b", b"\x1c"):
                yield line, None, brk, False
            if brk.endswith(b"\n"):
                line += 1
            pending.clear()
            too_long = False
            start_line = line
            start = match.end()
        take(block[start:])
    if pending.strip():
        yield start_line, bytes(pending).lstrip(b" \t"), b"", too_long


def _units(handle: IO[bytes], max_bytes: int) -> Iterator[_Unit]:
    """The file's messages (and runs of segments outside any message), each holding at most ``max_bytes``."""
    current: _Unit | None = None
    per_line: bool | None = None  # "one message per line": decided by how the first MSH ends
    batch_id: str | None = None
    for line, raw, brk, too_long in _segments(handle, max_bytes):
        if raw is None or raw[:3] in _ENVELOPE:  # an MLLP frame or an envelope segment ends the message
            if current is not None:
                yield current
                current = None
            if raw is not None and raw[:3] in (b"BHS", b"FHS"):
                batch_id = _envelope_id(raw)
            continue
        if _header(raw):
            if current is not None:
                yield current
            current = _Unit(line, batch_id=batch_id)
            if per_line is None:
                per_line = brk == b"\r"
        elif current is None:
            current = _Unit(line, orphan=True)
        elif per_line and line != current.last_line:
            yield current  # one message per line: a new line is a new message, even without its MSH
            current = _Unit(line, orphan=True)
        current.last_line = line
        current.too_long |= too_long or current.size + len(raw) > max_bytes
        if current.too_long:
            if current.size < PAYLOAD_KEEP_BYTES:  # keep the start as the quarantined payload, drop the rest
                kept = raw[: PAYLOAD_KEEP_BYTES - current.size]
                current.segments.append(kept)
                current.lines.append(line)
                current.size += len(kept)
            continue
        current.segments.append(raw)
        current.lines.append(line)
        current.size += len(raw) + 1
    if current is not None:
        yield current


def _header(raw: bytes) -> bool:
    """Whether a segment starts a message: an MSH, or a header whose id is damaged but whose delimiters are
    intact (``MSX|^~\\&|``), so that the damage stays in its own message instead of joining the one before."""
    if raw[:3] == b"MSH":
        return len(raw) > 4 and not raw[3:4].isalnum()
    if len(raw) < 9 or raw[3] != raw[8]:
        return False
    chars = raw[3:8]
    return len(set(chars)) == 5 and not any(chr(c).isalnum() or chr(c).isspace() for c in chars)


def _envelope_id(raw: bytes) -> str | None:
    # FHS-11 / BHS-11: the file or batch control id, kept with a message stored whole.
    separator = raw[3:4].decode("latin-1") if len(raw) > 3 else "|"
    parts = raw.decode("latin-1").split(separator)
    value = parts[10].strip() if len(parts) > 10 else ""
    return value[:64] or None


# parsing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
    """The message's delimiters (MSH-1, MSH-2) and its character set (MSH-18)."""

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    codec: str


class _Segment:
    """One segment split into fields; components and repetitions are split on request and unescaped."""

    def __init__(self, text: str, enc: _Encoding) -> None:
        self.text = text
        self.enc = enc
        self.id = text[:3]
        parts = text.split(enc.field)
        # MSH-1 is the field separator itself, so MSH's field n sits at index n - 1.
        self.fields = [parts[0], enc.field, *parts[1:]] if self.id == "MSH" else parts
        self._reps: dict[int, list[str]] = {}

    def raw(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def reps(self, number: int) -> list[str]:
        # Split once per field: callers walk repetitions by index, and a field of many thousands of
        # repetitions must not be split again for each one.
        cached = self._reps.get(number)
        if cached is None:
            value = self.raw(number)
            if self.id == "MSH" and number <= 2:
                cached = [value]
            elif value and self.enc.repetition:
                cached = value.split(self.enc.repetition)
            else:
                cached = [value] if value else []
            self._reps[number] = cached
        return cached

    def get(self, number: int, comp: int = 1, rep: int = 0, sub: int | None = None) -> str | None:
        """Field ``number``'s repetition ``rep``, component ``comp`` (1-based), unescaped; None when empty.

        With ``sub`` None the whole component is returned (its subcomponents as written, joined by the
        subcomponent separator).
        """
        reps = self.reps(number)
        if rep >= len(reps):
            return None
        return _component(reps[rep], self.enc, comp, sub)

    def whole(self, number: int, rep: int = 0) -> str | None:
        """Field ``number``'s repetition ``rep`` as one text (a text value's delimiters are its own), unescaped."""
        reps = self.reps(number)
        text = unescape(reps[rep], self.enc).strip() if rep < len(reps) else ""
        return None if not text or text == '""' else text


def _component(value: str, enc: _Encoding, comp: int, sub: int | None = None) -> str | None:
    parts = value.split(enc.component) if enc.component else [value]
    if comp > len(parts):
        return None
    part = parts[comp - 1]
    if sub is not None:
        subs = part.split(enc.subcomponent) if enc.subcomponent else [part]
        part = subs[sub - 1] if sub <= len(subs) else ""
    text = unescape(part, enc).strip()
    return None if not text or text == '""' else text


def unescape(value: str, enc: _Encoding) -> str:
    """HL7 escape sequences decoded (2.10: delimiters, hex bytes, formatting); unknown ones are dropped."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    at = 0
    while True:
        start = value.find(esc, at)
        if start < 0:
            out.append(value[at:])
            break
        end = value.find(esc, start + 1)
        if end < 0:  # an unterminated escape is text
            out.append(value[at:])
            break
        out.append(value[at:start])
        out.append(_escape(value[start + 1:end], enc))
        at = end + 1
    return "".join(out)


def _escape(code: str, enc: _Encoding) -> str:
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": enc.escape}
    if code in simple:
        return simple[code]
    if code in _ESCAPE_TEXT:
        return _ESCAPE_TEXT[code]
    if code.startswith("X") and len(code) > 1:
        try:
            return bytes.fromhex(code[1:]).decode(enc.codec, errors="replace")
        except ValueError:
            return ""
    if code.startswith((".sp", ".sk")) and code[3:].isdigit():
        return _ESCAPE_TEXT[code[:3]] * min(int(code[3:]), 100)
    return ""  # character-set switches, app-defined Z escapes, .in/.ti: no text of their own


def _encoding(msh: bytes) -> _Encoding | None:
    """The delimiters from MSH-1/MSH-2 and the codec from MSH-18, or None when they are unusable."""
    text = msh.decode("latin-1")
    if len(text) < 5:
        return None
    sep = text[3]
    chars = text[4:].split(sep, 1)[0]
    if not 1 <= len(chars) <= 5 or len(set(chars + sep)) != len(chars) + 1 or any(c.isalnum() or c.isspace()
                                                                                    for c in chars + sep):
        return None
    padded = (chars + "\0\0\0\0")[:4]
    component, repetition, escape, subcomponent = (c if c != "\0" else "" for c in padded)
    fields = text.split(sep)
    charset = fields[17].split(chars[1] if len(chars) > 1 else "~")[0].strip().upper() if len(fields) > 17 else ""
    codec = "latin-1" if charset in ("8859/1", "8859/15", "ISO-8859-1", "ISO IR100") else "utf-8"
    return _Encoding(sep, component, repetition, escape, subcomponent, codec)


# messages -----------------------------------------------------------------------------------------------------


class _Recent:
    """The patients and visits of the last messages read, to complete a sparse repeat of them.

    Results and orders repeat the patient's PID and PV1 with fewer fields than the ADT that announced them; as
    sent, such a row differs from the first and the batch would quarantine it as a key conflict. A row whose
    key was seen in the last :data:`SIZE` patients (or visits) has its empty fields filled from the earlier
    row, so an exact repeat is counted as a duplicate; a row that changes a value stays as sent (a conflict the
    batch reports). The memory is bounded by ``SIZE`` rows per table, and the result does not depend on chunks.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self.rows: dict[str, OrderedDict[str, dict[str, Any]]] = {"patients": OrderedDict(),
                                                                    "encounters": OrderedDict()}

    def complete(self, table: str, key: str, row: dict[str, Any]) -> None:
        """Fill ``row``'s empty fields from the last row with the same ``key`` (when it adds, never changes)."""
        seen = self.rows[table]
        earlier = seen.pop(key, None)
        if earlier is not None and all(earlier.get(k) in (None, v) for k, v in row.items() if v is not None):
            for name, value in earlier.items():
                if row.get(name) is None:
                    row[name] = value
        seen[key] = dict(row)
        if len(seen) > self.SIZE:
            seen.popitem(last=False)


def _reject(chunk: SourceChunk, position: str, rule: str, reason: str, payload: str, *, table: str = MESSAGES,
            **extra: Any) -> None:
    chunk.rejected.append(Rejected(table, position, rule, f"{position} {reason}", payload, **extra))


def _unit(chunk: SourceChunk, unit: _Unit, position: str, max_bytes: int, index: int, recent: _Recent) -> None:
    def payload() -> str:  # built only for a rejected message: the raw segments, undecodable bytes escaped
        return "\r".join(lossy(s) for s in unit.segments)

    if unit.too_long:
        _reject(chunk, position, "record:size", f"is longer than the {max_bytes:,}-byte record limit", payload(),
                payload_truncated=True)
        return
    if unit.orphan:
        _reject(chunk, position, "hl7:structure", f"has {len(unit.segments)} segment(s) outside any message "
                "(no MSH segment before them)", payload())
        return
    if not unit.segments[0].startswith(b"MSH"):
        _reject(chunk, position, "hl7:structure", "does not start with an MSH segment (its header is damaged)",
                payload())
        return
    enc = _encoding(unit.segments[0])
    if enc is None:
        _reject(chunk, position, "hl7:encoding_characters", "has an unusable field separator or encoding "
                "characters in MSH-1/MSH-2", payload())
        return
    texts = []
    for number, raw in enumerate(unit.segments, start=1):
        try:
            texts.append(raw.decode(enc.codec))
        except UnicodeDecodeError as exc:
            _reject(chunk, position, "record:encoding", f"segment {number} (line {unit.lines[number - 1]}) is not "
                    f"valid {enc.codec} (byte 0x{raw[exc.start]:02x} at offset {exc.start}); wrong encoding or "
                    "MSH-18 character set?", payload())
            return

    def patient() -> str | None:  # a rejected message's patient, when its PID reads: a shred reaches it too
        pid = next((t for t in texts if t.startswith("PID" + enc.field)), None)
        return _patient_ids(_Segment(pid, enc))[0] if pid is not None else None

    for number, text in enumerate(texts, start=1):
        if not _SEGMENT_ID.fullmatch(text[:3]) or (len(text) > 3 and text[3] != enc.field):
            _reject(chunk, position, "hl7:garbled", f"segment {number} (line {unit.lines[number - 1]}) is garbled "
                    "(no valid segment id and field separator)", payload(), patient_id=patient())
            return
    segments = [_Segment(text, enc) for text in texts]
    marks = {table: len(rows.rows) for table, rows in chunk.tables.items()}, len(chunk.rejected)
    try:
        problem = _check(segments)
        if problem is not None:
            rule, reason = problem
            _reject(chunk, position, rule, reason, payload(), patient_id=patient())
            return
        _Mapper(chunk, segments, position, unit, index, recent).run()
    except Exception as exc:  # a reader never raises on bad input: a mapping bug quarantines the message whole
        _undo(chunk, *marks)
        _reject(chunk, position, "hl7:map", f"could not be mapped ({type(exc).__name__})", payload(),
                patient_id=patient())


def _undo(chunk: SourceChunk, sizes: dict[str, int], rejected: int) -> None:
    """Drop what a message's mapping added to ``chunk`` before it failed: a message loads whole or not at all."""
    for table in list(chunk.tables):
        kept = sizes.get(table, 0)
        rows = chunk.tables[table]
        del rows.rows[kept:], rows.positions[kept:]
        if not rows.rows:
            del chunk.tables[table]
    del chunk.rejected[rejected:]


def _patient_ids(pid: _Segment) -> tuple[str | None, tuple[str | None, str, str | None] | None]:
    """The patient id (the PID-3 repetition typed ``PI``, else PID-3's first, else PID-2/PID-4) and the
    ``(id, type, assigning authority)`` of the repetition typed ``MR``."""
    ids = [(pid.get(3, 1, rep), (pid.get(3, 5, rep) or "").upper(), pid.get(3, 4, rep, 1))
           for rep in range(len(pid.reps(3)))]
    ids = [entry for entry in ids if entry[0]]
    chosen = next((e for e in ids if e[1] == "PI"), ids[0] if ids else None)
    patient_id = chosen[0] if chosen else (pid.get(2, 1) or pid.get(4, 1))
    return patient_id, next((e for e in ids if e[1] == "MR"), None)


def _kind(segments: list[_Segment]) -> tuple[str, str]:
    msh = segments[0]
    code = (msh.get(9, 1) or "").upper()
    trigger = (msh.get(9, 2) or "").upper()
    if not trigger:
        if code == "ADT" and len(segments) > 1 and segments[1].id == "EVN":
            trigger = (segments[1].get(1) or "").upper()
        else:
            trigger = _DEFAULT_TRIGGER.get(code, "")
    return code, trigger


def _check(segments: list[_Segment]) -> tuple[str, str] | None:
    """``(rule, reason)`` when the message's type, version or segment order is not one we can map."""
    version = segments[0].get(12) or ""
    if version and not _VERSION.fullmatch(version):
        return "hl7:version", "has an MSH-12 version that is not HL7 v2.x"
    code, trigger = _kind(segments)
    if trigger not in _TRIGGERS.get(code, ()):
        supported = ", ".join(f"{c}^{t}" for c, ts in _TRIGGERS.items() for t in sorted(ts))
        name = f"{code}^{trigger}" if _SEGMENT_ID.fullmatch(code) and re.fullmatch(r"[A-Z0-9]{1,4}", trigger or "-") \
            else "an unreadable type"
        return "hl7:type", f"has message type {name}; only {supported} are mapped"
    seen_pid = False
    pv1_in_group = False
    header_done = False  # a segment other than EVN, SFT or UAC has come: EVN may no longer follow
    for number, segment in enumerate(segments[1:], start=2):
        name = segment.id
        if name == "EVN" and header_done:
            return "hl7:segment_order", f"has EVN at segment {number}, after the patient's segments (wrong " \
                                        "segment order)"
        header_done |= name not in ("EVN", "SFT", "UAC")
        if name == "PID":
            if seen_pid and code in ("ADT", "VXU"):
                return "hl7:structure", f"has a second PID at segment {number}; a {code} message is about one patient"
            seen_pid, pv1_in_group = True, False
        elif name in _PATIENT_SEGMENTS and not seen_pid:
            return "hl7:segment_order", f"has {name} at segment {number} before any PID (wrong segment order)"
        elif name == "PV1":
            if pv1_in_group:
                return "hl7:segment_order", f"has a second PV1 at segment {number} for one patient"
            pv1_in_group = True
    if code in ("ADT", "VXU") and not seen_pid:
        return "hl7:structure", f"has no PID segment; a {code} message is about a patient"
    return None


class _Mapper:
    """Turns one parsed message into rows: patient and visit context carried from segment to segment."""

    def __init__(self, chunk: SourceChunk, segments: list[_Segment], position: str, unit: _Unit,
                 index: int, recent: _Recent) -> None:
        self.chunk = chunk
        self.recent = recent
        self.repeated: list[tuple[str, str, dict[str, Any]]] = []  # patients and visits to complete
        self.segments = segments
        self.position = position
        self.unit = unit
        self.msh = segments[0]
        self.code, self.trigger = _kind(segments)
        self.control_id = self.msh.get(10)
        self.message_key = self.control_id or f"message-{index}"
        self.facility = self.msh.get(4, 1)
        self.patient_id: str | None = None
        self.encounter_id: str | None = None
        self.orc: _Segment | None = None
        self.obr: _Segment | None = None
        self.obr_number = 0
        self.obx_number = 0
        self.counts: dict[str, int] = {}
        self.patient_row: dict[str, Any] | None = None
        self.insured = False  # the patient's first IN1 has been read
        self.order_has_rxo = False
        self.obr_where = position
        self.encapsulated = False  # an OBX carries a document (ED) or a reference (RP) no column holds

    def where(self, number: int, segment: _Segment) -> str:
        return f"{self.position} segment {number} ({segment.id})"

    def run(self) -> None:
        handlers = {"PID": self.pid, "PV1": self.pv1, "ORC": self.orc_, "OBR": self.obr_, "OBX": self.obx,
                    "AL1": self.al1, "DG1": self.dg1, "RXA": self.rxa, "RXO": self.rxo, "IN1": self.in1}
        for number, segment in enumerate(self.segments, start=1):
            handler = handlers.get(segment.id)
            if handler is not None:
                handler(segment, self.where(number, segment))
        self.finish_order()
        for table, key, row in self.repeated:  # once the message is read (an IN1 adds to its PID's row)
            self.recent.complete(table, key, row)
        if self.encapsulated or any(s.id not in _MAPPED for s in self.segments):
            self.keep_whole()

    def add(self, table: str, row: dict[str, Any], where: str) -> None:
        self.chunk.rows(table).add(row, where)

    def next_id(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{self.message_key}:{kind}{self.counts[kind]}"

    # patients and visits

    def pid(self, pid: _Segment, where: str) -> None:
        self.finish_order()
        self.orc = self.obr = None
        self.encounter_id = None
        patient_id, mr = _patient_ids(pid)
        self.patient_id = patient_id
        self.insured = False
        names = range(len(pid.reps(5)))
        name_rep = next((r for r in names if (pid.get(5, 7, r) or "").upper() == "L"), 0)
        race = _coded_text(pid, 10, _RACE)
        ethnicity = _coded_text(pid, 22, _ETHNICITY)
        street = ", ".join(p for p in (pid.get(11, 1, 0, 1), pid.get(11, 2)) if p) or None
        phone, email = _phone_email(pid)
        sex = (pid.get(8) or "").upper()
        self.patient_row = {
            "patient_id": patient_id, "mrn": mr[0] if mr else None,
            "first_name": pid.get(5, 2, name_rep), "last_name": pid.get(5, 1, name_rep, 1),
            "sex": _SEX.get(sex, sex or None), "birth_date": pid.get(7, 1),
            "ssn": pid.get(19), "address": street, "city": pid.get(11, 3), "state": pid.get(11, 4),
            "zip": pid.get(11, 5), "phone": phone, "email": email,
            # PID-18 is the patient account number; feeds without IN1 (ours among them) carry the member id there.
            "insurance_member_id": pid.get(18, 1),
            "facility_id": (mr[2] if mr and mr[2] else None) or self.facility,
            "consent_research": None, "race": race, "ethnicity": ethnicity, "birth_sex": None,
        }
        self.add("patients", self.patient_row, where)
        if patient_id:
            self.repeated.append(("patients", patient_id, self.patient_row))

    def in1(self, in1: _Segment, where: str) -> None:
        """The first insurance's policy number (IN1-36, else the insured's id IN1-49) is the member id."""
        member = in1.get(36) or in1.get(49, 1)
        if self.patient_row is not None and member and not self.insured:
            self.patient_row["insurance_member_id"] = member
        self.insured = True

    def pv1(self, pv1: _Segment, where: str) -> None:
        patient_class = (pv1.get(2) or "").upper()
        # PV1-19 visit number; without one, PV1-50 (alternate visit id), else the message control id.
        encounter_id = pv1.get(19, 1) or pv1.get(50, 1) or self.control_id
        self.encounter_id = encounter_id
        npi = None
        for rep in range(len(pv1.reps(7))):
            if "NPI" in ((pv1.get(7, 9, rep, 1) or "").upper(), (pv1.get(7, 13, rep) or "").upper()):
                npi = pv1.get(7, 1, rep)
                break
        row = {
            "encounter_id": encounter_id, "patient_id": self.patient_id,
            "facility_id": pv1.get(3, 4, 0, 1) or self.facility,
            "encounter_type": _PATIENT_CLASS.get(patient_class, None if patient_class in ("", "N", "U")
                                                 else patient_class),
            "admit_time": pv1.get(44, 1), "discharge_time": pv1.get(45, 1), "provider_npi": npi,
        }
        self.add("encounters", row, where)
        if encounter_id:
            self.repeated.append(("encounters", f"{self.patient_id}\0{encounter_id}", row))

    # orders and results

    def orc_(self, orc: _Segment, where: str) -> None:
        self.finish_order()
        self.orc, self.obr = orc, None

    def obr_(self, obr: _Segment, where: str) -> None:
        self.finish_order()
        self.obr = obr
        self.obr_where = where
        self.obr_number += 1
        self.obx_number = 0
        self.order_has_rxo = False
        if self.code == "ORU":  # a result's OBR is its report: the panel or study its OBX belong to
            code = obr.get(4, 1, 0, None)
            status = (obr.get(25) or "").upper()
            self.add("diagnostic_reports", {
                "report_id": self.order_id(), "patient_id": self.patient_id, "encounter_id": self.encounter_id,
                "code": code, "code_system": obr.get(4, 3) or ("L" if code else None), "description": obr.get(4, 2),
                "category": obr.get(24), "status": _REPORT_STATUS.get(status, status or None),
                "effective_time": obr.get(7, 1), "conclusion": None,
            }, where)

    def order_id(self) -> str:
        """The order's filler number, else its placer number, else the message control id (with its OBR)."""
        for segment, fields in ((self.obr, (3, 2)), (self.orc, (3, 2))):
            if segment is not None:
                for number in fields:
                    value = segment.get(number, 1)
                    if value:
                        return f"{value}:{self.obr_number}" if segment is self.obr else value
        return f"{self.message_key}:{self.obr_number}"

    def finish_order(self) -> None:
        """An ORM order with no RXO is a service to be done: one procedures row, kept when its OBR closes."""
        obr = self.obr
        if obr is None or self.code != "ORM" or self.order_has_rxo:
            return
        code, system = obr.get(4, 1, 0, None), obr.get(4, 3)
        control = ((self.orc.get(5) or self.orc.get(1)) if self.orc is not None else None) or ""
        self.add("procedures", {
            "procedure_id": self.order_id(), "patient_id": self.patient_id, "encounter_id": self.encounter_id,
            "code": code, "code_system": system or ("L" if code else None), "description": obr.get(4, 2),
            "status": _PROC_STATUS.get(control.upper(), control or None), "performed_time": None,
        }, self.obr_where)
        self.obr = None

    def obx(self, obx: _Segment, where: str) -> None:
        self.obx_number += 1
        value_type = (obx.get(2) or "").upper()
        code = obx.get(3, 1, 0, None)
        if value_type and value_type not in _VALUE_TYPES:
            _reject(self.chunk, where, "hl7:value_type", "has an OBX-2 value type that is not an HL7 data type",
                    obx.text, table="observations", patient_id=self.patient_id)
            return
        system = obx.get(3, 3)
        loinc = code if (system or "").upper() == "LN" else (obx.get(3, 4) if (obx.get(3, 6) or "").upper() == "LN"
                                                               else None)
        value, text = _value(obx, value_type)
        self.encapsulated |= value_type in ("ED", "RP")
        base = self.order_id() if self.obr is not None or self.orc is not None else f"{self.message_key}:0"
        self.add("observations", {
            "observation_id": obx.get(21, 1) or f"{base}:{self.obx_number}",
            "patient_id": self.patient_id, "encounter_id": self.encounter_id,
            "category": self.category(loinc or code), "code": code,
            "code_system": system or ("L" if code else None), "loinc_code": loinc, "display": obx.get(3, 2),
            "value": value, "value_text": text, "unit": _unit_text(obx), "reference_range": obx.get(7, 1),
            "interpretation": obx.get(8, 1),
            "effective_time": obx.get(14, 1) or (self.obr.get(7, 1) if self.obr is not None else None),
        }, where)

    def category(self, code: str | None) -> str | None:
        if code in _VITALS:
            return "vital-signs"
        section = (self.obr.get(24) or "").upper() if self.obr is not None else ""
        if section in _IMAGING:
            return "imaging"
        return "laboratory" if self.code in ("ORU", "ORM") else None

    def rxo(self, rxo: _Segment, where: str) -> None:
        self.order_has_rxo = True
        code, system = rxo.get(1, 1, 0, None), rxo.get(1, 3)
        control = ((self.orc.get(5) or self.orc.get(1)) if self.orc is not None else None) or ""
        amount = " ".join(p for p in (rxo.get(2), rxo.get(3), rxo.get(4, 2) or rxo.get(4, 1)) if p)
        base = (self.orc.get(2, 1) or self.orc.get(3, 1)) if self.orc is not None else None
        self.add("medications", {
            "medication_id": base or self.next_id("rx"), "patient_id": self.patient_id,
            "encounter_id": self.encounter_id, "kind": "order", "code": code,
            "code_system": system or ("L" if code else None), **_drug_codes(code, system),
            "medication": rxo.get(1, 2), "dosage": amount or None,
            "start_date": (self.orc.get(7, 4, 0, 1) if self.orc is not None else None),
            "status": _MED_STATUS.get(control.upper(), control or None),
        }, where)

    def rxa(self, rxa: _Segment, where: str) -> None:
        code, system = rxa.get(5, 1, 0, None), rxa.get(5, 3)
        completion = (rxa.get(20) or "").upper()
        action = (rxa.get(21) or "").upper()
        status = ("entered-in-error" if action == "D" else "not-done" if completion in ("RE", "NA")
                  else "completed")
        base = (self.orc.get(3, 1) or self.orc.get(2, 1)) if self.orc is not None else None
        self.add("immunizations", {
            "immunization_id": base or self.next_id("rxa"), "patient_id": self.patient_id,
            "encounter_id": self.encounter_id, "code": code, "code_system": system or ("L" if code else None),
            "description": rxa.get(5, 2), "status": status, "occurrence_time": rxa.get(3, 1),
        }, where)

    # patient history

    def al1(self, al1: _Segment, where: str) -> None:
        code, system = al1.get(3, 1, 0, None), al1.get(3, 3)
        reactions = [r for r in (al1.get(5, 1, rep) for rep in range(len(al1.reps(5)))) if r]
        self.add("allergies", {
            "allergy_id": code or self.next_id("al"), "patient_id": self.patient_id, "code": code,
            "code_system": system or ("L" if code else None), "description": al1.get(3, 2),
            "category": _ALLERGY_CATEGORY.get((al1.get(2) or "").upper()),
            "criticality": _CRITICALITY.get((al1.get(4) or "").upper()), "clinical_status": "active",
            "onset_date": al1.get(6, 1), "reaction": "; ".join(reactions) or None,
        }, where)

    def dg1(self, dg1: _Segment, where: str) -> None:
        code = dg1.get(3, 1, 0, None)
        system = dg1.get(3, 3) or dg1.get(2)
        visit = self.encounter_id or self.message_key
        self.add("conditions", {
            "condition_id": dg1.get(20, 1) or (f"{visit}:{code}" if code else self.next_id("dg")),
            "patient_id": self.patient_id, "encounter_id": self.encounter_id, "code": code,
            "code_system": system or ("L" if code else None),
            "icd10_code": code if (system or "").upper().replace("-", "") in ("I10", "I10C", "ICD10",
                                                                             "ICD10CM") else None,
            "description": dg1.get(3, 2) or dg1.get(4), "onset_date": dg1.get(5, 1), "clinical_status": None,
        }, where)

    def keep_whole(self) -> None:
        """The whole message, sealed in ``resources``, when it carries segments or values no table maps."""
        self.add("resources", {
            "resource_key": f"hl7:{self.msh.get(3, 1) or ''}:{self.facility or ''}:{self.message_key}",
            "resource_type": self.code, "resource_id": self.control_id, "bundle_id": self.unit.batch_id,
            "patient_id": self.patient_id,
            "resource_json": json.dumps({
                "format": "hl7v2", "type": f"{self.code}^{self.trigger}", "version": self.msh.get(12),
                "unmapped": sorted({s.id for s in self.segments if s.id not in _MAPPED}
                                   | ({"OBX-5 (ED/RP)"} if self.encapsulated else set())),
                "segments": [s.text for s in self.segments]}, ensure_ascii=False),
        }, self.position)


def _coded_text(segment: _Segment, number: int, known: dict[str, str]) -> str | None:
    """A CE field's display text (CE.2), else the text of a known code, else the code as found."""
    code = segment.get(number, 1)
    return segment.get(number, 2) or known.get(code or "", code)


def _phone_email(pid: _Segment) -> tuple[str | None, str | None]:
    """PID-13's first phone number as written (XTN.1, or country/area/local when only those are filled) and
    its first e-mail address (XTN.4 of an ``Internet``/``NET`` repetition)."""
    phone = email = None
    for rep in range(len(pid.reps(13))):
        use, kind = (pid.get(13, 2, rep) or "").upper(), (pid.get(13, 3, rep) or "").upper()
        if use == "NET" or kind in ("INTERNET", "X.400"):
            email = email or pid.get(13, 4, rep)
            continue
        if phone is None:
            area, local = pid.get(13, 6, rep), pid.get(13, 7, rep)
            if local:
                country = pid.get(13, 5, rep)
                if len(local) == 7 and local.isdigit():
                    local = f"{local[:3]}-{local[3:]}"
                phone = " ".join(p for p in (f"+{country}" if country else None,
                                              f"{area}-{local}" if area else local) if p)
            else:
                phone = pid.get(13, 1, rep)
    return phone, email


def _drug_codes(code: str | None, system: str | None) -> dict[str, str | None]:
    name = (system or "").upper()
    return {"ndc_code": code if name in ("NDC", "N0") else None,
            "rxnorm_code": code if name in ("RXNORM", "RXN") else None}


def _unit_text(obx: _Segment) -> str | None:
    """OBX-6: the unit code when a units system is named or no text is given, else the text (a sender's local
    code such as ``CD:289^mg/dL`` names its unit in the text)."""
    code, text, system = obx.get(6, 1, 0, None), obx.get(6, 2), obx.get(6, 3)
    if code and (system or not text or not (":" in code or code.isdigit())):
        return code
    return text or code


def _value(obx: _Segment, value_type: str) -> tuple[Any, str | None]:
    """``(value, value_text)`` of OBX-5 by its value type; repetitions of text are joined by new lines."""
    reps = obx.reps(5)
    if not reps:
        return None, None
    if value_type in ("NM", ""):
        raw = obx.get(5)
        if raw is None:
            return None, None
        if _NUMBER.fullmatch(raw):
            return float(raw), None
        if value_type == "NM" and not _COMPARED.fullmatch(raw):
            return raw, None  # not a number: the contract's type check quarantines the row, naming the column
        return None, raw
    if value_type == "SN":
        comparator, first, separator, second = (obx.get(5, c) for c in (1, 2, 3, 4))
        written = "".join(p for p in (comparator, first, separator, second) if p) or None
        if first and _NUMBER.fullmatch(first) and not separator and comparator in (None, "="):
            return float(first), written
        return None, written
    if value_type in _CODED:
        texts = [obx.get(5, 2, rep) or obx.get(5, 1, rep) for rep in range(len(reps))]
        return None, "; ".join(t for t in texts if t) or None
    if value_type in ("ED", "RP"):
        return None, None  # encapsulated data and references are kept only in the message stored whole
    texts = [obx.whole(5, rep) for rep in range(len(reps))]
    return None, "\n".join(t for t in texts if t) or None
