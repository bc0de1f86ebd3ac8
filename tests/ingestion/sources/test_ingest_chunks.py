"""Every reader cuts its source into the same records whatever the chunk size: none lost, none repeated."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ingestion.contract import builtin_contract
from ingestion.sources._base import SourceChunk
from ingestion.sources.fhir import read_fhir
from ingestion.sources.hl7v2 import read_hl7
from ingestion.sources.notes_text import read_note_files
from ingestion.sources.tabular import read_tabular

LIMIT = 1 << 20


def _columns(table: str) -> list[str]:
    return list(builtin_contract(table).columns)


def _records(chunks: list[SourceChunk]) -> tuple[Counter, Counter]:
    """(table, position) of every record and rejected record, and the units the chunks counted."""
    records: Counter = Counter()
    units: Counter = Counter()
    for chunk in chunks:
        for table, rows in chunk.tables.items():
            records.update((table, position) for position in rows.positions)
        records.update((r.table, r.position, r.rule) for r in chunk.rejected)
        units.update(chunk.units)
    return records, units


def _readers(population: Path, notes: Path) -> dict[str, tuple]:
    return {
        "csv": (lambda rows: read_tabular(population / "observations.csv", "observations", _columns("observations"),
                                          chunk_rows=rows, max_record_bytes=LIMIT), True),
        "jsonl": (lambda rows: read_tabular(population / "encounters.jsonl", "encounters", _columns("encounters"),
                                            chunk_rows=rows, max_record_bytes=LIMIT), True),
        "notes": (lambda rows: read_note_files(notes, _columns("notes"), chunk_rows=rows, max_record_bytes=LIMIT),
                  True),
        "fhir": (lambda rows: read_fhir(population / "fhir", chunk_rows=rows, max_record_bytes=LIMIT), False),
        "hl7": (lambda rows: read_hl7(population / "hl7", chunk_rows=rows, max_record_bytes=LIMIT), False),
    }


@pytest.fixture(scope="module")
def note_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("note-files")
    for i in range(23):
        header = f"patient_id: PAT{i:06d}\nencounter_id: ENC{i:06d}\n" if i % 7 else "no header block here"
        (folder / f"N-{i:04d}.txt").write_text(f"{header}\n\nSeen today, note {i}.\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("source", ["csv", "jsonl", "notes", "fhir", "hl7"])
def test_small_chunks_hold_the_same_records_as_one_chunk(source: str, population: Path, note_dir: Path) -> None:
    read, per_record = _readers(population, note_dir)[source]
    whole = list(read(10_000_000))
    small = list(read(7))

    assert len(whole) == 1
    assert len(small) > 3, "the source is big enough to need several chunks of 7"
    assert [c.index for c in small] == list(range(len(small)))
    assert _records(small) == _records(whole)
    assert all(c.size >= 7 for c in small[:-1]), "only the last chunk may be short"
    if per_record:  # one line or file is one record, so chunks are cut exactly
        assert all(c.size == 7 for c in small[:-1])
        assert all(sum(c.units.values()) == c.size for c in small)
