"""Lake append throughput (delta-rs) against a plain Parquet write of the same Arrow data, in one run."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _observations(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({
        "observation_id": pa.array([f"OBS{i:010d}" for i in range(rows)]),
        # Encrypted cells are opaque binary: a 32-byte random value stands in for one.
        "patient_ref": pa.array(np.frombuffer(rng.bytes(32 * rows), dtype="S32").tolist(), pa.binary()),
        "loinc_code": pa.array(rng.choice(["2345-7", "4548-4", "8480-6", "8462-4", "39156-5"], rows)),
        "value": rng.normal(100, 20, rows),
        "effective_time": pa.array(
            np.datetime64("2024-01-01T00:00:00", "us") + rng.integers(0, 10**13, rows).astype("timedelta64[us]"),
            pa.timestamp("us", "UTC"),
        ),
    })


def _best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def lake_figures(rows: int) -> Iterator[tuple[str, float, str, str]]:
    """Yield (name, value, unit, details) for the lake benchmarks."""
    with tempfile.TemporaryDirectory(prefix="medguard-bench-lake-") as tmp:
        os.environ["MEDGUARD_HOME"] = tmp
        from pipeline.lake import Lake
        from pipeline.settings import load_settings

        lake = Lake(load_settings())
        table = _observations(rows)
        counter = iter(range(10**6))

        def parquet() -> None:
            pq.write_table(table, os.path.join(tmp, f"plain-{next(counter)}.parquet"), compression="snappy")

        def delta() -> None:
            lake.append("raw", f"bench_{next(counter)}", table)

        plain_s = _best_of(3, parquet)
        delta_s = _best_of(3, delta)
        yield ("lake.append_rows_per_s", rows / delta_s, "rows/s", f"delta-rs, {rows:,} rows, new table, best of 3")
        yield ("lake.parquet_rows_per_s", rows / plain_s, "rows/s", "pyarrow.parquet.write_table, same data")
        yield ("lake.append_vs_parquet", delta_s / plain_s, "x", "time of a Delta append / time of a plain Parquet "
               "write; the Delta commit's overhead")
        lake.append("raw", "bench_grow", table)
        grow_s = _best_of(3, lambda: lake.append("raw", "bench_grow", table))
        yield ("lake.append_existing_rows_per_s", rows / grow_s, "rows/s", "append to a table that already has data")
