"""Verification of signed requests: RFC 9421 HTTP message signatures, RFC 9530 Content-Digest, replay and rate.

A served front (the HTTP API, CDS Hooks, ``/v1/query``) hands every request to :meth:`RequestVerifier.verify`
with the operation it asks for; it gets back the :class:`VerifiedRequest` (which endpoint, which key) or a
:class:`SignatureRejected` carrying a stable ``code``, the HTTP ``status`` to answer and, for ``rate_limited``,
``retry_after`` seconds. The checks, in order:

1. ``Signature-Input`` and ``Signature`` present (``signature_missing``) and well-formed RFC 8941 dictionaries
   with one signature, the parameters ``created``, ``keyid``, ``nonce`` and ``alg`` (``expires`` and ``tag``
   optional, nothing else), and the covered components we require (``signature_malformed``): ``@method``;
   ``@target-uri``, or ``@authority`` + ``@path`` (+ ``@query`` when the URL has a query); and, when the request
   has a body, ``content-digest`` and ``content-type`` (a body without a ``Content-Digest`` field:
   ``digest_missing``).
2. The keyid names a registered key (``endpoint_unknown``); ``alg`` names that key's algorithm and the signature
   verifies over the RFC 9421 §2.5 signature base (``signature_invalid``); only then is the endpoint checked to be
   active and the key not past its rotation overlap (``endpoint_suspended``, ``endpoint_revoked``,
   ``key_expired``), so a caller without the key learns nothing of an endpoint's status.
3. ``created`` lies within ``window`` seconds of now, either way (the window is also the clock skew allowed), and
   ``expires``, if given, has not passed (``signature_expired``).
4. ``Content-Digest`` (``sha-256`` and/or ``sha-512``) equals the body (``digest_mismatch``); the endpoint may do
   the operation (``operation_forbidden``), from this address (``network_forbidden``), over the client
   certificate it is bound to (``client_certificate_mismatch``).
5. In one SQLite transaction shared by every worker and process of the server: the nonce is claimed
   (``nonce_replayed`` if seen within the window) and the endpoint's sliding one-minute request count is checked
   (``rate_limited``, 429 with ``Retry-After``). A rate-limited request leaves no trace: its nonce stays unclaimed
   and it does not count.

Before the signature verifies, a refusal says only what is wrong with the request, or that the keyid is unknown.
Messages never carry key material or request content.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from pipeline.errors import AccessDeniedError

if TYPE_CHECKING:
    from access.endpoints import Endpoint, EndpointRegistry
    from pipeline.settings import Settings

__all__ = ["REJECTIONS", "REQUIRED_PARAMS", "NonceStore", "Rejected", "RequestVerifier", "SignatureRejected",
           "VerifiedRequest", "content_digest", "signature_base"]

# Every refusal's code → (HTTP status, title). Stable: clients and the served fronts key on the code.
REJECTIONS: dict[str, tuple[int, str]] = {
    "signature_missing": (401, "Request is not signed"),
    "signature_malformed": (401, "Signature headers are malformed or incomplete"),
    "endpoint_unknown": (401, "Unknown endpoint key"),
    "endpoint_suspended": (403, "Endpoint is suspended"),
    "endpoint_revoked": (403, "Endpoint is revoked"),
    "key_expired": (401, "Endpoint key has expired"),
    "signature_invalid": (401, "Signature does not verify"),
    "signature_expired": (401, "Signature is outside its validity window"),
    "nonce_replayed": (401, "Nonce was already used"),
    "digest_missing": (400, "Content-Digest is missing"),
    "digest_mismatch": (400, "Content-Digest does not match the body"),
    "operation_forbidden": (403, "Endpoint may not perform this operation"),
    "network_forbidden": (403, "Endpoint may not call from this address"),
    "client_certificate_mismatch": (403, "Client certificate does not match the endpoint"),
    "rate_limited": (429, "Endpoint rate limit exceeded"),
}
REQUIRED_PARAMS: tuple[str, ...] = ("created", "keyid", "nonce", "alg")
_OPTIONAL_PARAMS = frozenset({"expires", "tag"})
_DIGESTS: dict[str, Callable[[bytes], Any]] = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_MAX_NONCE = 256
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class Rejected(AccessDeniedError):
    """A call refused by a served front: ``code`` (a key of the class's ``codes``), the HTTP ``status`` and ``title``
    to answer with, ``detail`` (what exactly was wrong) and ``retry_after`` seconds when rate limited."""

    codes: ClassVar[Mapping[str, tuple[int, str]]] = {}
    kind: ClassVar[str] = "rejection"

    def __init__(self, code: str, detail: str | None = None, *, retry_after: int | None = None) -> None:
        if code not in self.codes:
            raise ValueError(f"unknown {self.kind} code {code!r}")
        self.code = code
        self.status, self.title = self.codes[code]
        self.detail = detail or self.title
        self.retry_after = retry_after
        super().__init__(f"{code}: {self.detail}")


class SignatureRejected(Rejected):
    """A signed request refused (codes: :data:`REJECTIONS`); ``detail`` is safe to show the caller."""

    codes = REJECTIONS


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose signature, freshness, nonce, digest and permissions all checked out."""

    endpoint: Endpoint
    keyid: str
    nonce: str
    created: int
    covered: tuple[str, ...] = ()


# RFC 9530 --------------------------------------------------------------------------------------------------------

def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The ``Content-Digest`` field value of ``body`` (RFC 9530), e.g. ``sha-256=:…:``."""
    return f"{algorithm}=:{base64.b64encode(_DIGESTS[algorithm](body).digest()).decode()}:"


def _check_digest(value: str, body: bytes) -> None:
    import http_sf

    try:
        members = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SignatureRejected("digest_mismatch", "Content-Digest is not a structured dictionary") from exc
    known = {name: member[0] for name, member in members.items() if name in _DIGESTS}
    if not known:
        raise SignatureRejected("digest_mismatch", "Content-Digest has no sha-256 or sha-512 member")
    for name, digest in known.items():
        if not isinstance(digest, bytes) or not hmac.compare_digest(digest, _DIGESTS[name](body).digest()):
            raise SignatureRejected("digest_mismatch", f"Content-Digest {name} does not match the body")


# RFC 9421 --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    method: str
    scheme: str
    authority: str  # lower-case host, default port dropped
    target_uri: str
    path: str
    query: str | None


def _target(method: str, url: str) -> _Target:
    if not url.isascii():
        raise SignatureRejected("signature_malformed", "the request URL is not ASCII")
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise SignatureRejected("signature_malformed", "the request URL is not absolute")
    scheme = parts.scheme.lower()
    netloc = parts.netloc.rpartition("@")[2]  # user information is not part of the authority (RFC 9421 §2.2.3)
    host, port = (netloc, "") if netloc.endswith("]") or ":" not in netloc else netloc.rsplit(":", 1)
    authority = host.lower() + (f":{port}" if port and port.lstrip("0") != _DEFAULT_PORTS.get(scheme) else "")
    path = parts.path or "/"
    query = parts.query if "?" in url.split("#", 1)[0] else None
    target_uri = f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query is not None else "")
    return _Target(method, scheme, authority, target_uri, path, query)


def _component_value(name: str, target: _Target, headers: Mapping[str, str]) -> str:
    derived = {
        "@method": lambda: target.method,
        "@target-uri": lambda: target.target_uri,
        "@authority": lambda: target.authority,
        "@scheme": lambda: target.scheme,
        "@path": lambda: target.path,
        "@query": lambda: "?" + (target.query or ""),
        "@request-target": lambda: target.path + (f"?{target.query}" if target.query is not None else ""),
    }
    if name.startswith("@"):
        if name not in derived:
            raise SignatureRejected("signature_malformed", f"covered component {name} is not supported")
        return derived[name]()
    if name not in headers:
        raise SignatureRejected("signature_malformed", f"covered header {name} is not in the request")
    return headers[name]


def signature_base(components: list[str], params_serialised: str, *, method: str, url: str,
                   headers: Mapping[str, str]) -> bytes:
    """The RFC 9421 §2.5 signature base over ``components`` (lower-case names, no component parameters).

    Args:
        params_serialised: the ``@signature-params`` value, i.e. the serialised inner list with its parameters.
        headers: lower-case field names → combined values.
    """
    target = _target(method, url)
    lines = [f'"{name}": {_component_value(name, target, headers)}' for name in components]
    lines.append(f'"@signature-params": {params_serialised}')
    base = "\n".join(lines)
    if not base.isascii():
        raise SignatureRejected("signature_malformed", "a covered value is not ASCII")
    return base.encode("ascii")


def _combined_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names → values, repeated fields joined with ', ' and each value trimmed (RFC 9421 §2.1)."""
    combined: dict[str, str] = {}
    items = headers.multi_items() if hasattr(headers, "multi_items") else headers.items()
    for name, value in items:
        key = name.lower()
        value = value.strip()
        combined[key] = f"{combined[key]}, {value}" if key in combined else value
    return combined


@dataclass(frozen=True)
class _Parsed:
    components: list[str]
    params: dict[str, Any]
    params_serialised: str
    signature: bytes


def _parse(headers: Mapping[str, str]) -> _Parsed:
    import http_sf
    from http_sf.innerlist import ser_innerlist

    if "signature-input" not in headers or "signature" not in headers:
        raise SignatureRejected("signature_missing", "Signature-Input and Signature headers are required (RFC 9421)")
    try:
        inputs = http_sf.parse(headers["signature-input"].encode("ascii"), tltype="dictionary")
        signatures = http_sf.parse(headers["signature"].encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SignatureRejected("signature_malformed", "Signature-Input or Signature is not a structured "
                                "dictionary (RFC 8941)") from exc
    if len(inputs) != 1 or inputs.keys() != signatures.keys():
        raise SignatureRejected("signature_malformed", "exactly one signature is expected, with the same label in "
                                "Signature-Input and Signature")
    label = next(iter(inputs))
    inner, params = inputs[label]
    signature = signatures[label][0]
    if not isinstance(inner, list) or not isinstance(signature, bytes):
        raise SignatureRejected("signature_malformed", "Signature-Input must hold an inner list and Signature a "
                                "byte sequence")
    components = []
    for item, item_params in inner:
        if type(item) is not str or item_params:
            raise SignatureRejected("signature_malformed", "covered components must be plain strings (component "
                                    "parameters such as ;sf or ;key are not supported)")
        if item != item.lower() or item in components or item == "@signature-params":
            raise SignatureRejected("signature_malformed", f"covered component {item!r} is repeated, reserved or "
                                    "not lower-case")
        components.append(item)
    for name in REQUIRED_PARAMS:
        if name not in params:
            raise SignatureRejected("signature_malformed", f"signature parameter {name} is required")
    unknown = set(params) - set(REQUIRED_PARAMS) - _OPTIONAL_PARAMS
    if unknown:
        raise SignatureRejected("signature_malformed", f"unknown signature parameter(s) {', '.join(sorted(unknown))}")
    for name in ("created", "expires"):
        if name in params and type(params[name]) is not int:
            raise SignatureRejected("signature_malformed", f"signature parameter {name} must be an integer")
    for name in ("keyid", "nonce", "alg", "tag"):
        if name in params and type(params[name]) is not str:
            raise SignatureRejected("signature_malformed", f"signature parameter {name} must be a string")
    if not 1 <= len(params["nonce"]) <= _MAX_NONCE:
        raise SignatureRejected("signature_malformed", f"signature parameter nonce must be 1 to {_MAX_NONCE} "
                                "characters")
    return _Parsed(components, dict(params), ser_innerlist((inner, params)), signature)


def _require_coverage(components: list[str], url: str, has_body: bool) -> None:
    covered = set(components)
    missing = [c for c in ("@method",) if c not in covered]
    if "@target-uri" not in covered:
        needed = ["@authority", "@path"] + (["@query"] if urlsplit(url).query else [])
        missing += [c for c in needed if c not in covered]
    if has_body:
        missing += [c for c in ("content-digest", "content-type") if c not in covered]
    if missing:
        raise SignatureRejected("signature_malformed", f"the signature must cover {', '.join(missing)}")


def _verify_signature(alg: str, public_key: Any, signature: bytes, base: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        if alg == "ed25519":
            public_key.verify(signature, base)
        else:  # ecdsa-p256-sha256: RFC 9421 §3.3.4 sends r || s, 32 bytes each, not DER
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            if len(signature) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public_key.verify(der, base, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# the shared store: nonces and request counts ------------------------------------------------------------------

class NonceStore:
    """Nonces seen and per-endpoint request counts, in one SQLite file (WAL) every worker and process shares.

    A nonce is remembered until its signature could no longer be accepted; claiming one seen before fails (a
    replay). Rates use a sliding one-minute window (the current minute's count plus the previous minute's,
    weighted by how much of it still overlaps). ``synchronous=NORMAL``: a crashed process loses nothing; a power
    failure may lose the last claims, which matters only for signatures still inside their window.

    Args:
        path: the SQLite file (created 0600).
        clock: seconds since the epoch; injected for tests.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._claims = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> NonceStore:
        """The store at ``$MEDGUARD_HOME/access/requests.sqlite3``."""
        return cls(Path(settings.home) / "access" / "requests.sqlite3", clock=clock)

    def __repr__(self) -> str:
        return f"NonceStore(path={str(self.path)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("NonceStore cannot be pickled; open one per process")

    def _db(self) -> sqlite3.Connection:
        # A connection does not survive fork(): a worker forked from the server opens its own.
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("CREATE TABLE IF NOT EXISTS nonces (namespace TEXT NOT NULL, value TEXT NOT NULL, "
                               "expires REAL NOT NULL, PRIMARY KEY (namespace, value)) WITHOUT ROWID")
            connection.execute("CREATE TABLE IF NOT EXISTS rates (bucket TEXT NOT NULL, minute INTEGER NOT NULL, "
                               "count INTEGER NOT NULL, PRIMARY KEY (bucket, minute)) WITHOUT ROWID")
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def claim(self, namespace: str, value: str, *, ttl_seconds: int) -> bool:
        """Remember ``value`` in ``namespace`` for ``ttl_seconds``; False when it is remembered already (replay)."""
        claimed, _ = self.claim_and_count(namespace, value, ttl_seconds=ttl_seconds)
        return claimed

    def claim_and_count(self, namespace: str, value: str, *, ttl_seconds: float, bucket: str | None = None,
                        rate_per_minute: int | None = None) -> tuple[bool, int | None]:
        """Claim a nonce and, with ``bucket``, count one request against ``rate_per_minute``, in one transaction.

        Returns:
            ``(claimed, retry_after)``: ``claimed`` False for a replay (nothing counted); ``retry_after`` the
            seconds to wait when the rate is exceeded (then the nonce is not claimed and nothing is counted),
            else None.
        """
        now = self._clock()
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT expires FROM nonces WHERE namespace = ? AND value = ?",
                                 (namespace, value)).fetchone()
                if row is not None and row[0] > now:
                    db.execute("ROLLBACK")
                    return False, None
                db.execute("INSERT OR REPLACE INTO nonces VALUES (?, ?, ?)", (namespace, value, now + ttl_seconds))
                retry_after = None
                if bucket is not None and rate_per_minute is not None:
                    retry_after = self._count(db, bucket, rate_per_minute, now)
                if retry_after is not None:
                    db.execute("ROLLBACK")
                    return True, retry_after
                self._claims += 1
                if self._claims % 1000 == 0:  # forget what can no longer be replayed, now and then
                    db.execute("DELETE FROM nonces WHERE expires <= ?", (now,))
                    db.execute("DELETE FROM rates WHERE minute < ?", (int(now // 60) - 1,))
                db.execute("COMMIT")
                return True, None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @staticmethod
    def _count(db: sqlite3.Connection, bucket: str, limit: int, now: float) -> int | None:
        minute = int(now // 60)
        counts = dict(db.execute("SELECT minute, count FROM rates WHERE bucket = ? AND minute >= ?",
                                 (bucket, minute - 1)).fetchall())
        elapsed = now - minute * 60
        previous, current = counts.get(minute - 1, 0), counts.get(minute, 0)
        if previous * (60 - elapsed) / 60 + current + 1 > limit:
            return _retry_after(previous, current, limit, elapsed)
        db.execute("INSERT INTO rates VALUES (?, ?, 1) ON CONFLICT (bucket, minute) DO UPDATE SET count = count + 1",
                   (bucket, minute))
        return None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


def _retry_after(previous: int, current: int, limit: int, elapsed: float) -> int:
    """Whole seconds until one more request fits the sliding window: ``previous * (60 - t) / 60 + current + 1 <=
    limit`` later this minute, else ``current * (60 - t) / 60 + 1 <= limit`` in the next one."""
    if current + 1 <= limit and previous:
        at = 60 - (limit - current - 1) * 60 / previous
        if at < 60:
            return max(1, math.ceil(at - elapsed))
    at_next = max(0.0, 60 - (limit - 1) * 60 / current) if current else 0.0
    return max(1, math.ceil(60 - elapsed + at_next))


# the verifier ---------------------------------------------------------------------------------------------------

class RequestVerifier:
    """Checks signed requests against the endpoint registry (see the module docstring for the order of checks).

    Args:
        registry: the endpoints and their keys.
        nonces: the shared nonce and rate store.
        window_seconds: how far ``created`` may lie from now, either way; nonces are remembered as long.
        clock: seconds since the epoch; injected for tests.
    """

    def __init__(self, registry: EndpointRegistry, nonces: NonceStore, *, window_seconds: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        if window_seconds < 1:
            raise ValueError(f"signature window: at least 1 second, not {window_seconds}")
        self.registry = registry
        self.nonces = nonces
        self.window = window_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> RequestVerifier:
        """A verifier over the home's registry and nonce store, with ``endpoints.signature_window_seconds``."""
        from access.endpoints import EndpointRegistry

        registry = EndpointRegistry.from_settings(settings, clock=lambda: datetime.fromtimestamp(clock(), UTC))
        return cls(registry, NonceStore.from_settings(settings, clock=clock),
                   window_seconds=settings.endpoints.signature_window_seconds, clock=clock)

    def __repr__(self) -> str:
        return f"RequestVerifier(registry={self.registry!r}, window_seconds={self.window})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("RequestVerifier cannot be pickled; build one per process")

    def verify(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, operation: str,
               client_ip: str | None = None, client_cert_sha256: str | None = None) -> VerifiedRequest:
        """Accept a signed request for ``operation`` or raise :class:`SignatureRejected`.

        Args:
            method: the request method as received (upper case).
            url: the absolute URL the client called (scheme, host[:port], path, query).
            headers: the request's header fields (any case; repeated fields joined).
            body: the raw body bytes (``b""`` for none).
            client_ip: the peer address, checked against the endpoint's networks.
            client_cert_sha256: SHA-256 (hex) of the client certificate's DER from the TLS layer, if any.
        """
        fields = _combined_headers(headers)
        parsed = _parse(fields)
        has_body = bool(body)
        if has_body and "content-digest" not in fields:
            raise SignatureRejected("digest_missing", "a request with a body needs a Content-Digest field (RFC 9530)")
        _require_coverage(parsed.components, url, has_body)
        now = self._clock()
        keyid = parsed.params["keyid"]
        endpoint, key, public_key = self.registry.lookup(keyid)
        if parsed.params["alg"] != key.alg:
            raise SignatureRejected("signature_invalid", f"alg {parsed.params['alg']} is not the algorithm of key "
                                    f"{keyid} ({key.alg})")
        base = signature_base(parsed.components, parsed.params_serialised, method=method, url=url, headers=fields)
        if not _verify_signature(key.alg, public_key, parsed.signature, base):
            raise SignatureRejected("signature_invalid", "the signature does not verify over the request")
        self.registry.check_usable(endpoint, key, at=datetime.fromtimestamp(now, UTC))
        created = parsed.params["created"]
        if abs(now - created) > self.window:
            raise SignatureRejected("signature_expired", f"created is {'in the future' if created > now else 'too old'}"
                                    f": it must be within {self.window} s of the server's clock")
        expires = parsed.params.get("expires")
        if expires is not None and expires <= now:
            raise SignatureRejected("signature_expired", "the signature's expires time has passed")
        if "content-digest" in fields:
            _check_digest(fields["content-digest"], body)
        if not endpoint.allows(operation):
            raise SignatureRejected("operation_forbidden", f"endpoint {endpoint.name} may not {operation}")
        if not endpoint.allows_ip(client_ip):
            raise SignatureRejected("network_forbidden", f"endpoint {endpoint.name} may not call from this address")
        if endpoint.client_cert_sha256 is not None:
            presented = (client_cert_sha256 or "").lower().replace(":", "")
            if not hmac.compare_digest(presented, endpoint.client_cert_sha256):
                raise SignatureRejected("client_certificate_mismatch", f"endpoint {endpoint.name} must present its "
                                        "registered client certificate")
        # Remember the nonce until the signature could no longer be accepted (created + window), then some slack.
        ttl = max(1.0, created + self.window - now + 1)
        claimed, retry_after = self.nonces.claim_and_count(endpoint.endpoint_id, parsed.params["nonce"],
                                                           ttl_seconds=ttl, bucket=endpoint.endpoint_id,
                                                           rate_per_minute=endpoint.rate_per_minute)
        if not claimed:
            raise SignatureRejected("nonce_replayed", "this nonce was already used by the endpoint")
        if retry_after is not None:
            raise SignatureRejected("rate_limited", f"more than {endpoint.rate_per_minute} requests per minute",
                                    retry_after=retry_after)
        return VerifiedRequest(endpoint=endpoint, keyid=keyid, nonce=parsed.params["nonce"], created=created,
                               covered=tuple(parsed.components))
