"""The end-to-end runner behind ``medguard demo``: the whole chain on embedded defaults, step by step.

Each layer's issue adds its step here; today the chain is: generate a synthetic population of source extracts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import Settings, get_settings
from pipeline.synthetic import GenerationSummary, generate


@dataclass
class DemoReport:
    """What each step of the demo did, in order."""

    steps: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.steps)


def run_demo(*, patients: int = 2_000, seed: int = 42, defect_rate: float = 0.02,
             settings: Settings | None = None, progress: Callable[[int], None] | None = None) -> DemoReport:
    """Run every step of the chain that exists, on the embedded defaults.

    The population goes to ``$MEDGUARD_HOME/sources/demo``: source extracts, as a hospital would send them,
    outside the lake (no plaintext PHI is ever written into the lake).
    """
    settings = settings or get_settings()
    report = DemoReport()
    summary: GenerationSummary = generate(settings.home / "sources" / "demo", patients=patients, seed=seed,
                                          defect_rate=defect_rate, progress=progress)
    report.steps["generate"] = summary.to_dict()
    return report
