"""C-CDA R2.1 / CCD documents (one ``ClinicalDocument`` per ``.xml`` file) flattened into the conformed tables.

Parsing is safe by construction: :func:`parse_document` uses an lxml parser that never resolves entities, never
loads a DTD, never touches the network and keeps libxml2's size and depth limits (``huge_tree=False``); a
resolver that answers every external load with nothing stands behind it. A document whose DOCTYPE declares
entities or points at an external DTD is refused whole (``record:entities``): a "billion laughs" bomb or an
external-entity read (``file:///etc/passwd``) is one quarantined ``documents`` record, parsed in bounded time and
memory, its entities never expanded. A file that is not well-formed XML (``record:parse``), is not in the
encoding it declares (``record:encoding``), is over the record size limit (``record:size``), is not a CDA
``ClinicalDocument`` (``ccda:document``) or has no patient (``ccda:patient``) is quarantined whole the same way;
``documents`` count as units, like FHIR ``bundles``. Reasons carry libxml2's error type, line and column, never
its message (which can quote the document's bytes).

Sections and entries are found by templateId (the C-CDA R2.1 OIDs, with or without their version extension,
and the R1.1 ``.1``-less section OIDs), with the section's LOINC code as fallback:

============== ============================================== ==============================================
section        entries                                        table
============== ============================================== ==============================================
problems       Problem Observation (22.4.4) in a concern act  conditions
medications    Medication Activity (22.4.16)                  medications (moodCode EVN: statement, else request)
results        Result Organizer / Observation (22.4.1, .2)    diagnostic_reports (a coded organizer), observations
vital signs    Vital Signs Organizer / Observation (22.4.27)  observations (category vital-signs)
social history Smoking status and other observations          observations (category social-history); the
                                                              Birth Sex Observation (22.4.200) goes to patients
allergies      Allergy Observation (22.4.7) in a concern act  allergies
immunizations  Immunization Activity (22.4.52)                immunizations
encounters     Encounter Activity (22.4.49)                   encounters (and the header's encompassingEncounter)
procedures     Procedure / Observation / Act (22.4.12-14)     procedures
payers         the first Policy Activity's covered party id   patients.insurance_member_id
any other      care team, plan of care, goals, narrative only the whole document, once, sealed in resources
============== ============================================== ==============================================

Values are emitted as found, for the conform step to normalise: HL7 TS timestamps (``20130710214400-0500``),
``codeSystem`` OIDs (mapped to short names by the contracts), phones and states as written. A coded element's
code is its first coding, the element itself or a ``translation``, whose system is one :mod:`ingestion.codes`
knows by name (ICD-10-CM, SNOMED CT, LOINC, RxNorm, NDC, CVX, CPT, HCPCS…); when none is, the element's own code
is kept. ``nullFlavor``
marks a missing value, never an error: the column is left empty (and a required one is quarantined by the
contract as missing, with its row's position).

Identifiers: a record's id is its first ``id``'s ``@extension``, or ``@root`` when it has no extension (a UUID or an
OID instance); an entry with no usable id is keyed by a keyed digest of its XML (``hmac:…``, under the lake's key in a
batch, see :mod:`ingestion.sources._keyed`: an unkeyed one could be confirmed by guessing the entry), so the same
entry sent twice is one record; an id a vendor reuses for different entries of one table in a document becomes
``<id>:<n>`` for its n-th entry (see :func:`_unique_keys`). An entry that links an encounter
(``entryRelationship/encounter/id``) carries its ``encounter_id``. The patient id is the first
``recordTarget/patientRole/id`` with an ``@extension`` that is not an SSN (the SSN, root ``2.16.840.1.113883.4.1``,
goes to ``ssn``); when there is none, a root-only id; when there is none either (seen in a vendor sample whose only id
is an SSN root with no value), ``ccda-document:`` and the document's own id, so the document's records stay together
under one patient until identity review links them. Only the first ``recordTarget`` is read (a CCD has exactly one).
Problems nested in an Encounter Activity (Encounter Diagnosis) are not read: the problem list carries them.

Negation (``negationInd="true"``) is kept, never read as its opposite: an immunization not given is
``not-done``, a medication not taken ``not-taken``, a procedure not done ``not-done``; "no known allergy" and
"no known problems" become the SNOMED CT concepts the C-CDA on FHIR mapping uses (716186003 and its drug, food
and environment kinds; 160245001); a negated specific problem, allergy or result, which no column can hold, is
quarantined with rule ``ccda:negated``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lxml import etree

from ingestion.codes import SYSTEMS, short_name
from ingestion.sources._base import PAYLOAD_KEEP_BYTES, Chunker, Rejected, SourceChunk, lossy
from ingestion.sources._files import InputFiles, input_files
from ingestion.sources._keyed import SourceKeys

__all__ = ["CHUNK_BYTES", "DOCUMENTS", "SUFFIXES", "ccda_files", "parse_document", "read_ccda"]

DOCUMENTS = "documents"
CHUNK_BYTES = 32 * 2**20  # documents' bytes per chunk, at most (one over-limit document may pass it once)
SUFFIXES = (".xml",)
_V3 = "urn:hl7-org:v3"
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_NS = {"h": _V3}

_SSN_ROOT = "2.16.840.1.113883.4.1"
_NPI_ROOT = "2.16.840.1.113883.4.6"
_NAMESPACE_ROOTS = {_SSN_ROOT, _NPI_ROOT}
_SNOMED = "2.16.840.1.113883.6.96"
_LOINC = "2.16.840.1.113883.6.1"
_ACT_CODE = "2.16.840.1.113883.5.4"

_T = "2.16.840.1.113883.10.20.22"
# Section kind by templateId root (R2.1 "entries required" and "entries optional" OIDs) and by LOINC code.
_SECTIONS = {
    f"{_T}.2.5": "problems", f"{_T}.2.5.1": "problems", f"{_T}.2.1": "medications", f"{_T}.2.1.1": "medications",
    f"{_T}.2.3": "results", f"{_T}.2.3.1": "results", f"{_T}.2.4": "vitals", f"{_T}.2.4.1": "vitals",
    f"{_T}.2.6": "allergies", f"{_T}.2.6.1": "allergies", f"{_T}.2.2": "immunizations",
    f"{_T}.2.2.1": "immunizations", f"{_T}.2.22": "encounters", f"{_T}.2.22.1": "encounters",
    f"{_T}.2.7": "procedures", f"{_T}.2.7.1": "procedures", f"{_T}.2.17": "social", f"{_T}.2.18": "payers",
}
_SECTION_CODES = {"11450-4": "problems", "10160-0": "medications", "30954-2": "results", "8716-3": "vitals",
                  "48765-2": "allergies", "11369-6": "immunizations", "46240-8": "encounters",
                  "47519-4": "procedures", "29762-2": "social", "48768-6": "payers"}
_PROBLEM_OBS = f"{_T}.4.4"
_PROBLEM_STATUS = f"{_T}.4.6"
_ALLERGY_OBS = f"{_T}.4.7"
_ALLERGY_STATUS = f"{_T}.4.28"
_REACTION = f"{_T}.4.9"
_CRITICALITY = f"{_T}.4.145"
_SMOKING_STATUS = f"{_T}.4.78"
_BIRTH_SEX = f"{_T}.4.200"

_SEX = {"F": "F", "M": "M", "UN": "U"}
_PROBLEM_STATUS_CODES = {"55561003": "active", "73425007": "inactive", "413322009": "resolved",
                         "246455001": "recurrence", "277022003": "remission"}
_ALLERGY_STATUS_CODES = {"55561003": "active", "73425007": "inactive", "413322009": "resolved"}
_CONCERN_STATUS = {"active": "active", "completed": "resolved", "suspended": "inactive", "aborted": "inactive"}
_ALLERGY_CATEGORY = {"416098002": "medication", "59037007": "medication", "419511003": "medication",
                     "414285001": "food", "235719002": "food", "418471000": "food", "426232007": "environment",
                     "419199007": None, "418038007": None, "420134006": None}
# "No known …" concepts the C-CDA on FHIR mapping gives a negated allergy or problem with no specific substance.
_NO_KNOWN_ALLERGY = {"medication": ("409137002", "No known drug allergy"),
                     "food": ("429625007", "No known food allergy"),
                     "environment": ("428607008", "No known environmental allergy"),
                     None: ("716186003", "No known allergy")}
_NO_KNOWN_PROBLEM = ("160245001", "No current problems or disability")
_GENERIC_PROBLEMS = {"55607006", "404684003", "64572001", "282291009", "409586006", "248536006", "418799008"}
_CRITICALITY_CODES = {"CRITL": "low", "CRITH": "high", "CRITU": "unable-to-assess"}
# CDA ActStatus to the FHIR statuses the contracts take; one with no equivalent (or a vendor's own) is left empty.
_MEDICATION_STATUS = {"active": "active", "completed": "completed", "aborted": "stopped", "suspended": "on-hold",
                      "held": "on-hold", "cancelled": "cancelled", "nullified": "entered-in-error", "new": "draft"}
_EVENT_STATUS = {"completed": "completed", "active": "in-progress", "aborted": "stopped", "cancelled": "not-done",
                 "suspended": "on-hold", "held": "on-hold", "new": "preparation", "nullified": "entered-in-error"}
_ENCOUNTER_TYPES = {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}
# CPT evaluation-and-management ranges and the encounter class they imply (the usual Encounter Activity code).
_CPT_CLASSES = ((99201, 99215, "AMB"), (99241, 99245, "AMB"), (99381, 99429, "AMB"), (99281, 99285, "EMER"),
                (99217, 99220, "OBSENC"), (99221, 99239, "IMP"), (99251, 99255, "IMP"), (99341, 99350, "HH"))
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY", re.IGNORECASE)
_ENCODING_ERRORS = {"ERR_INVALID_ENCODING", "ERR_INVALID_CHAR", "ERR_UNSUPPORTED_ENCODING", "ERR_UNKNOWN_ENCODING",
                    "ERR_INVALID_CHARREF"}


class ParseRefused(Exception):
    """A document that is refused before any of it is mapped: ``rule`` and a reason naming no document text."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def ccda_files(path: Path) -> InputFiles:
    """The documents under ``path``: the file itself, or the folder's regular ``.xml`` files (links refused)."""
    return input_files(path, SUFFIXES)


