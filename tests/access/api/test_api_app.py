"""The application in process (Starlette's test client): the signature is checked before the body is parsed or
the model is touched, validation errors never echo input, and every response carries the hardening headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from access.api.app import create_app
from access.api.scoring import DiagnosisService
from access.client import sign_request
from access.endpoints import EndpointRegistry
from access.signatures import NonceStore, RequestVerifier
from pipeline.settings import load_settings
from tests.access._signing import key_pair
from tests.access.api._model import register_model

# Each test registers a signed model in a real lake (Delta audit commits): seconds, not milliseconds.
pytestmark = pytest.mark.integration

BASE = "http://testserver"


class Calls(DiagnosisService):
    """Counts what the routes ask of the service (the order test needs to see that nothing was asked)."""

    calls = 0

    def _model(self) -> Any:
        Calls.calls += 1
        return super()._model()


@pytest.fixture
def app(tmp_path: Path, keyring: Any) -> Any:
    settings = load_settings(home=tmp_path / "home", key_provider="keyring", keyring={"path": keyring.path})
    register_model(settings, keyring)
    keys = key_pair()
    registry = EndpointRegistry(tmp_path / "endpoints.json")
    keyid = registry.register("ward7", keys.public_pem, operator="tester").keys[0].keyid
    Calls.calls = 0
    application = create_app(settings, verifier=RequestVerifier(registry, NonceStore(tmp_path / "nonces.sqlite")),
                             service=Calls(settings, provider=keyring), audit=False)
    with TestClient(application, base_url=BASE) as client:
        yield client, keys, keyid


def _signed(keys: Any, keyid: str, body: bytes, **kwargs: Any) -> dict[str, str]:
    return sign_request("POST", f"{BASE}/v1/diagnoses", {"Content-Type": "application/json"}, body, keyid=keyid,
                        private_key=kwargs.get("key", keys.private))


def test_when_a_malformed_body_is_badly_signed_then_the_signature_is_refused_before_the_body_is_read(app):
    client, keys, keyid = app
    body = b'{"age": oops'
    wrong = _signed(keys, keyid, body, key=key_pair().private)
    response = client.post("/v1/diagnoses", content=body, headers=wrong)
    assert response.status_code == 401 and response.json()["code"] == "signature_invalid"
    unsigned = client.post("/v1/diagnoses", content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "signature_missing"
    assert Calls.calls == 0
    good = client.post("/v1/diagnoses", content=body, headers=_signed(keys, keyid, body))
    assert good.status_code == 422 and good.json()["field"] == "body"


def test_when_a_field_has_the_wrong_type_then_the_problem_names_it_without_echoing_the_input(app):
    client, keys, keyid = app
    body = json.dumps({"age": "secret-value-17", "observations": [{"code": "4548-4", "value": "high"}]}).encode()
    response = client.post("/v1/diagnoses", content=body, headers=_signed(keys, keyid, body))
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == "age"
    assert "secret-value-17" not in response.text and "high" not in response.text


def test_when_any_route_answers_then_it_is_not_cacheable_and_has_no_server_banner(app):
    client, keys, keyid = app
    body = json.dumps({"age": 50}).encode()
    for response in (client.get("/healthz"), client.get("/readyz"), client.get("/nope"),
                     client.post("/v1/diagnoses", content=body, headers=_signed(keys, keyid, body)),
                     client.get("/v1/unknown")):
        assert response.headers["cache-control"] == "no-store", response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers
