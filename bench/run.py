"""Benchmark runner: prints one line per figure, ``<name>: <value> <unit>  (<details>)``.

Figures that compare things are ratios measured in the same run, so they hold on any machine.

    python bench/run.py                      # everything, 1,000,000 patients for the generator
    python bench/run.py --only lake          # one group
    python bench/run.py --only ingest        # 100,000 patients through Vault: rows/s and x a plain load per table,
                                             # Vault requests per 1,000 patients, de-identification of the lake
    python bench/run.py --only crypto        # envelope encryption vs raw AES-GCM, DEK fetches per 1M cells
    python bench/run.py --only analytics --analytics-patients 5000   # xgboost.spark vs single-node, scoring rows/s
    python bench/run.py --only access --access-rows 200000   # policy-enforced query vs plain Arrow; decisions/s
    python bench/run.py --only deid --deid-notes 300   # notes/s vs vanilla Presidio, structured rows/s
    python bench/run.py --patients 200000    # a smaller generator run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.access_bench import access_figures
from bench.analytics_bench import analytics_figures
from bench.crypto_bench import crypto_figures
from bench.deid_bench import deid_figures
from bench.ingest_bench import ingest_figures
from bench.lake_bench import lake_figures


def figure(name: str, value: float, unit: str, details: str = "") -> None:
    print(f"{name}: {value:,.3g} {unit}" + (f"  ({details})" if details else ""), flush=True)


def _generate_in_child(patients: int, formats: str, out: Path) -> dict:
    # A child process per run, so that each peak RSS is that run's alone.
    code = (
        "import json, resource, sys, time\n"
        "from pipeline.synthetic import generate\n"
        "t = time.perf_counter()\n"
        f"s = generate({str(out)!r}, patients={patients}, seed=1, formats={formats.split(',')!r})\n"
        "elapsed = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps({'seconds': elapsed, 'rows': sum(s.rows.values()) + s.notes, 'rss': rss}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def generator_figures(patients: int, formats: str) -> None:
    small = max(patients // 10, 5_000)
    with tempfile.TemporaryDirectory(prefix="medguard-bench-") as tmp:
        base = _generate_in_child(small, formats, Path(tmp) / "small")
        big = _generate_in_child(patients, formats, Path(tmp) / "big")
    figure("generator.rows_per_s", big["rows"] / big["seconds"], "rows/s",
           f"{patients:,} patients, {big['rows']:,} rows incl. notes, formats {formats}, {big['seconds']:.0f} s")
    figure("generator.patients_per_s", patients / big["seconds"], "patients/s")
    figure("generator.peak_rss", big["rss"] / 2**20, "MiB", f"{patients:,} patients")
    figure("generator.peak_rss_ratio", big["rss"] / base["rss"], "x",
           f"{patients:,} vs {small:,} patients: about 1 means memory is bounded, not growing with size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["generator", "lake", "crypto", "deid", "access", "ingest", "analytics"])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--formats", default="parquet,notes")
    parser.add_argument("--lake-rows", type=int, default=2_000_000)
    parser.add_argument("--crypto-cells", type=int, default=1_000_000)
    parser.add_argument("--analytics-patients", type=int, default=50_000)
    parser.add_argument("--access-rows", type=int, default=1_000_000)
    parser.add_argument("--deid-notes", type=int, default=2_000)
    parser.add_argument("--ingest-patients", type=int, default=100_000)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.only in (None, "lake"):
        for name, value, unit, details in lake_figures(args.lake_rows):
            figure(name, value, unit, details)
    if args.only in (None, "crypto"):
        for name, value, unit, details in crypto_figures(args.crypto_cells):
            figure(name, value, unit, details)
    if args.only in (None, "deid"):
        for name, value, unit, details in deid_figures(args.deid_notes):
            figure(name, value, unit, details)
    if args.only in (None, "access"):
        for name, value, unit, details in access_figures(args.access_rows):
            figure(name, value, unit, details)
    if args.only in (None, "ingest"):
        for name, value, unit, details in ingest_figures(args.ingest_patients):
            figure(name, value, unit, details)
    if args.only in (None, "analytics"):
        for name, value, unit, details in analytics_figures(args.analytics_patients):
            figure(name, value, unit, details)
    if args.only in (None, "generator"):
        generator_figures(args.patients, args.formats)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figure("bench.wall_time", time.perf_counter() - started, "s", f"runner peak RSS {usage.ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
