"""CDS Hooks 2.0 service: discovery and the ``patient-view`` hook, answered with the current model's diagnosis.

``GET /cds-services`` lists one service (id ``cds_hooks.service_id``, hook ``patient-view``) with the prefetch
templates the current model needs (:func:`access.api.cds_fhir.prefetch_templates`); with no verified model it
lists none. It is open unless ``cds_hooks.discovery_requires_jwt``: it tells which LOINC codes the model reads,
nothing about any patient.

``POST /cds-services/{id}`` runs, in this order: the EHR's JWT (:mod:`access.api.cds_auth`; before the body is
read, so an unauthenticated caller costs a header parse), the body (at most ``cds_hooks.max_body_bytes``, JSON),
the hook request's shape, the service id and hook, the prefetch → one encounter (:mod:`access.api.cds_fhir`), the
diagnosis service, the cards. The request's ``fhirServer`` and ``fhirAuthorization`` are never used: this service
calls no one back, so prefetch must carry what discovery asks for.

Errors are RFC 9457 problem+json with stable codes, in CDS Hooks' statuses: 400 for a malformed request
(``request_invalid``, ``hook_unsupported``, ``prefetch_invalid``), 401/403/429 for authentication
(:data:`~access.api.cds_auth.CDS_REJECTIONS`, with ``WWW-Authenticate: Bearer``), 404 ``service_unknown``, 412
``prefetch_missing`` (the spec's "unable to retrieve the necessary FHIR data"), 413, 415, and the diagnosis
service's own 422 ``payload_invalid``/``out_of_profile`` (the field named as its place in the prefetch) and 503
``model_unavailable``.

``POST /cds-services/{id}/feedback`` (CDS Hooks 2.0 feedback) takes what the clinician did with cards
(``accepted``/``overridden``), behind the same JWT (its ``aud`` the feedback URL or the service URL), and keeps only
the counts, in the call's audit event.

Where asked — ``"extension": {"org.medguard.risk-assessment": true}`` in the hook request, as discovery's service
``extension`` says — the card carries a FHIR R4 ``RiskAssessment`` as a ``create`` suggestion.

Audit: the middleware writes one event per call; this router puts ``{front: "cds", operation: "cds",
endpoint_id, service, hook, cards}`` into ``request.state.audit``, ``endpoint:<id>`` into
``request.state.audit_principal`` and each refusal's code into ``request.state.problem_code``. Never the patient
id, the hook instance's data or a prefetch value.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from access.api import problems
from access.api.cds_auth import CdsJwtVerifier, CdsRejected
from access.api.cds_fhir import (
    RISK_ASSESSMENT_EXTENSION,
    PrefetchInvalid,
    PrefetchMissing,
    cards_for,
    encounter_from_prefetch,
    outcome_text,
    prefetch_templates,
)
from access.api.scoring import PayloadInvalid

__all__ = ["CDS_PROBLEMS", "HookRequest", "router"]

router = APIRouter(tags=["CDS Hooks"])

HOOK = "patient-view"
# The router's own refusals (authentication's are cds_auth.CDS_REJECTIONS).
CDS_PROBLEMS: dict[str, tuple[int, str]] = {
    "request_invalid": (400, "Hook request is malformed"),
    "hook_unsupported": (400, "This service answers only the patient-view hook"),
    "prefetch_invalid": (400, "Prefetch data is malformed"),
    "service_unknown": (404, "No such CDS service"),
    "prefetch_missing": (412, "Prefetch data the service needs is missing"),
    "payload_too_large": (413, "Request body is too large"),
    "unsupported_media_type": (415, "Request body must be application/json"),
}
_PROBLEM = {"content": {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_lock = threading.Lock()


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")


class HookContext(_In):
    """``patient-view`` context: who looks at which patient (ids only; never logged)."""

    userId: str | None = Field(default=None, max_length=256)
    patientId: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounterId: str | None = Field(default=None, max_length=128)


class HookRequest(_In):
    """A CDS Hooks 2.0 call. ``fhirServer`` and ``fhirAuthorization`` are accepted and never used."""

    hook: str = Field(min_length=1, max_length=64)
    hookInstance: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    fhirServer: str | None = Field(default=None, max_length=2048)
    fhirAuthorization: dict[str, Any] | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None


class FeedbackItem(_In):
    """What the clinician did with one card (CDS Hooks 2.0 feedback)."""

    card: str = Field(min_length=1, max_length=64)
    outcome: str = Field(pattern="^(accepted|overridden)$")
    outcomeTimestamp: str = Field(min_length=1, max_length=64)
    acceptedSuggestions: list[dict[str, Any]] | None = Field(default=None, max_length=100)
    overrideReason: dict[str, Any] | None = None


class FeedbackRequest(_In):
    """``POST /cds-services/{id}/feedback``: one or more cards' outcomes."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


