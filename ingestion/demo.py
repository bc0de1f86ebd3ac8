"""Demo step ``30_ingest``: the ``medguard_ingest`` DAG on the demo extract, then what it left in the lake.

The DAG validates, quarantines and loads every source of the extract (tabular Parquet, FHIR, HL7 v2, notes). The
step reports from the lake, not from the run: raw rows per table, quarantined records by the rule they broke, and
where the Data Docs of the validation are.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.demo import DEMO_SOURCES, run_dag_step, table_rows
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings

DAG_ID = "medguard_ingest"


def step(settings: Settings) -> dict[str, Any]:
    """Run the ingest DAG on ``$MEDGUARD_HOME/sources/demo``; returns the run and the lake's raw and quarantine
    counts (the closing summary's ``quarantine_by_rule`` and ``data_docs``)."""
    sources = settings.home / DEMO_SOURCES
    run = run_dag_step(settings, DAG_ID, {"sources_dir": str(sources), "tabular_format": "parquet"})
    lake = Lake(settings)
    raw_rows = {t: table_rows(lake, Zone.RAW, t) for t in lake.tables(Zone.RAW)}
    by_rule = quarantine_by_rule(lake)
    docs = data_docs(lake)
    return {"sources": str(sources), "dag_run": run, "raw_rows": raw_rows, "quarantined": sum(by_rule.values()),
            "summary": {"quarantine_by_rule": by_rule, "data_docs": docs}}


def quarantine_by_rule(lake: Lake) -> dict[str, int]:
    """Quarantined records per contract rule broken (a record breaking two rules counts under each), most first.

    Reads the plaintext ``rules`` column of the quarantine zone only; the sealed payloads are never touched.
    """
    from ingestion.batch import QUARANTINE_TABLE

    if not lake.exists(Zone.QUARANTINE, QUARANTINE_TABLE):
        return {}
    rules = lake.read_arrow(Zone.QUARANTINE, QUARANTINE_TABLE, columns=["rules"]).column("rules").to_pylist()
    return dict(Counter(rule for broken in rules for rule in broken or ()).most_common())


def data_docs(lake: Lake) -> list[str]:
    """The Data Docs pages the ingestion batches in the ledger built, each once."""
    from ingestion.batch import LEDGER_TABLE

    if not lake.exists(Zone.QUARANTINE, LEDGER_TABLE):
        return []
    pages = lake.read_arrow(Zone.QUARANTINE, LEDGER_TABLE, columns=["data_docs"]).column("data_docs").to_pylist()
    return sorted({page for page in pages if page})
