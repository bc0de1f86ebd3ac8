"""The end-to-end runner behind ``medguard demo``: the whole chain on embedded defaults, step by step.

The spine runs the first step (generate a synthetic population of source extracts); each layer adds its own
steps through the ``medguard.demo_steps`` entry-point group, run in the order of their names (``20_keys``,
``30_ingest``…). A step is a callable ``step(settings, report) -> dict`` that reads earlier steps' results from
``report.steps`` and returns its own. Each step's wall-clock seconds are kept in ``report.seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pipeline.settings import Settings, get_settings
from pipeline.synthetic import generate

DEMO_SOURCES = "sources/demo"


@dataclass
class DemoReport:
    """What each step of the demo did, in order."""

    steps: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Each step's result under its name, and ``step_seconds``: how long each step took."""
        return {**self.steps, "step_seconds": dict(self.seconds)}


def layer_steps() -> list[tuple[str, Callable[[Settings, DemoReport], dict[str, Any]]]]:
    """The demo steps that layers have registered, in run order."""
    return [(e.name, e.load()) for e in sorted(entry_points(group="medguard.demo_steps"), key=lambda e: e.name)]


def run_demo(*, patients: int = 2_000, seed: int = 42, defect_rate: float = 0.02,
             settings: Settings | None = None, progress: Callable[[int], None] | None = None,
             on_step: Callable[[str, float | None], None] | None = None) -> DemoReport:
    """Run every step of the chain that exists, on the embedded defaults.

    The population goes to ``$MEDGUARD_HOME/sources/demo``: source extracts, as a hospital would send them,
    outside the lake (no plaintext PHI is ever written into the lake).

    Args:
        progress: called with a number of patients generated (see :func:`pipeline.synthetic.generate`).
        on_step: called as each step starts (step name, None) and ends (step name, seconds it took).
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
        run(name.split("_", 1)[-1], lambda step=step: step(settings, report))
    return report
