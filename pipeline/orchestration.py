"""Run medguard's Airflow DAGs with ``airflow dags test`` against a SQLite metadata DB inside MEDGUARD_HOME.

This is the embedded orchestration default: no scheduler, no executor, no server. ``airflow dags test`` runs
one DAG run in a subprocess, task by task, in-process, against ``<airflow home>/airflow.db``; the Airflow home
is ``Settings.airflow_home`` (by default ``$MEDGUARD_HOME/airflow``), never ``~/airflow``. The subprocess gets
the caller's medguard home and lake root, so its tasks read and write the same lake as the caller.

Airflow 3.3's ``dags test`` exits non-zero when the run fails, but this module does not rely on the exit code
alone: it reads the state of the run it started back from the metadata DB.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import OrchestrationError
from pipeline.settings import CONFIG_ENV, Settings, get_settings

__all__ = ["DAGS_FOLDER", "DagRunResult", "airflow_env", "dag_runs", "failed_tasks", "run_dag", "worker_count"]

DAGS_FOLDER: Path = Path(__file__).resolve().parents[1] / "dags"
"""The repository's ``dags/`` directory: the DAG files Airflow parses."""

_PROJECT_ROOT = DAGS_FOLDER.parent
_DB_FILE = "airflow.db"
# Holds the Airflow version the metadata DB was last migrated with; a different version migrates again.
_MIGRATED_MARKER = ".medguard-db-migrated"
_LOCK_FILE = ".medguard-db.lock"
_TAIL_LINES = 40


@dataclass(frozen=True)
class DagRunResult:
    """The outcome of one ``airflow dags test`` run.

    Attributes:
        dag_id: the DAG that was run.
        state: ``"success"`` only when Airflow exited 0 and recorded the run as successful, else ``"failed"``.
        returncode: the exit status of ``airflow dags test``; ``None`` when it was stopped at the timeout.
        output: everything the command printed (stdout and stderr, interleaved), task logs included.
        run_id: the Airflow run id, or ``None`` when no run was created (unknown DAG, parse error, bad conf).
    """

    dag_id: str
    state: Literal["success", "failed"]
    returncode: int | None
    output: str
    run_id: str | None = None

    def raise_for_state(self) -> None:
        """Do nothing if the run succeeded.

        Raises:
            OrchestrationError: the run did not succeed; the message ends with the tail of the output.
        """
        if self.state == "success":
            return
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        tail = "\n".join(self.output.splitlines()[-_TAIL_LINES:])
        run = self.run_id or "(no run created)"
        raise OrchestrationError(f"DAG {self.dag_id} run {run} {self.state} ({status}); last output:\n{tail}")