class ServiceOut(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None
    extension: dict[str, Any] | None = None


class ServicesOut(BaseModel):
    services: list[ServiceOut]


class CardSource(BaseModel):
    label: str
    url: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=140)
    indicator: str = Field(pattern="^(info|warning|critical)$")
    detail: str
    source: CardSource
    selectionBehavior: str | None = None
    suggestions: list[dict[str, Any]] | None = None


class CardsOut(BaseModel):
    cards: list[Card]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON Schema with its ``$defs`` put in place: the route body is not a component of the document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


def _verifier(request: Request) -> CdsJwtVerifier:
    """The app's JWT verifier (tests put one with their clock in ``app.state.cds_verifier``)."""
    state = request.app.state
    with _lock:
        if getattr(state, "cds_verifier", None) is None:
            state.cds_verifier = CdsJwtVerifier.from_settings(state.settings)
    return state.cds_verifier


def _peer(request: Request) -> tuple[str, str, str | None, str | None]:
    """(scheme, host, client address, client certificate SHA-256) as the caller reached us."""
    settings = request.app.state.settings
    headers = request.headers
    scheme = request.url.scheme
    host = headers.get("host", "")
    client = request.client.host if request.client else None
    cert = ((request.scope.get("extensions") or {}).get("tls") or {}).get("client_cert_sha256")
    if settings.api.trust_proxy:
        scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
        host = headers.get("x-forwarded-host", "").split(",")[0].strip() or host
        client = headers.get("x-forwarded-for", client or "").split(",")[0].strip() or None
        cert = headers.get("x-client-cert-sha256", cert)
    return scheme, host, client, cert


def _url(request: Request, path: str) -> str:
    """The public URL of ``path``: under ``cds_hooks.service_url`` when set, else where the request came to."""
    base = request.app.state.settings.cds_hooks.service_url
    if not base:
        scheme, host, _, _ = _peer(request)
        base = f"{scheme}://{host}"
    return base.rstrip("/") + path


