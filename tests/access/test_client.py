"""The signing client: its requests pass a verifier behind a real HTTP stack (WSGI in-process), and keys stay safe."""

from __future__ import annotations

import json
import pickle
import stat

import httpx
import pytest

from access.client import SignedClient, generate_key_pair, load_private_key, sign_request
from access.endpoints import EndpointRegistry
from access.signatures import NonceStore, RequestVerifier, SignatureRejected


def _app(verify: RequestVerifier):
    """A WSGI app answering what the verifier decided, the way a served front would."""

    def app(environ, start_response):
        url = (f"{environ['wsgi.url_scheme']}://{environ['HTTP_HOST']}{environ['PATH_INFO']}"
               + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else ""))
        headers = {key[5:].replace("_", "-"): value for key, value in environ.items() if key.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            verified = verify.verify(method=environ["REQUEST_METHOD"], url=url, headers=headers, body=body,
                                     operation="diagnose")
            status, payload = "200 OK", {"endpoint": verified.endpoint.name, "echo": json.loads(body or b"null")}
        except SignatureRejected as refused:
            status, payload = f"{refused.status} Refused", {"code": refused.code}
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(payload).encode()]

    return app


@pytest.fixture
def served(tmp_path):
    private_path, public_path = generate_key_pair(tmp_path / "keys", alg="ecdsa-p256", name="ward7")
    registry = EndpointRegistry(tmp_path / "endpoints.json")
    endpoint = registry.register("ward7", public_path.read_text(), operator="t")
    verify = RequestVerifier(registry, NonceStore(tmp_path / "requests.sqlite3"))
    return endpoint.keys[0].keyid, private_path.read_bytes(), httpx.WSGITransport(app=_app(verify))


def test_when_the_client_posts_json_then_the_server_verifies_it_as_the_endpoint(served):
    keyid, private_pem, transport = served
    with SignedClient("https://api.example.org:8443", keyid, private_pem, transport=transport) as client:
        answer = client.post("/v1/diagnoses?model=t2d", json={"encounters": [{"age": 61, "name": "Zoë"}]})
        again = client.get("/v1/models")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"endpoint": "ward7", "echo": {"encounters": [{"age": 61, "name": "Zoë"}]}}
    assert again.status_code == 200 and again.json()["endpoint"] == "ward7"


def test_when_a_signed_request_is_sent_twice_then_the_second_is_a_replay(served):
    keyid, private_pem, transport = served
    url = "https://api.example.org/v1/diagnoses"
    headers = sign_request("POST", url, {"Content-Type": "application/json"}, b"{}", keyid=keyid,
                           private_key=private_pem)
    with httpx.Client(transport=transport) as plain:
        first = plain.post(url, headers=headers, content=b"{}")
        second = plain.post(url, headers=headers, content=b"{}")
    assert (first.status_code, second.status_code) == (200, 401)
    assert second.json() == {"code": "nonce_replayed"}


def test_when_the_client_signs_with_a_key_not_registered_then_the_server_refuses(served, tmp_path):
    keyid, _, transport = served
    other, _ = generate_key_pair(tmp_path / "other")
    with SignedClient("https://api.example.org", keyid, other.read_bytes(), transport=transport) as client:
        answer = client.post("/v1/diagnoses", json={})
    assert answer.status_code == 401 and answer.json() == {"code": "signature_invalid"}


def test_when_keys_are_generated_then_the_private_one_is_0600_and_never_overwritten(tmp_path):
    private_path, public_path = generate_key_pair(tmp_path / "k")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert load_private_key(private_path.read_bytes())[1] == "ed25519"
    assert public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(FileExistsError, match="not overwriting"):
        generate_key_pair(tmp_path / "k")
    with pytest.raises(ValueError, match="choose ed25519 or ecdsa-p256"):
        generate_key_pair(tmp_path / "r", alg="rsa")


def test_when_a_client_is_shown_or_pickled_then_its_key_stays_hidden(served):
    keyid, private_pem, _ = served
    client = SignedClient("https://api.example.org", keyid, private_pem)
    assert "redacted" in repr(client) and "PRIVATE" not in repr(client)
    with pytest.raises(TypeError, match="private key"):
        pickle.dumps(client)
    client.close()


def test_when_a_body_has_no_content_type_then_signing_refuses(served):
    keyid, private_pem, _ = served
    with pytest.raises(ValueError, match="Content-Type"):
        sign_request("POST", "https://x.example/v1", {}, b"{}", keyid=keyid, private_key=private_pem)
    with pytest.raises(ValueError, match="does not match the private key"):
        sign_request("GET", "https://x.example/v1", {}, b"", keyid=keyid, private_key=private_pem, alg="ed25519")
