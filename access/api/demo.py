"""Demo step ``80_serve``: a registered endpoint signs a diagnosis request to ``medguard serve``; its replay is refused.

Placeholder while layer 4 is being built this session.
"""

from __future__ import annotations

from typing import Any


def step(settings: Any, report: Any) -> dict[str, Any]:
    return {"skipped": "layer 4 not built yet"}
