"""``POST /v1/query``: an endpoint's SQL through the policy gateway, answered as JSON, CSV or Arrow IPC.

Two checks before the gateway sees the SQL: the request's RFC 9421 signature, by a registered endpoint allowed the
``query`` operation (verified by :mod:`access.api.security` before any route runs: ``request.state.verified``),
and ``Authorization: Bearer <API token>`` of a principal (:meth:`PrincipalStore.authenticate`, with the TOTP code
in ``Medguard-TOTP`` for a principal with a second factor). An endpoint registered for a principal accepts only
that principal's tokens. The query then runs as that principal exactly as ``medguard query`` runs it
(:meth:`QueryGateway.query`: policy, row filters, masks, caps, rate limit, audit).

Body: ``{"sql": "...", "purpose": "research" (optional), "format": "json" | "csv" | "arrow"}``. Answers:

- ``json``: ``{"columns": [{"name", "type"}], "rows": [[...]], "withheld": {...}, "notices": [...]}``;
- ``csv``: ``text/csv`` with a header row;
- ``arrow``: ``application/vnd.apache.arrow.stream`` (Arrow IPC stream).

Every answer carries ``Medguard-Withheld`` (the JSON of :meth:`QueryResult.withheld`: row filters with the rows
they removed where that count may be shown, and each masked column's mask) and ``Medguard-Notices`` (the JSON list
of :meth:`QueryResult.notices`). A refused query is ``403`` problem+json (code ``query_refused``) with the gateway's
reason; a missing or refused token ``401`` (code ``token_invalid``).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import threading
from typing import Any, Literal

import fastapi
import pyarrow as pa
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from access.api import problems
from pipeline.errors import AccessDeniedError

__all__ = ["QueryIn", "router"]

router = fastapi.APIRouter()

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_PROBLEM = {"content": {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_lock = threading.Lock()


class QueryIn(BaseModel):
    """One query."""

    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=100_000)
    purpose: str | None = Field(default=None, max_length=64)
    format: Literal["json", "csv", "arrow"] = "json"


def _refusal(request: Request, status: int, code: str, title: str, detail: str,
             headers: dict[str, str] | None = None) -> Response:
    request.state.problem_code = code
    return Response(problems.encode(problems.problem_body(code, status, title, detail)), status_code=status,
                    media_type=problems.MEDIA_TYPE, headers=headers)


def _shared(request: Request, name: str, build: Any) -> Any:
    """The app's gateway or principal store (``app.state.<name>``), built from settings on first use."""
    state = request.app.state
    with _lock:
        if getattr(state, name, None) is None:
            setattr(state, name, build(state.settings))
        return getattr(state, name)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _header_json(value: Any) -> str:
    # ensure_ascii: header values must be Latin-1; the JSON stays exact.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)


@router.post("/v1/query", tags=["query"],
             responses={200: {"content": {"application/json": {}, "text/csv": {}, ARROW_STREAM: {}}},
                        401: _PROBLEM, 403: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM},
             summary="Run SQL through the policy gateway (RFC 9421 signature, operation 'query', plus a Bearer "
                     "API token of the endpoint's principal)")
def post_query(request: Request, body: QueryIn) -> Response:
    verified = getattr(request.state, "verified", None)
    if verified is None:  # the middleware always sets it on /v1; fail closed if it did not
        return _refusal(request, 401, "signature_missing", "Signature required", "Signature required")
    endpoint = verified.endpoint
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="medguard"'}
    if scheme.lower() != "bearer" or not token.strip():
        return _refusal(request, 401, "token_invalid", "API token required",
                        "send Authorization: Bearer <API token>", challenge)
    from access.gateway import QueryGateway
    from access.principals import PrincipalStore

    store = _shared(request, "principals", PrincipalStore.from_settings)
    try:
        session = store.authenticate(token.strip(), totp=request.headers.get("medguard-totp"),
                                     endpoint=f"endpoint:{endpoint.endpoint_id}")
    except AccessDeniedError as exc:
        return _refusal(request, 401, "token_invalid", "API token refused", str(exc), challenge)
    try:
        if endpoint.principal and endpoint.principal not in (session.principal.name, session.principal.qualified):
            return _refusal(request, 403, "query_refused", "Query refused",
                            "the token's principal is not the one this endpoint is registered for")
        gateway = _shared(request, "gateway", QueryGateway.from_settings)
        try:
            result = gateway.query(session, body.sql, purpose=body.purpose)
        except AccessDeniedError as exc:
            request.state.audit = {"principal": session.principal.qualified, "refused": True}
            return _refusal(request, 403, "query_refused", "Query refused", str(exc))
    finally:
        store.end(session)
    table: pa.Table = result.table
    withheld = result.withheld() if hasattr(result, "withheld") else {}
    notices = result.notices() if hasattr(result, "notices") else []
    request.state.audit = {"principal": session.principal.qualified, "rows": table.num_rows, "format": body.format}
    headers = {"Medguard-Withheld": _header_json(withheld), "Medguard-Notices": _header_json(notices)}
    if body.format == "csv":
        return Response(result.to_csv(), media_type="text/csv; charset=utf-8", headers=headers)
    if body.format == "arrow":
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return Response(sink.getvalue(), media_type=ARROW_STREAM, headers=headers)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[_json_value(v) for v in row] for row in zip(*data, strict=True)] if data else []
    payload = {"columns": columns, "rows": rows, "withheld": withheld, "notices": notices}
    return Response(json.dumps(payload, separators=(",", ":"), default=str, allow_nan=False).encode(),
                    media_type="application/json", headers=headers)
