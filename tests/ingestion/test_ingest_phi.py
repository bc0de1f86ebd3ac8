"""No plaintext PHI on disk: every file under the lake root (Parquet decoded too) is searched for ingested PHI."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.batch import ingest

SOURCES = [("tabular", "patients.csv", "patients"), ("tabular", "patients.jsonl", "patients"),
           ("notes", "notes.jsonl", None), ("fhir", "fhir", None), ("hl7", "hl7", None)]


def _phi_values(population: Path) -> set[str]:
    patients = pq.read_table(population / "patients.parquet").to_pylist()
    values: set[str] = set()
    for row in patients:
        for column in ("first_name", "last_name", "ssn", "mrn", "phone", "email", "address"):
            if row[column]:
                values.add(row[column])
        values.add(f"{row['first_name']} {row['last_name']}")
    # Short first names ("Amy") also occur inside ordinary words; full names and identifiers do not.
    return {v for v in values if len(v) >= 6}


def _strings(table: pa.Table) -> list[str]:
    out = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out += [v for v in column.to_pylist() if v]
        elif pa.types.is_binary(column.type):
            out += [v.decode("utf-8", "replace") for v in column.to_pylist() if v]
    return out


def test_when_every_format_is_ingested_then_no_file_under_the_lake_root_holds_plaintext_phi(
        population: Path, ing_settings, plake) -> None:
    for source, name, table in SOURCES:
        ingest(ing_settings, source=source, path=population / name, table=table, plake=plake)
    assert plake.read("raw", "patients", decrypt=True).num_rows > 0
    needles = _phi_values(population)
    assert len(needles) > 100
    root = Path(plake.lake.root)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    leaks = []
    for file in files:
        texts = [file.read_bytes().decode("utf-8", "replace")]
        if file.suffix == ".parquet":
            texts += _strings(pq.read_table(file))
        blob = "\n".join(texts)
        leaks += [(str(file.relative_to(root)), v) for v in needles if v in blob]
    assert leaks == []


def test_when_data_docs_are_built_then_they_hold_no_phi(population: Path, ing_settings, plake) -> None:
    report = ingest(ing_settings, source="tabular", path=population / "patients.csv", table="patients", plake=plake)
    assert report.tables["patients"].quarantined > 0 and report.data_docs
    docs = Path(report.data_docs).parent
    blob = "\n".join(p.read_text(errors="replace") for p in docs.rglob("*.html"))
    assert "patients" in blob
    assert [v for v in _phi_values(population) if v in blob] == []
