"""FHIR references resolved to the resource (or at least the type and id) they point at, whatever their form.

A :class:`Scope` indexes one Bundle's entries by ``fullUrl`` and by ``type/id``; a nested Bundle's scope falls
back to its parent's. :meth:`Scope.resolve` follows, in this order:

- ``#p1``: a resource contained in the referring resource;
- ``urn:uuid:…`` / ``urn:oid:…`` and absolute URLs (``http://x/fhir/Patient/123``, ``…/_history/2`` dropped):
  the entry with that ``fullUrl``;
- relative (``Patient/123``): as FHIR's bundle rules say, the entry at the referrer's server base plus the
  reference when the referrer's ``fullUrl`` is a server URL, else the entry whose resource has that type and id;
- a relative or absolute URL that is not in the bundle: the type and id read from the URL itself. FHIR Bulk Data
  exports reference ``Patient/<id>`` across files, so the id is the patient id without state shared between files;
- a logical reference (``identifier`` only; a Patient unless ``type`` says otherwise) or a conditional one
  (``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999``, as Synthea 3 writes): the resource in scope
  carrying that identifier; failing that, the identifier itself (an NPI, an organization's id);
- otherwise (a ``urn:uuid`` matching no entry and with no ``type``, a ``display`` alone): unresolved.

A resource with no id at all is keyed by a keyed digest of its content (:meth:`SourceKeys.content
<ingestion.sources._keyed.SourceKeys.content>`, under the lake's key in a batch): an unkeyed SHA-256 of a record
could be confirmed by anyone guessing its content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ingestion.sources._keyed import SourceKeys

__all__ = ["Item", "Scope", "Target", "own_id", "resource_key"]

_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
_HISTORY = re.compile(r"/_history/[^/]*$")
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]{1,63})\?identifier=(.+)$")


@dataclass
class Item:
    """A resource with where it sits: its bundle entry's ``fullUrl``, its position, its container if contained, and
    the keys its reader digests id-less resources with (a contained resource uses its container's)."""

    resource: dict[str, Any]
    position: str
    full_url: str | None = None
    container: Item | None = None
    keys: SourceKeys | None = field(default=None, repr=False)


@dataclass
class Target:
    """What a reference points at: the type and id (either may be unknown) and the resource when it is at hand."""

    kind: str | None
    ident: str | None
    item: Item | None = None
    identifier: tuple[str | None, str] | None = None  # (system, value) a logical or conditional reference named


def own_id(item: Item) -> str | None:
    """The resource's id; for an entry without one, the id its ``fullUrl`` gives (``urn:uuid:`` prefix dropped)."""
    ident = item.resource.get("id")
    if isinstance(ident, str) and ident:
        return ident
    url = item.full_url or ""
    if url.startswith(("urn:uuid:", "urn:oid:")):
        return url.split(":", 2)[2] or None
    match = _TAIL.search(_HISTORY.sub("", url))
    return match.group(2) if match else None


def resource_key(item: Item) -> str:
    """``Type/id``; a contained resource is qualified by its container; no id at all: a keyed digest of the content
    (``Type/hmac:…``), under the item's keys (a random key of this process when it has none)."""
    kind = item.resource.get("resourceType")
    ident = own_id(item)
    if item.container is not None:
        return f"{resource_key(item.container)}/{ident or '?'}"
    if ident:
        return f"{kind}/{ident}"
    text = json.dumps(item.resource, sort_keys=True, ensure_ascii=False).encode()
    return f"{kind}/{(item.keys or _local_keys()).content(text)}"


_LOCAL: list[SourceKeys] = []


def _local_keys() -> SourceKeys:
    # An item built outside a reader (a test): a random key, made once per process, never an unkeyed digest.
    if not _LOCAL:
        _LOCAL.append(SourceKeys.local())
    return _LOCAL[0]


@dataclass
class Scope:
    """The entries of one Bundle (or a single resource's empty scope), to resolve references against."""

    parent: Scope | None = None
    by_url: dict[str, Item] = field(default_factory=dict)
    by_type_id: dict[tuple[str, str], Item] = field(default_factory=dict)
    by_identifier: dict[tuple[str, str | None, str], Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        kind = item.resource.get("resourceType")
        if item.full_url:
            self.by_url.setdefault(_HISTORY.sub("", item.full_url), item)
        ident = own_id(item)
        if isinstance(kind, str) and ident:
            self.by_type_id.setdefault((kind, ident), item)
        identifiers = item.resource.get("identifier")
        for identifier in identifiers if isinstance(identifiers, list) else []:
            if isinstance(identifier, dict) and isinstance(identifier.get("value"), str) and isinstance(kind, str):
                system = identifier.get("system") if isinstance(identifier.get("system"), str) else None
                self.by_identifier.setdefault((kind, system, identifier["value"]), item)

    def resolve(self, reference: Any, referrer: Item) -> Target | None:
        """The target of ``reference`` (a Reference dict) made by ``referrer``; None when there is no reference."""
        if not isinstance(reference, dict):
            return None
        kind = reference.get("type") if isinstance(reference.get("type"), str) else None
        ref = reference.get("reference")
        if isinstance(ref, str) and ref:
            return self._by_reference(ref.strip(), kind, referrer)
        identifier = reference.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str) and identifier["value"]:
            system = identifier.get("system") if isinstance(identifier.get("system"), str) else None
            return self._logical(kind or "Patient", system, identifier["value"])
        return Target(kind, None)

    def _by_reference(self, ref: str, kind: str | None, referrer: Item) -> Target:
        if ref.startswith("#"):
            return _contained(ref[1:], referrer)
        conditional = _CONDITIONAL.match(ref)
        if conditional:  # Type?identifier=system|value, as transaction bundles (Synthea 3) name shared resources
            token = unquote(conditional.group(2))
            system, _, value = token.rpartition("|") if "|" in token else (None, "", token)
            return self._logical(conditional.group(1), system or None, value)
        url = _HISTORY.sub("", ref)
        match = _TAIL.search(url)
        if ":" not in url and match:  # relative: against the referrer's server base when its fullUrl has one
            base = _base(referrer)
            item = self._find_url(base + url) if base else self._find_type_id(match.group(1), match.group(2))
        else:
            item = self._find_url(url)
        if item is not None:
            return Target(item.resource.get("resourceType"), own_id(item), item)
        if match:  # not in the bundle: a resource on a server (a Bulk export's Patient/<id>)
            return Target(match.group(1), match.group(2))
        if url.startswith(("urn:uuid:", "urn:oid:")):
            return Target(kind, url.split(":", 2)[2] or None)
        return Target(kind, None)

    def _find_url(self, url: str) -> Item | None:
        scope: Scope | None = self
        while scope is not None:
            if url in scope.by_url:
                return scope.by_url[url]
            scope = scope.parent
        return None

    def _find_type_id(self, kind: str, ident: str) -> Item | None:
        scope: Scope | None = self
        while scope is not None:
            if (kind, ident) in scope.by_type_id:
                return scope.by_type_id[(kind, ident)]
            scope = scope.parent
        return None

    def _logical(self, kind: str, system: str | None, value: str) -> Target:
        """The resource of ``kind`` in scope carrying identifier ``system|value`` (any system when none is named)."""
        scope: Scope | None = self
        while scope is not None:
            item = scope.by_identifier.get((kind, system, value))
            if item is None and system is None:
                item = next((i for (k, _, v), i in scope.by_identifier.items() if k == kind and v == value), None)
            if item is not None:
                return Target(kind, own_id(item), item, (system, value))
            scope = scope.parent
        return Target(kind, None, identifier=(system, value))


def _base(referrer: Item) -> str | None:
    """The server base of the referrer's ``fullUrl`` (``http://x/fhir/`` of ``http://x/fhir/Patient/1``), if any."""
    while referrer.container is not None:
        referrer = referrer.container
    url = _HISTORY.sub("", referrer.full_url or "")
    match = _TAIL.search(url)
    if not url.startswith(("http://", "https://")) or match is None:
        return None
    return url[: match.start(1)]


def _contained(local: str, referrer: Item) -> Target:
    host = referrer
    while host.container is not None:  # a contained resource's "#x" points into the same container
        host = host.container
    for resource in host.resource.get("contained") or []:
        if isinstance(resource, dict) and resource.get("id") == local:
            item = Item(resource, f"{host.position} contained #{local}", container=host, keys=host.keys)
            return Target(resource.get("resourceType"), local, item)
    return Target(None, None)
