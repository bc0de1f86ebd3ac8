"""Every DAG file in ``dags/`` parses under Airflow 3, is acyclic, is described, and imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.orchestration import DAGS_FOLDER

pytestmark = pytest.mark.integration  # Airflow parses every DAG file, imports run in subprocesses

DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))

# Engines a DAG file must only import inside its tasks: parsing happens often and must stay fast.
HEAVY_MODULES = {
    "deltalake",
    "delta",
    "duckdb",
    "faker",
    "fhir",
    "great_expectations",
    "hl7apy",
    "numpy",
    "pandas",
    "presidio_analyzer",
    "presidio_anonymizer",
    "py4j",
    "pyarrow",
    "pyspark",
    "sklearn",
    "spacy",
    "xgboost",
}

_LOADED_AFTER_IMPORT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # safe_mode=False parses every .py file, not only those that mention "dag" and "airflow".
    return DagBag(dag_folder=DAGS_FOLDER, safe_mode=False)


def test_when_dags_folder_is_listed_then_it_holds_dag_files():
    assert DAG_FILES, f"no DAG files in {DAGS_FOLDER}"


def test_when_dags_are_parsed_then_no_file_has_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_when_dags_are_parsed_then_every_file_defines_a_dag(dagbag):
    files_with_dags = {Path(dag.fileloc).resolve() for dag in dagbag.dags.values()}
    assert [path for path in DAG_FILES if path.resolve() not in files_with_dags] == []


def test_when_dags_are_parsed_then_dag_ids_are_unique_and_prefixed(dagbag):
    # DagBag keys DAGs by id, so a duplicate would shrink the bag below the per-file counts.
    assert sum(stat.dag_num for stat in dagbag.dagbag_stats) == len(dagbag.dags)
    assert [dag_id for dag_id in dagbag.dag_ids if not dag_id.startswith("medguard_")] == []


def test_when_dags_are_parsed_then_none_has_a_cycle(dagbag):
    for dag in dagbag.dags.values():
        dag.check_cycle()
        assert dag.tasks, f"{dag.dag_id} has no tasks"


def test_when_dags_are_parsed_then_each_has_tags_owner_and_description(dagbag):
    for dag in dagbag.dags.values():
        assert "medguard" in dag.tags, dag.dag_id
        assert dag.description, dag.dag_id
        assert dag.owner and dag.owner != "airflow", f"{dag.dag_id} has no owner of its own"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
def test_when_a_dag_file_is_imported_then_no_heavy_engine_is_loaded(dag_file: Path):
    completed = subprocess.run(
        [sys.executable, "-c", _LOADED_AFTER_IMPORT, str(dag_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = set(json.loads(completed.stdout.splitlines()[-1]))
    assert loaded & HEAVY_MODULES == set()
