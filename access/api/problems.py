"""RFC 9457 problem details: every refusal the HTTP front answers, as ``application/problem+json``.

A body is ``{type, title, status, detail, code}`` (``field`` too for a payload refused at a field). ``code`` is
stable — clients key on it — and ``type`` is ``urn:medguard:problem:<code>``. ``detail`` never says more than the
code does: a refused signature's detail is its code's title, whatever check it failed inside; a refused payload's
names the field and the rule, never the submitted value.
"""

from __future__ import annotations

import json
from typing import Any

MEDIA_TYPE = "application/problem+json"

# The codes the front itself answers (the signature codes are access.signatures.REJECTIONS).
PROBLEMS: dict[str, tuple[int, str]] = {
    "payload_invalid": (422, "Payload fails validation"),
    "out_of_profile": (422, "Payload is outside the model's training profile"),
    "payload_too_large": (413, "Request body is too large"),
    "unsupported_media_type": (415, "Request body must be application/json"),
    "model_unavailable": (503, "No verified model is available"),
    "not_ready": (503, "Service is not ready"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed on this resource"),
    "internal_error": (500, "Internal error"),
}


def problem_body(code: str, status: int, title: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object for ``code``."""
    return {"type": f"urn:medguard:problem:{code}", "title": title, "status": status, "detail": detail or title,
            "code": code, **extra}


def problem(code: str, detail: str | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
    """(status, body) for one of the front's own :data:`PROBLEMS`."""
    status, title = PROBLEMS[code]
    return status, problem_body(code, status, title, detail, **extra)


def rejection(code: str, status: int, title: str) -> dict[str, Any]:
    """The body of a refused signature: its code and title only (which check failed stays on the server)."""
    return problem_body(code, status, title)


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def response(code: str, detail: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    """A Starlette response carrying one of :data:`PROBLEMS`."""
    from starlette.responses import Response

    status, body = problem(code, detail, **extra)
    return Response(encode(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)
