"""``POST /v1/query``: an endpoint's SQL through the policy gateway, answered as JSON, CSV or Arrow IPC.

Skeleton while it is being built; the router is included by the application.
"""

from __future__ import annotations

import fastapi

__all__ = ["router"]

router = fastapi.APIRouter()
