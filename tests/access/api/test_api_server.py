"""The HTTP front through the real server: ``medguard serve`` (uvicorn) on 127.0.0.1 in a subprocess.

One test per refusal code of the signature layer and the payload layer, each answered as RFC 9457 problem+json
with its stable code; a valid diagnosis signed by the third-party ``http-message-signatures`` package; the
"signature before anything else" order on a home with no model; hardening headers; one audit event per request.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
import requests
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

from access.client import SignedClient, sign_request
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog
from tests.access.api.conftest import ENCOUNTER

pytestmark = pytest.mark.integration  # every test talks to a medguard serve subprocess

PROBLEM = "application/problem+json"


def _send(server, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    return httpx.request(method, f"{server.base}{path}", headers=headers, content=body or None, timeout=30)


def _signed(world, server, name: str, method: str = "POST", path: str = "/v1/diagnoses", payload=ENCOUNTER, *,
            key=None, created: int | None = None, body: bytes | None = None) -> tuple[dict[str, str], bytes]:
    data = json.dumps(payload).encode() if payload is not None and method == "POST" else b""
    headers = {"Content-Type": "application/json"} if data else {}
    signed = sign_request(method, f"{server.base}{path}", headers, data, keyid=world.keyid(name),
                          private_key=key or world.private(name), created=created)
    return signed, data if body is None else body


def _problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"urn:medguard:problem:{code}" and body["title"] and body["detail"]
    return body


def test_when_a_third_party_rfc9421_library_signs_a_diagnosis_then_the_server_answers_it(served):
    world, server = served
    body = json.dumps({"encounters": [ENCOUNTER, {**ENCOUNTER, "encounter_ref": "enc-2"}]}).encode()
    prepared = requests.Request("POST", f"{server.base}/v1/diagnoses", data=body,
                                headers={"Content-Type": "application/json"}).prepare()
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=MappingKeyResolver(
        public_keys={}, private_keys={world.keyid("ward7"): world.private("ward7")})).sign(
        prepared, key_id=world.keyid("ward7"), created=datetime.now(UTC), nonce="third-party-1", include_alg=True,
        covered_component_ids=("@method", "@authority", "@path", "@query", "content-digest", "content-type"),
        body=body)
    response = requests.Session().send(prepared, timeout=30)
    assert response.status_code == 200, response.text
    diagnoses = response.json()["diagnoses"]
    assert [d["encounter_ref"] for d in diagnoses] == ["enc-1", "enc-2"]
    first = diagnoses[0]
    assert 0 <= first["probability"] <= 1 and first["flag"] == (first["probability"] >= first["threshold"])
    assert first["model"]["model_version"] == "outcomes__t2d_within_1y@v1"
    assert set(first["checks"]) == {"types", "codes", "units", "hard_limits", "plausibility", "training_profile"}
    assert response.headers["cache-control"] == "no-store" and "server" not in response.headers


def test_when_our_signed_client_asks_for_the_current_model_then_it_gets_it(served):
    world, server = served
    keys, keyid = world.keys["readonly"]
    with SignedClient(server.base, keyid, keys.private_pem) as client:
        response = client.get("/v1/models/current")
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "outcomes__t2d_within_1y@v1"
    assert "4548-4" in response.json()["observation_codes"]


@pytest.mark.parametrize(("case", "status", "code"), [
    ("signature_missing", 401, "signature_missing"),
    ("signature_malformed", 401, "signature_malformed"),
    ("endpoint_unknown", 401, "endpoint_unknown"),
    ("endpoint_suspended", 403, "endpoint_suspended"),
    ("endpoint_revoked", 403, "endpoint_revoked"),
    ("key_expired", 401, "key_expired"),
    ("signature_invalid", 401, "signature_invalid"),
    ("signature_expired", 401, "signature_expired"),
    ("signature_from_the_future", 401, "signature_expired"),
    ("digest_missing", 400, "digest_missing"),
    ("digest_mismatch", 400, "digest_mismatch"),
    ("operation_forbidden", 403, "operation_forbidden"),
    ("network_forbidden", 403, "network_forbidden"),
    ("client_certificate_mismatch", 403, "client_certificate_mismatch"),
])
def test_when_a_request_fails_a_signature_check_then_the_server_refuses_it_with_its_code(served, case, status, code):
    world, server = served
    name = {"endpoint_suspended": "paused", "endpoint_revoked": "gone", "key_expired": "rotated",
            "operation_forbidden": "readonly", "network_forbidden": "elsewhere",
            "client_certificate_mismatch": "pinned"}.get(case, "ward7")
    headers, body = _signed(world, server, name)
    if case == "signature_missing":
        headers = {"Content-Type": "application/json"}
    elif case == "signature_malformed":
        headers["Signature-Input"] = "sig1=(\"@method\";created=oops"
    elif case == "endpoint_unknown":
        headers, body = _signed(world, server, "ward7")
        headers["Signature-Input"] = headers["Signature-Input"].replace(world.keyid("ward7"), "nobody-0000000000000000")
    elif case == "signature_invalid":
        from tests.access._signing import key_pair

        headers, body = _signed(world, server, "ward7", key=key_pair().private)
    elif case == "signature_expired":
        headers, body = _signed(world, server, "ward7", created=int(time.time()) - 3600)
    elif case == "signature_from_the_future":
        headers, body = _signed(world, server, "ward7", created=int(time.time()) + 3600)
    elif case == "digest_missing":
        headers, _ = _signed(world, server, "ward7", method="GET", path="/v1/diagnoses")
        headers["Content-Type"] = "application/json"
    elif case == "digest_mismatch":
        body = body.replace(b"57", b"75")
    response = _send(server, "POST", "/v1/diagnoses", headers, body)
    problem = _problem(response, status, code)
    # The answer says the code's title, never which inner check or value failed.
    from access.signatures import REJECTIONS

    assert problem["detail"] == REJECTIONS[code][1]
    assert "57" not in response.text and "diagnoses" not in response.text


def test_when_the_same_signed_request_is_sent_twice_then_the_second_is_refused_as_a_replay(served):
    world, server = served
    headers, body = _signed(world, server, "ward7")
    assert _send(server, "POST", "/v1/diagnoses", headers, body).status_code == 200
    _problem(_send(server, "POST", "/v1/diagnoses", headers, body), 401, "nonce_replayed")


def test_when_an_endpoint_exceeds_its_rate_then_it_gets_429_with_retry_after(served):
    world, server = served
    answers = [_send(server, "GET", "/v1/models/current", _signed(world, server, "slow", "GET",
                                                                   "/v1/models/current")[0]) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    _problem(answers[2], 429, "rate_limited")
    assert int(answers[2].headers["retry-after"]) >= 1


@pytest.mark.parametrize(("payload", "field", "rule_words"), [
    ({"age": "old"}, "age", "number"),
    ({"age": 57, "observations": [{"code": "8480-6", "value": 400}]}, "encounters[0].observations[0].value",
     "hard limits"),
    ({"age": 57, "observations": [{"code": "8480-6", "value": 110}, {"code": "8462-4", "value": 120}]},
     "encounters[0].observations", "below systolic"),
    ({"age": 57, "observations": [{"code": "2345-7", "value": 6, "unit": "furlongs"}]},
     "encounters[0].observations[0].unit", "UCUM"),
    ({"age": 57, "observations": [{"code": "4548-5", "value": 6}]}, "encounters[0].observations[0].code",
     "check digit"),
    ({"age": 212}, "encounters[0].age", "years"),
    ({"age": 57, "conditions": [{"code": "not-a-code"}]}, "encounters[0].conditions[0].code", "ICD-10-CM"),
])
def test_when_a_signed_payload_fails_validation_then_422_names_the_field_not_the_value(served, payload, field,
                                                                                         rule_words):
    world, server = served
    headers, body = _signed(world, server, "ward7", payload=payload)
    problem = _problem(_send(server, "POST", "/v1/diagnoses", headers, body), 422, "payload_invalid")
    assert problem["field"] == field and rule_words in problem["detail"]
    for value in ("old", "400", "120", "furlongs", "212", "not-a-code"):
        assert value not in problem["detail"] or value in rule_words


def test_when_a_batch_is_larger_than_max_batch_then_it_is_refused(served):
    world, server = served
    headers, body = _signed(world, server, "ward7", payload={"encounters": [ENCOUNTER] * 101})
    problem = _problem(_send(server, "POST", "/v1/diagnoses", headers, body), 422, "payload_invalid")
    assert problem["field"] == "encounters"


def test_when_a_value_is_in_another_unit_then_it_is_converted_and_scores_the_same(served):
    world, server = served
    mg = {"age": 60, "observations": [{"code": "2345-7", "value": 126, "unit": "mg/dL"},
                                      {"code": "4548-4", "value": 6.5, "unit": "%"}]}
    mmol = {"age": 60, "observations": [{"code": "2345-7", "value": 126 / 18.016, "unit": "mmol/L"},
                                        {"code": "4548-4", "value": (6.5 - 2.152) / 0.09148, "unit": "mmol/mol"}]}
    answers = [_send(server, "POST", "/v1/diagnoses", *_signed(world, server, "ward7", payload=p)).json()
               for p in (mg, mmol)]
    assert answers[0]["diagnoses"][0]["probability"] == pytest.approx(answers[1]["diagnoses"][0]["probability"],
                                                                      abs=1e-4)


def test_when_health_and_readiness_are_asked_unsigned_then_they_answer(served):
    _, server = served
    assert httpx.get(f"{server.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base}/readyz")
    assert ready.status_code == 200 and ready.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in ready.headers  # plain HTTP: HSTS would be meaningless
    schema = httpx.get(f"{server.base}/openapi.json").json()
    assert {"/v1/diagnoses", "/v1/models/current", "/healthz", "/readyz"} <= set(schema["paths"])


def test_when_requests_were_served_then_each_is_one_audit_event_without_payload_values(served):
    world, server = served
    headers, body = _signed(world, server, "ward7")
    assert _send(server, "POST", "/v1/diagnoses", headers, body).status_code == 200
    _send(server, "POST", "/v1/diagnoses", headers, body)  # the replay: a refused request is an event too
    deadline = time.monotonic() + 60
    log = AuditLog(Lake(world.settings), world.ring)
    while time.monotonic() < deadline:
        requests_ = [r.to_dict() for r in log.events() if str(r.event.action) == "request"]
        nonces = [e for e in requests_ if (e.get("details") or {}).get("code") == "nonce_replayed"]
        if nonces:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the request events did not reach the audit log")
    accepted = [e for e in requests_ if e["decision"] == "allow" and e["details"].get("route") == "/v1/diagnoses"]
    assert accepted and accepted[-1]["principal"].startswith("endpoint:")
    assert accepted[-1]["details"]["operation"] == "diagnose" and accepted[-1]["details"]["encounters"] == 1
    allowed = {"front", "route", "method", "operation", "status", "code", "endpoint_id", "latency_ms", "encounters",
               "flagged", "model_version"}
    assert all(set(e["details"]) <= allowed for e in requests_)
    text = json.dumps(requests_)
    assert "R73.03" not in text and "enc-1" not in text and "4548-4" not in text


def test_when_the_home_has_no_model_then_a_signed_request_gets_503_and_its_replay_401(served_bare):
    world, server = served_bare
    headers, _ = _signed(world, server, "ward7", method="GET", path="/v1/models/current")
    _problem(_send(server, "GET", "/v1/models/current", headers), 503, "model_unavailable")
    _problem(_send(server, "GET", "/v1/models/current", headers), 401, "nonce_replayed")
    _problem(httpx.get(f"{server.base}/readyz"), 503, "not_ready")


def test_when_the_server_gets_sigterm_then_it_exits_cleanly(served_bare):
    _, server = served_bare
    assert server.stop() == 0