def read_ccda(path: Path, *, chunk_rows: int, max_record_bytes: int, chunk_bytes: int = CHUNK_BYTES,
              keys: SourceKeys | None = None) -> Iterator[SourceChunk]:
    """Chunks of mapped records from the documents under ``path``, one ``documents`` unit per file.

    ``max_record_bytes`` bounds a document: a larger file is quarantined (``record:size``) with its first bytes,
    and never parsed. A chunk also closes once the documents in it add up to ``chunk_bytes``, since each
    may be kept whole (in ``resources`` or as a quarantined payload): rows alone would let a chunk of a
    thousand 4 MiB documents hold gigabytes. ``keys`` name the files in positions and key id-less entries (a batch
    passes the lake's); without, file names are shown and a random key is used.
    """
    keys = keys or SourceKeys.local()
    found = input_files(path, SUFFIXES, keys)
    chunks = Chunker(chunk_rows)
    found.report_refused(chunks.chunk)
    held = 0
    for file in found.files:
        chunk = chunks.chunk
        chunk.units[DOCUMENTS] = chunk.units.get(DOCUMENTS, 0) + 1
        held += _document(chunk, file, max_record_bytes, keys)
        if held >= chunk_bytes:
            held = 0
            yield from chunks.rest()  # closes the chunk now and starts the next
        else:
            yield from chunks.full()
    yield from chunks.rest()


