"""De-identification throughput: notes/s for detection + masking against vanilla Presidio one note at a time, and
structured rows/s published raw → deidentified.

Both note paths run in this process on the same generated notes. The baseline is what a first Presidio script
does: default recognizers on the same spaCy model, ``AnalyzerEngine.analyze`` then ``AnonymizerEngine.anonymize``
for each note. medguard's path is batched spaCy ``pipe`` (only the NER pipe of the model) over a ``spawn`` pool
(one engine per process) and keyed surrogates through presidio-anonymizer. Engines are built before timing on
both sides (model loading is per process, not per note); the pool's start-up is reported on its own.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "storage_security" / "deid"))

Figure = tuple[str, float, str, str]


class _Vanilla:
    """Presidio as a first script uses it: default recognizers, analyze then anonymize, one note at a time."""

    def __init__(self) -> None:
        from presidio_anonymizer import AnonymizerEngine

        from storage_security.deid.detection import build_analyzer

        self.analyzer, self.anonymizer = build_analyzer("vanilla"), AnonymizerEngine()
        self.analyzer.analyze(text="warm-up", language="en")  # model load is not per-note work

    def run(self, texts: list[str]) -> float:
        started = time.perf_counter()
        for text in texts:
            self.anonymizer.anonymize(text=text, analyzer_results=self.analyzer.analyze(text=text, language="en"))
        return time.perf_counter() - started


def deid_figures(notes: int = 200, *, processes: int = 2, rounds: int = 3) -> Iterator[Figure]:
    from _deid_raw import load_raw

    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from pipeline.synthetic import generate
    from storage_security.deid.deidentify import Deidentifier
    from storage_security.deid.detection import DetectorPool, PhiDetector
    from storage_security.deid.evaluation import load_labelled_notes
    from storage_security.deid.masking import NoteMasker
    from storage_security.deid.operators import MaskingKeys
    from storage_security.keys.keyring import LocalKeyring
    from storage_security.protected import ProtectedLake

    with tempfile.TemporaryDirectory(prefix="medguard-deid-bench-") as tmp:
        root = Path(tmp)
        generate(root / "src", patients=notes, seed=3, formats=["parquet", "notes"], defect_rate=0.0)
        texts = [n.text for n in load_labelled_notes(root / "src" / "notes.jsonl")]
        ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
        ring.ensure_key("medguard-kek")
        ring.ensure_key("medguard-audit")
        settings = load_settings(home=root / "home")
        plake = ProtectedLake(Lake(settings), ring, principal="svc:bench")

        keys = MaskingKeys(plake.pseudonymizer)
        masker = NoteMasker(None, keys, {"default": "surrogate"})
        masker.mask(texts[:1], [7], spans=[[]])
        vanilla = _Vanilla()
        single_detector = PhiDetector("medguard")
        single_detector.detect_batch(texts[:2])
        started = time.perf_counter()
        with DetectorPool(processes) as pool:
            pool.warm()
            startup = time.perf_counter() - started
            times: dict[str, list[float]] = {"vanilla": [], "pool": [], "single": []}
            # Interleaved rounds on a shared machine: drift hits every side alike; the best round of each counts.
            for _ in range(rounds):
                times["vanilla"].append(vanilla.run(texts))
                started = time.perf_counter()
                spans = pool.detect(texts, chunk_size=max(8, min(64, len(texts) // (processes * 4))))
                masker.mask(texts, [7] * len(texts), spans=spans)
                times["pool"].append(time.perf_counter() - started)
                started = time.perf_counter()
                masker.mask(texts, [7] * len(texts), spans=single_detector.detect_batch(texts))
                times["single"].append(time.perf_counter() - started)
        baseline, ours, single = (min(times[k]) for k in ("vanilla", "pool", "single"))
        n = len(texts)
        yield ("deid.vanilla_presidio_notes_per_s", n / baseline, "notes/s",
               "default recognizers, same model, analyze + anonymize one note at a time")
        yield ("deid.notes_per_s", n / ours, "notes/s",
               f"{n} notes, detection + keyed surrogates, {processes} spawned processes")
        yield ("deid.notes_speedup_vs_vanilla", baseline / ours, "x",
               f"{processes} processes, best of {rounds} interleaved rounds; target >= 3x")
        yield ("deid.notes_per_s_one_process", n / single, "notes/s", "batched spaCy pipe, one process")
        yield ("deid.notes_speedup_one_process", baseline / single, "x", "one process vs vanilla, same rounds")
        yield ("deid.pool_startup", startup, "s", f"{processes} processes each loading spaCy + Presidio, once")

        load_raw(plake, root / "src", ("patients", "encounters", "observations", "conditions", "medications"))
        deid = Deidentifier(plake, settings, detector=PhiDetector("medguard"))
        rows, started = 0, time.perf_counter()
        for table in ("patients", "encounters", "observations", "conditions", "medications"):
            rows += deid.publish(table)["rows_in"]
        seconds = time.perf_counter() - started
        yield ("deid.structured_rows_per_s", rows / seconds, "rows/s",
               f"{rows:,} rows of 5 tables: decrypt, classify, mask, k-anonymity gate, write, audit")


def main(argv: list[str] | None = None) -> Any:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    for name, value, unit, details in deid_figures(args.notes, processes=args.processes):
        print(f"{name}: {value:,.3g} {unit}  ({details})", flush=True)


if __name__ == "__main__":
    main()


def lake_deid_figures(make_plake: Any, settings: Any, session: Any, patients: int, rows: int) -> Iterator[Figure]:
    """De-identification of a lake :mod:`bench.ingest_bench` just ingested: a first run, then a second with nothing
    new, in one process; with the Vault requests each made (``session`` counts them, see ingest_bench).

    Args:
        make_plake: builds the ``svc:deidentify`` ProtectedLake over the ingested lake.
        settings: the lake's settings.
        session: the counting ``requests.Session`` the provider talks through.
        patients, rows: the population's size, for the per-1,000-patients and rows/s figures.
    """
    import os

    from storage_security.deid.deidentify import Deidentifier

    tables = ["patients", "encounters", "observations", "conditions", "medications", "outcomes"]
    deid = Deidentifier(make_plake(), settings)
    session.take()
    started = time.perf_counter()
    reports = deid.publish_all(tables)
    first = time.perf_counter() - started
    first_requests = session.take()
    refused = [name for name, report in reports.items() if "refused" in report]
    started = time.perf_counter()
    deid.publish_all(tables)
    again = time.perf_counter() - started
    again_requests = session.take()
    at = "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    yield ("deid.lake_first_run_s", first, "s",
           f"{rows:,} raw rows of {patients:,} patients, {len(tables)} tables{', refused: ' if refused else ''}"
           f"{', '.join(refused)}; {at}")
    yield "deid.lake_rows_per_s", rows / first, "rows/s", "raw rows read, unsealed, masked and published"
    yield ("deid.lake_vault_requests_per_1000_patients", 1000 * sum(first_requests.values()) / patients, "requests",
           f"{sum(first_requests.values())} requests in the first run (incl. the masking keys made once a lake)")
    yield "deid.lake_noop_run_s", again, "s", "the same process again, nothing new in raw"
    yield ("deid.lake_noop_vault_requests", sum(again_requests.values()), "requests",
           "the no-op second run (its DEKs still in memory)")
