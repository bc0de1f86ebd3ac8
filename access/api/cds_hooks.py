"""CDS Hooks 2.0 service: discovery and the patient-view hook answered with diagnosis cards."""

from __future__ import annotations

import fastapi

router = fastapi.APIRouter()
