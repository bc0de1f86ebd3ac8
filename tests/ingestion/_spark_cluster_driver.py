"""Driver of the Spark-cluster test, run in its own process (one Spark session per process).

``python _spark_cluster_driver.py SOURCES MASTER`` ingests the tabular extracts of ``SOURCES`` and de-identifies
the raw zone twice in one lake: first in this process (``compute=local``), then through the executors of the
standalone ``MASTER`` (``compute=spark``), after removing the zones the first run wrote (the keys stay, so
pseudonyms are the same). It prints one JSON line: per table, the row counts of both runs and whether the tables
are equal (raw and quarantine decrypted, sorted by their row key, ``_ingested_at`` left out), and the Spark jobs
each layer ran on the cluster, and each run's wall time. Key provider and home come from the environment
(``MEDGUARD_*``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from ingestion.batch import ingest_extract
from pipeline.lake import Lake
from pipeline.settings import Settings, load_settings
from storage_security.deid.deidentify import Deidentifier
from storage_security.protected import ProtectedLake

_SORT = {"raw": "_record_hash", "quarantine": "quarantine_id"}


def snapshot(settings: Settings) -> dict[str, pa.Table]:
    plake = ProtectedLake.from_settings(settings, principal="svc:test")
    tables: dict[str, pa.Table] = {}
    for zone in ("raw", "quarantine", "deidentified"):
        for name in plake.tables(zone):
            if zone == "quarantine" and name != "records":
                continue  # the ledger holds timestamps and Data Docs paths of its run
            data = plake.read(zone, name, decrypt=zone != "deidentified", purpose="test")
            data = data.drop_columns([c for c in data.column_names if c in ("_ingested_at", "finished_at")])
            key = _SORT.get(zone) or ("row_id" if "row_id" in data.column_names else data.column_names[0])
            tables[f"{zone}.{name}"] = data.sort_by([(key, "ascending")])
    return tables


def _run(settings: Settings, sources: Path) -> dict[str, Any]:
    loaded = ingest_extract(settings, source="tabular", sources_dir=sources)
    published = Deidentifier.from_settings(settings).publish_all()
    return {"tables": loaded["tables"], "published": published}


def _jobs(group: str) -> list[str]:
    from pyspark.sql import SparkSession

    tracker = SparkSession.getActiveSession().sparkContext.statusTracker()
    return [tracker.getJobInfo(job).status for job in tracker.getJobIdsForGroup(group)]


def main(sources: Path, master: str) -> dict[str, Any]:
    from ingestion.spark import JOB_GROUP
    from storage_security.deid.spark import MASK_JOB_GROUP

    base = {"ingestion": {"chunk_rows": 400}}
    local = load_settings(compute="local", **base)
    started = time.perf_counter()
    first = _run(local, sources)
    seconds = {"local": round(time.perf_counter() - started, 1)}
    expected = snapshot(local)
    lake = Lake(local)
    for zone in ("raw", "quarantine", "deidentified"):
        shutil.rmtree(Path(str(lake.root)) / zone)
    on_spark = load_settings(compute="spark", spark={"master": master, "ui_enabled": False,
                                                     "driver_memory": "1g"},
                             deidentify={"spark_min_rows": 1}, **base)
    started = time.perf_counter()
    second = _run(on_spark, sources)
    seconds["spark"] = round(time.perf_counter() - started, 1)
    found = snapshot(on_spark)
    tables = {name: {"local_rows": expected[name].num_rows if name in expected else None,
                     "spark_rows": found[name].num_rows if name in found else None,
                     "equal": name in expected and name in found and expected[name].equals(found[name])}
              for name in sorted(set(expected) | set(found))}
    masking = {name: report.get("masking") for name, report in second["published"].items()}
    return {"tables": tables, "counts_equal": first["tables"] == second["tables"],
            "published_local": sorted(n for n, r in first["published"].items() if "refused" not in r),
            "published_spark": sorted(n for n, r in second["published"].items() if "refused" not in r),
            "masking": masking, "seconds": seconds,
            "jobs": {"ingest": _jobs(JOB_GROUP), "deidentify": _jobs(MASK_JOB_GROUP)}}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(Path(sys.argv[1]), sys.argv[2]), default=str) + "\n")
