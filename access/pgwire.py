"""The PostgreSQL-wire SQL endpoint: psql, psycopg, pandas and DBeaver in front of the policy gateway.

Skeleton while it is being built.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pipeline.errors import MedguardError

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["run_pg_server"]


def run_pg_server(settings: Settings, host: str, port: int, *, stop: threading.Event,
                  ready: threading.Event | None = None, gateway: Any = None, store: Any = None) -> None:
    """Serve the gateway over the PostgreSQL wire protocol until ``stop`` is set (not built yet)."""
    raise MedguardError("the pgwire endpoint is not built yet")
