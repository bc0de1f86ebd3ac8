"""The Airflow harness: ``airflow_env`` isolation and ``run_dag`` on a throwaway DAG and on medguard's DAGs."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from importlib.metadata import version
from pathlib import Path
from textwrap import dedent

import pytest

from pipeline.errors import OrchestrationError
from pipeline.orchestration import DAGS_FOLDER, DagRunResult, airflow_env, run_dag, worker_count
from pipeline.settings import Settings

pytestmark = pytest.mark.integration  # Airflow's database and airflow dags test

# A DAG that depends on nothing but Airflow and medguard's settings, so the harness is tested on its own.
_HARNESS_DAG = '''
"""A throwaway DAG for the harness tests."""
from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="harness_probe", schedule=None, catchup=False, params={"name": "probe", "fail": False})
def harness_probe():
    @task
    def touch(params):
        from pipeline.settings import get_settings

        if params["fail"]:
            raise ValueError("harness probe failure requested")
        path = get_settings().home / "harness-probe" / params["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("ok")

    touch()


harness_probe()
'''


@pytest.fixture(scope="module")
def harness_dags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("harness-dags")
    (folder / "harness_probe.py").write_text(dedent(_HARNESS_DAG))
    return folder


@pytest.fixture(scope="module")
def probe_success(settings: Settings, harness_dags: Path) -> DagRunResult:
    # Module-scoped: the first run also migrates the run's metadata DB, which later tests rely on.
    return run_dag("harness_probe", settings=settings, conf={"name": "ran"}, dags_folder=harness_dags)


def test_when_env_is_built_then_airflow_state_stays_under_the_medguard_home(settings: Settings):
    env = airflow_env(settings)

    airflow_home = Path(env["AIRFLOW_HOME"])
    assert airflow_home.is_relative_to(settings.home)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{airflow_home / 'airflow.db'}"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["MEDGUARD_HOME"] == str(settings.home)
    assert env["MEDGUARD_LAKE_ROOT"] == str(settings.lake_root)


def test_when_env_is_built_then_a_plain_airflow_on_the_home_fits_the_machine(settings: Settings):
    orchestration = settings.orchestration.model_copy(update={"api_port": 18080, "workers": 3, "task_retries": 0})

    env = airflow_env(settings.model_copy(update={"orchestration": orchestration}))

    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__API__WORKERS"] == "1"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "18080"
    # Tasks of a scheduler-run DAG call the execution API of the API server on the same home.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    # The DAG files and tasks in the subprocess see the caller's orchestration settings.
    assert env["MEDGUARD_ORCHESTRATION__TASK_RETRIES"] == "0"
    assert env["MEDGUARD_ORCHESTRATION__API_PORT"] == "18080"


def test_when_no_worker_count_is_set_then_there_is_one_per_usable_core(settings: Settings):
    assert worker_count(settings) == len(os.sched_getaffinity(0))
    assert airflow_env(settings)["AIRFLOW__CORE__PARALLELISM"] == str(worker_count(settings))


def test_when_caller_has_airflow_variables_then_env_drops_them(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIRFLOW_CONFIG", "/elsewhere/airflow.cfg")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "echo postgresql://prod")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")

    env = airflow_env(settings)

    assert "AIRFLOW_CONFIG" not in env
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD" not in env
    assert "AIRFLOW__CORE__EXECUTOR" not in env


def test_when_config_file_is_relative_then_env_makes_it_absolute(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGUARD_CONFIG", "medguard.yaml")

    assert airflow_env(settings)["MEDGUARD_CONFIG"] == str(tmp_path / "medguard.yaml")


def test_when_settings_override_the_home_then_env_follows(tmp_path: Path, settings: Settings):
    other = settings.model_copy(update={"home": tmp_path, "airflow_home": tmp_path / "airflow"})

    env = airflow_env(other)

    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["MEDGUARD_HOME"] == str(tmp_path)


def test_when_a_task_succeeds_then_the_run_is_success(probe_success: DagRunResult, settings: Settings):
    assert probe_success.state == "success", probe_success.output[-3000:]
    assert probe_success.returncode == 0
    assert probe_success.run_id
    probe_success.raise_for_state()
    # The task saw the caller's MEDGUARD_HOME.
    assert (settings.home / "harness-probe" / "ran").read_text() == "ok"


def test_when_the_db_is_migrated_then_the_marker_names_the_airflow_version(
    probe_success: DagRunResult, settings: Settings
):
    marker = Path(airflow_env(settings)["AIRFLOW_HOME"]) / ".medguard-db-migrated"
    assert marker.read_text().strip() == version("apache-airflow")


def test_when_a_task_raises_then_the_run_is_failed(probe_success: DagRunResult, settings: Settings, harness_dags: Path):
    result = run_dag("harness_probe", settings=settings, conf={"fail": True}, dags_folder=harness_dags)

    assert result.state == "failed"
    assert result.run_id and result.run_id != probe_success.run_id
    with pytest.raises(OrchestrationError, match="harness probe failure requested"):
        result.raise_for_state()


def test_when_the_dag_does_not_exist_then_the_run_is_failed_without_a_run(
    probe_success: DagRunResult, settings: Settings, harness_dags: Path
):
    result = run_dag("medguard_no_such_dag", settings=settings, dags_folder=harness_dags)

    assert result.state == "failed"
    assert result.run_id is None
    with pytest.raises(OrchestrationError, match="no run created"):
        result.raise_for_state()


def test_when_the_run_exceeds_the_timeout_then_it_is_stopped_and_failed(
    probe_success: DagRunResult, settings: Settings, harness_dags: Path
):
    result = run_dag("harness_probe", settings=settings, dags_folder=harness_dags, timeout=2)

    assert result.state == "failed"
    assert result.returncode is None
    with pytest.raises(OrchestrationError, match="timed out"):
        result.raise_for_state()


def test_when_conf_is_not_json_then_type_error(settings: Settings, harness_dags: Path):
    with pytest.raises(TypeError):
        run_dag("harness_probe", settings=settings, conf={"when": object()}, dags_folder=harness_dags)


def test_when_synthetic_extract_runs_then_sources_are_written(settings: Settings):
    result = run_dag(
        "medguard_synthetic_extract",
        settings=settings,
        conf={"patients": 50, "seed": 3, "formats": "csv,notes"},
    )

    result.raise_for_state()
    out_dir = settings.home / "sources" / "seed3"
    assert (out_dir / "patients.csv").is_file()
    assert (out_dir / "notes.jsonl").is_file()
    # The run emitted the Asset that starts ingestion, naming the folder and the tabular format it wrote.
    db = Path(airflow_env(settings)["AIRFLOW_HOME"]) / "airflow.db"
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        events = connection.execute("SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                    "WHERE e.source_run_id = ?", (result.run_id,)).fetchall()
    assert [(uri, json.loads(extra)) for uri, extra in events] == [
        ("medguard://sources/extract", {"sources_dir": str(out_dir), "tabular_format": "csv"})]


def test_when_synthetic_extract_gets_a_bad_population_size_then_the_run_is_failed(settings: Settings):
    # No retries: a bad parameter fails every try alike, and each retry would wait retry_delay_seconds.
    orchestration = settings.orchestration.model_copy(update={"task_retries": 0})
    result = run_dag(
        "medguard_synthetic_extract",
        settings=settings.model_copy(update={"orchestration": orchestration}),
        conf={"patients": -1, "seed": 4, "formats": "csv"},
    )

    assert result.state == "failed"
    assert result.run_id, "the run should have started and failed in its task"
    assert "ValueError" in result.output
