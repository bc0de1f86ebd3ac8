"""Any research CSV loads with no contract: the draft's names, types, missing values, patient key and row key.

The witnesses are two public tables nobody here wrote (tests/fixtures/tabular/SOURCE.md): the UCI heart-disease
table (an ``id`` column, text categories, ``TRUE``/``FALSE`` flags, empty cells) and the heart-failure records
(no id column, ``DEATH_EVENT``, platelets written ``"265,000"``). Each is ingested for real and read back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestion.batch import ingest
from ingestion.contract import load_contract
from ingestion.infer import infer_contract
from ingestion.sources.tabular import ROW_COLUMN, safe_names

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tabular"
HEART_DISEASE = FIXTURES / "heart_disease_uci.csv"
HEART_FAILURE = FIXTURES / "heart_failure_clinical_records_dataset.csv"


def _source(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check(report) -> None:
    for counts in report.tables.values():
        assert counts.rows_in == counts.accepted + counts.quarantined


def test_when_the_uci_heart_disease_table_is_ingested_with_no_contract_then_every_row_loads_typed_and_id_sealed(
        tmp_path: Path, ing_settings, plake) -> None:
    report = ingest(ing_settings, source="tabular", path=HEART_DISEASE, plake=plake, docs=False)

    _check(report)
    counts = report.tables["heart_disease_uci"]
    assert (counts.rows_in, counts.accepted, counts.quarantined) == (920, 920, 0)
    draft = load_contract(ing_settings.home / "contracts" / "heart_disease_uci.draft.yaml")
    assert draft.patient_column == "id" and draft.key == "id" and draft.phi_columns == ("id",)
    sealed = plake.read("raw", "heart_disease_uci")
    assert pa.types.is_binary(sealed.schema.field("id").type) or pa.types.is_large_binary(
        sealed.schema.field("id").type), "the patient id is stored encrypted"
    assert sealed.column("patient_pseudonym").null_count == 0
    assert len(set(sealed.column("patient_pseudonym").to_pylist())) == 920
    raw = plake.read("raw", "heart_disease_uci", decrypt=True)
    types = {name: str(raw.schema.field(name).type) for name in ("id", "age", "sex", "fbs", "oldpeak", "ca")}
    assert types == {"id": "string", "age": "int64", "sex": "string", "fbs": "bool", "oldpeak": "double",
                     "ca": "int64"}
    source = {row["id"]: row for row in _source(HEART_DISEASE)}
    rows = {row["id"]: row for row in raw.to_pylist()}
    assert set(rows) == set(source)
    assert rows["1"]["fbs"] is True and rows["1"]["oldpeak"] == 2.3 and rows["1"]["cp"] == "typical angina"
    # Empty cells are missing values: as many nulls as the file has empty cells.
    for name in ("fbs", "ca", "thal", "trestbps"):
        assert raw.column(name).null_count == sum(1 for row in source.values() if row[name] == "")


def test_when_a_table_has_no_id_column_then_each_row_is_kept_under_a_generated_row_key_and_no_patient(
        tmp_path: Path, ing_settings, plake) -> None:
    report = ingest(ing_settings, source="tabular", path=HEART_FAILURE, plake=plake, docs=False)

    _check(report)
    counts = report.tables["heart_failure_clinical_records_dataset"]
    assert (counts.rows_in, counts.accepted, counts.quarantined, counts.duplicates) == (299, 299, 0, 0)
    draft = load_contract(ing_settings.home / "contracts" / "heart_failure_clinical_records_dataset.draft.yaml")
    assert draft.key == ROW_COLUMN and draft.patient_column is None
    assert "DEATH_EVENT" in draft.description and "No patient column" in draft.description
    raw = plake.read("raw", "heart_failure_clinical_records_dataset", decrypt=True)
    assert raw.column("patient_pseudonym").null_count == 299
    assert "death_event" in raw.column_names and "DEATH_EVENT" not in raw.column_names
    assert sorted(raw.column(ROW_COLUMN).to_pylist()) == list(range(2, 301)), "each record's line in the file"
    by_line = {row[ROW_COLUMN]: row for row in raw.to_pylist()}
    assert raw.schema.field("platelets").type == pa.int64()
    assert by_line[2]["platelets"] == 265_000 and by_line[3]["platelets"] == 263_358  # written "265,000"
    assert sorted(r["platelets"] for r in raw.to_pylist()) == sorted(
        int(float(r["platelets"].replace(",", ""))) for r in _source(HEART_FAILURE))


@pytest.mark.parametrize(("header", "patient"), [
    ("patient_id", "patient_id"), ("Subject", "subject"), ("subject_id", "subject_id"), ("MRN", "mrn"),
    ("ID", "id"), ("Participant ID", "participant_id"),
])
def test_when_rows_carry_an_id_like_column_then_it_is_the_patient_key_and_sealed(
        tmp_path: Path, ing_settings, plake, header: str, patient: str) -> None:
    lines = [f"{header},visit,smoker,hba1c,weight_kg"]
    lines += [f"S{i % 20:03d},{i},{'tf'[i % 2]},{'?' if i % 9 == 0 else 5 + i % 30 / 10},"
              f"{'NA' if i % 11 == 0 else 60 + i % 40}" for i in range(60)]
    path = tmp_path / "cohort.csv"
    path.write_text("\n".join(lines) + "\n")

    report = ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)

    _check(report)
    assert (report.tables["cohort"].accepted, report.tables["cohort"].quarantined) == (60, 0)
    draft = load_contract(ing_settings.home / "contracts" / "cohort.draft.yaml")
    assert draft.patient_column == patient and patient in draft.phi_columns
    assert draft.key == ROW_COLUMN, "a patient seen on several rows is not a unique key"
    assert {n: draft.columns[n].type for n in ("smoker", "hba1c", "weight_kg")} == {
        "smoker": "boolean", "hba1c": "float", "weight_kg": "integer"}
    sealed = plake.read("raw", "cohort")
    assert not pa.types.is_string(sealed.schema.field(patient).type)
    assert len(set(sealed.column("patient_pseudonym").to_pylist())) == 20
    raw = plake.read("raw", "cohort", decrypt=True)
    assert sorted(set(raw.column(patient).to_pylist())) == [f"S{i:03d}" for i in range(20)]
    assert raw.column("hba1c").null_count == 7 and raw.column("weight_kg").null_count == 6  # ? and NA
    assert raw.column("smoker").to_pylist().count(True) == 30


def test_when_column_names_are_unsafe_then_they_become_safe_identifiers_and_the_draft_loads_them_again(
        tmp_path: Path, ing_settings, plake) -> None:
    header = ["Subject ID", "Age (years)", "Serum Créatinine", "patient_pseudonym", "x", "X", "1st visit", ""]
    path = tmp_path / "Study 2024 (final).csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([f"P{i}", 40 + i, "1.2", "keep", i, -i, "2024-01-0" + str(1 + i % 9), ""]
                         for i in range(12))

    report = ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)

    names = ["subject_id", "age_years", "serum_creatinine", "patient_pseudonym_in_source", "x", "x_2", "c_1st_visit",
             "column"]
    assert safe_names(header) == names
    assert report.tables["study_2024_final"].accepted == 12
    draft_path = ing_settings.home / "contracts" / "study_2024_final.draft.yaml"
    draft = load_contract(draft_path)
    assert list(draft.columns)[:8] == names and draft.patient_column == "subject_id"
    raw = plake.read("raw", "study_2024_final", decrypt=True)
    assert raw.column("patient_pseudonym_in_source").to_pylist() == ["keep"] * 12
    assert raw.column("patient_pseudonym").null_count == 0
    # The saved draft, reviewed and passed back, reads the same file by the same safe names.
    again = ingest(ing_settings, source="tabular", path=path, contract=draft_path, plake=plake, docs=False)
    assert again.replayed or again.tables["study_2024_final"].accepted == 12


def test_when_a_parquet_or_jsonl_extract_has_unsafe_names_then_the_draft_and_the_reader_agree(
        tmp_path: Path, ing_settings, plake) -> None:
    parquet = tmp_path / "labs.parquet"
    pq.write_table(pa.table({"Patient ID": ["A1", "A2", "A1"], "Glucose (mg/dL)": [90.5, 101.0, 88.0]}), parquet)
    jsonl = tmp_path / "vitals.jsonl"
    jsonl.write_text('{"Subject": "B1", "Heart Rate": "1,050", "ok": true}\n{"Subject": "B2", "Heart Rate": 72}\n')

    labs = ingest(ing_settings, source="tabular", path=parquet, plake=plake, docs=False)
    vitals = ingest(ing_settings, source="tabular", path=jsonl, plake=plake, docs=False)

    assert (labs.tables["labs"].accepted, vitals.tables["vitals"].accepted) == (3, 2)
    raw = plake.read("raw", "labs", decrypt=True)
    assert raw.column("glucose_mg_dl").to_pylist() == [90.5, 101.0, 88.0]
    assert raw.column(ROW_COLUMN).to_pylist() == [1, 2, 3]
    assert sorted(plake.read("raw", "vitals", decrypt=True).column("heart_rate").to_pylist()) == [72, 1050]


@pytest.mark.parametrize(("values", "kind"), [
    (["t", "f", "t"], "boolean"), (["TRUE", "FALSE", None], "boolean"), (["yes", "no"], "boolean"),
    (["F", "F", "F"], "string"), (["F", "M"], "string"), (["0", "1", "1"], "integer"),
    (["265,000", "1,234,567", "12"], "integer"), (["1,234.5", "2"], "float"), (["2,5", "3,1"], "string"),
    (["007", "012"], "string"), (["12345678901234567890123"], "string"), (["inf", "1"], "string"),
])
def test_when_a_column_is_typed_then_flags_thousands_and_identifiers_are_told_apart(
        tmp_path: Path, values: list, kind: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("v\n" + "\n".join("" if v is None else f'"{v}"' for v in values) + "\n")
    assert infer_contract(path, table="t").columns["v"].type == kind


def test_when_a_research_csv_is_ingested_from_the_command_line_then_it_loads_and_a_too_wide_one_fails_in_one_line(
        tmp_path: Path, monkeypatch, keyring_env) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(HEART_FAILURE), "--table",
                                 "heart_failure_clinical_records_dataset", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tables"] == {
        "heart_failure_clinical_records_dataset": {"in": 299, "accepted": 299, "quarantined": 0}}
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(3_000)) + "\n" + ",".join("1" * 3_000) + "\n")
    for command in (["ingest", "--source", "tabular", "--path", str(wide), "--table", "wide"],
                    ["contract", "infer", str(wide), "--table", "wide"]):
        refused = runner.invoke(app, command)
        assert refused.exit_code != 0
        assert "3,000 columns, over the limit of 2,000" in refused.output and "Traceback" not in refused.output


def test_when_the_draft_picks_the_patient_column_then_a_filled_column_wins_over_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,subject,person_id,email\n,S1,P1,a@example.com\n,S2,P2,b@example.com\n")
    contract = infer_contract(path, table="t")
    assert contract.patient_column == "person_id", "person_id is the more telling name among filled columns"
    assert set(contract.phi_columns) == {"person_id", "email"}
    empty = tmp_path / "e.csv"
    empty.write_text("Subject,score\n")
    assert infer_contract(empty, table="e").patient_column == "subject"


@pytest.mark.parametrize(("filename", "delimiter"), [("cohort.tsv", "\t"), ("cohort.csv", ";"), ("cohort.csv", "|")])
def test_when_a_research_table_is_tab_semicolon_or_bar_delimited_then_it_loads_the_same(
        tmp_path: Path, ing_settings, plake, filename: str, delimiter: str) -> None:
    rows = [["Subject ID", "Visit Date", "Score", "Note"]]
    rows += [[f"S{i}", f"2024-02-{1 + i:02d}", str(i * 2), "a, b" if i % 2 else "?"] for i in range(8)]
    path = tmp_path / filename
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)

    report = ingest(ing_settings, source="tabular", path=path, plake=plake, docs=False)

    assert (report.tables["cohort"].accepted, report.tables["cohort"].quarantined) == (8, 0)
    raw = plake.read("raw", "cohort", decrypt=True)
    assert sorted(raw.column("subject_id").to_pylist()) == [f"S{i}" for i in range(8)]
    assert raw.schema.field("score").type == pa.int64() and raw.schema.field("visit_date").type == pa.string()
    assert raw.column("note").to_pylist().count("a, b") == 4 and raw.column("note").null_count == 4


def test_when_ids_are_stored_as_numbers_in_parquet_or_json_then_they_load_as_sealed_integers(
        tmp_path: Path, ing_settings, plake) -> None:
    parquet = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"id": [101, 102, 103], "subject_id": [7.0, 8.0, None], "score": [1.5, 2.5, 3.5]}),
                   parquet)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps({"patient_id": 40 + i, "event_id": i, "kind": "x"}) + "\n" for i in range(3)))

    scores = ingest(ing_settings, source="tabular", path=parquet, plake=plake, docs=False)
    events = ingest(ing_settings, source="tabular", path=jsonl, plake=plake, docs=False)

    assert (scores.tables["scores"].accepted, events.tables["events"].accepted) == (3, 3)
    draft = load_contract(ing_settings.home / "contracts" / "scores.draft.yaml")
    assert draft.patient_column == "subject_id" and draft.columns["subject_id"].min is None
    assert plake.read("raw", "scores", decrypt=True).column("subject_id").to_pylist() == [7, 8, None]
    raw = plake.read("raw", "events", decrypt=True)
    assert raw.column("patient_id").to_pylist() == [40, 41, 42] and raw.column("patient_pseudonym").null_count == 0
