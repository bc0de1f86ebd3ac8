"""Every DAG file in ``dags/`` parses under Airflow 3, is acyclic, is described, and imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.airflow_support import alert_on_failure
from pipeline.orchestration import DAGS_FOLDER
from pipeline.settings import get_settings

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


# Each hand-off of the chain: the upstream DAG, the downstream DAG it starts, and the Asset between them.
CHAIN = [
    ("medguard_synthetic_extract", "medguard_ingest", "medguard://sources/extract"),
    ("medguard_ingest", "medguard_deidentify", "medguard://raw/batch"),
    ("medguard_deidentify", "medguard_train", "medguard://deidentified/batch"),
    ("medguard_train", "medguard_batch_diagnosis", "medguard://models/registry"),
]
SUITE = {"medguard_synthetic_extract", "medguard_ingest", "medguard_deidentify", "medguard_train",
         "medguard_batch_diagnosis", "medguard_audit_monitor", "medguard_rotate_keys", "medguard_backup"}


def _condition_uris(condition) -> list[str]:
    """The Asset URIs a schedule waits for; an any-of condition fails (one upstream run would start many)."""
    from airflow.sdk import Asset, AssetAll

    if isinstance(condition, Asset):
        return [condition.uri]
    assert isinstance(condition, AssetAll), f"schedule {condition!r} is neither one Asset nor an all-of condition"
    return [uri for part in condition.objects for uri in _condition_uris(part)]


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


def test_when_dags_are_parsed_then_the_whole_suite_is_there(dagbag):
    assert set(dagbag.dag_ids) >= SUITE


@pytest.mark.parametrize(("upstream", "downstream", "uri"), CHAIN, ids=[c[1] for c in CHAIN])
def test_when_an_upstream_run_ends_then_it_emits_the_one_asset_its_downstream_waits_for_once(
        dagbag, upstream: str, downstream: str, uri: str):
    # One upstream run starts each downstream DAG once: the downstream schedule is one Asset (or an all-of
    # condition) and exactly one unmapped task of the whole suite emits it, so each upstream run adds one event.
    assert _condition_uris(dagbag.dags[downstream].timetable.asset_condition) == [uri]
    emitters = [(dag.dag_id, task.task_id) for dag in dagbag.dags.values() for task in dag.tasks
                if any(getattr(outlet, "uri", None) == uri for outlet in task.outlets)]
    assert len(emitters) == 1 and emitters[0][0] == upstream, emitters
    task = dagbag.dags[upstream].get_task(emitters[0][1])
    assert not getattr(task, "is_mapped", False)
    # The emitting task is the run's last: it runs only when everything before it succeeded.
    assert not task.downstream_task_ids


def test_when_dags_are_parsed_then_every_task_retries_times_out_and_alerts_as_settings_say(dagbag):
    orchestration = get_settings().orchestration
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.retries == orchestration.task_retries, where
            assert task.retry_delay.total_seconds() == orchestration.retry_delay_seconds, where
            assert task.execution_timeout.total_seconds() == orchestration.task_timeout_minutes * 60, where
            assert alert_on_failure in task.on_failure_callback, where


def test_when_dags_are_parsed_then_maintenance_runs_on_its_calendar(dagbag):
    def cron(dag_id: str) -> str:
        return dagbag.dags[dag_id].timetable.expression

    assert cron("medguard_audit_monitor") == "0 * * * *"  # hourly
    assert cron("medguard_rotate_keys") == "0 3 * * 0"  # weekly, Sunday 03:00 UTC
    assert cron("medguard_backup") == "30 1 * * *"  # daily, 01:30 UTC
