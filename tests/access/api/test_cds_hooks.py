"""The CDS Hooks routes in-process (the FastAPI app with its middleware, a real signed model, a real registry):
discovery, a patient-view call answered with cards, each refusal's status and code, JWT before body, one audit
event per call without patient data."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.riskassessment import RiskAssessment

from access.api.app import create_app
from access.api.cds_auth import CdsJwtVerifier
from access.api.scoring import DiagnosisService
from access.api.security import AuditSpool
from access.endpoints import EndpointRegistry
from access.signatures import NonceStore
from pipeline.settings import load_settings
from storage_security.keys.keyring import LocalKeyring
from tests.access._signing import key_pair
from tests.access.api import _cds
from tests.access.api._model import register_model

pytestmark = pytest.mark.integration  # a signed model is trained and registered for the module

URL = "http://testserver/cds-services/medguard-risk"
PROBLEM = "application/problem+json"


class Home:
    def __init__(self, root):
        self.ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
        self.ring.ensure_key("medguard-kek")
        self.ring.ensure_key("medguard-audit")
        self.settings = load_settings(home=root, key_provider="keyring", keyring={"path": self.ring.path})
        self.registry = EndpointRegistry(root / "access" / "endpoints.json")
        self.keys = key_pair("ed25519")
        self.ehr = self.registry.register("ehr", self.keys.public_pem, operations=("cds",), operator="t")
        self.spool = AuditSpool(root / "access" / "spool.sqlite", None)

    def client(self, **cds) -> TestClient:
        settings = self.settings.model_copy(update={"cds_hooks": self.settings.cds_hooks.model_copy(update=cds)})
        app = create_app(settings, service=DiagnosisService(settings, provider=self.ring), spool=self.spool)
        app.state.cds_verifier = CdsJwtVerifier(self.registry, NonceStore.from_settings(settings))
        return TestClient(app)

    def bearer(self, aud: str = URL, **claims) -> dict[str, str]:
        t = _cds.token(self.keys.private, self.ehr.keys[0].keyid, iss="ehr", aud=aud, now=time.time(), **claims)
        return {"Authorization": f"Bearer {t}"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = Home(tmp_path_factory.mktemp("cds-home"))
    register_model(h.settings, h.ring)
    return h


@pytest.fixture(scope="module")
def client(home):
    with home.client() as c:
        yield c


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["type"] == f"urn:medguard:problem:{code}"
    return body


def test_when_an_ehr_asks_for_discovery_then_it_gets_the_patient_view_service_and_its_prefetch(client):
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    (service,) = response.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == "medguard-risk"
    assert service["title"] and service["description"]
    assert set(service["prefetch"]) == {"patient", "conditions", *_cds.OBSERVATION_KEYS}
    assert service["prefetch"]["obs-4548-4"] == ("Observation?patient={{context.patientId}}&code=http://loinc.org|"
                                                 "4548-4&_sort=-date&_count=20")
    assert _cds.RISK_EXTENSION in service["extension"]


def test_when_the_home_has_no_model_then_discovery_lists_no_service(tmp_path):
    with Home(tmp_path).client() as bare:
        assert bare.get("/cds-services").json() == {"services": []}


def test_when_a_patient_view_call_carries_the_official_examples_then_a_card_comes_back(home, client):
    response = client.post("/cds-services/medguard-risk", json=_cds.hook_request(risk=True), headers=home.bearer())
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["indicator"] in {"info", "warning", "critical"} and len(card["summary"]) < 140
    assert card["source"]["label"] == "medguard · outcomes__t2d_within_1y v1"
    detail = card["detail"]
    assert "**Probability:**" in detail and "Systolic blood pressure (LOINC 8480-6): 107" in detail
    assert "LOINC 15074-8 is not an input of the model" in detail  # the blood glucose example, reported
    resource = RiskAssessment.model_validate(card["suggestions"][0]["actions"][0]["resource"])
    assert resource.subject.reference == "Patient/example" and resource.status == "final"
    assert 0 <= float(resource.prediction[0].probabilityDecimal) <= 1
    assert "Observation/blood-pressure" in [b.reference for b in resource.basis]


def test_when_no_risk_assessment_is_asked_then_the_card_has_no_suggestion(home, client):
    response = client.post("/cds-services/medguard-risk", json=_cds.hook_request(), headers=home.bearer())
    assert response.status_code == 200 and "suggestions" not in response.json()["cards"][0]


def test_when_the_same_jwt_comes_again_then_it_is_refused_as_replayed(home, client):
    headers = home.bearer()
    assert client.post("/cds-services/medguard-risk", json=_cds.hook_request(), headers=headers).status_code == 200
    replay = client.post("/cds-services/medguard-risk", json=_cds.hook_request(), headers=headers)
    body = _problem(replay, 401, "jwt_replayed")
    assert body["detail"] == body["title"] and replay.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_when_no_jwt_is_sent_then_401_comes_before_the_body_is_read(client):
    response = client.post("/cds-services/medguard-risk", content=b"{not json", headers={"Content-Type": "text/plain"})
    _problem(response, 401, "jwt_missing")
    assert response.headers["www-authenticate"] == "Bearer"


def test_when_the_jwt_names_another_service_url_then_jwt_audience(home, client):
    response = client.post("/cds-services/medguard-risk", json=_cds.hook_request(),
                           headers=home.bearer(aud="http://testserver/cds-services/other"))
    _problem(response, 401, "jwt_audience")


def test_when_the_service_id_is_unknown_then_404(home, client):
    other = "http://testserver/cds-services/other"
    _problem(client.post("/cds-services/other", json=_cds.hook_request(), headers=home.bearer(aud=other)), 404,
             "service_unknown")


def test_when_the_hook_is_not_patient_view_then_400_hook_unsupported(home, client):
    _problem(client.post("/cds-services/medguard-risk", json=_cds.hook_request(hook="order-sign"),
                         headers=home.bearer()), 400, "hook_unsupported")


def test_when_the_request_lacks_the_patient_id_then_400_naming_the_field(home, client):
    body = _problem(client.post("/cds-services/medguard-risk", json=_cds.hook_request(context={"userId": "x"}),
                                headers=home.bearer()), 400, "request_invalid")
    assert body["field"] == "context.patientId"
    _problem(client.post("/cds-services/medguard-risk", content=b"[1,2", headers={**home.bearer(),
             "Content-Type": "application/json"}), 400, "request_invalid")


def test_when_prefetch_is_missing_then_412_prefetch_missing(home, client):
    body = _problem(client.post("/cds-services/medguard-risk", json=_cds.hook_request(prefetch=None),
                                headers=home.bearer()), 412, "prefetch_missing")
    assert body["field"] == "prefetch.patient"
    request = _cds.hook_request()
    del request["prefetch"]["obs-4548-4"]
    _problem(client.post("/cds-services/medguard-risk", json=request, headers=home.bearer()), 412, "prefetch_missing")


def test_when_a_prefetch_resource_is_about_another_patient_then_400_prefetch_invalid(home, client):
    request = _cds.hook_request()
    request["context"]["patientId"] = "someone-else"
    body = _problem(client.post("/cds-services/medguard-risk", json=request, headers=home.bearer()), 400,
                    "prefetch_invalid")
    assert body["field"] == "prefetch.patient.id"


def test_when_a_value_breaks_a_hard_limit_then_422_names_its_place_in_the_prefetch(home, client):
    request = _cds.hook_request()
    bp = request["prefetch"]["obs-85354-9"]["entry"][0]["resource"]
    bp["component"][0]["valueQuantity"]["value"] = 400
    body = _problem(client.post("/cds-services/medguard-risk", json=request, headers=home.bearer()), 422,
                    "payload_invalid")
    assert body["field"] == "prefetch.obs-85354-9.entry[0].resource.component[0].valueQuantity.value"
    assert "400" not in body["detail"]


def test_when_the_body_is_not_json_or_too_large_then_415_or_413(home, tmp_path):
    with home.client(max_body_bytes=1 << 16) as small:
        _problem(small.post("/cds-services/medguard-risk", content=b"x", headers={**home.bearer(),
                 "Content-Type": "text/plain"}), 415, "unsupported_media_type")
        big = _cds.hook_request()
        big["extension"] = {"padding": "x" * (1 << 17)}
        _problem(small.post("/cds-services/medguard-risk", json=big, headers=home.bearer()), 413, "payload_too_large")


def test_when_discovery_requires_a_jwt_then_it_is_refused_without_one(home):
    with home.client(discovery_requires_jwt=True) as strict:
        _problem(strict.get("/cds-services"), 401, "jwt_missing")
        ok = strict.get("/cds-services", headers=home.bearer(aud="http://testserver/cds-services"))
        assert ok.status_code == 200 and ok.json()["services"]


def test_when_a_service_url_is_set_then_the_aud_must_be_it_not_the_host_the_request_named(home):
    with home.client(service_url="https://cds.hospital.example/") as fixed:
        _problem(fixed.post("/cds-services/medguard-risk", json=_cds.hook_request(), headers=home.bearer()), 401,
                 "jwt_audience")
        ok = fixed.post("/cds-services/medguard-risk", json=_cds.hook_request(),
                        headers=home.bearer(aud="https://cds.hospital.example/cds-services/medguard-risk"))
        assert ok.status_code == 200, ok.text


def test_when_calls_are_served_then_each_is_one_audit_event_without_patient_data(home, client):
    db = sqlite3.connect(home.spool.path)
    before = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert client.post("/cds-services/medguard-risk", json=_cds.hook_request(), headers=home.bearer()).status_code \
        == 200
    client.post("/cds-services/medguard-risk", json=_cds.hook_request())  # refused: no JWT
    rows = [json.loads(r[0]) for r in db.execute("SELECT event FROM events ORDER BY id").fetchall()[before:]]
    assert len(rows) == 2
    served, refused = rows
    assert served["principal"] == f"endpoint:{home.ehr.endpoint_id}" and served["decision"] == "allow"
    assert served["details"]["front"] == "cds" and served["details"]["cards"] == 1
    assert served["details"]["service"] == "medguard-risk" and served["details"]["status"] == 200
    assert refused["decision"] == "deny" and refused["details"]["code"] == "jwt_missing"
    text = json.dumps(rows)
    assert "example" not in text.replace("medguard", "") and "1974" not in text and "8480-6" not in text


def test_when_the_ehr_sends_feedback_then_it_is_accepted_and_only_counted_in_the_audit(home, client):
    feedback = {"feedback": [
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "accepted", "outcomeTimestamp":
            "2026-11-30T12:00:00Z", "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}]},
        {"card": "6a1c1c2e-0000-4000-8000-000000000001", "outcome": "overridden", "outcomeTimestamp":
            "2026-11-30T12:01:00Z", "overrideReason": {"userComment": "patient declined"}}]}
    url = "http://testserver/cds-services/medguard-risk/feedback"
    db = sqlite3.connect(home.spool.path)
    before = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    response = client.post("/cds-services/medguard-risk/feedback", json=feedback, headers=home.bearer(aud=url))
    assert response.status_code == 200 and response.content == b""
    (event,) = [json.loads(r[0]) for r in db.execute("SELECT event FROM events ORDER BY id").fetchall()[before:]]
    assert event["details"]["feedback"] == 2 and event["details"]["accepted"] == 1
    assert event["details"]["overridden"] == 1 and "declined" not in json.dumps(event)
    _problem(client.post("/cds-services/medguard-risk/feedback", json=feedback), 401, "jwt_missing")
    _problem(client.post("/cds-services/medguard-risk/feedback", json={"feedback": [{"card": "x"}]},
                         headers=home.bearer(aud=url)), 400, "request_invalid")
