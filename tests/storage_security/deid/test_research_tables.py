"""Flat research tables end to end through the command line: ingest with no contract (a drafted one), publish with
``medguard deidentify``, train with ``medguard train``.

The witnesses are two public tables we did not write (tests/fixtures/tabular/, see SOURCE.md): the UCI heart-disease
table (920 patients, an ``id`` column, label ``num``) and the heart-failure records (299 patients, no id column,
label ``DEATH_EVENT``, ingested as ``death_event``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.lake import Lake
from pipeline.settings import load_settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tabular"
MEDGUARD = str(Path(sys.executable).with_name("medguard"))

pytestmark = pytest.mark.e2e


def _medguard(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ}
    return subprocess.run([MEDGUARD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def research_home(tmp_path, keyring_env, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDGUARD_HOME", str(home))
    extracts = tmp_path / "extracts"
    extracts.mkdir()
    for name in ("heart_disease_uci.csv", "heart_failure_clinical_records_dataset.csv"):
        shutil.copy(FIXTURES / name, extracts / name)
    return home, extracts


@pytest.mark.parametrize(("csv", "table", "label", "rows", "id_column"), [
    ("heart_disease_uci.csv", "heart_disease_uci", "num", 920, "id"),
    ("heart_failure_clinical_records_dataset.csv", "heart_failure_clinical_records_dataset", "death_event", 299,
     None),
])
def test_when_a_research_csv_is_ingested_published_and_trained_from_the_cli_then_each_step_succeeds(
        research_home, csv, table, label, rows, id_column):
    home, extracts = research_home
    ingested = _medguard("ingest", "--source", "tabular", "--path", str(extracts / csv), "--table", table)
    assert ingested.returncode == 0, ingested.stderr
    assert (home / "contracts" / f"{table}.draft.yaml").exists()  # no contract given: one was drafted

    published = _medguard("deidentify", "--table", table, "--json")
    assert published.returncode == 0, published.stderr
    result = json.loads(published.stdout)["tables"][table]
    if id_column:
        # linked to patients: the catalog lists no quasi-identifier, but its age column is one (the gate counts it):
        # the patients of rare ages are suppressed within the budget, every published age is shared by k patients
        assert result["k"] >= 5 and 0 < result["suppressed"] <= 0.05 * rows
        assert result["rows_out"] == rows - result["suppressed"]
    else:
        # no quasi-identifier counted (rows linked to no patient): one class, k is its number of rows
        assert result["rows_out"] == rows and result["suppressed"] == 0 and result["k"] == rows
    lake = Lake(load_settings(home=home))
    out = lake.read_pandas("deidentified", table)
    assert len(out) == result["rows_out"] and label in out.columns
    if id_column:
        # the id is never published as it is: the rows carry its keyed pseudonym, one per patient
        assert id_column not in out.columns
        raw_ids = lake.read_pandas("raw", table)[id_column]
        assert out["patient_pseudonym"].notna().all()
        assert out["patient_pseudonym"].nunique() == raw_ids.nunique() - result["suppressed"]
        assert not set(map(str, raw_ids)) & set(out["patient_pseudonym"])
    else:
        assert "patient_pseudonym" not in out.columns or out["patient_pseudonym"].isna().all()

    trained = _medguard("train", "--table", table, "--label", label, "--json", timeout=1200)
    assert trained.returncode == 0, trained.stderr[-2000:]
    model = json.loads(trained.stdout)
    assert model
