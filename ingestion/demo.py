"""Demo step ``30_ingest``: ingest the demo population in every format (CSV, Parquet, JSON lines, FHIR, HL7, notes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.demo import DEMO_SOURCES, DemoReport
from pipeline.settings import Settings


def step(settings: Settings, report: DemoReport) -> dict[str, Any]:
    """Ingest every source of the demo extract; returns per-table counts and the raw zone's row counts.

    Tabular tables are ingested from each of their formats, each a batch of its own: ``raw`` is append-only and
    keeps a record once per batch under the same ``_record_hash``; de-identification publishes it once.
    """
    from ingestion.batch import PRINCIPAL, ingest_extract
    from pipeline.lake import Lake
    from storage_security.protected import ProtectedLake

    generated = report.steps.get("generate", {})
    sources = Path(generated.get("out_dir") or settings.home / DEMO_SOURCES)
    plake = ProtectedLake.from_settings(settings, principal=PRINCIPAL)
    runs: dict[str, Any] = {}
    for fmt in ("csv", "parquet", "jsonl"):
        runs[f"tabular-{fmt}"] = ingest_extract(settings, source="tabular", sources_dir=sources, tabular_format=fmt,
                                               plake=plake)
    for source in ("fhir", "hl7", "notes"):
        runs[source] = ingest_extract(settings, source=source, sources_dir=sources, plake=plake)
    lake = Lake(settings)
    raw_rows = {t: lake.read_arrow("raw", t, columns=["_record_hash"]).num_rows for t in lake.tables("raw")}
    quarantined = sum(c.get("quarantined", 0) for run in runs.values() for c in run["tables"].values())
    return {"sources": str(sources), "runs": runs, "raw_rows": raw_rows, "quarantined": quarantined}
