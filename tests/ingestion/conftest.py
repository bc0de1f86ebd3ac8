"""Fixtures of the ingestion tests: the population's defects, a fresh protected lake per test (``population`` is
the run's, in tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.lake import Lake
from pipeline.settings import Settings
from storage_security.protected import ProtectedLake


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


@pytest.fixture
def unlabel(plake: ProtectedLake):
    """``unlabel(text, folder)``: ``text`` with each keyed file label (``fd_…``) the lake wrote replaced by the name
    of the file of ``folder`` it stands for (or ``folder``'s own name): what ``medguard ingest --locate`` does."""
    from ingestion.sources._keyed import FILE_LABEL, SourceKeys

    keys = SourceKeys.of_lake(plake)

    def named(text: str, folder: Path) -> str:
        entries = [folder, *folder.iterdir()] if folder.is_dir() else [folder]
        names = {keys.file_label(entry.name): entry.name for entry in entries}
        return FILE_LABEL.sub(lambda found: names.get(found.group(0), found.group(0)), text)

    return named