def _problem(request: Request, code: str, detail: str | None = None, *, status: int | None = None,
             title: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    request.state.problem_code = code
    if status is None or title is None:
        status, title = CDS_PROBLEMS[code]
    body = problems.problem_body(code, status, title, detail, **extra)
    return Response(problems.encode(body), status_code=status, media_type=problems.MEDIA_TYPE, headers=headers)


def _refused(request: Request, exc: CdsRejected) -> Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer" if exc.code == "jwt_missing" else 'Bearer error="invalid_token"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    # The title only: which check failed stays on the server.
    return _problem(request, exc.code, status=exc.status, title=exc.title, headers=headers)


async def _authenticate(request: Request, audience: str | list[str]) -> Any:
    _, _, client, cert = _peer(request)
    verifier = _verifier(request)
    ehr = await run_in_threadpool(verifier.verify, request.headers.get("authorization"), audience=audience,
                                  client_ip=client, client_cert_sha256=cert)
    request.state.audit_principal = f"endpoint:{ehr.endpoint.endpoint_id}"
    request.state.audit = {**getattr(request.state, "audit", {}), "endpoint_id": ehr.endpoint.endpoint_id}
    return ehr


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``, or the problem response refusing it (415, 413, 400 naming the field)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return _problem(request, "unsupported_media_type")
    raw = await _body(request, request.app.state.settings.cds_hooks.max_body_bytes)
    if raw is None:
        return _problem(request, "payload_too_large")
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            where = _field(first.get("loc", ()))
            return _problem(request, "request_invalid", f"{where}: {first.get('msg', 'invalid')}", field=where)
        return _problem(request, "request_invalid", "body: must be a JSON object", field="body")


@router.get("/cds-services", response_model=ServicesOut, responses={401: _PROBLEM, 403: _PROBLEM, 429: _PROBLEM},
            summary="CDS Hooks discovery: the services offered and the prefetch each needs")
async def discovery(request: Request) -> Any:
    settings = request.app.state.settings
    request.state.audit = {"front": "cds", "operation": "cds.discovery"}
    if settings.cds_hooks.discovery_requires_jwt:
        try:
            await _authenticate(request, _url(request, "/cds-services"))
        except CdsRejected as exc:
            return _refused(request, exc)
    from access.api.scoring import ModelUnavailable

    try:
        model = await run_in_threadpool(request.app.state.service.model_info)
    except ModelUnavailable:
        # No verified model, no service: an EHR configured from this list then calls nothing.
        return JSONResponse({"services": []})
    outcome = outcome_text(model)
    service = {
        "hook": HOOK, "id": settings.cds_hooks.service_id,
        "title": f"medguard: risk of {outcome}",
        "description": f"The probability of {outcome} from the current signed model ({model['model_version']}), "
                       "flagged at its threshold, with the inputs that drove it.",
        "prefetch": prefetch_templates(model, count=settings.cds_hooks.observation_count),
        "usageRequirements": "Send every prefetch key (null when the EHR has no such data); this service does not "
                             "query fhirServer. Authenticate with a JWT signed by the EHR's registered key (kid = "
                             "its keyid, iss = its endpoint name, aud = this service's URL).",
        "extension": {RISK_ASSESSMENT_EXTENSION: "send true in the hook request's extension to get a FHIR R4 "
                                                 "RiskAssessment as the card's suggestion"},
    }
    return JSONResponse({"services": [service]})


@router.post("/cds-services/{service_id}", response_model=CardsOut,
             responses={400: _PROBLEM, 401: _PROBLEM, 403: _PROBLEM, 404: _PROBLEM, 412: _PROBLEM, 413: _PROBLEM,
                        415: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM, 503: _PROBLEM},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": _inline(HookRequest.model_json_schema())}}}},
             summary="Call a CDS service (CDS Hooks 2.0 patient-view; Authorization: Bearer JWT)")
async def call_service(service_id: str, request: Request) -> Any:
    settings = request.app.state.settings
    request.state.audit = {"front": "cds", "operation": "cds", "hook": HOOK}
    try:
        await _authenticate(request, _url(request, f"/cds-services/{service_id}"))
    except CdsRejected as exc:
        return _refused(request, exc)
    if service_id != settings.cds_hooks.service_id:
        return _problem(request, "service_unknown")
    request.state.audit["service"] = service_id
    hook = await _parse(request, HookRequest)
    if isinstance(hook, Response):
        return hook
    if hook.hook != HOOK:
        return _problem(request, "hook_unsupported", f"hook: must be {HOOK}", field="hook")
    verifier = _verifier(request)
    at = datetime.fromtimestamp(verifier.clock(), UTC)
    try:
        cards = await run_in_threadpool(_answer, request, hook, at)
    except PrefetchMissing as exc:
        return _problem(request, exc.code, str(exc), field=exc.field)
    except PrefetchInvalid as exc:
        return _problem(request, exc.code, str(exc), field=exc.field)
    request.state.audit["cards"] = len(cards)
    return JSONResponse({"cards": cards})


@router.post("/cds-services/{service_id}/feedback", status_code=200,
             responses={200: {"description": "Feedback recorded (no body)"}, 400: _PROBLEM, 401: _PROBLEM,
                        403: _PROBLEM, 404: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 429: _PROBLEM},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": _inline(FeedbackRequest.model_json_schema())}}}},
             summary="CDS Hooks 2.0 feedback: what the clinician did with the cards (counts go to the audit log)")
async def feedback(service_id: str, request: Request) -> Any:
    settings = request.app.state.settings
    request.state.audit = {"front": "cds", "operation": "cds.feedback"}
    service_url = _url(request, f"/cds-services/{service_id}")
    try:
        # The endpoint called is the feedback URL; an EHR that names the service URL names this service too.
        await _authenticate(request, [service_url + "/feedback", service_url])
    except CdsRejected as exc:
        return _refused(request, exc)
    if service_id != settings.cds_hooks.service_id:
        return _problem(request, "service_unknown")
    body = await _parse(request, FeedbackRequest)
    if isinstance(body, Response):
        return body
    outcomes = [item.outcome for item in body.feedback]
    # Counts only: which card, suggestion or reason stays with the EHR.
    request.state.audit.update({"service": service_id, "feedback": len(outcomes),
                                "accepted": outcomes.count("accepted"), "overridden": outcomes.count("overridden")})
    return Response(status_code=200)


def _answer(request: Request, hook: HookRequest, at: datetime) -> list[dict[str, Any]]:
    """Prefetch → encounter → diagnosis → cards (CPU work: runs in the thread pool)."""
    settings = request.app.state.settings
    service = request.app.state.service
    model = service.model_info()
    mapped = encounter_from_prefetch(hook.context.patientId, hook.prefetch, model, at=at)
    try:
        diagnosis = service.diagnose([mapped.encounter])[0]
    except PayloadInvalid as exc:
        # The same refusal, named as the place in the prefetch the EHR sent.
        refusal = type(exc)(mapped.fhir_field(exc.field), exc.rule)
        raise refusal from None
    request.state.audit["model_version"] = diagnosis["model"]["model_version"]
    asked = bool((hook.extension or {}).get(RISK_ASSESSMENT_EXTENSION) is True)
    return cards_for(diagnosis, mapped, settings, with_risk_assessment=asked)
