"""The diagnosis routes: ``POST /v1/diagnoses``, ``GET /v1/models/current``, ``GET /healthz``, ``GET /readyz``.

Signatures are checked before these run (:mod:`access.api.security`); the routes find the
:class:`~access.api.scoring.DiagnosisService` in ``app.state.service``. They are plain ``def`` functions: scoring is
CPU work and runs in Starlette's thread pool, off the event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from access.api import problems
from access.api.scoring import EncounterIn, PayloadInvalid

__all__ = ["DiagnosesIn", "DiagnosesOut", "router"]

router = APIRouter()

_PROBLEM = {"content": {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


class DiagnosesIn(BaseModel):
    """A batch of encounters (at most ``api.max_batch``)."""

    model_config = ConfigDict(extra="forbid")
    encounters: list[EncounterIn] = Field(min_length=1, max_length=10_000)


class ModelRef(BaseModel):
    name: str
    version: int
    model_version: str


class Contribution(BaseModel):
    feature: str
    name: str
    contribution: float


class OutOfProfileReason(BaseModel):
    feature: str
    name: str
    side: str
    bound: float


class DiagnosisOut(BaseModel):
    encounter_ref: str | None
    probability: float = Field(ge=0, le=1)
    flag: bool
    threshold: float
    model: ModelRef
    checks: dict[str, str]
    out_of_profile: bool
    out_of_profile_reasons: list[OutOfProfileReason]
    top_features: list[Contribution]


class DiagnosesOut(BaseModel):
    diagnoses: list[DiagnosisOut]


class ModelOut(BaseModel):
    name: str
    version: int
    model_version: str
    threshold: float
    trained_at: str | None
    features: int
    observation_codes: list[str]
    condition_codes: list[str]
    medication_codes: list[str]
    sex_levels: list[str]
    numeric_features: list[str]
    out_of_profile_policy: str


class Health(BaseModel):
    status: str


_SIGNED = {401: _PROBLEM, 403: _PROBLEM, 429: _PROBLEM, 503: _PROBLEM}


@router.post("/v1/diagnoses", response_model=DiagnosesOut, tags=["diagnoses"],
             responses={400: _PROBLEM, 413: _PROBLEM, 422: _PROBLEM, **_SIGNED},
             summary="Diagnose one encounter or a batch (RFC 9421 signature, operation 'diagnose')")
def post_diagnoses(request: Request, body: DiagnosesIn | EncounterIn) -> dict[str, Any]:
    encounters = body.encounters if isinstance(body, DiagnosesIn) else [body]
    limit = request.app.state.settings.api.max_batch
    if len(encounters) > limit:
        raise PayloadInvalid("encounters", f"at most {limit} encounters per request")
    diagnoses = request.app.state.service.diagnose(encounters)
    request.state.audit = {"encounters": len(encounters), "flagged": sum(d["flag"] for d in diagnoses),
                           "model_version": diagnoses[0]["model"]["model_version"] if diagnoses else None}
    return {"diagnoses": diagnoses}


@router.get("/v1/models/current", response_model=ModelOut, tags=["models"], responses=_SIGNED,
            summary="The model diagnoses use now (RFC 9421 signature, operation 'models.read')")
def get_current_model(request: Request) -> dict[str, Any]:
    info = request.app.state.service.model_info()
    request.state.audit = {"model_version": info["model_version"]}
    return info


@router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (unsigned)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: _PROBLEM},
            summary="Readiness (unsigned): the signed model verifies and the key provider answers")
def readyz(request: Request) -> Any:
    ok, _ = request.app.state.service.ready()
    if not ok:
        return problems.response("not_ready")
    return {"status": "ready"}