def parse_document(data: bytes) -> Any:
    """The root element of a CDA document, parsed safely; raises :class:`ParseRefused` on anything else.

    No entity is ever expanded and no DTD or external resource loaded (see the module docstring); a DOCTYPE that
    declares entities or names an external DTD is refused even though nothing in it would be resolved.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             dtd_validation=False, remove_comments=True, remove_pis=True)
    parser.resolvers.add(_NoExternal())
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser))
    except etree.XMLSyntaxError as exc:
        error = exc.error_log.last_error if exc.error_log else None
        kind = error.type_name if error is not None else "ERR"
        where = f" at line {error.line} column {error.column}" if error is not None else ""
        if kind in _ENCODING_ERRORS:
            raise ParseRefused("record:encoding", f"is not in the encoding it declares (libxml2 {kind}{where}); "
                                                  "wrong encoding?") from None
        if _ENTITY_DECLARATION.search(data[:PAYLOAD_KEEP_BYTES]):
            raise ParseRefused("record:entities", "declares XML entities in a DOCTYPE; entities are never "
                                                  "expanded and such a document is refused") from None
        if kind == "ERR_RESOURCE_LIMIT":
            raise ParseRefused("record:parse", f"exceeds the XML parser's nesting depth or size limits (libxml2 "
                                               f"{kind}{where})") from None
        raise ParseRefused("record:parse", f"is not well-formed XML (libxml2 {kind}{where}); truncated?") from None
    docinfo = tree.docinfo
    dtd = docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise ParseRefused("record:entities", "declares XML entities in a DOCTYPE; entities are never expanded "
                                              "and such a document is refused")
    if docinfo.system_url or docinfo.public_id:
        raise ParseRefused("record:entities", "names an external DTD in its DOCTYPE; DTDs are never loaded and "
                                              "such a document is refused")
    return tree.getroot()


class _NoExternal(etree.Resolver):
    """Answers every external load (DTD, entity, XInclude) with nothing, should libxml2 ever ask for one."""

    def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
        return self.resolve_string("", context)


def _document(chunk: SourceChunk, file: Path, max_bytes: int, keys: SourceKeys) -> int:
    """Map one document into ``chunk``; returns how many of its bytes the chunk may now hold."""
    label = keys.file_name(file.name)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            with file.open("rb") as handle:
                head = handle.read(PAYLOAD_KEEP_BYTES)
            _refuse(chunk, label, "record:size", f"is longer than the {max_bytes:,}-byte record limit", head,
                    truncated=True)
            return len(head)
        data = file.read_bytes()
    except OSError as exc:
        chunk.rejected.append(Rejected(DOCUMENTS, label, "file:read",
                                       f"{label} could not be read ({type(exc).__name__})", ""))
        return 0
    _map_document(chunk, label, data, keys)
    return len(data)


def _map_document(chunk: SourceChunk, label: str, data: bytes, keys: SourceKeys) -> None:
    try:
        root = parse_document(data)
    except ParseRefused as refused:
        _refuse(chunk, label, refused.rule, refused.reason, data)
        return
    if root.tag != f"{{{_V3}}}ClinicalDocument":
        _refuse(chunk, label, "ccda:document", "is XML but not an HL7 CDA ClinicalDocument (root element "
                                               f"{_local(root.tag)[:64]!r})", data)
        return
    role = root.find("h:recordTarget/h:patientRole", _NS)
    if role is None:
        _refuse(chunk, label, "ccda:patient", "has no recordTarget/patientRole; its records cannot be tied to a "
                                              "patient", data)
        return
    try:
        _Document(chunk, label, root, role, keys).map()
    except Exception as exc:  # a reader never raises on bad input: a header no mapping foresaw
        _refuse(chunk, label, "ccda:document", f"could not be mapped ({type(exc).__name__})", data)


def _refuse(chunk: SourceChunk, label: str, rule: str, reason: str, data: bytes, *, truncated: bool = False) -> None:
    chunk.rejected.append(Rejected(DOCUMENTS, label, rule, f"{label} {reason}", lossy(data),
                                   payload_truncated=truncated))


# small readers over CDA data types -----------------------------------------------------------------------------


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _find(element: Any, path: str) -> Any:
    return element.find(path, _NS) if element is not None else None


def _findall(element: Any, path: str) -> list[Any]:
    return element.findall(path, _NS) if element is not None else []


def _present(element: Any) -> bool:
    return element is not None and element.get("nullFlavor") is None


def _attr(element: Any, name: str) -> str | None:
    if not _present(element):
        return None
    value = element.get(name)
    return value.strip() or None if value is not None else None


def _text(element: Any) -> str | None:
    if not _present(element):
        return None
    text = " ".join("".join(element.itertext()).split())
    return text or None


def _templates(element: Any) -> set[str]:
    return {t.get("root") for t in _findall(element, "h:templateId") if t.get("root")}


def _ii(element: Any) -> str | None:
    """An instance identifier as text: its extension, or its root when it has none; None when null.

    A root alone names an instance (a UUID, an OID of the record) unless it is a well-known namespace such as
    the SSN or NPI root, which identifies nothing without its extension.
    """
    if not _present(element):
        return None
    extension = _attr(element, "extension")
    if extension:
        return extension
    root = _attr(element, "root")
    return root if root not in _NAMESPACE_ROOTS else None


def _first_id(element: Any) -> str | None:
    for ident in _findall(element, "h:id"):
        value = _ii(ident)
        if value:
            return value
    return None


def _ts(element: Any) -> str | None:
    """A point in time: ``@value``, else the interval's low, else its center (TS strings, as found)."""
    if not _present(element):
        return None
    return (_attr(element, "value") or _attr(_find(element, "h:low"), "value")
            or _attr(_find(element, "h:center"), "value"))


