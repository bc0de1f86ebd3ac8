"""Fixtures of the DAG tests: what a run left in its Airflow metadata DB."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings


def _asset_events(settings: Settings, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    db = Path(settings.airflow_home) / "airflow.db"
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE e.source_run_id = ? ORDER BY e.id", (run_id,)).fetchall()
    return [(uri, json.loads(extra) if extra else {}) for uri, extra in rows]


@pytest.fixture
def asset_events() -> Callable[[Settings, str], list[tuple[str, dict[str, Any]]]]:
    """Reads the Asset events a DAG run emitted, ``[(uri, extra)]`` in order, from the settings' Airflow DB."""
    return _asset_events
