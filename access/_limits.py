"""Bounded work for the query gateway: a result read within a row and byte budget, and a per-principal rate.

Private to :mod:`access.gateway`. DuckDB's ``memory_limit`` bounds what one query may build; these bound what
leaves it: the result is pulled batch by batch and refused as soon as it passes ``max_rows`` rows or
``max_bytes`` bytes (Arrow buffer sizes, so one 2 GB string counts as 2 GB), before the next batch is built.
The rate limit is a sliding window per principal. In memory it covers one process (a server holding one gateway);
with a ``path`` the windows live in a 0600 file under an exclusive lock, so separate ``medguard query`` processes
of one home share them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa

from pipeline.errors import AccessDeniedError
from storage_security._locks import exclusive_lock

# Rows per batch pulled from the engine: small, so a result over the byte limit is caught after little work.
BATCH_ROWS = 8_192


def collect(batches: Iterable[pa.RecordBatch], schema: pa.Schema, *, max_rows: int, max_bytes: int) -> pa.Table:
    """A table of ``batches``, read no further than the limits allow.

    Raises:
        AccessDeniedError: the result passes ``max_rows`` rows or ``max_bytes`` bytes (counts, never values).
    """
    kept: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        rows += batch.num_rows
        size += batch.nbytes
        if rows > max_rows:
            raise AccessDeniedError(f"query refused: the result has more than {max_rows} rows; at most "
                                    f"{max_rows} are returned")
        if size > max_bytes:
            raise AccessDeniedError(f"query refused: the result is larger than {max_bytes:,} bytes (setting "
                                    "access.max_result_bytes); select fewer or shorter values")
        kept.append(batch)
    return pa.Table.from_batches(kept, schema=schema)


class RateLimiter:
    """At most ``limit`` calls per principal in any ``window`` seconds (sliding window).

    Args:
        limit: calls allowed per window.
        window: the window in seconds.
        clock: seconds since the epoch (tests inject one; wall time, so processes sharing ``path`` agree).
        path: keep the windows in this file (0600, under an exclusive lock) instead of this process's memory.

    Raises:
        ValueError: ``limit`` or ``window`` is not positive.
    """

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.time,
                 path: Path | None = None) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"a rate limit needs a positive limit and window, not {limit} per {window} s")
        self.limit, self.window = limit, window
        self._clock = clock
        self._path = path
        self._calls: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str) -> bool:
        """Record a call of ``who``; False (and nothing recorded) when it would pass the limit."""
        with self._lock:
            if self._path is None:
                return self._allow(self._calls, who)
            with exclusive_lock(self._path.with_suffix(".lock"), timeout=10):
                try:
                    calls = json.loads(self._path.read_text())
                except FileNotFoundError:
                    calls = {}
                except ValueError:
                    calls = {}  # a damaged file only forgets recent calls: the next window starts afresh
                allowed = self._allow(calls, who)
                self._save(calls)
                return allowed

    def _allow(self, calls: dict[str, list[float]], who: str) -> bool:
        now = self._clock()
        # Forget calls that left the window (and principals with none), so the state does not grow.
        for name in list(calls):
            calls[name] = [t for t in calls[name] if t > now - self.window]
            if not calls[name]:
                del calls[name]
        mine = calls.setdefault(who, [])
        if len(mine) >= self.limit:
            return False
        mine.append(now)
        return True

    def _save(self, calls: dict[str, list[float]]) -> None:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(calls, out)
        os.replace(tmp, self._path)
