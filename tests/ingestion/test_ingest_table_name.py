"""A tabular extract's table name never comes from an unknown file name: a file name can name a patient, and the
table name becomes a lake path, a contract file and audit detail. Tested on the UCI heart-failure CSV (public data)
saved under a patient's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tabular"
HEART_FAILURE = FIXTURES / "heart_failure_clinical_records_dataset.csv"
PHI_PARTS = ("john", "smith")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring_env) -> Path:
    monkeypatch.setenv("MEDGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    return tmp_path


def _named(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy(HEART_FAILURE, folder / name))


def _paths_naming_the_patient(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.parent != root / "in" and any(part in p.name.lower() for part in PHI_PARTS)]


def test_when_a_csv_named_after_a_patient_is_ingested_without_table_then_it_is_refused_in_one_line(home: Path):
    extract = _named(home / "in", "john_smith_labs.csv")
    runner = CliRunner()
    for command in (["ingest", "--source", "tabular", "--path", str(extract)], ["contract", "infer", str(extract)]):
        refused = runner.invoke(app, command)
        assert refused.exit_code != 0
        error = refused.stderr.strip().splitlines()
        assert len(error) == 1 and "--table" in error[0] and "Traceback" not in refused.output
        assert not any(part in refused.output.lower() for part in PHI_PARTS), refused.output
    assert not (home / "lake" / "raw").exists() or not any((home / "lake" / "raw").iterdir())
    assert _paths_naming_the_patient(home) == []


def test_when_the_contract_infer_workflow_names_the_table_then_the_extract_loads_under_that_name(home: Path):
    extract = _named(home / "in", "john_smith_labs.csv")
    runner = CliRunner()
    drafted = runner.invoke(app, ["contract", "infer", str(extract), "--table", "heart_failure", "--json"])
    assert drafted.exit_code == 0, drafted.output
    draft = Path(json.loads(drafted.stdout)["contract"])
    assert draft.name == "heart_failure.draft.yaml"
    loaded = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(extract), "--contract", str(draft),
                                 "--json"])
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.stdout)["tables"] == {"heart_failure": {"in": 299, "accepted": 299, "quarantined": 0}}
    # The same rows as Parquet, under the patient's name: the progress lines never show the file's stem.
    parquet = home / "in" / "john_smith_labs.parquet"
    pd.read_csv(extract, thousands=",").to_parquet(parquet)
    shown = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(parquet), "--contract", str(draft)])
    assert shown.exit_code == 0, shown.output
    assert not any(part in shown.output.lower() for part in PHI_PARTS), shown.output
    # A later extract whose file stem is the reviewed contract's table name needs no --table.
    later = _named(home / "later", "heart_failure.csv")
    again = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(later), "--json"])
    assert again.exit_code == 0, again.output
    assert set(json.loads(again.stdout)["tables"]) == {"heart_failure"}
    assert _paths_naming_the_patient(home) == []
