"""The ``medguard`` command line: one Typer app, a sub-command per layer, ``--json`` everywhere.

Failures exit non-zero with a one-line reason on stderr; ``--json`` prints a machine-readable result on stdout.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.cli_support import JsonOption, MedguardGroup, emit, settings_from
from pipeline.progress import ProgressBoard
from pipeline.settings import CONFIG_ENV, get_settings, load_settings, private_home

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
        # What this command starts (`airflow dags test` for each DAG run, `medguard serve`) reads the same file.
        os.environ[CONFIG_ENV] = str(config.expanduser().resolve())
        private_home(ctx.obj)
    else:
        ctx.obj = get_settings()


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

    with ProgressBoard(console=_err) as board:
        generated = board.task("generate", total=patients, unit="patients")
        summary = run(out, patients=patients, seed=seed, formats=formats.split(","), defect_rate=defect_rate,
                      progress=generated.advance)
        generated.finish()
    result = summary.to_dict()
    emit(result, as_json, lambda: _render_generation(result))


@app.command()
def demo(
    ctx: typer.Context,
    patients: Annotated[int, typer.Option("--patients", min=1, help="Size of the demo population (training needs "
                                                                   "about 1,000 or more).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 42,
    as_json: JsonOption = False,
) -> None:
    """Run the whole chain end to end through Airflow on the embedded defaults (what `make demo` runs).

    Generates a population, starts the local OpenBao, runs the chain as Airflow DAG runs (`airflow dags test`,
    SQLite metadata DB in the home), then an analyst's and a clinician's queries, a signed diagnosis request to
    `medguard serve` and the audit check, and ends with a one-page summary read back from the lake and Airflow.
    """
    from pipeline.demo import run_demo

    settings = settings_from(ctx)
    # A demo population's test split holds a few dozen positives: 95 % bounds that wide cannot clear the promotion
    # floors, so unless told otherwise the demo's training (a DAG run, which inherits this) judges point estimates.
    os.environ.setdefault("MEDGUARD_GOVERNANCE__JUDGE_ON", "point")
    with ProgressBoard(console=_err) as board, ExitStack() as running:
        generated = board.task("demo generate", total=patients, unit="patients")

        def announce(step: str, seconds: float | None) -> None:
            if seconds is None:
                board.note(f"demo {step}: started")
                if step != "generate":  # the layers' steps report nothing while they run: a heartbeat does
                    running.enter_context(board.running(f"demo {step}"))
                return
            running.close()
            if step == "generate":
                generated.finish()
            board.note(f"demo {step}: done in {seconds:,.1f} s")

        report = run_demo(patients=patients, seed=seed, settings=settings, progress=generated.advance,
                          on_step=announce)

    result = report.to_dict()

    def render() -> None:
        _out.print(f"[bold]medguard demo[/bold] — home {settings.home}")
        _render_generation(result["generate"])
        for step, outcome in report.steps.items():
            if step != "generate":
                shown = {k: v for k, v in outcome.items() if k != "summary"} if isinstance(outcome, dict) else outcome
                _out.print(f"[bold]{escape(step)}[/bold] ({report.seconds[step]:,.1f} s): "
                           f"{escape(summary_line(shown))}", highlight=False, soft_wrap=True)
        _render_summary(report.summary)
        _out.print("Everything each step did: `medguard demo --json`.")

    emit(result, as_json, render)


def _render_summary(summary: dict[str, Any]) -> None:
    """The demo's closing page: Airflow runs, rows per zone, then each step's headline facts, one line each."""
    _out.rule("[bold]summary[/bold]")
    runs = Table(title="Airflow runs (read back from the metadata DB)", title_justify="left")
    for column in ("DAG", "run", "state"):
        runs.add_column(column)
    for run in summary["airflow_runs"]:
        runs.add_row(run["dag_id"], run["run_id"], run["state"])
    _out.print(runs)
    zones = Table(title="Rows per zone (read back from the lake)", title_justify="left")
    zones.add_column("zone")
    zones.add_column("tables (rows)")
    for zone, tables in summary["rows_per_zone"].items():
        zones.add_row(zone, ", ".join(f"{table} {number(rows)}" for table, rows in tables.items()))
    _out.print(zones)
    for key, value in summary.items():
        if key not in ("airflow_runs", "rows_per_zone"):
            _out.print(f"[bold]{escape(key.replace('_', ' '))}[/bold]: {escape(summary_line(value))}",
                       highlight=False, soft_wrap=True)


def number(value: Any) -> str:
    """A number as people read it: thousands separators, at most 3 decimals (trailing zeros dropped)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != value or value in (float("inf"), float("-inf")):  # NaN, infinities
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def summary_line(outcome: Any, depth: int = 3) -> str:
    """One readable line for a demo step, whole: numbers rounded, nested facts in parentheses, lists counted.

    Facts nest ``depth`` levels deep; a deeper group is shown as ``name(…)`` (a whole word, never a cut), and a list
    of more than a few values, or of records, as its length. Everything is in ``--json``.
    """
    if isinstance(outcome, dict):
        parts = []
        for key, value in outcome.items():
            if isinstance(value, dict):
                inner = summary_line(value, depth - 1) if depth > 1 or not value else "…"
                parts.append(f"{key}({inner})")
            else:
                parts.append(f"{key}={summary_line(value, depth)}")
        return ", ".join(parts)
    if isinstance(outcome, list | tuple):
        if len(outcome) <= 5 and all(not isinstance(v, dict | list | tuple) for v in outcome):
            return "[" + ", ".join(summary_line(v) for v in outcome) + "]"
        return f"[{len(outcome):,} items]"
    return number(outcome)


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
