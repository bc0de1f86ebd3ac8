"""The endpoint registry: who may call the served fronts (devices, EHR integrations, partner apps), with which keys.

An endpoint is a named caller holding a private key that never leaves it; the registry keeps only its **public**
keys (Ed25519 or ECDSA P-256, PEM SubjectPublicKeyInfo), what it may do (:data:`OPERATIONS`), the networks it may
call from, its request rate, an optional client-certificate fingerprint it is bound to, and its status
(``active``, ``suspended`` — reversible — or ``revoked`` — final). Requests are signed with RFC 9421 HTTP message
signatures (:mod:`access.signatures`); the signature's ``keyid`` names one key here.

- A keyid is derived from the key: ``<name>-<first 16 hex of SHA-256 over the SPKI DER>``, so it is stable, shows
  whose key it is, and one public key cannot be registered twice.
- Rotating a key makes the new key valid at once and leaves each older key valid for an overlap
  (``endpoints.key_overlap_hours``), after which it is refused as ``key_expired``.
- The store is one JSON file, ``$MEDGUARD_HOME/access/endpoints.json`` (0600 in a 0700 folder), written atomically
  under an exclusive ``flock``. Servers read it on every request through :meth:`EndpointRegistry.resolve`, which
  re-reads the file only when it was replaced (every change writes a new file) and keeps parsed public keys cached, so a
  suspension takes effect on the next request of every worker without costing a parse per request.
- Every change is audited (``POLICY_DECISION`` with ``details.operation`` ``endpoint_register``,
  ``endpoint_suspend``, …) naming the operator; keys appear in the audit by keyid and fingerprint only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from access._json_store import LockedJsonFile
from pipeline.errors import AccessDeniedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pipeline.settings import Settings

    PublicKey = Ed25519PublicKey | EllipticCurvePublicKey

__all__ = ["ALGORITHMS", "OPERATIONS", "STATUSES", "Endpoint", "EndpointKey", "EndpointRegistry", "keyid_for",
           "load_public_key", "normalise_fingerprint"]

# What an endpoint may be allowed: score encounters, read model metadata, run governed queries, answer CDS Hooks.
OPERATIONS: tuple[str, ...] = ("diagnose", "models.read", "query", "cds")
# RFC 9421 algorithm names of the keys we accept.
ALGORITHMS: tuple[str, ...] = ("ed25519", "ecdsa-p256-sha256")
STATUSES: tuple[str, ...] = ("active", "suspended", "revoked")

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{16}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_FORMAT = 1


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EndpointKey:
    """One public key of an endpoint. ``not_after`` None: valid until rotated away or the endpoint is revoked."""

    keyid: str
    alg: str
    public_key_pem: str
    created_at: datetime
    not_after: datetime | None = None

    def valid_at(self, at: datetime) -> bool:
        """Whether a signature made with this key is accepted at ``at``."""
        return self.not_after is None or at < self.not_after

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the key's SubjectPublicKeyInfo DER, hex."""
        return _spki_sha256(load_public_key(self.public_key_pem)[0])

    def to_dict(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "alg": self.alg, "public_key_pem": self.public_key_pem,
                "created_at": self.created_at.isoformat(),
                "not_after": self.not_after.isoformat() if self.not_after else None}


@dataclass(frozen=True)
class Endpoint:
    """A registered caller. ``networks`` empty: any address; ``client_cert_sha256``: the mTLS certificate it must
    present (SHA-256 of the certificate's DER, hex), or None when not bound to one."""

    endpoint_id: str
    name: str
    principal: str | None
    operations: tuple[str, ...]
    networks: tuple[str, ...]
    rate_per_minute: int
    status: str
    keys: tuple[EndpointKey, ...]
    client_cert_sha256: str | None
    created_at: datetime
    _parsed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed_networks", tuple(ipaddress.ip_network(n, strict=False)
                                                           for n in self.networks))

    def allows(self, operation: str) -> bool:
        """Whether this endpoint may perform ``operation`` (one of :data:`OPERATIONS`)."""
        return operation in self.operations

    def allows_ip(self, ip: str | None) -> bool:
        """Whether a request from ``ip`` is accepted: any address when no network is set; else ``ip`` must be
        inside one of them (an unknown or unparsable address is refused: fail closed)."""
        if not self._parsed_networks:
            return True
        if not ip:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._parsed_networks)

    def key(self, keyid: str) -> EndpointKey:
        """The key called ``keyid``.

        Raises:
            KeyError: the endpoint has no such key.
        """
        for key in self.keys:
            if key.keyid == keyid:
                return key
        raise KeyError(keyid)

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "name": self.name, "principal": self.principal,
                "operations": list(self.operations), "networks": list(self.networks),
                "rate_per_minute": self.rate_per_minute, "status": self.status,
                "keys": [k.to_dict() for k in self.keys], "client_cert_sha256": self.client_cert_sha256,
                "created_at": self.created_at.isoformat()}


