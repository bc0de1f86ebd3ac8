"""The analytics steps of ``medguard demo``: ``60_train`` and ``70_diagnose`` (entry points).

Both run on the deidentified tables that de-identification published earlier in the demo; when those do not
exist yet (or carry no column classification), the step is skipped with a note instead of failing the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import ValidationError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings

T2D_CONFIG = Path(__file__).parent / "configs" / "t2d_within_1y.yaml"
NEEDED = ("outcomes", "patients", "observations")


def train_step(settings: Settings, report: Any) -> dict[str, Any]:
    """Train the T2D model on the demo's deidentified tables."""
    from analytics.flow import train_pipeline

    present = set(Lake(settings).tables(Zone.DEIDENTIFIED))
    missing = [t for t in NEEDED if t not in present]
    if missing:
        return {"skipped": f"no deidentified {', '.join(missing)} yet: run de-identification first"}
    try:
        return train_pipeline(settings, "outcomes", "t2d_within_1y", config_path=str(T2D_CONFIG))
    except ValidationError as exc:
        # A demo population too small to hold enough positive labels is a sizing choice, not a failure.
        small = ("column classification", "too few to train", "more labelled data (of both classes) is needed")
        if not any(reason in str(exc) for reason in small):
            raise
        return {"skipped": str(exc)}


def diagnose_step(settings: Settings, report: Any) -> dict[str, Any]:
    """Score the deidentified outcomes table with the current model (skipped when training promoted none)."""
    from analytics.flow import diagnose

    trained = report.steps.get("train", {})
    if "model_version" not in trained:
        return {"skipped": "no model was trained in this demo run"}
    promotion = trained.get("promotion") or {}
    if not promotion.get("current"):
        # Fail closed: a candidate that did not earn promotion is never used; the demo says why instead.
        return {"skipped": f"no current model: {trained['model_version']} stays a candidate ("
                           f"{'; '.join(promotion.get('reasons', []))})"}
    return diagnose(settings, "outcomes")
