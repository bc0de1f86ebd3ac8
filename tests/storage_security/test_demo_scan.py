"""The demo's final scan: every file under MEDGUARD_HOME and this user's new files in the system temp folder are
searched for the demo patients' identifiers (issue 18, "Done when": a scan of every place, not only the lake)."""

from __future__ import annotations

import csv
import gzip
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage_security import demo
from storage_security.demo import demo_identifiers, scan_for_identifiers


@pytest.fixture
def needles(tmp_path: Path) -> dict[bytes, str]:
    extract = tmp_path / "given" / "patients.csv"
    extract.parent.mkdir()
    with extract.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "first_name", "last_name", "ssn", "mrn"])
        writer.writeheader()
        writer.writerow({"patient_id": "PAT1", "first_name": "Hannah", "last_name": "Marshall",
                         "ssn": "001-01-7920", "mrn": "00104729"})
    return demo_identifiers(extract)


def test_when_the_extract_is_read_then_full_names_and_identifier_columns_are_the_needles(needles) -> None:
    assert needles == {b"Hannah Marshall": "full_name", b"001-01-7920": "ssn", b"00104729": "mrn"}


@pytest.mark.parametrize("where", ["airflow/logs/dag_id=ingest/attempt=1.log", "models/t2d/v1/card.md",
                                   "reports/ingest/data_docs/index.html", "tmp/spill-0001"])
def test_when_a_plaintext_name_is_planted_anywhere_in_the_home_then_the_scan_names_the_file_and_kind(
        tmp_path: Path, needles, where: str) -> None:
    home = tmp_path / "home"
    planted = home / where
    planted.parent.mkdir(parents=True)
    planted.write_text("... the patient Hannah Marshall was seen on ...")
    (home / "lake" / "raw").mkdir(parents=True)
    (home / "lake" / "raw" / "clean.txt").write_text("ps1_ab12 nothing here")

    found, scanned = scan_for_identifiers(home, needles)

    assert found == {str(planted): {"full_name"}}
    assert scanned == 2


def test_when_the_identifier_hides_in_compressed_parquet_or_straddles_a_read_piece_then_it_is_still_found(
        tmp_path: Path, needles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_PIECE_BYTES", 4096)  # files are read in pieces: a small one keeps the test fast
    tmp_path = tmp_path / "home"
    tmp_path.mkdir()
    pq.write_table(pa.table({"note": ["ssn 001-01-7920 " * 200]}), tmp_path / "part.parquet", compression="zstd")
    (tmp_path / "big.bin").write_bytes(b"x" * (demo._PIECE_BYTES - 4) + b" 00104729 ")
    (tmp_path / "note.gz").write_bytes(gzip.compress(b"Hannah Marshall"))  # gzip is not decoded: a known gap

    found, _ = scan_for_identifiers(tmp_path, needles)

    assert found == {str(tmp_path / "part.parquet"): {"ssn"}, str(tmp_path / "big.bin"): {"mrn"}}


def test_when_the_sources_are_excluded_or_a_shared_folder_is_filtered_by_time_then_those_files_are_skipped(
        tmp_path: Path, needles) -> None:
    tmp_path = tmp_path / "home"
    sources = tmp_path / "sources" / "demo"
    sources.mkdir(parents=True)
    (sources / "patients.csv").write_text("Hannah Marshall")
    old = tmp_path / "older.log"
    old.write_text("Hannah Marshall")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    link = tmp_path / "link.txt"
    link.symlink_to(sources / "patients.csv")

    found, _ = scan_for_identifiers(tmp_path, needles, exclude=(tmp_path / "sources",), since=time.time() - 60)

    assert found == {}
    assert set(scan_for_identifiers(tmp_path, needles)[0]) == {str(sources / "patients.csv"), str(old)}


def test_when_a_shared_temp_folder_is_scanned_then_only_what_appeared_since_the_run_began_is_read(
        tmp_path: Path, needles) -> None:
    shared = tmp_path / "tmp"
    (shared / "old-run").mkdir(parents=True)
    (shared / "old-run" / "x.log").write_text("Hannah Marshall")
    hour_ago = time.time() - 3600
    os.utime(shared / "old-run", (hour_ago, hour_ago))
    (shared / "spark-1234").mkdir()
    (shared / "spark-1234" / "spill.bin").write_bytes(b"\x00Hannah Marshall\x00")
    (shared / "other-home" / "sources" / "demo").mkdir(parents=True)
    (shared / "other-home" / "sources" / "demo" / "patients.csv").write_text("Hannah Marshall")
    # Another run's generated extract and a code checkout's test data: plaintext by nature, wherever they sit.
    (shared / "pytest-of-me" / "test0" / "extract").mkdir(parents=True)
    (shared / "pytest-of-me" / "test0" / "extract" / "patients.parquet").write_text("Hannah Marshall")
    (shared / "pytest-of-me" / "test0" / "extract" / "fhir").mkdir()
    (shared / "pytest-of-me" / "test0" / "extract" / "fhir" / "b.json").write_text("Hannah Marshall")
    (shared / "checkout" / "tests").mkdir(parents=True)
    (shared / "checkout" / "pyproject.toml").write_text("")
    (shared / "checkout" / "tests" / "test_x.py").write_text("'Hannah Marshall'")

    found, _ = scan_for_identifiers(shared, needles, since=time.time() - 60)

    assert found == {str(shared / "spark-1234" / "spill.bin"): {"full_name"}}


@pytest.mark.integration
def test_when_the_lake_is_on_an_object_store_then_its_objects_are_scanned_through_the_store(
        tmp_path: Path, needles, s3_options: dict[str, str]) -> None:
    from pipeline.lake import Lake, Zone
    from pipeline.settings import load_settings
    from storage_security.demo import scan_store_for_identifiers

    settings = load_settings(home=tmp_path / "home", lake_root="s3://medguard-test/demo-scan/lake",
                             storage_options=s3_options)
    lake = Lake(settings)
    lake.append(Zone.DEIDENTIFIED, "clean", pa.table({"age_band": ["40-44"], "note": ["no identifier here"]}))

    clean, scanned = scan_store_for_identifiers(settings, needles)
    lake.append(Zone.DEIDENTIFIED, "leaky", pa.table({"age_band": ["40-44"], "note": ["seen by Hannah Marshall"]}))
    leaky, _ = scan_store_for_identifiers(settings, needles)

    assert clean == {} and scanned >= 2  # a data file and its commit, read from the store
    assert not (tmp_path / "home" / "lake").exists()
    [(path, kinds)] = [(p, k) for p, k in leaky.items() if p.endswith(".parquet")]
    assert path.startswith("s3://medguard-test/demo-scan/lake/deidentified/leaky/") and kinds == {"full_name"}
