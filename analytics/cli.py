"""The analytics commands: ``medguard train`` and ``medguard diagnose``.

Registered through the ``medguard.commands`` entry points; heavy imports stay inside the commands so that
``medguard --help`` stays fast. Failures are MedguardError/ValueError: one line on stderr, exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pipeline.settings import Settings

JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]


def _settings(ctx: typer.Context) -> Settings:
    from pipeline.settings import Settings, get_settings

    root = ctx.find_root().obj
    return root if isinstance(root, Settings) else get_settings()


def _fail(exc: Exception) -> None:
    sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
    raise typer.Exit(1)


def _emit(result: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        typer.echo(line)


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
    from pipeline.errors import MedguardError

    try:
        result = train_pipeline(_settings(ctx), table, label, config_path=str(config) if config else None)
    except (MedguardError, ValueError) as exc:
        _fail(exc)
    m = result["metrics"]
    _emit({k: result[k] for k in ("model_version", "metrics", "model_card")}, as_json,
          f"{result['model_version']}: AUROC {m['auroc']:.3f}, AUPRC {m['auprc']:.3f}, sensitivity "
          f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f}, Brier {m['brier']:.3f} (held-out test); "
          f"model card {result['model_card']}")


def diagnose(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Option("--table", help="Deidentified table to score "
                                              "(default: the newest model's training table).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score a deidentified table with the verified model on Spark and write the predictions zone."""
    from analytics.flow import diagnose as run
    from pipeline.errors import MedguardError

    try:
        result = run(_settings(ctx), table)
    except (MedguardError, ValueError) as exc:
        _fail(exc)
    _emit(result, as_json, f"{result['rows']:,} rows of {result['table']} scored with {result['model_version']}: "
          f"{result['flagged']:,} flagged, drift {result['drift']['status']}"
          f"{' (retraining recommended)' if result['drift']['retrain'] else ''} → {result['predictions']}")