def _endpoint(record: dict[str, Any]) -> Endpoint:
    keys = tuple(EndpointKey(keyid=k["keyid"], alg=k["alg"], public_key_pem=k["public_key_pem"],
                             created_at=datetime.fromisoformat(k["created_at"]),
                             not_after=datetime.fromisoformat(k["not_after"]) if k.get("not_after") else None)
                 for k in record["keys"])
    return Endpoint(endpoint_id=record["endpoint_id"], name=record["name"], principal=record.get("principal"),
                    operations=tuple(record["operations"]), networks=tuple(record["networks"]),
                    rate_per_minute=int(record["rate_per_minute"]), status=record["status"], keys=keys,
                    client_cert_sha256=record.get("client_cert_sha256"),
                    created_at=datetime.fromisoformat(record["created_at"]))


# keys --------------------------------------------------------------------------------------------------------

def load_public_key(pem: str | bytes) -> tuple[PublicKey, str]:
    """Parse a public key PEM and name its RFC 9421 algorithm.

    Raises:
        ValueError: the PEM holds a private key (it must stay with the endpoint), is not a public key, or is a key
            type other than Ed25519 or ECDSA P-256 (RSA, P-384, … are refused).
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        raise ValueError("public key: this PEM holds a PRIVATE key; register the public key only (the private key "
                         "stays with the endpoint): `openssl pkey -in KEY -pubout` or `medguard endpoints keygen`")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError("public key: not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')") from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ecdsa-p256-sha256"
    kind = (f"ECDSA {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
            .removeprefix("_").replace("PublicKey", ""))
    raise ValueError(f"public key: {kind} keys are not accepted; use Ed25519 or ECDSA P-256")


def _spki_sha256(key: PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def keyid_for(name: str, public_key_pem: str | bytes) -> str:
    """The keyid of ``public_key_pem`` registered for endpoint ``name``: ``<name>-<16 hex of its SPKI SHA-256>``."""
    return f"{name}-{_spki_sha256(load_public_key(public_key_pem)[0])[:16]}"


def normalise_fingerprint(value: str) -> str:
    """A SHA-256 certificate fingerprint as 64 lower-case hex digits (``AB:CD:…`` and ``sha256:`` prefixes accepted).

    Raises:
        ValueError: it is not 32 bytes of hex.
    """
    cleaned = value.strip().lower().removeprefix("sha256:").removeprefix("sha256=").replace(":", "")
    if not _FINGERPRINT.fullmatch(cleaned):
        raise ValueError("client certificate: expected a SHA-256 fingerprint (64 hex digits) or a PEM certificate")
    return cleaned


def _certificate_sha256(value: str) -> str:
    """The SHA-256 fingerprint of a PEM certificate's DER, or a fingerprint given directly."""
    if "-----BEGIN CERTIFICATE-----" not in value:
        return normalise_fingerprint(value)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certificate = x509.load_pem_x509_certificate(value.encode())
    except ValueError as exc:
        raise ValueError("client certificate: not a valid PEM certificate") from exc
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


# the registry ------------------------------------------------------------------------------------------------

