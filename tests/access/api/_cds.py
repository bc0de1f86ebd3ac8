"""What the CDS Hooks tests share: a patient-view request built from the official FHIR R4 examples, and JWTs.

The prefetch is the HL7 examples as published (tests/fixtures/fhir/r4-examples, CC0): ``Patient/example``; the
blood-pressure panel and the BMI Observations, which are already about ``Patient/example``; the blood-glucose
Observation ``f001`` and the lipid panel's cholesterol and HDL Observations (``Bundle-lipids``), whose ``subject``
we re-point from ``Patient/f001`` / ``Patient/pat2`` to ``Patient/example`` — the only edit, so that one patient's
chart holds them; and the Conditions ``stroke`` and ``example`` (already ``Patient/example``'s).

Each Observation sits under the prefetch key (one search per LOINC code, as discovery asks) of the analyte it
measures: the panel under ``obs-85354-9``, BMI under ``obs-39156-5``, HDL under ``obs-2085-9``; the blood glucose
(15074-8) under ``obs-2345-7`` and the cholesterol (35200-5) under ``obs-2093-3`` — other LOINC codes for those
analytes, as an EHR matching loosely would return them, and so reported as not used. Searches that find nothing
are ``null``, as the spec says.
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


def _lipid(item_id: str) -> dict[str, Any]:
    return _ours(copy.deepcopy(next(e["resource"] for e in _example("Bundle-lipids.json")["entry"]
                                    if e["resource"].get("id") == item_id)))


def searches() -> dict[str, list[dict[str, Any]]]:
    """Per prefetch key, the example Observations it holds (keys with none left out)."""
    return {"obs-85354-9": [example("Observation-blood-pressure.json")],
            "obs-39156-5": [example("Observation-bmi.json")],
            "obs-2085-9": [_lipid("hdlcholesterol")],
            "obs-2345-7": [_ours(example("Observation-f001.json"))],
            "obs-2093-3": [_lipid("cholesterol")]}


OBSERVATION_KEYS = ("obs-4548-4", "obs-2345-7", "obs-39156-5", "obs-8480-6", "obs-8462-4", "obs-2093-3",
                    "obs-2085-9", "obs-85354-9")


def conditions() -> list[dict[str, Any]]:
    return [example("Condition-stroke.json"), example("Condition-example.json")]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r.get('id')}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def prefetch(**observation_keys: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The full prefetch; ``observation_keys`` (``obs_4548_4=[...]``) replace what a search returned."""
    found = searches()
    found.update({key.replace("_", "-"): value for key, value in observation_keys.items()})
    out: dict[str, Any] = {"patient": example("Patient-example.json"), "conditions": searchset(conditions())}
    for key in OBSERVATION_KEYS:
        out[key] = searchset(found[key]) if found.get(key) else None
    return out


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
