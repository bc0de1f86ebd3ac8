"""What every ``medguard`` command shares: its settings, its ``--json`` or text output, and one error path.

Layer command modules import this instead of each keeping their own copy, so the command line contract of
DESIGN.md holds in one place: ``--json`` prints a machine-readable result on stdout, and an expected failure
(:class:`~pipeline.errors.MedguardError`, ``ValueError``, ``OSError``) anywhere below the root command becomes
``medguard: error: <one line>`` on stderr and exit status 1. Usage errors stay Typer's (exit status 2); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from pipeline.errors import MedguardError

if TYPE_CHECKING:
    import click

    from pipeline.settings import Settings

__all__ = ["EXPECTED_ERRORS", "JsonOption", "MedguardGroup", "emit", "error_line", "fail", "settings_from"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]

# Failures a command reports as one line: ours, caller mistakes, and the file system's.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (MedguardError, ValueError, OSError)


def settings_from(ctx: typer.Context) -> Settings:
    """The settings the root command loaded (``--config`` or ``MEDGUARD_*``), or the process-wide ones."""
    from pipeline.settings import Settings, get_settings

    root = ctx.find_root().obj
    return root if isinstance(root, Settings) else get_settings()


def emit(result: Any, as_json: bool, text: str | Callable[[], object]) -> None:
    """Print ``result`` as JSON on stdout with ``--json``; otherwise ``text`` (a string, or a function that prints).

    The JSON is indented with sorted keys; values JSON cannot hold (paths, dates) are written as strings.
    """
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    elif callable(text):
        text()
    else:
        typer.echo(text)


def error_line(exc: BaseException) -> str:
    """``medguard: error: <reason>`` on one line (a multi-line message is joined; an empty one gives its type)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"medguard: error: {reason}"


def fail(exc: BaseException) -> NoReturn:
    """Report ``exc`` as one line on stderr and leave with exit status 1."""
    sys.stderr.write(error_line(exc) + "\n")
    raise typer.Exit(1)


class MedguardGroup(TyperGroup):
    """The root command group: an expected failure in any command below it is reported by :func:`fail`.

    Catching here, rather than in the console-script wrapper, gives the same behaviour to ``medguard`` and to
    Typer's test runner invoking the app.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            fail(exc)
