"""The ``medguard`` command line: one Typer app, a sub-command per layer, ``--json`` everywhere.

Failures exit non-zero with a one-line reason on stderr; ``--json`` prints a machine-readable result on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.cli_support import JsonOption, MedguardGroup, emit, settings_from
from pipeline.settings import get_settings, load_settings, private_home

app = typer.Typer(
    name="medguard",
    help="A secure big-data pipeline for healthcare data. Settings come from MEDGUARD_* variables or --config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=MedguardGroup,
)
_out = Console()
_err = Console(stderr=True)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file.", exists=False)] = None,
) -> None:
    """Load settings once, before any command runs, so invalid settings fail at start-up."""
    if config:
        ctx.obj = load_settings(config)
        private_home(ctx.obj)
    else:
        ctx.obj = get_settings()


@contextmanager
def _progress(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=_err,
                  disable=not enabled, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.advance(task, done)


def _render_generation(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['patients']:,} patients (seed {summary['seed']}) → {summary['out_dir']}")
    table.add_column("output")
    table.add_column("count", justify="right")
    for name, count in summary["rows"].items():
        table.add_row(f"{name} rows", f"{count:,}")
    for key in ("notes", "fhir_bundles", "hl7_messages"):
        if summary[key]:
            table.add_row(key.replace("_", " "), f"{summary[key]:,}")
    labelled = summary["label_positive"] + summary["label_negative"]
    if labelled:
        table.add_row("new T2D within 1y (label)", f"{summary['label_positive']:,} of {labelled:,} "
                      f"({summary['label_positive'] / labelled:.1%})")
    table.add_row("prevalent T2D (no label)", f"{summary['prevalent_t2d']:,}")
    for kind, count in summary["defects"].items():
        table.add_row(f"defect: {kind}", f"{count:,}")
    _out.print(table)


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Directory for the source extracts.")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="How many patients.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Same seed, byte-identical output.")] = 42,
    formats: Annotated[str, typer.Option("--formats", help="Comma-separated: csv,parquet,jsonl,fhir,hl7,notes")]
    = "csv,parquet,jsonl,fhir,hl7,notes",
    defect_rate: Annotated[float, typer.Option("--defect-rate", min=0.0, max=0.5,
                                               help="Fraction of records given a realistic fault.")] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Generate a synthetic, seeded EHR population as source extracts (CSV, Parquet, JSON lines, FHIR, HL7, notes)."""
    from pipeline.synthetic import generate as run

    with _progress("generating patients", patients, enabled=not as_json and sys.stderr.isatty()) as advance:
        summary = run(out, patients=patients, seed=seed, formats=formats.split(","), defect_rate=defect_rate,
                      progress=advance)
    result = summary.to_dict()
    emit(result, as_json, lambda: _render_generation(result))


@app.command()
def demo(
    ctx: typer.Context,
    patients: Annotated[int, typer.Option("--patients", min=1, help="Size of the demo population.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 42,
    as_json: JsonOption = False,
) -> None:
    """Run the whole chain end to end on the embedded defaults (what `make demo` runs)."""
    from pipeline.demo import run_demo

    settings = settings_from(ctx)
    with _progress("demo: generating patients", patients, enabled=not as_json and sys.stderr.isatty()) as advance:
        report = run_demo(patients=patients, seed=seed, settings=settings, progress=advance)

    result = report.to_dict()

    def render() -> None:
        _out.print(f"[bold]medguard demo[/bold] — home {settings.home}")
        _render_generation(result["generate"])
        for step, outcome in result.items():
            if step != "generate":
                _out.print(f"[bold]{step}[/bold]: {_summary(outcome)}")
        _out.print("Everything each step did: `medguard demo --json`.")

    emit(result, as_json, render)


def _summary(outcome: Any, limit: int = 400) -> str:
    """One line for a demo step: its top-level facts, nested detail left to ``--json``."""
    if not isinstance(outcome, dict):
        return str(outcome)[:limit]
    parts = []
    for key, value in outcome.items():
        if isinstance(value, dict):
            flat = ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))
            parts.append(f"{key}({flat})" if flat else key)
        elif not isinstance(value, list):
            parts.append(f"{key}={value}")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[:limit] + "…"


def _register_layer_commands() -> None:
    # Layers sit above the spine, so the spine never imports them: each layer declares its commands as
    # entry points in the "medguard.commands" group (a Typer app becomes a group, a function a command).
    for entry in sorted(entry_points(group="medguard.commands"), key=lambda e: e.name):
        target = entry.load()
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=entry.name)
        else:
            app.command(name=entry.name)(target)


_register_layer_commands()


def main() -> None:
    """Console-script entry point; the root group reports failures (see :mod:`pipeline.cli_support`)."""
    app()