def _effective(element: Any) -> str | None:
    for effective in _findall(element, "h:effectiveTime"):
        if _local(effective.get(_XSI_TYPE, "")).endswith("PIVL_TS"):
            continue  # a frequency, not a time
        value = _ts(effective)
        if value:
            return value
    return None


def _xsi_type(element: Any) -> str:
    return (element.get(_XSI_TYPE) or "").rsplit(":", 1)[-1].upper()


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # "NaN" and "1e400" are text, not measurements


class _Narrative:
    """The section's narrative text by ``ID``, so ``originalText/reference/@value="#x"`` reads as text."""

    def __init__(self, section: Any) -> None:
        self._section = section
        self._ids: dict[str, str] | None = None

    def resolve(self, element: Any) -> str | None:
        """The element's text, or the narrative text its ``reference`` points at."""
        if element is None:
            return None
        reference = _find(element, "h:reference")
        if reference is not None and (target := reference.get("value", "")).startswith("#"):
            if self._ids is None:
                self._ids = {}
                for node in _findall(self._section, "h:text"):
                    for tagged in node.iter():
                        if isinstance(tagged.tag, str) and tagged.get("ID"):
                            self._ids[tagged.get("ID")] = " ".join("".join(tagged.itertext()).split())
            found = self._ids.get(target[1:])
            if found:
                return found
        direct = " ".join((element.text or "").split())
        return direct or None


def _system(oid: str | None) -> str | None:
    return short_name(oid) if oid else None


class _Coded:
    """A coded element (CD/CE/CV) reduced to the code chosen for the row, its system and display."""

    def __init__(self, element: Any, narrative: _Narrative | None) -> None:
        codings = []
        if element is not None:
            for coding in [element, *_findall(element, "h:translation")]:
                code = _attr(coding, "code")
                if code:
                    codings.append((code, coding.get("codeSystem"), _attr(coding, "displayName")))
        self.codings = codings
        # A coding in a system the contracts know by name (ingestion.codes) is preferred to a local one.
        chosen = next((c for c in codings if _system(c[1]) in SYSTEMS), codings[0] if codings else None)
        self.code, self.system, display = chosen if chosen else (None, None, None)
        original = narrative.resolve(_find(element, "h:originalText")) if narrative and element is not None else None
        # A nullFlavor code may still carry the sender's displayName: the code is missing, the words are not.
        own = " ".join((element.get("displayName") or "").split()) or None if element is not None else None
        self.display = display or own or original

    def of(self, system: str) -> str | None:
        """The code of the first coding in ``system`` (a short name such as ``rxnorm``), if any."""
        return next((c for c, s, _ in self.codings if _system(s) == system), None)


# one document ----------------------------------------------------------------------------------------------------


