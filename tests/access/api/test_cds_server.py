"""A CDS Hooks round trip through the real server: ``medguard serve`` (uvicorn) on 127.0.0.1 in a subprocess.

An EHR registered as an endpoint with the operation ``cds`` calls discovery, then ``patient-view`` with a prefetch
of the official FHIR R4 examples and a JWT signed by its registered key, and gets cards (with a RiskAssessment
that ``fhir.resources`` accepts); the same JWT again is refused, and so are the tokens an attacker or a
misconfigured EHR would send: another audience, expired, a lifetime over five minutes, an unknown kid, another
algorithm, a revoked endpoint.
"""

from __future__ import annotations

import time

import httpx
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from access.endpoints import EndpointRegistry
from tests.access._signing import key_pair
from tests.access.api import _cds
from tests.access.api.conftest import Server, make_world

pytestmark = pytest.mark.integration  # a medguard serve subprocess

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def ehr_served(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("cds-served"), model=True)
    registry = EndpointRegistry(world.settings.home / "access" / "endpoints.json")
    keys = {name: key_pair(alg) for name, alg in (("ehr", "ed25519"), ("ehr-ec", "ecdsa-p256"),
                                                  ("ehr-gone", "ed25519"))}
    kids = {name: registry.register(name, k.public_pem, operations=("cds",), operator="tester").keys[0].keyid
            for name, k in keys.items()}
    registry.revoke("ehr-gone", operator="tester")
    server = Server(world)
    yield server, keys, kids
    server.stop()


def _call(server, token: str | None, body=None, service="medguard-risk") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.base}/cds-services/{service}", json=body or _cds.hook_request(risk=True),
                      headers=headers, timeout=60)


def _token(server, keys, kids, name="ehr", *, alg=None, key=None, kid=None, **kw):
    kw.setdefault("aud", f"{server.base}/cds-services/medguard-risk")
    kw.setdefault("now", time.time())
    return _cds.token(key or keys[name].private, kid or kids[name], alg=alg or ("ES256" if name == "ehr-ec"
                                                                                   else "EdDSA"), iss=name, **kw)


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM and response.json()["code"] == code


def test_when_an_ehr_runs_a_patient_view_round_trip_then_it_gets_cards_and_its_replay_is_refused(ehr_served):
    server, keys, kids = ehr_served
    discovery = httpx.get(f"{server.base}/cds-services", timeout=30)
    assert discovery.status_code == 200
    (service,) = discovery.json()["services"]
    assert service["hook"] == "patient-view" and "obs-4548-4" in service["prefetch"]

    token = _token(server, keys, kids)
    started = time.perf_counter()
    response = _call(server, token, service=service["id"])
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and "server" not in response.headers
    (card,) = response.json()["cards"]
    assert card["summary"].startswith("Risk of t2d within 1y") and card["indicator"] in {"info", "warning",
                                                                                          "critical"}
    resource = RiskAssessment.model_validate(card["suggestions"][0]["actions"][0]["resource"])
    assert resource.subject.reference == "Patient/example"
    assert float(resource.prediction[0].probabilityDecimal) == pytest.approx(
        float(card["detail"].split("**Probability:** ")[1].split(" %")[0]) / 100, abs=0.001)
    assert elapsed < 30

    _problem(_call(server, token), 401, "jwt_replayed")
    # A P-256 EHR is answered too.
    assert _call(server, _token(server, keys, kids, "ehr-ec")).status_code == 200


@pytest.mark.parametrize(("case", "status", "code"), [
    ("wrong_aud", 401, "jwt_audience"), ("expired", 401, "jwt_expired"), ("lifetime", 401, "jwt_lifetime"),
    ("unknown_kid", 401, "endpoint_unknown"), ("wrong_alg", 401, "jwt_invalid"), ("revoked", 403, "endpoint_revoked"),
    ("missing", 401, "jwt_missing")])
def test_when_the_jwt_is_not_acceptable_then_the_server_refuses_it_with_its_code(ehr_served, case, status, code):
    server, keys, kids = ehr_served
    token = {
        "wrong_aud": lambda: _token(server, keys, kids, aud=f"{server.base}/cds-services/another"),
        "expired": lambda: _token(server, keys, kids, now=time.time() - 600),
        "lifetime": lambda: _token(server, keys, kids, lifetime=600),
        "unknown_kid": lambda: _token(server, keys, kids, key=key_pair().private, kid="stranger-00112233aabbccdd"),
        # The EHR's P-256 key's kid on a token signed with EdDSA by its Ed25519 twin: not the key's algorithm.
        "wrong_alg": lambda: _token(server, keys, kids, "ehr-ec", alg="EdDSA", key=keys["ehr"].private),
        "revoked": lambda: _token(server, keys, kids, "ehr-gone"),
        "missing": lambda: None,
    }[case]()
    _problem(_call(server, token), status, code)
