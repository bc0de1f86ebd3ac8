"""CDS Hooks client authentication: the EHR's ``Authorization: Bearer <JWT>``, signed by its registered key.

CDS Hooks 2.0 ("Trusting CDS Clients") has the EHR sign a short-lived JWT for every call. Here the EHR is a
registered endpoint (:mod:`access.endpoints`) allowed the operation ``cds``, and the JWT header's ``kid`` is that
endpoint's registry ``keyid`` — the registry is the trust anchor, so a ``jku`` header is never fetched. Checks, in
order, each refusal with its own stable code (:data:`CDS_REJECTIONS`):

1. a ``Bearer`` token is present (``jwt_missing``), at most 8 KiB, a JWS compact serialisation whose header names
   ``alg`` and ``kid`` (``jwt_malformed``);
2. ``kid`` resolves to an active endpoint's key (``endpoint_unknown``, ``endpoint_suspended``, ``endpoint_revoked``,
   ``key_expired``);
3. ``alg`` is the key's algorithm — ``EdDSA`` for an Ed25519 key, ``ES256`` for an ECDSA P-256 key; anything else
   (``none``, ``HS256`` over the public key, ``ES384``) is ``jwt_invalid`` — and the signature verifies (PyJWT)
   (``jwt_invalid``);
4. the claims ``iss``, ``aud``, ``exp``, ``iat`` and ``jti`` are present and typed (``jwt_malformed``);
5. ``iss`` is the endpoint's registered name or its ``endpoint_id`` (``jwt_issuer``): either names the one endpoint
   the key belongs to, so an EHR may send whichever its configuration holds;
6. ``aud`` (a string or a list) holds the service's URL, ``<cds_hooks.service_url>/cds-services/<id>``, or the
   URL the request came to when no ``service_url`` is set (``jwt_audience``);
7. ``exp - iat`` is at most ``cds_hooks.max_jwt_lifetime_seconds`` (300: the spec's five minutes), and ``exp`` is no
   further ahead than that (``jwt_lifetime``); ``exp`` not past, ``iat`` and ``nbf`` not ahead, each within
   ``cds_hooks.clock_skew_seconds`` (``jwt_expired``);
8. the endpoint may perform ``cds``, from this address, with its bound client certificate if it has one
   (``operation_forbidden``, ``network_forbidden``, ``client_certificate_mismatch``);
9. ``jti`` is claimed in the shared nonce store (namespace ``cds-jti``, remembered until the token could no longer
   be accepted) and counted against the endpoint's rate limit in the same transaction (``jwt_replayed``,
   ``rate_limited`` with ``Retry-After``).

A refusal answers with its code and title only; what exactly failed goes to no one but the server's caller.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from access.signatures import REJECTIONS, Rejected, SignatureRejected

if TYPE_CHECKING:
    from access.endpoints import Endpoint, EndpointRegistry
    from access.signatures import NonceStore
    from pipeline.settings import Settings

__all__ = ["CDS_REJECTIONS", "JWT_ALGORITHMS", "NONCE_NAMESPACE", "CdsJwtVerifier", "CdsRejected", "VerifiedEhr"]

# Every refusal's code → (HTTP status, title). Stable: EHR integrations key on the code.
CDS_REJECTIONS: dict[str, tuple[int, str]] = {
    "jwt_missing": (401, "A bearer JWT is required"),
    "jwt_malformed": (401, "The JWT is malformed or lacks a required header or claim"),
    "jwt_invalid": (401, "The JWT's algorithm or signature is not accepted"),
    "jwt_expired": (401, "The JWT is outside its validity time"),
    "jwt_lifetime": (401, "The JWT's lifetime exceeds the maximum"),
    "jwt_audience": (401, "The JWT is not addressed to this service"),
    "jwt_issuer": (401, "The JWT's issuer is not the registered endpoint"),
    "jwt_replayed": (401, "The JWT's jti was already used"),
    # The registry's refusals, as the signed API answers them.
    **{code: REJECTIONS[code] for code in ("endpoint_unknown", "endpoint_suspended", "endpoint_revoked",
                                           "key_expired", "operation_forbidden", "network_forbidden",
                                           "client_certificate_mismatch", "rate_limited")},
}
# The registry's key algorithm → the one JWS ``alg`` a token signed by it may name.
JWT_ALGORITHMS: dict[str, str] = {"ed25519": "EdDSA", "ecdsa-p256-sha256": "ES256"}
NONCE_NAMESPACE = "cds-jti"
OPERATION = "cds"
_MAX_TOKEN = 8192
_MAX_JTI = 256
_REQUIRED = ("iss", "aud", "exp", "iat", "jti")


class CdsRejected(Rejected):
    """A CDS Hooks call refused before its body is read (codes: :data:`CDS_REJECTIONS`); ``detail`` is for the
    server's log and tests, never the response."""

    codes = CDS_REJECTIONS
    kind = "CDS rejection"