def airflow_env(settings: Settings, *, dags_folder: Path = DAGS_FOLDER) -> dict[str, str]:
    """The environment for an ``airflow`` subprocess that works on this medguard home only.

    It is a copy of ``os.environ`` without any inherited ``AIRFLOW*`` variable (so a user's Airflow config
    cannot leak in), plus the Airflow home, DAG folder and SQLite metadata DB of ``settings``, the medguard
    home, lake root and orchestration settings (so tasks see the caller's lake and retry as it says),
    ``MEDGUARD_CONFIG`` made absolute, and this checkout first on ``PYTHONPATH`` (so tasks import the same
    medguard code as the DAG files next to it). For a plain Airflow on the same home (``airflow standalone``,
    ``scheduler`` + ``api-server``) it also sets: no example DAGs, ``orchestration.workers`` task slots (one per
    core by default) and one API worker, the API server on ``127.0.0.1:<orchestration.api_port>`` and the
    execution API URL the tasks call there. New DAGs stay paused, as Airflow's default: unpause the ones to
    schedule (``airflow dags unpause``).

    Args:
        settings: whose ``airflow_home``, ``home`` and ``lake_root`` to use.
        dags_folder: the folder Airflow parses; medguard's ``dags/`` unless a test brings its own.

    Returns:
        A new dict, safe to modify.
    """
    airflow_home = _airflow_home(settings)
    env = {name: value for name, value in os.environ.items() if not name.lstrip("_").startswith("AIRFLOW")}
    python_path = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    orchestration = settings.orchestration
    api = f"http://127.0.0.1:{orchestration.api_port}"
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(worker_count(settings)),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(orchestration.api_port),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / _DB_FILE}",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "GX_ANALYTICS_ENABLED": "False",
            "MEDGUARD_HOME": str(settings.home),
            "MEDGUARD_LAKE_ROOT": str(settings.lake_root),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
            # `airflow standalone` starts its parts as `airflow ...` from PATH: this interpreter's first.
            "PATH": os.pathsep.join(dict.fromkeys([str(Path(sys.executable).parent),
                                                   *filter(None, env.get("PATH", "").split(os.pathsep))])),
        }
    )
    if settings.storage_options:
        # Tasks reach an object-store lake as this process does, also when these settings came from --config.
        env["MEDGUARD_STORAGE_OPTIONS"] = json.dumps({k: v.get_secret_value()
                                                      for k, v in settings.storage_options.items()})
    # The DAG files read these at parse time (task defaults) and the tasks at run time (the secrets hand-off).
    for name, value in orchestration.model_dump(exclude_none=True).items():
        env[f"MEDGUARD_ORCHESTRATION__{name.upper()}"] = str(value)
    if env.get(CONFIG_ENV):
        # The subprocess runs in the Airflow home, where a relative config path would name another file.
        env[CONFIG_ENV] = str(Path(env[CONFIG_ENV]).expanduser().resolve())
    return env


def worker_count(settings: Settings) -> int:
    """Airflow task slots on this machine: ``orchestration.workers``, else one per CPU core this process may use."""
    if settings.orchestration.workers is not None:
        return settings.orchestration.workers
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_dag(
    dag_id: str,
    *,
    settings: Settings | None = None,
    conf: Mapping[str, Any] | None = None,
    logical_date: str | None = None,
    timeout: float = 600,
    dags_folder: Path = DAGS_FOLDER,
) -> DagRunResult:
    """Run one DAG to completion with ``airflow dags test`` and report how it ended.

    Migrates the metadata DB first if this Airflow home has not been migrated by this Airflow version.
    A failed run is reported, not raised: call :meth:`DagRunResult.raise_for_state` to raise.

    Args:
        dag_id: the DAG to run.
        settings: the medguard settings whose home and lake the run uses; the process-wide ones if omitted.
        conf: the run's conf (the DAG's params), JSON-serialisable.
        logical_date: the run's logical date as Airflow parses it (e.g. ``2024-01-01``); now if omitted.
        timeout: seconds for the migration and the run together; the run is killed and reported failed
            after that.
        dags_folder: the folder Airflow parses; medguard's ``dags/`` unless a test brings its own.

    Returns:
        The run's outcome.

    Raises:
        OrchestrationError: the ``airflow`` command is missing, or the metadata DB cannot be migrated or read.
        TypeError: ``conf`` is not JSON-serialisable.
    """
    settings = settings or get_settings()
    env = airflow_env(settings, dags_folder=dags_folder)
    airflow_home = Path(env["AIRFLOW_HOME"])
    deadline = time.monotonic() + timeout
    command = [_airflow_executable(), "dags", "test", dag_id]
    if logical_date is not None:
        command.append(logical_date)
    if conf is not None:
        command += ["--conf", json.dumps(dict(conf))]

    _ensure_metadata_db(airflow_home, env, deadline)
    last_before = _last_run_pk(airflow_home, dag_id)
    returncode, output = _run(command, env, cwd=airflow_home, timeout=deadline - time.monotonic())
    run_id, run_state = _run_since(airflow_home, dag_id, last_before)
    succeeded = returncode == 0 and run_state == "success"
    state: Literal["success", "failed"] = "success" if succeeded else "failed"
    return DagRunResult(dag_id=dag_id, state=state, returncode=returncode, output=output, run_id=run_id)


