"""Fixtures of the ingestion tests: one small synthetic population per run, a fresh protected lake per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.lake import Lake
from pipeline.settings import Settings
from storage_security.protected import ProtectedLake


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 patients in every format with 5 % defects (each one listed in defects.jsonl)."""
    from pipeline.synthetic import generate

    out = tmp_path_factory.mktemp("ingest-population") / "pop"
    generate(out, patients=60, seed=11, defect_rate=0.05)
    return out


@pytest.fixture(scope="session")
def defects(population: Path) -> list[dict]:
    return [json.loads(line) for line in (population / "defects.jsonl").read_text().splitlines()]


@pytest.fixture
def ing_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The run's settings on a fresh lake, one chunk per source (the crash test uses small chunks)."""
    ingestion = settings.ingestion.model_copy(update={"chunk_rows": 50_000})
    return settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "ingestion": ingestion})


@pytest.fixture
def plake(ing_settings: Settings, keyring) -> ProtectedLake:
    return ProtectedLake(Lake(ing_settings), keyring, principal="svc:ingest")
