"""Crash safety: an ingestion process killed at random points, then re-run, ends exactly like a clean run."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingestion.batch import ingest
from ingestion.sources._keyed import FILE_LABEL
from pipeline.lake import Lake
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake

pytestmark = pytest.mark.integration  # ingestion in a subprocess killed at random points

WORKER = Path(__file__).with_name("_crash_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _state(plake: ProtectedLake) -> dict[str, list[str]]:
    lake = plake.lake
    # Record hashes, pseudonyms, identity fingerprints and batch ids are keyed per lake: rows are compared by content,
    # decrypted.
    state = {}
    for t in lake.tables("raw"):
        data = plake.read("raw", t, decrypt=True)
        data = data.drop_columns([c for c in ("_record_hash", "patient_pseudonym", "_ingested_at", "_identity",
                                              "_batch_id") if c in data.column_names])
        state[f"raw.{t}"] = sorted(repr(sorted(row.items())) for row in data.to_pylist())
    if lake.exists("quarantine", "records"):
        # Their ids digest the keyed batch id and file labels: rows are compared by table, rules and position.
        rows = lake.read_arrow("quarantine", "records", columns=["table_name", "rules", "position"]).to_pylist()
        state["quarantine"] = sorted(repr((r["table_name"], r["rules"], FILE_LABEL.sub("fd_?", r["position"])))
                                     for r in rows)
    return state


def _killed_run(lake_root: Path, keyring_path: Path, master: bytes, source: str, path: Path, delay: float) -> bool:
    """Start a worker, let it ingest for ``delay`` seconds, SIGKILL it; True if it finished first."""
    child = subprocess.Popen([sys.executable, str(WORKER), str(lake_root), str(keyring_path), master.hex(), source,
                              str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(delay)
        finished = child.poll() is not None
        child.kill()
        child.wait(timeout=30)
        return finished
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.parametrize("source", ["hl7"])
def test_when_ingestion_is_killed_at_random_points_then_a_rerun_equals_a_clean_run(
        population: Path, settings, tmp_path: Path, source: str) -> None:
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(tmp_path / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    small = settings.model_copy(update={"ingestion": settings.ingestion.model_copy(update={"chunk_rows": 600})})

    clean_settings = small.model_copy(update={"lake_root": str(tmp_path / "clean")})
    clean = ProtectedLake(Lake(clean_settings), ring, principal="svc:ingest")
    started = time.perf_counter()
    expected_report = ingest(clean_settings, source=source, path=population / source, plake=clean, docs=False)
    duration = time.perf_counter() - started
    expected = _state(clean)

    rng = random.Random(20261123)
    crashed_settings = small.model_copy(update={"lake_root": str(tmp_path / "crashed")})
    kills = 0
    for _ in range(3):  # several crashes into the same lake, each at a random moment, before one clean finish
        delay = rng.uniform(0.1, max(duration, 0.5))
        kills += not _killed_run(tmp_path / "crashed", tmp_path / "keyring.json", master, source,
                                 population / source, delay)
    assert kills >= 1, "no trial was killed mid-run"
    crashed = ProtectedLake(Lake(crashed_settings), ring, principal="svc:ingest")
    report = ingest(crashed_settings, source=source, path=population / source, plake=crashed, docs=False)
    assert _state(crashed) == expected
    assert {t: c.to_dict() for t, c in report.tables.items()} == \
        {t: c.to_dict() for t, c in expected_report.tables.items()}
