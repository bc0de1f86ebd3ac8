"""What the CDS Hooks tests share: a patient-view request built from the official FHIR R4 examples, and JWTs.

The prefetch is the HL7 examples as published (tests/fixtures/fhir/r4-examples, CC0): ``Patient/example``; the
blood-pressure panel, the BMI and the body-weight Observations, which are already about ``Patient/example``; the
blood-glucose Observation ``f001`` and the lipid panel's Observations (``Bundle-lipids``), whose ``subject`` we
re-point from ``Patient/f001`` / ``Patient/pat2`` to ``Patient/example`` — the only edit, so that one patient's
chart holds them; and the Conditions ``stroke`` and ``example`` (already ``Patient/example``'s).
"""

from __future__ import annotations

import copy
import json
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import jwt

EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir" / "r4-examples"
PATIENT_ID = "example"
RISK_EXTENSION = "org.medguard.risk-assessment"


@cache
def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def example(name: str) -> dict[str, Any]:
    """One official example, as a fresh copy."""
    return copy.deepcopy(_example(name))


def _ours(resource: dict[str, Any]) -> dict[str, Any]:
    # The one edit to an official example: its subject becomes the hook's patient.
    resource["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
    return resource


def observations() -> list[dict[str, Any]]:
    """Blood pressure (85354-9: systolic 107, diastolic 60 mm[Hg]), BMI 16.2 kg/m2, body weight 185 [lb_av],
    blood glucose 15074-8 6.3 mmol/L, and the lipid panel (35200-5, 35217-9, HDL 2085-9 1.3 mmol/L, LDL 13457-7)."""
    out = [example("Observation-blood-pressure.json"), example("Observation-bmi.json"),
           example("Observation-example.json"), _ours(example("Observation-f001.json"))]
    out += [_ours(copy.deepcopy(e["resource"])) for e in _example("Bundle-lipids.json")["entry"]
            if e["resource"]["resourceType"] == "Observation"]
    return out


def conditions() -> list[dict[str, Any]]:
    return [example("Condition-stroke.json"), example("Condition-example.json")]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r.get('id')}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def prefetch() -> dict[str, Any]:
    return {"patient": example("Patient-example.json"), "observations": searchset(observations()),
            "conditions": searchset(conditions())}


def hook_request(*, risk: bool = False, **changes: Any) -> dict[str, Any]:
    """A ``patient-view`` call on ``Patient/example`` with the full prefetch; ``changes`` replace top-level keys."""
    body: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view",
                            "fhirServer": "https://ehr.example/fhir",
                            "context": {"userId": "Practitioner/example", "patientId": PATIENT_ID},
                            "prefetch": prefetch()}
    if risk:
        body["extension"] = {RISK_EXTENSION: True}
    body.update(changes)
    return body


def token(private_key: Any, kid: str, *, alg: str = "EdDSA", iss: str, aud: str | list[str], now: float,
          lifetime: float = 120, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A CDS Hooks JWT: ``iss``, ``aud``, ``iat`` = now, ``exp`` = now + lifetime, a fresh ``jti``; ``claims``
    override (None drops a claim)."""
    payload: dict[str, Any] = {"iss": iss, "sub": "ehr-client", "aud": aud, "iat": int(now),
                               "exp": int(now + lifetime), "jti": str(uuid.uuid4())}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, private_key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})
