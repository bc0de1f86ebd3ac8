"""The end-to-end runner behind ``medguard demo``: the whole chain on embedded defaults, through Airflow.

The spine runs the first step (generate a synthetic population of source extracts, outside the lake); each layer
adds its own steps through the ``medguard.demo_steps`` entry-point group, run in the order of their names
(``20_security``, ``30_ingest``…). A step is a callable ``step(settings) -> dict``. The steps that move data
run their layer's Airflow DAG with :func:`run_dag_step` (``airflow dags test`` on the SQLite metadata DB of the
home) and then read what the run left in the lake or the model registry; no step sees another step's result. A
step's result may hold ``summary``: its headline facts for the closing page. Each step's wall-clock seconds are kept in
``report.seconds``.

After the last step, :func:`closing_summary` reads back the rows of every lake table and every Airflow run of
this home, and gathers the steps' headline facts: the one-page summary ``medguard demo`` ends with.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pipeline.errors import OrchestrationError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings, get_settings
from pipeline.synthetic import generate

DEMO_SOURCES = "sources/demo"
# One DAG run of the demo (migration included); the slowest, ingest, takes minutes at the default size.
DAG_TIMEOUT = 1_800


@dataclass
class DemoReport:
    """What each step of the demo did, in order, and the closing summary."""

    steps: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Each step's result under its name, ``step_seconds`` (how long each step took) and ``summary``."""
        return {**self.steps, "step_seconds": dict(self.seconds), "summary": self.summary}


def layer_steps() -> list[tuple[str, Callable[[Settings], dict[str, Any]]]]:
    """The demo steps that layers have registered, in run order."""
    return [(e.name, e.load()) for e in sorted(entry_points(group="medguard.demo_steps"), key=lambda e: e.name)]


def run_demo(*, patients: int, seed: int = 42, defect_rate: float = 0.02,
             settings: Settings | None = None, progress: Callable[[int], None] | None = None,
             on_step: Callable[[str, float | None], None] | None = None) -> DemoReport:
    """Run every step of the chain that exists, on the embedded defaults, then build the closing summary.

    The population goes to ``$MEDGUARD_HOME/sources/demo``: source extracts, as a hospital would send them,
    outside the lake (no plaintext PHI is ever written into the lake); the ingest DAG reads it from there.

    Args:
        progress: called with a number of patients generated (see :func:`pipeline.synthetic.generate`).
        on_step: called as each step starts (step name, None) and ends (step name, seconds it took).

    Raises:
        OrchestrationError: a DAG run failed (the message names the DAG, the failed task and its log).
    """
    settings = settings or get_settings()
    report = DemoReport()

    def run(name: str, step: Callable[[], dict[str, Any]]) -> None:
        if on_step is not None:
            on_step(name, None)
        started = time.perf_counter()
        report.steps[name] = step()
        report.seconds[name] = round(time.perf_counter() - started, 1)
        if on_step is not None:
            on_step(name, report.seconds[name])

    run("generate", lambda: generate(settings.home / DEMO_SOURCES, patients=patients, seed=seed,
                                     defect_rate=defect_rate, progress=progress).to_dict())
    for name, step in layer_steps():
        run(name.split("_", 1)[-1], lambda step=step: step(settings))
    report.summary = closing_summary(settings, report)
    return report


def run_dag_step(settings: Settings, dag_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one DAG of the chain with ``airflow dags test`` and return its run id and state.

    The run's whole output (task logs included) is kept in a 0600 file under the Airflow home's ``logs``.

    Raises:
        OrchestrationError: the run did not succeed; one line naming the DAG, the run, the failed tasks and the log.
    """
    from pipeline.orchestration import failed_tasks, run_dag

    result = run_dag(dag_id, settings=settings, conf=conf, timeout=DAG_TIMEOUT)
    log = _keep_log(Path(settings.airflow_home), dag_id, result.run_id, result.output)
    if result.state != "success":
        failed = failed_tasks(settings, dag_id, result.run_id) if result.run_id else []
        where = f"at task {', '.join(failed)}" if failed else "before any task failed"
        raise OrchestrationError(f"DAG {dag_id} run {result.run_id or '(none created)'} failed {where}; "
                                 f"log: {log}")
    return {"dag_id": dag_id, "run_id": result.run_id, "state": result.state, "log": str(log)}


def closing_summary(settings: Settings, report: DemoReport) -> dict[str, Any]:
    """The one page the demo ends with: rows per zone (read from the lake), every Airflow run of this home and
    its state (read from the metadata DB), and each step's headline facts (its result's ``summary``)."""
    from pipeline.orchestration import dag_runs

    lake = Lake(settings)
    zones = {zone.value: {table: table_rows(lake, zone, table) for table in lake.tables(zone)} for zone in Zone}
    facts: dict[str, Any] = {}
    for result in report.steps.values():
        if isinstance(result, dict) and isinstance(result.get("summary"), dict):
            facts.update(result["summary"])
    return {"home": str(settings.home), "rows_per_zone": {z: t for z, t in zones.items() if t},
            "airflow_runs": dag_runs(settings), **facts}


def table_rows(lake: Lake, zone: Zone | str, table: str) -> int:
    """The rows of a lake table's current version (one column read, never decrypted)."""
    return lake.read_arrow(zone, table, columns=lake.schema(zone, table).names[:1]).num_rows


def _keep_log(home: Path, dag_id: str, run_id: str | None, output: str) -> Path:
    # `airflow dags test` logs its tasks to stdout only: the demo keeps that output where Airflow keeps task logs.
    run = re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id or f"no-run-{time.strftime('%Y%m%dT%H%M%S')}")
    path = home / "logs" / f"dag_id={dag_id}" / f"run_id={run}" / "dags-test.log"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(output)
    return path


