"""The analytics commands: ``medguard train`` and ``medguard diagnose``.

Registered through the ``medguard.commands`` entry points; heavy imports stay inside the commands so that
``medguard --help`` stays fast. Failures reach the root command's one error path (:mod:`pipeline.cli_support`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli_support import JsonOption, emit, settings_from


def train(
    ctx: typer.Context,
    table: Annotated[str, typer.Option("--table", help="Deidentified table whose rows are the examples.")],
    label: Annotated[str, typer.Option("--label", help="Label column of that table.")],
    config: Annotated[Path | None, typer.Option("--train-config", "--config", help="Training config (YAML): "
                                                "features to use or drop, positive class, target sensitivity.")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """Train a diagnostic model on a deidentified table: screen, fit on Spark, evaluate, attack, sign, register."""
    from analytics.flow import train_pipeline
    from pipeline.progress import ProgressBoard

    with ProgressBoard() as board:
        steps = board.steps("train")
        with board.running("train"):  # a step can take minutes (cross-validation, the attacks)
            result = train_pipeline(settings_from(ctx), table, label, config_path=str(config) if config else None,
                                    progress=steps)
        steps.finish()
    m = {k: "n/a" if v is None else f"{v:.3f}" for k, v in result["metrics"].items()}
    text = (f"{result['model_version']}: AUROC {m.get('auroc', 'n/a')}, AUPRC {m.get('auprc', 'n/a')}, "
            f"sensitivity {m.get('sensitivity', 'n/a')}, specificity {m.get('specificity', 'n/a')}, "
            f"Brier {m.get('brier', 'n/a')} (held-out test); model card {result['model_card']}")
    if result.get("promotion"):
        text += "\n" + promotion_line(result["promotion"])
    emit({k: result[k] for k in ("model_version", "metrics", "model_card", "promotion") if k in result}, as_json,
         text)


def promotion_line(promotion: dict[str, Any]) -> str:
    """What became of the trained model: promoted, left a candidate (and why), or a duplicate of a registered one."""
    current = f" (current: {promotion['current']})" if promotion.get("current") else " (no current model)"
    reasons = "; ".join(promotion.get("reasons") or [])
    return f"promotion: {promotion['decision']}{current}" + (f" — {reasons}" if reasons else "")


def diagnose(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Option("--table", help="Deidentified table to score "
                                              "(default: the newest model's training table).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score a deidentified table with the verified model on Spark and write the predictions zone."""
    from analytics.flow import diagnose as run
    from pipeline.progress import ProgressBoard

    with ProgressBoard() as board:
        steps = board.steps("diagnose")
        with board.running("diagnose"):
            result = run(settings_from(ctx), table, progress=steps)
        steps.finish()
    emit(result, as_json, f"{result['rows']:,} rows of {result['table']} scored with {result['model_version']}: "
          f"{result['flagged']:,} flagged, drift {result['drift']['status']}"
          f"{' (retraining recommended)' if result['drift']['retrain'] else ''} → {result['predictions']}")