class _Document:
    def __init__(self, chunk: SourceChunk, label: str, root: Any, role: Any, keys: SourceKeys) -> None:
        self.chunk, self.label, self.root, self.role, self.keys = chunk, label, root, role, keys
        self.patient_id = self._patient_id()
        self.birth_sex: str | None = None
        self.member_id: str | None = None
        self.encounter_ids: set[str] = set()

    def map(self) -> None:
        rows = []
        unmapped = []
        for number, section in enumerate(self.root.iter(f"{{{_V3}}}section"), start=1):
            kind = self._kind(section)
            if kind is None:
                unmapped.append({"section": number, "code": _attr(_find(section, "h:code"), "code"),
                                 "title": _text(_find(section, "h:title"))})
                continue
            narrative = _Narrative(section)
            for entry_number, entry in enumerate(_findall(section, "h:entry"), start=1):
                act = next((child for child in entry if isinstance(child.tag, str)
                            and _local(child.tag) not in ("templateId", "sequenceNumber")), None)
                if act is None or act.get("nullFlavor"):
                    continue
                position = f"{self.label} {kind} (section {number}) entry {entry_number}"
                try:
                    rows.extend(_ENTRIES[kind](self, act, narrative, position))
                except Exception as exc:  # a reader never raises on bad input
                    # A structure no mapping foresaw: the entry is quarantined, the rest of the document loads.
                    self.reject(_TABLES[kind], position, "ccda:entry",
                                f"could not be mapped ({type(exc).__name__})", act)
        rows.extend(self._header_encounter())
        self.chunk.rows("patients").add(self._patient(), f"{self.label} recordTarget")
        if unmapped:
            rows.append(("resources", self._whole(unmapped), f"{self.label} document"))
        for table, row, position in _unique_keys(rows):
            self.chunk.rows(table).add(row, position)

    def _whole(self, unmapped: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole document, sealed in ``resources``, when it has sections no table maps (care team, plan of
        care, goals…), so nothing the sender wrote is lost. Keyed by a keyed digest of its content."""
        text = etree.tostring(self.root, encoding="unicode")
        return {"resource_key": "ccda:" + self.keys.content(text.encode()),
                "resource_type": "ClinicalDocument", "resource_id": _first_id(self.root), "bundle_id": None,
                "patient_id": self.patient_id,
                # No file name here: the same document sent again under another name is the same record.
                "resource_json": json.dumps({"format": "ccda", "unmapped_sections": unmapped, "document": text},
                                            ensure_ascii=False)}

    def _kind(self, section: Any) -> str | None:
        for root in _templates(section):
            if root in _SECTIONS:
                return _SECTIONS[root]
        return _SECTION_CODES.get(_attr(_find(section, "h:code"), "code") or "")

    def _digest_id(self, element: Any) -> str:
        """The key of an element with no usable id: the keyed digest of its XML."""
        return self.keys.content(etree.tostring(element))

    def reject(self, table: str, position: str, rule: str, reason: str, element: Any) -> None:
        self.chunk.rejected.append(Rejected(table, position, rule, f"{position} {reason}",
                                            etree.tostring(element, encoding="unicode"), patient_id=self.patient_id))

    # patients

    def _patient_id(self) -> str:
        ids = [i for i in _findall(self.role, "h:id") if _present(i)]
        for ident in ids:
            if ident.get("root") != _SSN_ROOT and _attr(ident, "extension"):
                return _attr(ident, "extension")
        for ident in ids:
            if not _attr(ident, "extension") and _ii(ident):  # a root naming the patient (not SSN's or NPI's)
                return _ii(ident)
        return "ccda-document:" + (_first_id(self.root) or self._digest_id(self.root))

    def _patient(self) -> dict[str, Any]:
        patient = _find(self.role, "h:patient")
        names = _findall(patient, "h:name")
        name = next((n for n in names if n.get("use") == "L"), names[0] if names else None)
        address = next((a for a in _findall(self.role, "h:addr") if _present(a)), None)
        telecoms = [t.get("value", "").strip() for t in _findall(self.role, "h:telecom") if _present(t)]
        phone = next((t[4:].strip() for t in telecoms if t.lower().startswith("tel:")), None)
        email = next((t[7:].strip() for t in telecoms if t.lower().startswith("mailto:")), None)
        ssn = next((_attr(i, "extension") for i in _findall(self.role, "h:id")
                    if i.get("root") == _SSN_ROOT and _attr(i, "extension")), None)
        organization = _find(self.role, "h:providerOrganization")
        return {
            "patient_id": self.patient_id, "mrn": None,
            "first_name": _text(_find(name, "h:given")), "last_name": _text(_find(name, "h:family")),
            "sex": _SEX.get(_attr(_find(patient, "h:administrativeGenderCode"), "code") or ""),
            "birth_date": _attr(_find(patient, "h:birthTime"), "value"), "ssn": ssn,
            "address": _text(_find(address, "h:streetAddressLine")), "city": _text(_find(address, "h:city")),
            "state": _text(_find(address, "h:state")), "zip": _text(_find(address, "h:postalCode")),
            "phone": phone or None, "email": email or None, "insurance_member_id": self.member_id,
            "facility_id": _first_id(organization), "consent_research": None,
            "race": _attr(_find(patient, "h:raceCode"), "displayName"),
            "ethnicity": _attr(_find(patient, "h:ethnicGroupCode"), "displayName"),
            "birth_sex": self.birth_sex,
        }

    # entries

    def _encounter_of(self, act: Any) -> str | None:
        for relation in _findall(act, "h:entryRelationship"):
            found = _first_id(_find(relation, "h:encounter"))
            if found:
                return found
        return None

    def _problems(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        observations = _members(act, _PROBLEM_OBS, "h:entryRelationship/h:observation")
        concern_status = _CONCERN_STATUS.get(_attr(_find(act, "h:statusCode"), "code") or "")
        rows = []
        for number, obs in enumerate(observations, start=1):
            where = position if len(observations) == 1 else f"{position} observation {number}"
            coded = _Coded(_find(obs, "h:value"), narrative)
            if obs.get("negationInd") == "true":
                if coded.code and coded.code not in _GENERIC_PROBLEMS:
                    self.reject("conditions", where, "ccda:negated", "records a problem the patient does not have "
                                "(negationInd); the conditions table has no column for an absent condition", obs)
                    continue
                coded.code, coded.system, coded.display = _NO_KNOWN_PROBLEM[0], _SNOMED, _NO_KNOWN_PROBLEM[1]
                coded.codings = [(coded.code, coded.system, coded.display)]
            status = next((_PROBLEM_STATUS_CODES.get(_attr(_find(s, "h:value"), "code") or "")
                           for s in _members(obs, _PROBLEM_STATUS, None)), None)
            resolved = _attr(_find(_find(obs, "h:effectiveTime"), "h:high"), "value")
            rows.append(("conditions", {
                "condition_id": _first_id(obs) or _first_id(act) or self._digest_id(obs),
                "patient_id": self.patient_id, "encounter_id": self._encounter_of(obs) or self._encounter_of(act),
                "code": coded.code, "code_system": coded.system, "icd10_code": coded.of("icd10cm"),
                "description": coded.display or narrative.resolve(_find(obs, "h:text")),
                "onset_date": _effective(obs),
                "clinical_status": status or ("resolved" if resolved else concern_status),
            }, where))
        return rows

    def _medications(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        material = _find(act, "h:consumable/h:manufacturedProduct/h:manufacturedMaterial")
        coded = _Coded(_find(material, "h:code"), narrative)
        negated = act.get("negationInd") == "true"
        evn = act.get("moodCode", "EVN") == "EVN"
        status = "not-taken" if negated and evn else _MEDICATION_STATUS.get(
            _attr(_find(act, "h:statusCode"), "code") or "")
        return [("medications", {
            "medication_id": _first_id(act) or self._digest_id(act), "patient_id": self.patient_id,
            "encounter_id": self._encounter_of(act), "kind": "statement" if evn else "request",
            "code": coded.code, "code_system": coded.system, "ndc_code": coded.of("ndc"),
            "rxnorm_code": coded.of("rxnorm"), "medication": coded.display or _text(_find(material, "h:name")),
            "dosage": _dosage(act, narrative), "start_date": _effective(act), "status": status,
        }, position)]

    def _results(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        return self._organized(act, narrative, position, "laboratory")

    def _vitals(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        return self._organized(act, narrative, position, "vital-signs")

    def _organized(self, act: Any, narrative: _Narrative, position: str,
                   category: str) -> list[tuple[str, dict, str]]:
        rows = []
        if _local(act.tag) == "organizer":
            observations = _findall(act, "h:component/h:observation")
            organizer_time = _effective(act)
            report = _Coded(_find(act, "h:code"), narrative)
            if category == "laboratory" and report.code:
                rows.append(("diagnostic_reports", {
                    "report_id": _first_id(act) or self._digest_id(act), "patient_id": self.patient_id,
                    "encounter_id": self._encounter_of(act), "code": report.code, "code_system": report.system,
                    "description": report.display, "category": "LAB",
                    "status": _EVENT_STATUS.get(_attr(_find(act, "h:statusCode"), "code") or "",
                                                _attr(_find(act, "h:statusCode"), "code")),
                    "effective_time": organizer_time or next(filter(None, map(_effective, observations)), None),
                    "conclusion": None,
                }, position))
        else:
            observations, organizer_time = [act], None
        for number, obs in enumerate(observations, start=1):
            where = position if observations == [act] else f"{position} observation {number}"
            if obs.get("negationInd") == "true":
                self.reject("observations", where, "ccda:negated", "records an observation as not done "
                            "(negationInd); the observations table has no column for that", obs)
                continue
            rows.append(("observations", self._observation(obs, narrative, category, organizer_time, act), where))
        return rows

    def _observation(self, obs: Any, narrative: _Narrative, category: str, fallback_time: str | None,
                     act: Any) -> dict[str, Any]:
        coded = _Coded(_find(obs, "h:code"), narrative)
        if (_SMOKING_STATUS in _templates(obs) and coded.code == "ASSERTION") or (
                coded.code is None and _SMOKING_STATUS in _templates(obs)):
            # R1.1's smoking status is coded ASSERTION; R2.1 (and FHIR) code it with LOINC 72166-2.
            coded.code, coded.system, coded.display = "72166-2", _LOINC, "Tobacco smoking status"
            coded.codings = [(coded.code, coded.system, coded.display)]
        value, value_text, unit = _value(_find(obs, "h:value"), narrative)
        interpretation = _find(obs, "h:interpretationCode")
        return {
            "observation_id": _first_id(obs) or self._digest_id(obs), "patient_id": self.patient_id,
            "encounter_id": self._encounter_of(obs) or (self._encounter_of(act) if act is not obs else None),
            "category": category, "code": coded.code, "code_system": coded.system, "loinc_code": coded.of("loinc"),
            "display": coded.display or narrative.resolve(_find(obs, "h:text")), "value": value,
            "value_text": value_text, "unit": unit,
            "reference_range": _reference_range(obs, narrative),
            "interpretation": _attr(interpretation, "code") or (
                narrative.resolve(_find(interpretation, "h:originalText")) if interpretation is not None else None),
            "effective_time": _effective(obs) or fallback_time,
        }

    def _social(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        if _local(act.tag) != "observation":
            return []
        if _BIRTH_SEX in _templates(act) or _attr(_find(act, "h:code"), "code") == "76689-9":
            value = _find(act, "h:value")
            code = _attr(value, "code")
            self.birth_sex = code if code in ("F", "M", "UNK") else (
                "UNK" if value is not None and value.get("nullFlavor") == "UNK" else None)
            return []
        if act.get("negationInd") == "true":
            self.reject("observations", position, "ccda:negated", "records an observation as not done "
                        "(negationInd); the observations table has no column for that", act)
            return []
        return [("observations", self._observation(act, narrative, "social-history", None, act), position)]

    def _payers(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        # The first coverage's member id (Policy Activity, participant COV) is the patient's insurance member id.
        if self.member_id is None:
            covered = [p for p in act.iterfind(".//h:participant", _NS) if p.get("typeCode") == "COV"]
            self.member_id = next(filter(None, (_first_id(_find(p, "h:participantRole")) for p in covered)), None)
        return []

    def _allergies(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        observations = _members(act, _ALLERGY_OBS, "h:entryRelationship/h:observation")
        concern_status = _CONCERN_STATUS.get(_attr(_find(act, "h:statusCode"), "code") or "")
        rows = []
        for number, obs in enumerate(observations, start=1):
            where = position if len(observations) == 1 else f"{position} observation {number}"
            entity = _find(obs, "h:participant/h:participantRole/h:playingEntity")
            coded = _Coded(_find(entity, "h:code"), narrative)
            category = _ALLERGY_CATEGORY.get(_attr(_find(obs, "h:value"), "code") or "")
            description = coded.display or _text(_find(entity, "h:name"))
            if obs.get("negationInd") == "true":
                if coded.code:
                    self.reject("allergies", where, "ccda:negated", "records a substance the patient is not "
                                "allergic to (negationInd); the allergies table has no column for that", obs)
                    continue
                code, description = _NO_KNOWN_ALLERGY[category]
                coded.code, coded.system, coded.codings = code, _SNOMED, [(code, _SNOMED, description)]
                category = None
            status = next((_ALLERGY_STATUS_CODES.get(_attr(_find(s, "h:value"), "code") or "")
                           for s in _members(obs, _ALLERGY_STATUS, None)), None)
            criticality = next((_CRITICALITY_CODES.get(_attr(_find(c, "h:value"), "code") or "")
                                for c in _members(obs, _CRITICALITY, None)), None)
            reactions = [_Coded(_find(r, "h:value"), narrative).display for r in _members(obs, _REACTION, None)]
            rows.append(("allergies", {
                "allergy_id": _first_id(obs) or _first_id(act) or self._digest_id(obs), "patient_id": self.patient_id,
                "code": coded.code, "code_system": coded.system, "description": description,
                "category": category, "criticality": criticality, "clinical_status": status or concern_status,
                "onset_date": _effective(obs), "reaction": "; ".join(r for r in reactions if r) or None,
            }, where))
        return rows

    def _immunizations(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        material = _find(act, "h:consumable/h:manufacturedProduct/h:manufacturedMaterial")
        coded = _Coded(_find(material, "h:code"), narrative)
        status_code = _attr(_find(act, "h:statusCode"), "code")
        if act.get("negationInd") == "true":
            status = "not-done"
        elif status_code == "nullified":
            status = "entered-in-error"
        elif act.get("moodCode", "EVN") == "EVN":
            status = "completed"
        else:
            status = None  # a planned immunization (moodCode INT): not given yet
        return [("immunizations", {
            "immunization_id": _first_id(act) or self._digest_id(act), "patient_id": self.patient_id,
            "encounter_id": self._encounter_of(act), "code": coded.code, "code_system": coded.system,
            "description": coded.display or _text(_find(material, "h:name")), "status": status,
            "occurrence_time": _effective(act),
        }, position)]

    def _encounters(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        if _local(act.tag) != "encounter":
            return []
        row = self._encounter_row(act, narrative)
        self.encounter_ids.add(row["encounter_id"])
        return [("encounters", row, position)]

    def _encounter_row(self, act: Any, narrative: _Narrative | None) -> dict[str, Any]:
        coded = _Coded(_find(act, "h:code"), narrative)
        effective = _find(act, "h:effectiveTime")
        npi = next((_attr(i, "extension") for i in act.iterfind(".//h:performer/h:assignedEntity/h:id", _NS)
                    if i.get("root") == _NPI_ROOT and _attr(i, "extension")), None)
        npi = npi or next((_attr(i, "extension") for i in act.iterfind(".//h:assignedEntity/h:id", _NS)
                           if i.get("root") == _NPI_ROOT and _attr(i, "extension")), None)
        location = next((p for p in _findall(act, "h:participant") if p.get("typeCode") == "LOC"), None)
        location = location if location is not None else _find(act, "h:location/h:healthCareFacility")
        return {
            "encounter_id": _first_id(act) or self._digest_id(act), "patient_id": self.patient_id,
            "facility_id": _first_id(_find(location, "h:participantRole")) or _first_id(location),
            "encounter_type": _encounter_type(coded), "admit_time": _ts(effective),
            "discharge_time": _attr(_find(effective, "h:high"), "value"), "provider_npi": npi,
        }

    def _header_encounter(self) -> list[tuple[str, dict, str]]:
        header = self.root.find("h:componentOf/h:encompassingEncounter", _NS)
        if header is None or _first_id(header) is None or _first_id(header) in self.encounter_ids:
            return []  # the same visit listed in the encounters section is kept once, from there
        return [("encounters", self._encounter_row(header, None), f"{self.label} componentOf/encompassingEncounter")]

    def _procedures(self, act: Any, narrative: _Narrative, position: str) -> list[tuple[str, dict, str]]:
        coded = _Coded(_find(act, "h:code"), narrative)
        status_code = _attr(_find(act, "h:statusCode"), "code")
        status = "not-done" if act.get("negationInd") == "true" else _EVENT_STATUS.get(status_code or "",
                                                                                       status_code)
        if act.get("moodCode", "EVN") != "EVN" and act.get("negationInd") != "true":
            status = "planned" if status in (None, "in-progress", "preparation") else status
        return [("procedures", {
            "procedure_id": _first_id(act) or self._digest_id(act), "patient_id": self.patient_id,
            "encounter_id": self._encounter_of(act), "code": coded.code, "code_system": coded.system,
            "description": coded.display or narrative.resolve(_find(act, "h:text")), "status": status,
            "performed_time": _effective(act),
        }, position)]


def _unique_keys(rows: list[tuple[str, dict, str]]) -> list[tuple[str, dict, str]]:
    """The rows with every key unique in its table within the document.

    Vendors reuse one id for different entries (every allergy of a document, every lab panel of a visit); the
    n-th different entry with an id already taken gets ``<id>:<n>``, so each stays a record of its own rather
    than a key conflict. An exact repeat keeps the id (the batch stores it once).
    """
    variants: dict[tuple[str, str], dict[tuple, int]] = {}  # (table, id) -> each different row's number
    out = []
    for table, row, position in rows:
        column = _KEYS[table]
        key = row[column]
        seen = variants.setdefault((table, key), {})
        number = seen.setdefault(tuple(row.items()), len(seen) + 1)
        out.append((table, row if number == 1 else {**row, column: f"{key}:{number}"}, position))
    return out


def _members(act: Any, template: str, fallback: str | None) -> list[Any]:
    """The observations of ``template`` in ``act`` (itself, or nested in entryRelationships), else ``fallback``."""
    if template in _templates(act):
        return [act]
    found = [o for o in act.iterfind(".//h:observation", _NS) if template in _templates(o)]
    if found or fallback is None:
        return found
    return _findall(act, fallback)


def _value(element: Any, narrative: _Narrative) -> tuple[float | None, str | None, str | None]:
    """``(value, value_text, unit)`` of an observation's value, by its xsi:type."""
    if element is None:
        return None, None, None
    kind = _xsi_type(element)
    if kind in ("PQ", "IVL_PQ", "INT", "REAL", "MO"):
        raw, unit = _attr(element, "value"), _attr(element, "unit") or _attr(element, "currency")
        if raw is None:
            # Athena writes a value in a non-UCUM unit as a nullFlavor PQ with a translation carrying it.
            translation = _find(element, "h:translation")
            if translation is not None and translation.get("value"):
                raw = translation.get("value").strip()
                unit = translation.get("code") or narrative.resolve(_find(translation, "h:originalText"))
        if raw is None and kind == "IVL_PQ":
            low, high = _find(element, "h:low"), _find(element, "h:high")
            bounds = [_attr(low, "value"), _attr(high, "value")]
            if any(bounds):
                unit = _attr(low, "unit") or _attr(high, "unit")
                return None, "-".join(b or "" for b in bounds), None if unit == "1" else unit
        number = _number(raw)
        unit = None if unit == "1" else unit
        return (number, None, unit) if number is not None else (None, raw, unit)
    if kind in ("CD", "CE", "CV", "CO", "CS"):
        coded = _Coded(element, narrative)
        return None, coded.display or coded.code, None
    if kind == "BL":
        return None, _attr(element, "value"), None
    if kind in ("RTO", "RTO_PQ_PQ", "RTO_INT_INT"):
        numerator, denominator = _attr(_find(element, "h:numerator"), "value"), _attr(
            _find(element, "h:denominator"), "value")
        return None, f"{numerator}/{denominator}" if numerator and denominator else None, None
    if not _present(element):
        return None, None, None
    return None, narrative.resolve(element) or _text(element), None


def _reference_range(obs: Any, narrative: _Narrative) -> str | None:
    for observation_range in _findall(obs, "h:referenceRange/h:observationRange"):
        written = narrative.resolve(_find(observation_range, "h:text"))
        if written:
            return written
        value = _find(observation_range, "h:value")
        if value is None:
            continue
        if _xsi_type(value) in ("IVL_PQ", "IVL_INT"):
            low, high = _find(value, "h:low"), _find(value, "h:high")
            bounds = [_attr(low, "value"), _attr(high, "value")]
            if any(bounds):
                unit = _attr(low, "unit") or _attr(high, "unit")
                text = "-".join(b or "" for b in bounds)
                if not bounds[0]:
                    text = f"<={bounds[1]}"
                elif not bounds[1]:
                    text = f">={bounds[0]}"
                return f"{text} {unit}" if unit and unit != "1" else text
        written = narrative.resolve(value) or _text(value)
        if written:
            return written
    return None


def _dosage(act: Any, narrative: _Narrative) -> str | None:
    parts = []
    dose = _find(act, "h:doseQuantity")
    amount = _attr(dose, "value")
    if amount:
        unit = _attr(dose, "unit")
        parts.append(f"{amount} {unit}" if unit and unit != "1" else amount)
    route = _find(act, "h:routeCode")
    if route is not None:
        route_text = _Coded(route, narrative).display
        if route_text:
            parts.append(route_text)
    for effective in _findall(act, "h:effectiveTime"):
        if _local(effective.get(_XSI_TYPE, "")).endswith("PIVL_TS"):
            period = _find(effective, "h:period")
            if _attr(period, "value"):
                parts.append(f"every {_attr(period, 'value')} {_attr(period, 'unit') or ''}".rstrip())
    if parts:
        return "; ".join(parts)
    return narrative.resolve(_find(act, "h:text"))


def _encounter_type(coded: _Coded) -> str | None:
    for code, system, _ in coded.codings:
        if system == _ACT_CODE and code in _ENCOUNTER_TYPES:
            return code
    for code, system, _ in coded.codings:
        if system == "2.16.840.1.113883.6.12" and code.isdigit():
            number = int(code)
            for low, high, kind in _CPT_CLASSES:
                if low <= number <= high:
                    return kind
    return None


_ENTRIES = {"problems": _Document._problems, "medications": _Document._medications,
            "results": _Document._results, "vitals": _Document._vitals, "social": _Document._social,
            "payers": _Document._payers, "allergies": _Document._allergies, "immunizations": _Document._immunizations,
            "encounters": _Document._encounters, "procedures": _Document._procedures}
_KEYS = {"resources": "resource_key", "conditions": "condition_id", "medications": "medication_id",
         "observations": "observation_id", "diagnostic_reports": "report_id", "allergies": "allergy_id",
         "immunizations": "immunization_id", "encounters": "encounter_id", "procedures": "procedure_id"}
_TABLES = {"problems": "conditions", "medications": "medications", "results": "observations",
           "vitals": "observations", "social": "observations", "payers": "patients", "allergies": "allergies",
           "immunizations": "immunizations", "encounters": "encounters", "procedures": "procedures"}