def _airflow_home(settings: Settings) -> Path:
    home = settings.airflow_home or settings.home / "airflow"
    return Path(home).expanduser().resolve()


def _airflow_executable() -> str:
    executable = Path(sys.executable).with_name("airflow")
    if not executable.is_file():
        raise OrchestrationError(f"the airflow command is not installed next to {sys.executable}")
    return str(executable)


def _ensure_metadata_db(airflow_home: Path, env: dict[str, str], deadline: float) -> None:
    airflow_home.mkdir(parents=True, exist_ok=True)
    marker = airflow_home / _MIGRATED_MARKER
    wanted = version("apache-airflow")
    with _exclusive(airflow_home / _LOCK_FILE):
        if (airflow_home / _DB_FILE).is_file() and marker.is_file() and marker.read_text().strip() == wanted:
            return
        command = [_airflow_executable(), "db", "migrate"]
        returncode, output = _run(command, env, cwd=airflow_home, timeout=deadline - time.monotonic())
        if returncode != 0:
            tail = "\n".join(output.splitlines()[-_TAIL_LINES:])
            status = "timed out" if returncode is None else f"exit status {returncode}"
            raise OrchestrationError(f"airflow db migrate failed in {airflow_home} ({status}):\n{tail}")
        marker.write_text(wanted + "\n")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Two processes sharing one Airflow home (parallel tests, a CLI beside a test) must not migrate at once.
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], env: dict[str, str], *, cwd: Path, timeout: float) -> tuple[int | None, str]:
    # A session of its own, so a timeout kills the whole process group (task subprocesses, a Spark JVM).
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        stopped = " ".join(command[1:3])
        return None, f"{output}\nmedguard: stopped airflow {stopped} after the {timeout:.0f}s timeout\n"
    return process.returncode, output


def dag_runs(settings: Settings) -> list[dict[str, Any]]:
    """Every DAG run recorded in the settings' Airflow metadata DB, oldest first (none before the first run)."""
    airflow_home = _airflow_home(settings)
    if not (airflow_home / _DB_FILE).is_file():
        return []
    rows = _query(airflow_home, "SELECT dag_id, run_id, state, start_date, end_date FROM dag_run ORDER BY id", ())
    return [{"dag_id": r[0], "run_id": r[1], "state": r[2], "start_date": r[3], "end_date": r[4]} for r in rows]


def failed_tasks(settings: Settings, dag_id: str, run_id: str) -> list[str]:
    """The task ids of a DAG run whose state is ``failed``, in name order."""
    rows = _query(_airflow_home(settings), "SELECT task_id FROM task_instance WHERE dag_id = ? AND run_id = ? "
                  "AND state = 'failed' ORDER BY task_id", (dag_id, run_id))
    return [r[0] for r in rows]


def _query(airflow_home: Path, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    uri = f"{(airflow_home / _DB_FILE).as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as connection:
            return connection.execute(sql, parameters).fetchall()
    except sqlite3.Error as exc:
        raise OrchestrationError(f"cannot read the Airflow metadata DB in {airflow_home}: {exc}") from exc


def _last_run_pk(airflow_home: Path, dag_id: str) -> int:
    rows = _query(airflow_home, "SELECT MAX(id) FROM dag_run WHERE dag_id = ?", (dag_id,))
    return rows[0][0] if rows and rows[0][0] is not None else 0


def _run_since(airflow_home: Path, dag_id: str, last_before: int) -> tuple[str | None, str | None]:
    # The run this call created is the newest run of the DAG added since; runs of the same DAG in the same
    # Airflow home at the same time are not told apart.
    rows = _query(
        airflow_home,
        "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND id > ? ORDER BY id DESC LIMIT 1",
        (dag_id, last_before),
    )
    return (rows[0][0], rows[0][1]) if rows else (None, None)
