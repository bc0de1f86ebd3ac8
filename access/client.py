"""A client that signs its requests the way the served fronts require (RFC 9421 + RFC 9530), for endpoints in Python.

:func:`sign_request` adds ``Content-Digest`` (when there is a body), ``Signature-Input`` and ``Signature`` to a
request's headers; :class:`SignedClient` is an ``httpx`` client that does so on every call. Any other RFC 9421
library works as well when it signs the same things (:data:`COVERED`): ``@method``, ``@target-uri``, and for a
request with a body ``content-digest`` and ``content-type``, with the parameters ``created``, ``keyid``,
``nonce`` (fresh per request) and ``alg``. :func:`generate_key_pair` makes a key pair for a new endpoint.
"""

from __future__ import annotations

import base64
import json as jsonlib
import os
import secrets
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from access.signatures import content_digest, signature_base

if TYPE_CHECKING:
    import httpx

__all__ = ["COVERED", "COVERED_WITH_BODY", "SignedClient", "generate_key_pair", "load_private_key", "sign_request"]

COVERED: tuple[str, ...] = ("@method", "@target-uri")
COVERED_WITH_BODY: tuple[str, ...] = (*COVERED, "content-digest", "content-type")
LABEL = "sig1"


def load_private_key(pem: bytes | str, password: bytes | None = None) -> tuple[Any, str]:
    """Parse a private key PEM and name its RFC 9421 algorithm (``ed25519`` or ``ecdsa-p256-sha256``).

    Raises:
        ValueError: not a private key PEM, or a key type other than Ed25519 or ECDSA P-256.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise ValueError("private key: not a PEM private key (or it needs a password)") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ecdsa-p256-sha256"
    raise ValueError("private key: only Ed25519 and ECDSA P-256 keys can sign for an endpoint")


def _sign(private_key: Any, alg: str, base: bytes) -> bytes:
    if alg == "ed25519":
        return private_key.sign(base)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(private_key.sign(base, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # RFC 9421 §3.3.4: r || s, not DER


def sign_request(method: str, url: str, headers: dict[str, str], body: bytes, *, keyid: str, private_key: Any,
                 alg: str | None = None, nonce: str | None = None, created: int | None = None,
                 expires: int | None = None) -> dict[str, str]:
    """``headers`` plus ``Content-Digest`` (when ``body`` is not empty), ``Signature-Input`` and ``Signature``.

    Args:
        url: the absolute URL the request goes to (the server checks the same one).
        headers: the request's other fields; a body needs ``Content-Type`` among them.
        private_key: a cryptography private key or PEM bytes.
        alg: the algorithm; default: the key's.
        nonce: default: 128 random bits.
        created: default: now (seconds since the epoch).

    Raises:
        ValueError: a body without a Content-Type, an unsupported key, or an alg that is not the key's.
    """
    if isinstance(private_key, (bytes, str)):
        private_key, key_alg = load_private_key(private_key)
    else:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key_alg = "ed25519" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "ecdsa-p256-sha256"
    alg = alg or key_alg
    if alg != key_alg:
        raise ValueError(f"alg {alg!r} does not match the private key ({key_alg})")
    out = {k: v for k, v in headers.items()
           if k.lower() not in ("signature", "signature-input", "content-digest")}
    lower = {k.lower(): v for k, v in out.items()}
    components: tuple[str, ...] = COVERED
    if body:
        if "content-type" not in lower:
            raise ValueError("a signed request with a body needs a Content-Type header")
        out["Content-Digest"] = content_digest(body)
        lower["content-digest"] = out["Content-Digest"]
        components = COVERED_WITH_BODY
    created = int(time.time()) if created is None else int(created)
    nonce = nonce or secrets.token_urlsafe(16)
    params = f";created={created}" + (f";expires={int(expires)}" if expires is not None else "") + \
        f';keyid="{keyid}";nonce="{nonce}";alg="{alg}"'
    inner = "(" + " ".join(f'"{c}"' for c in components) + ")" + params
    base = signature_base(list(components), inner, method=method.upper(), url=url,
                          headers={k: v.strip() for k, v in lower.items()})
    signature = base64.b64encode(_sign(private_key, alg, base)).decode()
    out["Signature-Input"] = f"{LABEL}={inner}"
    out["Signature"] = f"{LABEL}=:{signature}:"
    return out


def generate_key_pair(out_dir: Path, *, alg: str = "ed25519", name: str = "endpoint") -> tuple[Path, Path]:
    """Write a new key pair: ``<name>.key`` (private, PKCS#8 PEM, 0600) and ``<name>.pub`` (public, SPKI PEM).

    Raises:
        ValueError: an unknown algorithm.
        FileExistsError: either file exists already (never overwritten).
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    if alg in ("ed25519",):
        key: Any = ed25519.Ed25519PrivateKey.generate()
    elif alg in ("ecdsa-p256", "ecdsa-p256-sha256"):
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"key algorithm {alg!r}: choose ed25519 or ecdsa-p256")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists already; not overwriting a key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _tls_context(verify: bool | str | ssl.SSLContext, cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The TLS context: system CAs (True), a CA bundle file or folder (str), none (False); with a client certificate.

    Built here because httpx 0.28 drops ``cert`` when ``verify`` is a path.
    """
    import httpx

    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif isinstance(verify, str):
        context = ssl.create_default_context(**({"capath": verify} if os.path.isdir(verify) else {"cafile": verify}))
    else:
        context = httpx.create_ssl_context(verify=verify)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class SignedClient:
    """An ``httpx`` client signing every request as endpoint key ``keyid``.

    Args:
        base_url: e.g. ``https://medguard.example:8443``.
        private_key_pem: the endpoint's private key (PEM); it never leaves this process.
        alg: default: the key's algorithm.
        verify: TLS verification: True (system CAs), a CA bundle path, an ``ssl.SSLContext``, or False.
        cert: a client certificate for mTLS, ``(cert_path, key_path)``.
        transport: an httpx transport (tests pass an ASGI transport to call an app in-process).
    """

    def __init__(self, base_url: str, keyid: str, private_key_pem: bytes, *, alg: str | None = None,
                 verify: bool | str | ssl.SSLContext = True, cert: tuple[str, str] | None = None, timeout: float = 30,
                 transport: Any = None) -> None:
        import httpx

        self._key, key_alg = load_private_key(private_key_pem)
        self.keyid = keyid
        self.alg = alg or key_alg
        self.base_url = base_url.rstrip("/")
        kwargs: dict[str, Any] = {"verify": _tls_context(verify, cert), "timeout": timeout}
        if transport is not None:
            kwargs["transport"] = transport
        self._http = httpx.Client(**kwargs)

    def __repr__(self) -> str:
        return f"SignedClient(base_url={self.base_url!r}, keyid={self.keyid!r}, private_key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("SignedClient holds a private key and cannot be pickled")

    def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """Send a signed request to ``base_url + path`` (``path`` may also be an absolute URL)."""
        headers = dict(headers or {})
        body = content or b""
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            headers.setdefault("Content-Type", "application/json")
        import httpx

        # Sign the URL exactly as httpx will send it (it normalises percent-encoding and the like).
        url = str(httpx.URL(path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"))
        signed = sign_request(method.upper(), url, headers, body, keyid=self.keyid, private_key=self._key,
                              alg=self.alg)
        return self._http.request(method.upper(), url, headers=signed, content=body or None)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SignedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
