"""``medguard serve``: the diagnosis API, CDS Hooks and ``/v1/query`` (FastAPI on uvicorn), and the pgwire endpoint.

Placeholder while layer 4 is being built this session; replaced by the real command.
"""

from __future__ import annotations

from pipeline.errors import MedguardError


def serve() -> None:
    """Serve the diagnosis API (not built yet)."""
    raise MedguardError("medguard serve is not built yet")
