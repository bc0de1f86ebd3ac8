"""Bounded work for the query gateway: a result read within a row and byte budget, and a per-principal rate.

Private to :mod:`access.gateway`. DuckDB's ``memory_limit`` bounds what one query may build; these bound what
leaves it: the result is pulled batch by batch and refused as soon as it passes ``max_rows`` rows or
``max_bytes`` bytes (Arrow buffer sizes, so one 2 GB string counts as 2 GB), before the next batch is built.
The rate limit is a sliding window per principal in this process: the HTTP and PostgreSQL-wire servers hold one
gateway for their lifetime; a CLI call is a process of its own and pays a process start per query.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import pyarrow as pa

from pipeline.errors import AccessDeniedError

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
    """At most ``limit`` calls per principal in any ``window`` seconds (sliding window, thread-safe).

    Args:
        limit: calls allowed per window.
        window: the window in seconds.
        clock: monotonic seconds (tests inject one).

    Raises:
        ValueError: ``limit`` or ``window`` is not positive.
    """

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"a rate limit needs a positive limit and window, not {limit} per {window} s")
        self.limit, self.window = limit, window
        self._clock = clock
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str) -> bool:
        """Record a call of ``who``; False (and nothing recorded) when it would pass the limit."""
        now = self._clock()
        with self._lock:
            calls = self._calls.setdefault(who, deque())
            while calls and calls[0] <= now - self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                return False
            calls.append(now)
            # Forget principals with no call in the window, so the map does not grow with every name seen.
            for name in [n for n, c in self._calls.items() if not c or c[-1] <= now - self.window]:
                del self._calls[name]
            return True
