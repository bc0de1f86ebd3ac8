"""``medguard serve`` over HTTPS with mutual TLS: the client certificate is bound to its endpoint, HSTS is sent, and
a client without a certificate from the CA never reaches the application."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from access.client import SignedClient
from access.endpoints import EndpointRegistry
from tests.access._signing import key_pair
from tests.access.api.conftest import Server, make_world

pytestmark = pytest.mark.integration  # talks to a medguard serve subprocess


def _cert(path: Path, name: str, issuer: tuple[Any, x509.Name] | None, *, ca: bool = False,
          ip: str | None = None) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer if issuer else (key, subject)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return key, cert


def _client_context(root: Path) -> ssl.SSLContext:
    # httpx 0.28 ignores ``cert=`` beside a CA-bundle path ``verify=``: the client certificate goes in the context.
    context = ssl.create_default_context(cafile=str(root / "ca.crt"))
    context.load_cert_chain(str(root / "client.crt"), str(root / "client.key"))
    return context


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("api-mtls")
    world = make_world(root, model=True)
    ca_key, ca = _cert(root / "ca", "medguard test CA", None, ca=True)
    _cert(root / "server", "127.0.0.1", (ca_key, ca.subject), ip="127.0.0.1")
    _, client_cert = _cert(root / "client", "ward7-device", (ca_key, ca.subject))
    keys = key_pair()
    bound = EndpointRegistry(world.settings.home / "access" / "endpoints.json").register(
        "device", keys.public_pem, operator="tester",
        client_cert_sha256=hashlib.sha256(client_cert.public_bytes(serialization.Encoding.DER)).hexdigest())
    world.keys["device"] = (keys, bound.keys[0].keyid)
    world.env.update(MEDGUARD_API__TLS_CERT=str(root / "server.crt"), MEDGUARD_API__TLS_KEY=str(root / "server.key"),
                     MEDGUARD_API__TLS_CLIENT_CA=str(root / "ca.crt"))
    server = Server(world, base_scheme="https", verify=_client_context(root))
    yield world, server, root
    server.stop()


def test_when_the_endpoint_presents_its_bound_certificate_then_the_signed_call_succeeds_with_hsts(mtls):
    world, server, root = mtls
    keys, keyid = world.keys["device"]
    with SignedClient(server.base, keyid, keys.private_pem, verify=_client_context(root)) as client:
        response = client.get("/v1/models/current")
    assert response.status_code == 200, response.text
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["cache-control"] == "no-store"


def test_when_an_endpoint_bound_to_another_certificate_calls_then_it_is_refused(mtls):
    world, server, root = mtls
    keys, keyid = world.keys["pinned"]
    with SignedClient(server.base, keyid, keys.private_pem, verify=_client_context(root)) as client:
        response = client.get("/v1/models/current")
    assert response.status_code == 403 and response.json()["code"] == "client_certificate_mismatch"


def test_when_a_client_has_no_certificate_then_the_tls_handshake_refuses_it(mtls):
    _, server, root = mtls
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base}/healthz", verify=str(root / "ca.crt"), timeout=10)
