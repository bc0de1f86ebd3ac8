"""Ingestion throughput end to end (read + validate + encrypt + load) against a plain load of the same rows.

Both sides read the same generated Parquet extracts. The baseline appends each table to a Delta table as is:
no validation, no encryption, no pseudonyms. The measured side is ``ingestion.ingest`` with the shipped
contracts (Great Expectations on every chunk, quarantine, PHI sealed per patient with a local keyring,
appends into raw that a resumed batch skips by Delta transaction id). Figures are rows/s and the ratio of the
two, measured in the same run; each table's time goes to stderr as it finishes, so a long run shows progress.

    python bench/ingest_bench.py --patients 2000
    python bench/run.py --only ingest --ingest-patients 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def progress(what: str, rows: int, begun: float) -> None:
    """Say on stderr how long one table took, so that a run of an hour shows where it is."""
    took = time.perf_counter() - begun
    print(f"  {what}: {rows:,} rows in {took:,.1f} s ({rows / took:,.0f} rows/s)", file=sys.stderr, flush=True)


TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes")


def ingest_figures(patients: int, *, inline: bool = False) -> Iterator[tuple[str, float, str, str]]:
    """Yield (name, value, unit, details) for the ingestion benchmark at ``patients`` patients.

    ``inline`` also measures the same ingestion with no checking workers, for the pool's speed-up.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingestion.batch import ingest
    from ingestion.checking import worker_count
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from pipeline.synthetic import generate
    from storage_security.keys.keyring import LocalKeyring
    from storage_security.protected import ProtectedLake

    with tempfile.TemporaryDirectory(prefix="medguard-ingest-bench-") as tmp:
        root = Path(tmp)
        generate(root / "src", patients=patients, seed=3, formats=["parquet"], defect_rate=0.02)
        rows = sum(pq.ParquetFile(root / "src" / f"{t}.parquet").metadata.num_rows for t in TABLES)
        settings = load_settings(home=str(root / "home"), lake_root=str(root / "lake"))

        plain = Lake(settings.model_copy(update={"lake_root": str(root / "plain")}))
        started = time.perf_counter()
        for table in TABLES:
            begun = time.perf_counter()
            source = pq.ParquetFile(root / "src" / f"{table}.parquet")
            plain.append("raw", table, pa.RecordBatchReader.from_batches(source.schema_arrow,
                                                                         source.iter_batches(1 << 20)))
            progress(f"plain/{table}", source.metadata.num_rows, begun)
        baseline = time.perf_counter() - started

        ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
        ring.ensure_key("medguard-kek")
        ring.ensure_key("medguard-audit")

        def measure(workers: int | None, lake: str) -> tuple[float, int]:
            ingestion = settings.ingestion.model_copy(update={"workers": workers})
            chosen = settings.model_copy(update={"lake_root": str(root / lake), "ingestion": ingestion})
            plake = ProtectedLake(Lake(chosen), ring, principal="svc:bench")
            ingest(chosen, source="tabular", path=root / "src" / "outcomes.parquet", table="outcomes",
                   plake=plake, stages=(), docs=False)  # warm-up: Great Expectations' first context and imports
            started = time.perf_counter()
            quarantined = 0
            for table in TABLES:
                begun = time.perf_counter()
                report = ingest(chosen, source="tabular", path=root / "src" / f"{table}.parquet", table=table,
                                plake=plake, docs=False)
                quarantined += report.tables[table].quarantined
                progress(f"{lake}/{table}", report.tables[table].rows_in, begun)
            return time.perf_counter() - started, quarantined

        measured, quarantined = measure(settings.ingestion.workers, "lake")
        workers = worker_count(settings)
        if inline:
            alone, _ = measure(0, "lake-inline")
    detail = (f"{patients:,} patients, {rows:,} rows, Parquet, chunk {settings.ingestion.chunk_rows:,}, "
              f"{workers} checking worker(s)")
    yield "ingest.rows_per_s", rows / measured, "rows/s", f"validate + quarantine + encrypt + load; {detail}"
    if inline:
        yield "ingest.rows_per_s_inline", rows / alone, "rows/s", "the same with no workers (all in one process)"
        yield "ingest.worker_speedup", alone / measured, "x", "time inline / time with the workers"
    yield "ingest.plain_load_rows_per_s", rows / baseline, "rows/s", "Delta append, no validation or encryption"
    yield "ingest.slowdown_vs_plain_load", measured / baseline, "x", "time ingesting / time of a plain load"
    yield "ingest.quarantined", quarantined, "rows", f"{quarantined / rows:.2%} of rows (2 % defect rate)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--inline", action="store_true", help="also measure with no checking workers")
    args = parser.parse_args()
    for name, value, unit, details in ingest_figures(args.patients, inline=args.inline):
        print(f"{name}: {value:,.3g} {unit}  ({details})", flush=True)


if __name__ == "__main__":
    main()
