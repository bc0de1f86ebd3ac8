"""Functions that tests/pipeline/test_lake.py runs in spawned processes (delta-rs panics after fork).

They live in their own small module so that a spawned process can import them by name.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

RACE_TABLE = "admissions"


def start_together(barrier: Any) -> None:
    """Pool initializer: pay the imports first, then hold every worker until all are ready, so they race."""
    import pipeline.lake  # noqa: F401

    with contextlib.suppress(threading.BrokenBarrierError):  # a late worker only makes the race less tight
        barrier.wait(timeout=60)


def append_ids(lake_root: str, ids: list[int]) -> list[tuple[int, int]]:
    """Append each id as its own commit to ``raw/admissions``; returns (id, version the append reported)."""
    import pyarrow as pa

    from pipeline.lake import CommitInfo, Lake
    from pipeline.settings import load_settings

    lake = Lake(load_settings(lake_root=lake_root))
    commit = CommitInfo(principal="svc:race-test", purpose="concurrency")
    return [
        (i, lake.append("raw", RACE_TABLE, pa.table({"id": pa.array([i], pa.int64())}), commit=commit))
        for i in ids
    ]