class EndpointRegistry:
    """Registered endpoints in one JSON file.

    Args:
        path: the store file (created 0600 on first change).
        audit: called as ``audit(operation, details)`` after every change (details name the operator, the endpoint
            and keyids, never key material); :meth:`from_settings` wires it to the audit log.
        clock: the current time (timezone-aware); injected for key-expiry tests.
        default_rate_per_minute: the rate of an endpoint registered without one.
        key_overlap: how long an old key stays valid after :meth:`rotate_key` when no overlap is given.
    """

    def __init__(self, path: Path, *, audit: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], datetime] = _utcnow, default_rate_per_minute: int = 600,
                 key_overlap: timedelta = timedelta(hours=24)) -> None:
        self.path = Path(path)
        self._file = LockedJsonFile(self.path, fmt=_FORMAT, kind="endpoint registry", empty=lambda: {"endpoints": {}})
        self._audit = audit
        self._clock = clock
        self._default_rate = default_rate_per_minute
        self._key_overlap = key_overlap
        # resolve() cache: the file's (inode, mtime_ns, size) → endpoints by keyid; parsed public keys by (keyid, pem).
        self._cache_lock = threading.Lock()
        self._cache_stamp: tuple[int, int, int] | None = None
        self._by_keyid: dict[str, tuple[Endpoint, EndpointKey]] = {}
        self._parsed: dict[tuple[str, str], PublicKey] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], datetime] = _utcnow) -> EndpointRegistry:
        """The registry under ``settings.home`` (``access/endpoints.json``), auditing into the lake's audit log."""
        endpoints = settings.endpoints
        return cls(Path(settings.home) / "access" / "endpoints.json", audit=_audit_recorder(settings), clock=clock,
                   default_rate_per_minute=endpoints.default_rate_per_minute,
                   key_overlap=timedelta(hours=endpoints.key_overlap_hours))

    def __repr__(self) -> str:
        return f"EndpointRegistry(path={str(self.path)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("EndpointRegistry cannot be pickled; open one per process")

    # persistence -------------------------------------------------------------------------------------------

    def _edit(self) -> Any:
        return self._file.edit()

    def _read(self) -> dict[str, Any]:
        return self._file.read()

    @staticmethod
    def _find(data: dict[str, Any], name_or_id: str) -> dict[str, Any]:
        endpoints = data["endpoints"]
        if name_or_id in endpoints:
            return endpoints[name_or_id]
        for record in endpoints.values():
            if record["endpoint_id"] == name_or_id:
                return record
        raise AccessDeniedError(f"unknown endpoint {name_or_id!r}")

    def _record(self, operation: str, operator: str, details: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit(operation, {"operator": operator, **details})

    # changes ----------------------------------------------------------------------------------------------

    def register(self, name: str, public_key_pem: str, *, principal: str | None = None,
                 operations: Iterable[str] = OPERATIONS, networks: Iterable[str] = (),
                 rate_per_minute: int | None = None, client_cert_sha256: str | None = None,
                 operator: str) -> Endpoint:
        """Register an endpoint with its first public key.

        Args:
            client_cert_sha256: a SHA-256 certificate fingerprint (hex, colons allowed) or a PEM certificate.

        Raises:
            ValueError: a bad name, an unknown operation, a bad CIDR, a rate below 1, a private or unsupported key,
                a name already registered, or a key already registered (for any endpoint).
        """
        if not _NAME.fullmatch(name or ""):
            raise ValueError(f"endpoint name {name!r}: lower-case letters, digits, '_', '.' and '-', starting with "
                             "a letter, at most 63 characters")
        ops = _operations(operations)
        nets = _networks(networks)
        rate = self._default_rate if rate_per_minute is None else int(rate_per_minute)
        if rate < 1:
            raise ValueError(f"rate limit: at least 1 request per minute, not {rate}")
        cert = _certificate_sha256(client_cert_sha256) if client_cert_sha256 else None
        key_object, alg = load_public_key(public_key_pem)
        fingerprint = _spki_sha256(key_object)
        now = self._clock()
        key = EndpointKey(keyid=f"{name}-{fingerprint[:16]}", alg=alg, public_key_pem=_pem_text(public_key_pem),
                          created_at=now)
        with self._edit() as data:
            if name in data["endpoints"]:
                raise ValueError(f"endpoint {name!r} exists already")
            _refuse_known_key(data, key_object)
            endpoint = Endpoint(endpoint_id=f"ep_{secrets.token_hex(8)}", name=name, principal=principal,
                                operations=ops, networks=nets, rate_per_minute=rate, status="active", keys=(key,),
                                client_cert_sha256=cert, created_at=now)
            data["endpoints"][name] = endpoint.to_dict()
        self._record("endpoint_register", operator, {
            "endpoint": name, "endpoint_id": endpoint.endpoint_id, "keyid": key.keyid, "alg": alg,
            "key_sha256": fingerprint, "operations": list(ops), "networks": list(nets), "rate_per_minute": rate,
            "client_cert_bound": cert is not None, "principal": principal})
        return endpoint

    def _set_status(self, name_or_id: str, status: str, operation: str, operator: str,
                    allowed_from: tuple[str, ...]) -> Endpoint:
        with self._edit() as data:
            record = self._find(data, name_or_id)
            if record["status"] not in allowed_from:
                raise ValueError(f"endpoint {record['name']!r} is {record['status']}; cannot {operation.split('_')[1]}"
                                 f" it")
            record["status"] = status
            endpoint = _endpoint(record)
        self._record(operation, operator, {"endpoint": endpoint.name, "endpoint_id": endpoint.endpoint_id,
                                           "status": status})
        return endpoint

    def suspend(self, name_or_id: str, *, operator: str) -> Endpoint:
        """Refuse the endpoint's requests (``endpoint_suspended``) until :meth:`resume`.

        Raises:
            AccessDeniedError: no such endpoint.
            ValueError: it is revoked.
        """
        return self._set_status(name_or_id, "suspended", "endpoint_suspend", operator, ("active", "suspended"))

    def resume(self, name_or_id: str, *, operator: str) -> Endpoint:
        """Accept a suspended endpoint's requests again (a revoked one stays revoked).

        Raises:
            AccessDeniedError: no such endpoint.
            ValueError: it is revoked.
        """
        return self._set_status(name_or_id, "active", "endpoint_resume", operator, ("active", "suspended"))

    def revoke(self, name_or_id: str, *, operator: str) -> Endpoint:
        """Refuse the endpoint for good (``endpoint_revoked``); its record stays for the audit trail.

        Raises:
            AccessDeniedError: no such endpoint.
        """
        return self._set_status(name_or_id, "revoked", "endpoint_revoke", operator, STATUSES)

    def rotate_key(self, name_or_id: str, public_key_pem: str, *, overlap: timedelta | None = None,
                   operator: str) -> EndpointKey:
        """Add a new key, valid at once; every older key stays valid for ``overlap`` (default: the registry's),
        then is refused as ``key_expired``. A zero overlap retires the old keys now.

        Raises:
            AccessDeniedError: no such endpoint.
            ValueError: the endpoint is revoked, the overlap is negative, or the key is private, unsupported or
                already registered.
        """
        overlap = self._key_overlap if overlap is None else overlap
        if overlap < timedelta(0):
            raise ValueError(f"key overlap: cannot be negative ({overlap})")
        key_object, alg = load_public_key(public_key_pem)
        fingerprint = _spki_sha256(key_object)
        now = self._clock()
        with self._edit() as data:
            record = self._find(data, name_or_id)
            if record["status"] == "revoked":
                raise ValueError(f"endpoint {record['name']!r} is revoked; register a new endpoint instead")
            _refuse_known_key(data, key_object)
            key = EndpointKey(keyid=f"{record['name']}-{fingerprint[:16]}", alg=alg,
                              public_key_pem=_pem_text(public_key_pem), created_at=now)
            retire_at = now + overlap
            retired = []
            for old in record["keys"]:
                not_after = datetime.fromisoformat(old["not_after"]) if old.get("not_after") else None
                if not_after is None or not_after > retire_at:
                    old["not_after"] = retire_at.isoformat()
                    retired.append(old["keyid"])
            record["keys"].append(key.to_dict())
        self._record("endpoint_rotate_key", operator, {
            "endpoint": record["name"], "endpoint_id": record["endpoint_id"], "keyid": key.keyid, "alg": alg,
            "key_sha256": fingerprint, "retired_keyids": retired, "old_keys_valid_until": retire_at.isoformat()})
        return key

    # reading ----------------------------------------------------------------------------------------------

    def get(self, name_or_id: str) -> Endpoint:
        """The endpoint called ``name_or_id`` (or with that endpoint id).

        Raises:
            AccessDeniedError: no such endpoint.
        """
        return _endpoint(self._find(self._read(), name_or_id))

    def list(self) -> list[Endpoint]:
        """Every endpoint, by name."""
        endpoints = self._read()["endpoints"]
        return [_endpoint(endpoints[name]) for name in sorted(endpoints)]

    def _index(self) -> dict[str, tuple[Endpoint, EndpointKey]]:
        """Endpoints by keyid, re-read only when the file changed (every write replaces it: a new inode)."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._cache_lock:
            if stamp != self._cache_stamp or stamp is None:
                index: dict[str, tuple[Endpoint, EndpointKey]] = {}
                for record in self._read()["endpoints"].values():
                    endpoint = _endpoint(record)
                    for key in endpoint.keys:
                        index[key.keyid] = (endpoint, key)
                self._by_keyid, self._cache_stamp = index, stamp
            return self._by_keyid

    def lookup(self, keyid: str) -> tuple[Endpoint, EndpointKey, PublicKey]:
        """The endpoint, key and parsed public key ``keyid`` names, whatever their status (the verifier checks the
        signature before it says anything about the endpoint).

        Raises:
            SignatureRejected: ``endpoint_unknown``, no endpoint holds this keyid.
        """
        from access.signatures import SignatureRejected

        found = self._index().get(keyid)
        if found is None:
            raise SignatureRejected("endpoint_unknown", "no endpoint holds this keyid")
        endpoint, key = found
        cache_key = (key.keyid, key.public_key_pem)
        public = self._parsed.get(cache_key)
        if public is None:
            public = load_public_key(key.public_key_pem)[0]
            self._parsed[cache_key] = public
        return endpoint, key, public

    def check_usable(self, endpoint: Endpoint, key: EndpointKey, *, at: datetime | None = None) -> None:
        """Refuse a revoked or suspended endpoint, or a key past its overlap.

        Raises:
            SignatureRejected: ``endpoint_revoked``, ``endpoint_suspended`` or ``key_expired``.
        """
        from access.signatures import SignatureRejected

        if endpoint.status == "revoked":
            raise SignatureRejected("endpoint_revoked", f"endpoint {endpoint.name} is revoked")
        if endpoint.status != "active":
            raise SignatureRejected("endpoint_suspended", f"endpoint {endpoint.name} is suspended")
        if not key.valid_at(at or self._clock()):
            raise SignatureRejected("key_expired", f"key {key.keyid} was rotated away and its overlap has ended")

    def resolve(self, keyid: str, *, at: datetime | None = None) -> tuple[Endpoint, EndpointKey, PublicKey]:
        """The endpoint, key and parsed public key a signature's ``keyid`` names, if they may sign at ``at``.

        Raises:
            SignatureRejected: ``endpoint_unknown`` (no such keyid), ``endpoint_revoked``, ``endpoint_suspended``
                or ``key_expired`` (rotated away and past its overlap).
        """
        endpoint, key, public = self.lookup(keyid)
        self.check_usable(endpoint, key, at=at)
        return endpoint, key, public


def _operations(operations: Iterable[str]) -> tuple[str, ...]:
    ops = tuple(dict.fromkeys(o.strip() for o in operations if o.strip()))
    unknown = [o for o in ops if o not in OPERATIONS]
    if unknown:
        raise ValueError(f"operations: unknown {', '.join(unknown)}; choose from {', '.join(OPERATIONS)}")
    if not ops:
        raise ValueError(f"operations: give at least one of {', '.join(OPERATIONS)}")
    return ops


def _networks(networks: Iterable[str]) -> tuple[str, ...]:
    parsed = []
    for network in networks:
        try:
            parsed.append(str(ipaddress.ip_network(network.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"network {network!r}: not a CIDR block such as 10.0.0.0/8 or 2001:db8::/32") from exc
    return tuple(dict.fromkeys(parsed))


def _pem_text(pem: str | bytes) -> str:
    return (pem.decode() if isinstance(pem, bytes) else pem).strip() + "\n"


def _refuse_known_key(data: dict[str, Any], key: PublicKey) -> None:
    fingerprint = _spki_sha256(key)
    for record in data["endpoints"].values():
        for known in record["keys"]:
            if _spki_sha256(load_public_key(known["public_key_pem"])[0]) == fingerprint:
                raise ValueError(f"public key: already registered (endpoint {record['name']!r}); every endpoint and "
                                 "every rotation needs a key of its own")


def _audit_recorder(settings: Settings) -> Callable[[str, dict[str, Any]], None]:
    """Record a registry change as the operator's ``POLICY_DECISION`` (the pattern of ``access.cli``)."""

    def record(operation: str, details: dict[str, Any]) -> None:
        from pipeline.lake import Lake
        from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
        from storage_security.keys.providers import provider_from_settings

        operator = details.get("operator", "unknown")
        AuditLog(Lake(settings), provider_from_settings(settings)).record(AuditEvent(
            principal=f"operator:{operator}", action=AuditAction.POLICY_DECISION, decision=Decision.ALLOW,
            purpose="administration", reason=operation,
            details={"requested_action": "grant", "operation": operation,
                     **{k: v for k, v in details.items() if k != "operator"}}))

    return record

