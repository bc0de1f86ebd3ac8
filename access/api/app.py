"""The FastAPI application ``medguard serve`` runs: diagnoses, CDS Hooks and ``/v1/query`` behind signatures.

:func:`create_app` wires the routers (:mod:`access.api.diagnoses`, CDS Hooks' and the query front's), the
:class:`~access.api.security.SignedRequests` middleware (signature first, hardening headers, one audit event per
request) and problem+json answers for every error, including FastAPI's own request validation (whose default
body would echo the submitted values: ours names the field only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from access.api import problems
from access.api.scoring import DiagnosisService, ModelUnavailable, PayloadInvalid
from access.api.security import AuditSpool, SignedRequests

if TYPE_CHECKING:
    from access.signatures import RequestVerifier
    from pipeline.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_PROBLEM_SCHEMA = {
    "type": "object", "required": ["type", "title", "status", "detail", "code"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "code": {"type": "string"}, "field": {"type": "string"}},
}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "encounters", 0, "age")`` → ``encounters[0].age`` (the union's branch names dropped)."""
    out = ""
    for part in loc:
        if part in ("body", "DiagnosesIn", "EncounterIn") or (isinstance(part, str) and "[" in part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def create_app(settings: Settings, *, verifier: RequestVerifier | None = None,
               service: DiagnosisService | None = None, clock: Callable[[], float] | None = None,
               spool: AuditSpool | None = None, audit: bool = True) -> FastAPI:
    """The application.

    Args:
        settings: ``api`` (batch size, out-of-profile policy, proxy trust) and the home (registry, models).
        verifier: the RFC 9421 verifier (default: the home's registry and nonce store).
        service: the diagnosis service (default: the home's current model).
        clock: seconds since the epoch for the verifier and event times (tests).
        spool: where request events go (default: the home's spool, flushed to its audit log in the background).
        audit: False: no events at all (route tests only).
    """
    clock = clock or time.time
    service = service or DiagnosisService.from_settings(settings)
    if audit and spool is None:
        spool = AuditSpool.from_settings(settings, interval=settings.api.audit_flush_seconds)
    built: dict[str, RequestVerifier] = {}

    def get_verifier() -> RequestVerifier:
        if "v" not in built:
            from access.signatures import RequestVerifier

            built["v"] = verifier or RequestVerifier.from_settings(settings, clock=clock)
        return built["v"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if spool is not None:
            spool.start()
        try:
            yield
        finally:
            if spool is not None:
                spool.close()

    app = FastAPI(title="medguard API", version="1", openapi_url="/openapi.json", docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Diagnoses from the current signed model. Every /v1 call carries an RFC 9421 "
                              "signature (with an RFC 9530 Content-Digest over a body); errors are RFC 9457 "
                              "problem+json with a stable code.")
    app.state.settings = settings
    app.state.service = service
    app.state.spool = spool

    from access.api import diagnoses

    app.include_router(diagnoses.router)
    for module in ("access.api.cds_hooks", "access.api.query"):
        try:
            router = __import__(module, fromlist=["router"]).router
        except (ImportError, AttributeError):  # a front not built yet: the rest still serves
            log.info("%s has no router yet", module)
            continue
        app.include_router(router)

    def answer(request: Request, code: str, detail: str | None = None, **extra: Any) -> Any:
        request.state.problem_code = code
        return problems.response(code, detail, **extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        errors = list(exc.errors())
        # The body is a batch or one encounter: report the branch the caller meant (a batch has "encounters").
        meant = "DiagnosesIn" if isinstance(exc.body, dict) and "encounters" in exc.body else "EncounterIn"
        errors.sort(key=lambda e: 0 if meant in e.get("loc", ()) else 1)
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return answer(request, "payload_invalid", "body: must be a JSON document", field="body")
        field = _field(first.get("loc", ()))
        # pydantic's message names the rule, never the input ("Input should be a valid number").
        return answer(request, "payload_invalid", f"{field}: {first.get('msg', 'invalid')}", field=field)

    @app.exception_handler(PayloadInvalid)
    async def refused(request: Request, exc: PayloadInvalid) -> Any:
        return answer(request, exc.code, str(exc), field=exc.field)

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, exc: ModelUnavailable) -> Any:
        log.warning("no verified model: %s", exc)
        return answer(request, "model_unavailable")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type"}.get(exc.status_code)
        if code is None:
            status, title = exc.status_code, "Request refused"
            request.state.problem_code = f"http_{status}"
            from starlette.responses import Response

            return Response(problems.encode(problems.problem_body(f"http_{status}", status, title)),
                            status_code=status, media_type=problems.MEDIA_TYPE)
        return answer(request, code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Any:
        log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
        return answer(request, "internal_error")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    # Our 422 is problem+json, not FastAPI's HTTPValidationError.
                    if "422" in op.get("responses", {}):
                        op["responses"]["422"] = {"description": "Payload fails validation", "content": {
                            problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Outermost: the signature is checked before routing, body parsing or anything else.
    app.add_middleware(SignedRequests, verifier=get_verifier, spool=spool if audit else None,
                       trust_proxy=settings.api.trust_proxy, clock=clock)
    return app
