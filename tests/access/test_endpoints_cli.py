"""``medguard endpoints …``: keygen, register, list/show, suspend/resume/revoke, rotate-key, and ``call`` against a
real HTTP server that verifies the signature; refusals are one line on stderr with exit status 1; changes audited."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID

from access.signatures import RequestVerifier, SignatureRejected
from pipeline.settings import load_settings
from storage_security.keys.keyring import LocalKeyring, encode_master_key

pytestmark = pytest.mark.e2e  # every test runs the medguard command

MEDGUARD = str(Path(sys.executable).with_name("medguard"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("endpoints-cli-home")
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(home / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master)}
    return home, env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDGUARD, "endpoints", *args], capture_output=True, text=True, timeout=300, env=env,
                          check=False)


def _ok(done: subprocess.CompletedProcess[str]):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _one_line_error(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medguard: error:") and fragment in lines[0], done.stderr


class _Server:
    """A stdlib HTTP server that answers 200 with the endpoint's name when a request verifies, else the refusal;
    with ``tls`` (an ``ssl.SSLContext``) it serves HTTPS and passes the client certificate's SHA-256 on."""

    def __init__(self, verifier: RequestVerifier, tls: ssl.SSLContext | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = f"{'https' if tls else 'http'}://{self.headers['Host']}{self.path}"
                peer = self.connection.getpeercert(binary_form=True) if tls else None
                try:
                    verified = verifier.verify(method=self.command, url=url, headers=dict(self.headers.items()),
                                               body=body, operation="diagnose", client_ip=self.client_address[0],
                                               client_cert_sha256=hashlib.sha256(peer).hexdigest() if peer else None)
                    status, payload = 200, {"endpoint": verified.endpoint.name, "bytes": len(body)}
                except SignatureRejected as refused:
                    status, payload = refused.status, {"code": refused.code}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.http.socket = tls.wrap_socket(self.http.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        outer.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_when_help_is_asked_then_every_endpoints_command_describes_itself():
    done = subprocess.run([MEDGUARD, "endpoints", "--help"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0
    for command in ("keygen", "register", "list", "show", "suspend", "resume", "revoke", "rotate-key", "call"):
        assert command in done.stdout


def test_when_an_endpoint_is_registered_and_called_then_its_lifecycle_is_enforced_and_audited(home, tmp_path):
    home_dir, env = home
    keys = _ok(_run(env, "keygen", "--out", str(tmp_path / "keys"), "--name", "ward7", "--json"))
    _one_line_error(_run(env, "register", "ward7", "--public-key", keys["private_key"]), "PRIVATE key")
    registered = _ok(_run(env, "register", "ward7", "--public-key", keys["public_key"], "--operations",
                          "diagnose,models.read", "--network", "127.0.0.0/8", "--rate-limit", "100", "--json"))
    keyid = registered["keyid"]
    assert keyid.startswith("ward7-") and registered["endpoint_id"].startswith("ep_")
    assert registered["operations"] == ["diagnose", "models.read"] and registered["networks"] == ["127.0.0.0/8"]
    _one_line_error(_run(env, "register", "ward7", "--public-key", keys["public_key"]), "exists already")
    assert [e["name"] for e in _ok(_run(env, "list", "--json"))] == ["ward7"]

    server = _Server(RequestVerifier.from_settings(load_settings(home=home_dir)))
    try:
        call = ["call", "POST", f"{server.url}/v1/diagnoses", "--keyid", keyid, "--private-key", keys["private_key"]]
        answered = _ok(_run(env, *call, "--data", '{"encounters": []}', "--json"))
        assert answered == {"status": 200, "body": {"endpoint": "ward7", "bytes": 18}}
        (tmp_path / "body.json").write_text('{"encounters": [{"age": 70}]}')
        assert _ok(_run(env, *call, "--data", f"@{tmp_path / 'body.json'}", "--json"))["status"] == 200

        assert _ok(_run(env, "suspend", "ward7", "--json"))["status"] == "suspended"
        refused = _run(env, *call)
        _one_line_error(refused, "HTTP 403: endpoint_suspended")
        assert refused.stdout.startswith("HTTP 403")
        _ok(_run(env, "resume", "ward7", "--json"))

        new_keys = _ok(_run(env, "keygen", "--out", str(tmp_path / "keys"), "--name", "ward7-b", "--alg",
                            "ecdsa-p256", "--json"))
        rotated = _ok(_run(env, "rotate-key", "ward7", "--public-key", new_keys["public_key"], "--overlap-hours",
                           "0", "--json"))
        _one_line_error(_run(env, *call), "HTTP 401: key_expired")
        new_call = ["call", "GET", f"{server.url}/v1/models", "--keyid", rotated["keyid"], "--private-key",
                    new_keys["private_key"], "--json"]
        assert _ok(_run(env, *new_call))["status"] == 200

        _ok(_run(env, "revoke", "ward7", "--json"))
        _one_line_error(_run(env, *new_call), "HTTP 403: endpoint_revoked")
        _one_line_error(_run(env, "resume", "ward7"), "revoked")
    finally:
        server.close()
    shown = _ok(_run(env, "show", "ward7", "--json"))
    assert shown["status"] == "revoked" and [k["keyid"] for k in shown["keys"]] == [keyid, rotated["keyid"]]

    audit = subprocess.run([MEDGUARD, "audit", "verify"], capture_output=True, text=True, timeout=300, env=env,
                           check=False)
    assert audit.returncode == 0, audit.stderr
    from pipeline.lake import Lake

    events = sorted((e for e in Lake(load_settings(home=home_dir, key_provider="keyring")).read_arrow("audit", "events")
                     .to_pylist() if (e["reason"] or "").startswith("endpoint_")), key=lambda e: e["seq"])
    assert [json.loads(e["details"])["operation"] for e in events] == [
        "endpoint_register", "endpoint_suspend", "endpoint_resume", "endpoint_rotate_key", "endpoint_revoke"]
    assert all(e["principal"].startswith("operator:") for e in events)
    assert "BEGIN PUBLIC KEY" not in json.dumps(events, default=str)


def test_when_a_key_is_of_the_wrong_kind_then_register_names_the_accepted_kinds(home, tmp_path):
    _, env = home
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "rsa.pub").write_bytes(pem)
    _one_line_error(_run(env, "register", "legacy", "--public-key", str(tmp_path / "rsa.pub")),
                    "RSA keys are not accepted; use Ed25519 or ECDSA P-256")
    _one_line_error(_run(env, "show", "nobody"), "unknown endpoint")


def test_when_the_server_cannot_be_reached_then_call_fails_in_one_line(home, tmp_path):
    _, env = home
    keys = _ok(_run(env, "keygen", "--out", str(tmp_path), "--json"))
    _one_line_error(_run(env, "call", "GET", "http://127.0.0.1:9/v1/models", "--keyid", "x-0000000000000000",
                         "--private-key", keys["private_key"]), "GET http://127.0.0.1:9/v1/models")


def _certificate(folder: Path, name: str, *, server: bool) -> tuple[Path, Path, str]:
    """A self-signed certificate (for 127.0.0.1 when ``server``) and its key; returns paths and the DER SHA-256."""
    from datetime import UTC, datetime, timedelta

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.pem"
    cert_path.write_bytes(certificate.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path, hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def test_when_an_endpoint_is_bound_to_a_client_certificate_then_call_over_mtls_needs_that_certificate(home,
                                                                                                     tmp_path):
    home_dir, env = home
    server_cert, server_key, _ = _certificate(tmp_path, "server", server=True)
    good_cert, good_key, _ = _certificate(tmp_path, "bedside", server=False)
    other_cert, other_key, _ = _certificate(tmp_path, "other", server=False)
    keys = _ok(_run(env, "keygen", "--out", str(tmp_path / "keys"), "--name", "bedside", "--json"))
    keyid = _ok(_run(env, "register", "bedside", "--public-key", keys["public_key"], "--client-cert",
                     str(good_cert), "--json"))["keyid"]
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server_cert, server_key)
    tls.verify_mode = ssl.CERT_REQUIRED
    for ca in (good_cert, other_cert):
        tls.load_verify_locations(ca)
    server = _Server(RequestVerifier.from_settings(load_settings(home=home_dir)), tls=tls)
    try:
        call = ["call", "POST", f"{server.url}/v1/diagnoses", "--keyid", keyid, "--private-key", keys["private_key"],
                "--data", "{}", "--cacert", str(server_cert)]
        answered = _ok(_run(env, *call, "--cert", str(good_cert), "--key", str(good_key), "--json"))
        assert answered == {"status": 200, "body": {"endpoint": "bedside", "bytes": 2}}
        _one_line_error(_run(env, *call, "--cert", str(other_cert), "--key", str(other_key)),
                        "HTTP 403: client_certificate_mismatch")
        _one_line_error(_run(env, *call, "--cert", str(good_cert)), "both --cert and --key")
    finally:
        server.close()
