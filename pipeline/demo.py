"""The end-to-end runner behind ``medguard demo``: the whole chain on embedded defaults, step by step.

The spine runs the first step (generate a synthetic population of source extracts); each layer adds its own
steps through the ``medguard.demo_steps`` entry-point group, run in the order of their names (``20_keys``,
``30_ingest``…). A step is a callable ``step(settings, report) -> dict`` that reads earlier steps' results from
``report.steps`` and returns its own.
"""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.steps)


def layer_steps() -> list[tuple[str, Callable[[Settings, DemoReport], dict[str, Any]]]]:
    """The demo steps that layers have registered, in run order."""
    return [(e.name, e.load()) for e in sorted(entry_points(group="medguard.demo_steps"), key=lambda e: e.name)]


def run_demo(*, patients: int = 2_000, seed: int = 42, defect_rate: float = 0.02,
             settings: Settings | None = None, progress: Callable[[int], None] | None = None) -> DemoReport:
    """Run every step of the chain that exists, on the embedded defaults.

    The population goes to ``$MEDGUARD_HOME/sources/demo``: source extracts, as a hospital would send them,
    outside the lake (no plaintext PHI is ever written into the lake).
    """
    settings = settings or get_settings()
    report = DemoReport()
    summary = generate(settings.home / DEMO_SOURCES, patients=patients, seed=seed, defect_rate=defect_rate,
                       progress=progress)
    report.steps["generate"] = summary.to_dict()
    for name, step in layer_steps():
        report.steps[name.split("_", 1)[-1]] = step(settings, report)
    return report
