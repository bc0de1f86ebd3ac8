"""``POST /v1/query`` in-process: signed by a registered endpoint, a Bearer token of its principal, the gateway's
rows as JSON, CSV and Arrow with what was withheld, refusals as problem+json."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from access.api.app import create_app
from access.client import sign_request
from access.endpoints import EndpointRegistry
from access.signatures import NonceStore, RequestVerifier
from pipeline.settings import load_settings
from tests.access._signing import key_pair

BASE = "https://api.example.org"
SQL = "SELECT patient_pseudonym, sex, ssn FROM deidentified.patients ORDER BY patient_pseudonym"


@pytest.fixture
def api(world, tmp_path):
    settings = load_settings(home=tmp_path / "home")
    registry = EndpointRegistry(tmp_path / "endpoints.json")
    keys = {name: key_pair() for name in ("notebook", "diagnoser", "bound")}
    ids = {"notebook": registry.register("notebook", keys["notebook"].public_pem, operator="t").keys[0].keyid,
           "diagnoser": registry.register("diagnoser", keys["diagnoser"].public_pem, operations=("diagnose",),
                                          operator="t").keys[0].keyid,
           "bound": registry.register("bound", keys["bound"].public_pem, principal="cleo",
                                      operator="t").keys[0].keyid}
    app = create_app(settings, verifier=RequestVerifier(registry, NonceStore(tmp_path / "requests.sqlite3")),
                     audit=False)
    app.state.gateway, app.state.principals = world.gateway, world.store
    tokens = {name: world.store.issue_token(name).secret for name in ("ann", "cleo")}

    http = TestClient(app, base_url=BASE)

    def client(name: str):
        return http, ids[name], keys[name].private_pem

    return client, tokens


def _post(client, token: str | None, body: dict) -> httpx.Response:
    """A request signed as the endpoint (the Authorization field signed with it), through the whole app."""
    http, keyid, private_pem = client
    content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    signed = sign_request("POST", f"{BASE}/v1/query", headers, content, keyid=keyid, private_key=private_pem)
    return http.post("/v1/query", content=content, headers=signed)


def _expected(world, who: str, sql: str) -> list[list]:
    return [list(r.values()) for r in world.gateway.query(world.session(who), sql).table.to_pylist()]


def test_when_a_signed_notebook_asks_as_an_analyst_then_json_has_the_gateways_rows_and_what_was_withheld(world,
                                                                                                       api):
    client, tokens = api
    answer = _post(client("notebook"), tokens["ann"], {"sql": SQL})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["rows"] == _expected(world, "ann", SQL)
    assert [c["name"] for c in got["columns"]] == ["patient_pseudonym", "sex", "ssn"]
    assert got["withheld"]["masks"]["deidentified.patients"]["ssn"] in ("null", "masked")
    assert any(f["filter"] for f in got["withheld"]["row_filters"])
    assert any("ssn" in line for line in got["notices"])
    assert json.loads(answer.headers["Medguard-Withheld"]) == got["withheld"]


def test_when_csv_or_arrow_is_asked_then_the_same_rows_come_with_the_withheld_header(world, api):
    client, tokens = api
    as_csv = _post(client("notebook"), tokens["ann"], {"sql": SQL, "format": "csv"})
    as_arrow = _post(client("notebook"), tokens["ann"], {"sql": SQL, "format": "arrow"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    expected = _expected(world, "ann", SQL)
    assert rows[0] == ["patient_pseudonym", "sex", "ssn"] and [r[:2] for r in rows[1:]] == [e[:2] for e in expected]
    assert as_arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(as_arrow.content).read_all()
    assert [list(r.values()) for r in table.to_pylist()] == expected
    assert "ssn" in as_arrow.headers["Medguard-Withheld"]


def test_when_the_query_is_refused_then_it_is_403_problem_json_with_the_reason(api):
    client, tokens = api
    answer = _post(client("notebook"), tokens["ann"], {"sql": "SELECT first_name FROM raw.patients"})
    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == "query_refused" and problem["detail"]


@pytest.mark.parametrize(("endpoint", "who", "status", "code"), [
    ("notebook", None, 401, "token_invalid"),
    ("notebook", "wrong", 401, "token_invalid"),
    ("bound", "ann", 403, "query_refused"),
])
def test_when_the_token_is_missing_wrong_or_not_the_endpoints_principal_then_it_is_refused(api, endpoint, who,
                                                                                           status, code):
    client, tokens = api
    token = {"wrong": "mgt_0000000000000000_" + "A" * 43}.get(who, tokens.get(who))
    answer = _post(client(endpoint), token, {"sql": "SELECT sex FROM deidentified.patients"})
    assert (answer.status_code, answer.json()["code"]) == (status, code)


def test_when_the_endpoint_is_bound_to_the_tokens_principal_then_it_is_served(world, api):
    client, tokens = api
    sql = "SELECT ssn, facility_id FROM raw.patients ORDER BY ssn"
    answer = _post(client("bound"), tokens["cleo"], {"sql": sql})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == _expected(world, "cleo", sql)


def test_when_the_endpoint_may_not_query_then_the_signature_layer_refuses_it(api):
    client, tokens = api
    answer = _post(client("diagnoser"), tokens["ann"], {"sql": "SELECT sex FROM deidentified.patients"})
    assert answer.status_code == 403
    assert answer.json()["code"] != "query_refused"  # refused before the route ran
