"""``medguard ingest`` as a user runs it: an input refused whole exits non-zero with its first reasons, progress
lines go to stderr, and ``--json`` keeps stdout pure JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tabular"
HEART_FAILURE = FIXTURES / "heart_failure_clinical_records_dataset.csv"


@pytest.fixture
def lake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring_env) -> Path:
    monkeypatch.setenv("MEDGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    return tmp_path


def _ingest(*args: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, ["ingest", "--source", "tabular", *args])


def _contract(tmp_path: Path, age_max: int) -> Path:
    """The heart-failure extract's contract, with an age limit the caller picks."""
    import yaml

    from ingestion.infer import infer_contract

    data = yaml.safe_load(infer_contract(HEART_FAILURE, table="heart_failure").to_yaml())
    data["columns"]["age"].update(min=0, max=age_max)
    path = tmp_path / "heart_failure.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_when_every_row_of_a_csv_is_quarantined_then_ingest_exits_1_with_the_first_reasons(lake_env: Path) -> None:
    # The heart-failure extract (299 patients aged 40-95) against a contract that allows ages up to 30.
    contract = _contract(lake_env, age_max=30)

    result = _ingest("--path", str(HEART_FAILURE), "--table", "heart_failure", "--contract", str(contract),
                     "--json")

    assert result.exit_code == 1
    assert json.loads(result.stdout)["tables"]["heart_failure"] == {"in": 299, "accepted": 0, "quarantined": 299}
    error = result.stderr.splitlines()[-1]
    assert error.startswith("medguard: error: nothing loaded from ") and "all 299 records were quarantined" in error
    assert "heart_failure record at line 2" in error and "[age:" in error


def test_when_some_rows_load_then_ingest_exits_0_and_stderr_counts_the_rows_read(lake_env: Path) -> None:
    rows = list(csv.reader(HEART_FAILURE.open()))
    young = lake_env / "heart_failure.csv"
    with young.open("w", newline="") as fh:  # the first patient made 25: the only row the contract accepts
        writer = csv.writer(fh)
        writer.writerow(rows[0])
        writer.writerow(["25", *rows[1][1:]])
        writer.writerows(rows[2:])
    contract = _contract(lake_env, age_max=30)

    result = _ingest("--path", str(young), "--table", "heart_failure", "--contract", str(contract), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tables"]["heart_failure"] == {"in": 299, "accepted": 1, "quarantined": 298}
    assert "ingest heart_failure: 299/299 rows (100%) — done" in result.stderr.splitlines()


def test_when_a_parquet_extract_is_ingested_then_progress_knows_its_row_count_from_the_footer(lake_env: Path) -> None:
    import pandas as pd

    extract = lake_env / "heart_failure.parquet"
    pd.read_csv(HEART_FAILURE, thousands=",").to_parquet(extract)

    result = _ingest("--path", str(extract), "--table", "heart_failure", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tables"]["heart_failure"]["accepted"] == 299
    progress = [line for line in result.stderr.splitlines() if "still running" not in line]  # heartbeats: slow day
    assert progress == ["ingest heart_failure: 299/299 rows (100%) — done"]
