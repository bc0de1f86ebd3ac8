"""schemathesis against the published ``/openapi.json`` of ``medguard serve``, every request RFC 9421-signed by a
``requests`` auth hook: no 5xx, and every answer conforms to the schema (status codes, content types, bodies)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from access.client import sign_request

pytestmark = pytest.mark.integration  # talks to a medguard serve subprocess

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class SignedAuth(requests.auth.AuthBase):
    """Signs each prepared request (the URL and body exactly as sent) as one registered endpoint."""

    def __init__(self, keyid: str, private_key: Any) -> None:
        self.keyid = keyid
        self.private_key = private_key

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body or b""
        body = body.encode() if isinstance(body, str) else body
        headers = dict(prepared.headers)
        if body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        signed = sign_request(prepared.method or "GET", prepared.url or "", headers, body, keyid=self.keyid,
                              private_key=self.private_key)
        prepared.headers.update(signed)
        return prepared


def test_when_schemathesis_calls_the_api_signed_then_no_answer_is_a_5xx_or_off_schema(served: Any) -> None:
    # schemathesis' pytest loader (from_fixture) does not run under pytest 9: each operation's strategy is driven
    # by hypothesis here instead, with the same checks.
    world, server = served
    session = requests.Session()
    session.auth = SignedAuth(world.keyid("fuzz"), world.private("fuzz"))
    seen: list[tuple[str, int]] = []
    session.hooks["response"].append(lambda r, *_, **__: seen.append((r.request.path_url.split("?")[0],
                                                                       r.status_code)))
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/diagnoses", "/v1/models/current", "/healthz", "/readyz"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            case.call_and_validate(base_url=server.base, session=session, checks=CHECKS)

        call()
    # The signing hook works: signed calls got through to the routes (not only 401s), valid and invalid payloads.
    statuses = {status for path, status in seen if path == "/v1/diagnoses"}
    assert 200 in {status for path, status in seen if path == "/v1/models/current"}
    assert 422 in statuses and not {401, 403} & statuses, sorted(statuses)