@dataclass(frozen=True)
class VerifiedEhr:
    """A CDS client whose JWT checked out: its endpoint, the key it signed with and the token's times."""

    endpoint: Endpoint
    keyid: str
    jti: str
    issued_at: float
    expires_at: float
    tenant: str | None = None


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CdsRejected("jwt_malformed", f"claim {name} must be a number (seconds since the epoch)")
    return float(value)


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


class CdsJwtVerifier:
    """Checks CDS Hooks JWTs against the endpoint registry (the order of checks is in the module docstring).

    Args:
        registry: the endpoints and their keys.
        nonces: the shared nonce and rate store (the RFC 9421 verifier's).
        max_lifetime: longest accepted ``exp - iat``, in seconds.
        skew: clock difference tolerated on ``exp``, ``iat`` and ``nbf``, in seconds.
        clock: seconds since the epoch; injected for tests.
    """

    def __init__(self, registry: EndpointRegistry, nonces: NonceStore, *, max_lifetime: int = 300, skew: int = 30,
                 clock: Callable[[], float] = time.time) -> None:
        if max_lifetime < 1 or skew < 0:
            raise ValueError("CDS JWT: max_lifetime must be at least 1 s and skew not negative")
        self.registry = registry
        self.nonces = nonces
        self.max_lifetime = max_lifetime
        self.skew = skew
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> CdsJwtVerifier:
        """A verifier over the home's registry and nonce store with the ``cds_hooks`` limits."""
        from access.endpoints import EndpointRegistry
        from access.signatures import NonceStore

        registry = EndpointRegistry.from_settings(settings, clock=lambda: datetime.fromtimestamp(clock(), UTC))
        return cls(registry, NonceStore.from_settings(settings, clock=clock),
                   max_lifetime=settings.cds_hooks.max_jwt_lifetime_seconds,
                   skew=settings.cds_hooks.clock_skew_seconds, clock=clock)

    def __repr__(self) -> str:
        return f"CdsJwtVerifier(registry={self.registry!r}, max_lifetime={self.max_lifetime})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("CdsJwtVerifier cannot be pickled; build one per process")

    def verify(self, authorization: str | None, *, audience: str | Sequence[str], client_ip: str | None = None,
               client_cert_sha256: str | None = None) -> VerifiedEhr:
        """Accept the ``Authorization`` header's JWT or raise :class:`CdsRejected`.

        Args:
            authorization: the header's value (None when absent).
            audience: the URL(s) this service answers at; the token's ``aud`` must hold one of them.
            client_ip: the peer address, checked against the endpoint's networks.
            client_cert_sha256: SHA-256 (hex) of the TLS client certificate, if any.
        """
        import jwt


        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CdsRejected("jwt_missing", "send Authorization: Bearer <JWT>")
        if len(token) > _MAX_TOKEN:
            raise CdsRejected("jwt_malformed", f"the JWT is longer than {_MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise CdsRejected("jwt_malformed", f"not a JWS compact token ({type(exc).__name__})") from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not kid or not isinstance(alg, str) or not alg:
            raise CdsRejected("jwt_malformed", "the JWT header must name kid and alg")
        now = self.clock()
        try:
            endpoint, key, public_key = self.registry.resolve(kid, at=datetime.fromtimestamp(now, UTC))
        except SignatureRejected as exc:
            raise CdsRejected(exc.code, exc.detail) from None
        expected = JWT_ALGORITHMS.get(key.alg)
        if expected is None or alg != expected:
            raise CdsRejected("jwt_invalid", f"key {kid} signs with {expected}, not {alg}")
        try:
            claims = jwt.decode(token, key=public_key, algorithms=[expected],
                                options={"verify_signature": True, "verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False, "verify_aud": False, "verify_iss": False,
                                         "require": []})
        except jwt.InvalidSignatureError:
            raise CdsRejected("jwt_invalid", "the signature does not verify with the endpoint's key") from None
        except jwt.PyJWTError as exc:
            raise CdsRejected("jwt_malformed", f"the JWT cannot be read ({type(exc).__name__})") from None
        if not isinstance(claims, dict) or any(name not in claims for name in _REQUIRED):
            raise CdsRejected("jwt_malformed", f"the JWT must carry the claims {', '.join(_REQUIRED)}")
        issuer, jti = claims["iss"], claims["jti"]
        if not isinstance(issuer, str) or not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise CdsRejected("jwt_malformed", f"iss must be a string and jti a string of 1 to {_MAX_JTI} characters")
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if issuer not in (endpoint.name, endpoint.endpoint_id):
            raise CdsRejected("jwt_issuer", f"iss must be {endpoint.name!r} (or {endpoint.endpoint_id})")
        self._check_audience(claims["aud"], audience)
        if exp - iat > self.max_lifetime or exp > now + self.max_lifetime + self.skew:
            raise CdsRejected("jwt_lifetime", f"exp may be at most {self.max_lifetime} s after iat and after now")
        if exp <= now - self.skew:
            raise CdsRejected("jwt_expired", "exp has passed")
        if iat > now + self.skew or ("nbf" in claims and _number(claims, "nbf") > now + self.skew):
            raise CdsRejected("jwt_expired", "iat or nbf is in the future")
        self._check_endpoint(endpoint, client_ip, client_cert_sha256)
        ttl = max(1.0, exp + self.skew - now + 1)
        claimed, retry_after = self.nonces.claim_and_count(NONCE_NAMESPACE, f"{endpoint.endpoint_id}:{jti}",
                                                           ttl_seconds=ttl, bucket=endpoint.endpoint_id,
                                                           rate_per_minute=endpoint.rate_per_minute)
        if not claimed:
            raise CdsRejected("jwt_replayed", "this jti was already used by the endpoint")
        if retry_after is not None:
            raise CdsRejected("rate_limited", f"more than {endpoint.rate_per_minute} requests per minute",
                              retry_after=retry_after)
        tenant = claims.get("tenant")
        return VerifiedEhr(endpoint=endpoint, keyid=kid, jti=jti, issued_at=iat, expires_at=exp,
                           tenant=tenant if isinstance(tenant, str) else None)

    @staticmethod
    def _check_audience(aud: Any, audience: str | Sequence[str]) -> None:
        accepted = {_norm(audience)} if isinstance(audience, str) else {_norm(a) for a in audience}
        given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        if given is None or not all(isinstance(a, str) for a in given):
            raise CdsRejected("jwt_malformed", "aud must be a string or a list of strings")
        if not accepted & {_norm(a) for a in given}:
            raise CdsRejected("jwt_audience", "aud does not name this service's URL")

    @staticmethod
    def _check_endpoint(endpoint: Endpoint, client_ip: str | None, client_cert_sha256: str | None) -> None:
        if not endpoint.allows(OPERATION):
            raise CdsRejected("operation_forbidden", f"endpoint {endpoint.name} may not call CDS services")
        if not endpoint.allows_ip(client_ip):
            raise CdsRejected("network_forbidden", f"endpoint {endpoint.name} may not call from this address")
        if endpoint.client_cert_sha256 is not None:
            presented = (client_cert_sha256 or "").lower().replace(":", "")
            if not hmac.compare_digest(presented, endpoint.client_cert_sha256):
                raise CdsRejected("client_certificate_mismatch", f"endpoint {endpoint.name} must present its "
                                  "registered client certificate")
