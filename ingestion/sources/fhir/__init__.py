"""FHIR R4 in every framing hospitals send it, flattened into the conformed tables.

Inputs (a file, or a folder of them listed by :func:`~ingestion.sources._files.input_files`: links and special
files refused): a Bundle per ``.json`` file (any type: collection, transaction, batch, searchset, document,
message, responses; pretty-printed or not), a single resource (or a JSON array of them) per ``.json`` file,
FHIR Bulk Data ``$export`` output (``Patient.ndjson``, ``Observation.000.ndjson``…, one resource a line, optionally
``.gz``), one Bundle a line of ``.ndjson``/``.jsonl``, or a folder mixing them (see :mod:`._framing` for bounds on
size and depth). In a folder, ``Patient*`` files are read first, so a Bulk export's patients are known before the
resources naming them.

Each resource is checked with ``fhir.resources``' R4B models (R4's technical-correction release; every official
R4 example of the types mapped here passes them) and then read from its JSON as found (:mod:`._mapping`). The
library has no R4 models; the eighteen R4 types R4B replaced (MedicinalProduct*, Substance* definitions, the
evidence syntheses) would be "unknown" to it, so they are kept whole in ``resources`` unchecked instead of being
quarantined: they describe products, not patients.
Patient, Encounter, Observation (one row per component), Condition, MedicationRequest / Statement / Dispense /
Administration, Procedure, Immunization, AllergyIntolerance and DiagnosticReport map onto their tables; any other
resource type the library knows (Claim, CarePlan, Composition…), and a mapped resource about a Group or Device
rather than a patient, is kept whole as JSON in ``resources``. References resolve through :mod:`._refs`.

What cannot be read is one rejected record with its position (``file line L entry E``, ``file entry E``) and a
reason that names field paths, never values: a document that is not JSON, too deep or too large (``bundles``, or
the table a Bulk file's name announces: ``Observation.ndjson line 7`` is an observations record); an unknown
resource type (``fhir:resource_type``); a resource failing the model (``fhir:model``, with the field paths); a
mapped resource with no patient to tie it to (``fhir:reference``) or without a usable code (``fhir:code``); a
Bundle entry asking the server to delete something (``fhir:request``: a lake takes no deletions from a feed).
Entries that carry no record (a batch's read requests, a response's status) and a Bulk export's manifest saved beside
its files are not records and are not counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingestion.sources._base import Chunker, Rejected, SourceChunk
from ingestion.sources._files import input_files
from ingestion.sources._keyed import SourceKeys
from ingestion.sources.fhir._framing import SUFFIXES, Document, documents
from ingestion.sources.fhir._mapping import CONFORMED, Context, NotAboutAPatient, Unmappable, map_resource, patient_key
from ingestion.sources.fhir._refs import Item, Scope, own_id, resource_key

__all__ = ["BUNDLES", "SUFFIXES", "fhir_files", "read_fhir"]

BUNDLES = "bundles"
RESOURCES = "resources"
_BULK_NAME = re.compile(r"^([A-Z][A-Za-z]{1,63})(?:[._-]\d+)*\.(?:ndjson|jsonl)(?:\.gz)?$")
_NO_RECORD_METHODS = {"GET", "HEAD"}
# R4 resource types that R4B (the models fhir.resources offers for R4) replaced: medicinal-product and substance
# definitions and the evidence syntheses. They are valid R4, about products rather than patients.
_R4_ONLY = frozenset({
    "EffectEvidenceSynthesis", "MedicinalProduct", "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect", "RiskEvidenceSynthesis", "SubstanceNucleicAcid", "SubstancePolymer",
    "SubstanceProtein", "SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification"})
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def fhir_files(path: Path) -> list[Path]:
    """The FHIR files under ``path`` (the file itself, or the folder's regular ``.json``/``.ndjson``/``.jsonl``
    files, ``.gz`` too), in name order. Raises ``ValueError`` when ``path`` does not exist."""
    return input_files(path, SUFFIXES).files


def read_fhir(path: Path, *, chunk_rows: int, max_record_bytes: int,
              keys: SourceKeys | None = None) -> Iterator[SourceChunk]:
    """Chunks of flattened records from the FHIR files under ``path`` (about ``chunk_rows`` records each).

    ``keys`` name the files in positions and key id-less resources (a batch passes the lake's; see
    :mod:`ingestion.sources._keyed`); without, file names are shown and a random key is used.
    """
    from fhir.resources.R4B import get_fhir_model_class

    keys = keys or SourceKeys.local()
    listing = input_files(path, SUFFIXES, keys)
    chunks = Chunker(chunk_rows)
    listing.report_refused(chunks.chunk)
    reader = _Reader(get_fhir_model_class, keys)
    for file in sorted(listing.files, key=lambda f: (not f.name.startswith("Patient"), f.name)):
        table = reader.file_table(file.name)
        for document in documents(file, table, max_record_bytes, keys.file_name(file.name)):
            reader.document(chunks.chunk, document, table)
            yield from chunks.full()
    yield from chunks.rest()


class _Reader:
    """Turns documents into rows and rejections; remembers the patient ids met (see :class:`._mapping.Context`)."""

    def __init__(self, model_class: Any, keys: SourceKeys) -> None:
        self._model_class = model_class
        self.keys = keys
        self._classes: dict[str, Any] = {}
        self.patient_ids: dict[str, str] = {}

    def model(self, kind: str) -> Any:
        """The model class of a resource type, None when ``fhir.resources`` does not know it.

        Known types are looked up once; unknown names are not remembered, so a file of made-up types grows nothing.
        """
        if kind not in self._classes:
            try:
                self._classes[kind] = self._model_class(kind)
            except (KeyError, ValueError):
                return None
        return self._classes[kind]

    def known(self, kind: str) -> bool:
        return self.model(kind) is not None

    def file_table(self, name: str) -> str:
        """The table a file's unreadable documents count against: a Bulk file's resource type's, else bundles."""
        match = _BULK_NAME.match(name)
        if match is None or match.group(1) == "Bundle" or not self.known(match.group(1)):
            return BUNDLES
        return CONFORMED.get(match.group(1), RESOURCES)

    def document(self, chunk: SourceChunk, document: Document, table: str, *, top: bool = True) -> None:
        value, position = document.value, document.position
        if isinstance(value, dict) and "resourceType" not in value and {"transactionTime", "output"} <= set(value):
            return  # a Bulk Data export's manifest, saved beside its files: it lists them and holds no record
        if top and isinstance(value, list) and value and document.rejected is None:
            # A JSON array of resources (what some tools export instead of a Bundle): each element on its own.
            for number, element in enumerate(value, start=1):
                self.document(chunk, Document(f"{position} item {number}", element), table, top=False)
            return
        if document.rejected is None and not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
            document.rejected = Rejected(table, position, "record:parse", f"{position} is JSON but not a FHIR "
                                         "resource (no resourceType)", _dump(value))
        if document.rejected is not None:
            if document.rejected.table == BUNDLES:
                chunk.units[BUNDLES] = chunk.units.get(BUNDLES, 0) + 1
            chunk.rejected.append(document.rejected)
            return
        if value["resourceType"] == "Bundle":
            chunk.units[BUNDLES] = chunk.units.get(BUNDLES, 0) + 1
            self.bundle(chunk, value, position, None, top=True)
            return
        item = Item(value, position, keys=self.keys)
        scope = Scope()
        scope.add(item)
        self.resource(chunk, item, Context(scope, self.patient_ids), None)

    def bundle(self, chunk: SourceChunk, bundle: dict[str, Any], position: str, parent: Scope | None, *,
               top: bool) -> None:
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            chunk.rejected.append(Rejected(BUNDLES if top else RESOURCES, position, "record:parse",
                                           f"{position} is a Bundle whose entry is not a list", _dump(bundle)))
            return
        bundle_id = bundle.get("id") if isinstance(bundle.get("id"), str) else None
        scope = Scope(parent)
        items = []
        for number, entry in enumerate(entries, start=1):
            where = f"{position} entry {number}"
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None and isinstance(entry, dict):
                method = str(_dict(entry.get("request")).get("method", "")).upper()
                if method in _NO_RECORD_METHODS or (not method and "response" in entry):
                    continue  # a read request or a response status: no record to load
                if method:
                    verb = method if method in _WRITE_METHODS else "run an unknown request on"
                    chunk.rejected.append(Rejected(RESOURCES, where, "fhir:request", f"{where} asks the server to "
                                                   f"{verb} a resource and carries none; a lake load applies no "
                                                   "deletions or updates without data: review it", _dump(entry)))
                    continue
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                chunk.rejected.append(Rejected(RESOURCES, where, "fhir:resource_type",
                                               f"{where} has no resource with a resourceType", _dump(entry)))
                continue
            full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
            item = Item(resource, where, full_url, keys=self.keys)
            scope.add(item)
            items.append(item)
        ctx = Context(scope, self.patient_ids)
        ctx.link_results(items)
        for item in items:
            self.resource(chunk, item, ctx, bundle_id)

    def resource(self, chunk: SourceChunk, item: Item, ctx: Context, bundle_id: str | None) -> None:
        resource, where = item.resource, item.position
        kind = resource["resourceType"]
        table = CONFORMED.get(kind, RESOURCES)
        if kind in _R4_ONLY:  # valid R4 that R4B's models lack: kept whole, unchecked (no patient data in them)
            chunk.rows(RESOURCES).add(_kept(item, ctx, bundle_id), where)
            return
        if not self.known(kind):
            chunk.rejected.append(Rejected(RESOURCES, where, "fhir:resource_type",
                                           f"{where}: unknown FHIR resource type {kind[:64]!r}", _dump(resource)))
            return
        if kind == "Bundle":  # a Bundle inside a Bundle (a batch-response's searchsets): its entries, in its scope
            self.bundle(chunk, resource, where, ctx.scope, top=False)
            return
        try:
            self.model(kind).model_validate(resource)
        except Exception as exc:  # pydantic's ValidationError and the library's own checks
            chunk.rejected.append(Rejected(table, where, "fhir:model", f"{where}: {kind} {_model_errors(exc)}",
                                           _dump(resource), patient_id=_patient_hint(item, ctx)))
            return
        if table == RESOURCES:
            chunk.rows(RESOURCES).add(_kept(item, ctx, bundle_id), where)
            return
        try:
            rows = map_resource(item, ctx)
        except Unmappable as exc:
            chunk.rejected.append(Rejected(table, where, exc.rule, f"{where}: {exc.reason}", _dump(resource),
                                           patient_id=_patient_hint(item, ctx)))
            return
        except NotAboutAPatient:
            chunk.rows(RESOURCES).add(_kept(item, ctx, bundle_id), where)
            return
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # A shape the model let through that the mapping did not foresee: one record, never the run.
            chunk.rejected.append(Rejected(table, where, "fhir:mapping", f"{where}: {kind} could not be mapped "
                                           f"({type(exc).__name__})", _dump(resource),
                                           patient_id=_patient_hint(item, ctx)))
            return
        for name, row, position in rows:
            chunk.rows(name).add(row, position)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _model_errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'resource'} ({e.get('type', 'invalid')})"
                 for e in errors()[:5]]
        return "fails the FHIR model at " + ", ".join(parts)
    return f"fails the FHIR model ({type(exc).__name__})"


def _patient_hint(item: Item, ctx: Context) -> str | None:
    """The patient a resource is about when it can be followed, else None; never raises (the resource may have
    failed the model). A quarantined record carrying it is sealed under that patient's key, so shredding the patient
    reaches it too."""
    try:
        if item.resource.get("resourceType") == "Patient":
            return patient_key(item)
        for name in ("patient", "subject", "beneficiary"):
            target = ctx.scope.resolve(item.resource.get(name), item)
            if target is not None and target.kind == "Patient" and (target.item is not None or target.ident):
                return (patient_key(target.item) if target.item is not None
                        else ctx.patient_ids.get(target.ident, target.ident))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return None


def _kept(item: Item, ctx: Context, bundle_id: str | None) -> dict[str, Any]:
    """A resource kept whole: its key, type, id, bundle, patient (when one can be followed) and JSON as found."""
    return {"resource_key": resource_key(item), "resource_type": item.resource["resourceType"],
            "resource_id": own_id(item), "bundle_id": bundle_id, "patient_id": _patient_hint(item, ctx),
            "resource_json": json.dumps(item.resource, ensure_ascii=False, separators=(",", ":"))}
