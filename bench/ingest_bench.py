"""Ingestion throughput end to end (read + validate + encrypt + load) against a plain load of the same rows.

Both sides read the same generated Parquet extracts (generated in a child process). The baseline appends each
table to a Delta table as is: no validation, no encryption, no pseudonyms; it runs right before the table's
ingestion, and ingestion's peak memory is read with the kernel's high-water mark reset in between. The measured
side is ``ingestion.ingest`` with the shipped contracts (every rule checked in Arrow, quarantine, keyed record
hashes, PHI sealed under each patient's DEK, appends into raw that a resumed batch skips by Delta transaction
id), with the Vault provider: a local OpenBao dev server this benchmark starts itself, reached through a
``requests.Session`` that counts every request. The same lake is then de-identified twice
(:func:`bench.deid_bench.lake_deid_figures`): a first run, and a second with nothing new. Every ratio is measured
in one run; each table's time goes to stderr as it finishes.

    python bench/ingest_bench.py                      # 100,000 patients
    python bench/ingest_bench.py --patients 20000
    python bench/run.py --only ingest --ingest-patients 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Figure = tuple[str, float, str, str]
TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes")
PATIENTS = 100_000


def progress(what: str, rows: int, begun: float) -> None:
    """Say on stderr how long one table took, so that a run of an hour shows where it is."""
    took = time.perf_counter() - begun
    print(f"  {what}: {rows:,} rows in {took:,.1f} s ({rows / took:,.0f} rows/s)", file=sys.stderr, flush=True)


def load() -> str:
    """The machine's load averages, to print beside figures measured on a shared machine."""
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Hand back what the allocators hold free (Arrow's pool, glibc's heap: a plain append of 33 million rows
    leaves about a GB of them), then reset this process's peak resident set size (Linux: ``clear_refs`` 5), so
    :func:`peak_mib` reads the peak from here on."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_mib() -> float:
    """The peak resident set size since the last :func:`reset_peak` (``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _generate(out: Path, patients: int) -> None:
    code = ("from pipeline.synthetic import generate\n"
            f"generate({str(out)!r}, patients={patients}, seed=3, formats=['parquet'], defect_rate=0.02)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   stdout=subprocess.DEVNULL)


class CountingSession:
    """Builds a ``requests.Session`` that counts what it sends, by method and Vault path."""

    def __new__(cls) -> Any:
        import requests

        class _Counting(requests.Session):
            def __init__(self) -> None:
                super().__init__()
                self.sent: Counter[str] = Counter()

            def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                self.sent[f"{method} {url.split('/v1/', 1)[-1]}"] += 1
                return super().request(method, url, *args, **kwargs)

            def take(self) -> Counter[str]:
                sent, self.sent = self.sent, Counter()
                return sent

        return _Counting()


def ingest_figures(patients: int = PATIENTS, *, deid: bool = True) -> Iterator[Figure]:
    """Yield (name, value, unit, details) for ingestion (and de-identification) of ``patients`` patients."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.deid_bench import lake_deid_figures
    from ingestion.batch import ingest
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from storage_security.audit.log import AuditLog
    from storage_security.keys._vault import VaultClient
    from storage_security.keys.vault_transit import VaultTransitKeys
    from storage_security.local_vault.openbao import dev_server
    from storage_security.protected import ProtectedLake

    with tempfile.TemporaryDirectory(prefix="medguard-ingest-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        _generate(root / "src", patients)
        print(f"  generated {patients:,} patients in {time.perf_counter() - started:,.0f} s", file=sys.stderr)
        counts = {t: pq.ParquetFile(root / "src" / f"{t}.parquet").metadata.num_rows for t in TABLES}
        settings = load_settings(home=str(root / "home"), lake_root=str(root / "lake"))
        settings = settings.model_copy(update={"ingestion": settings.ingestion.model_copy(update={"workers": 0})})

        with dev_server(root / "openbao.log") as server:
            session = CountingSession()
            provider = VaultTransitKeys(VaultClient(server.addr, token=server.token, session=session),
                                        mount=server.transit_mount)
            provider.ensure_key("medguard-kek")
            provider.ensure_key("medguard-audit")
            lake = Lake(settings)

            def plake(principal: str) -> ProtectedLake:
                return ProtectedLake(lake, provider, principal=principal,
                                     audit=AuditLog(lake, provider, key_name="medguard-audit"))

            writer = plake("svc:ingest")
            # Warm-up (imports, the lake's pseudonym key): a validate-only pass over a small table.
            ingest(settings, source="tabular", path=root / "src" / "outcomes.parquet", table="outcomes",
                   plake=writer, stages=(), docs=False)
            session.take()

            plain_s: dict[str, float] = {}
            ingest_s: dict[str, float] = {}
            quarantined = 0
            plain = Lake(settings.model_copy(update={"lake_root": str(root / "plain")}))
            ingest_peak = 0.0
            # Table by table, the plain append right before the ingestion of the same rows: both see the same load.
            # The peak memory is read per ingestion, the kernel's high-water mark reset after each plain append
            # (delta-rs buffers much of a 33-million-row plain append: that is the baseline's, not ingestion's).
            for table in TABLES:
                begun = time.perf_counter()
                source = pq.ParquetFile(root / "src" / f"{table}.parquet")
                plain.append("raw", table, pa.RecordBatchReader.from_batches(source.schema_arrow,
                                                                             source.iter_batches(1 << 20)))
                plain_s[table] = time.perf_counter() - begun
                progress(f"plain/{table}", counts[table], begun)
                reset_peak()
                print(f"  resident before ingest/{table}: {peak_mib():,.0f} MiB", file=sys.stderr, flush=True)
                begun = time.perf_counter()
                report = ingest(settings, source="tabular", path=root / "src" / f"{table}.parquet", table=table,
                                plake=writer, docs=False)
                ingest_s[table] = time.perf_counter() - begun
                ingest_peak = max(ingest_peak, peak_mib())
                quarantined += report.tables[table].quarantined
                progress(f"ingest/{table}", counts[table], begun)
            requests = session.take()
            at = load()
            rows = sum(counts.values())
            detail = f"{patients:,} patients, Vault provider (OpenBao dev server), Parquet, {at}"
            for table in ("patients", "observations"):
                yield (f"ingest.{table}.rows_per_s", counts[table] / ingest_s[table], "rows/s",
                       f"{counts[table]:,} rows; {detail}")
                yield (f"ingest.{table}.slowdown_vs_plain_load", ingest_s[table] / plain_s[table], "x",
                       f"plain Delta append of the same rows: {counts[table] / plain_s[table]:,.0f} rows/s")
            yield ("ingest.rows_per_s", rows / sum(ingest_s.values()), "rows/s",
                   f"all {len(TABLES)} tables, {rows:,} rows; {detail}")
            yield ("ingest.slowdown_vs_plain_load", sum(ingest_s.values()) / sum(plain_s.values()), "x",
                   f"plain Delta append: {rows / sum(plain_s.values()):,.0f} rows/s")
            yield ("ingest.vault_requests_per_1000_patients", 1000 * sum(requests.values()) / patients, "requests",
                   f"{sum(requests.values())} requests for the first ingestion: {json.dumps(dict(requests))}")
            yield "ingest.quarantined", quarantined, "rows", f"{quarantined / rows:.2%} of rows (2 % defect rate)"
            yield ("ingest.peak_rss", ingest_peak, "MiB",
                   f"this process while ingesting {patients:,} patients (the plain appends' own peaks excluded)")
            if deid:
                yield from lake_deid_figures(lambda: plake("svc:deidentify"), settings, session, patients, rows)
                yield "deid.peak_rss", peak_rss_mib(), "MiB", "this process after ingestion and both runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=PATIENTS)
    parser.add_argument("--no-deid", action="store_true", help="skip the de-identification of the lake")
    args = parser.parse_args()
    for name, value, unit, details in ingest_figures(args.patients, deid=not args.no_deid):
        print(f"{name}: {value:,.3g} {unit}  ({details})", flush=True)


if __name__ == "__main__":
    main()
