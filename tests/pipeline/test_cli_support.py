"""The CLI support every command module uses: --json or text output, and one error path below the root group."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli_support import JsonOption, MedguardGroup, emit, error_line
from pipeline.errors import AccessDeniedError, StorageError


def _app() -> typer.Typer:
    app = typer.Typer(cls=MedguardGroup, add_completion=False, pretty_exceptions_enable=False)
    sub = typer.Typer()
    app.add_typer(sub, name="sub")

    @app.command()
    def show(as_json: JsonOption = False) -> None:
        emit({"b": 2, "a": 1}, as_json, "a=1 b=2")

    @sub.command("fail")
    def fail_with(kind: Annotated[str, typer.Argument()]) -> None:
        errors = {"storage": StorageError("lake unreadable\n  at zone raw"), "value": ValueError("bad input"),
                  "os": FileNotFoundError("no such file: x.csv"), "bug": KeyError("bug")}
        raise errors[kind]

    return app


@pytest.mark.parametrize(("args", "stdout"), [
    (["show"], "a=1 b=2\n"),
    (["show", "--json"], json.dumps({"a": 1, "b": 2}, indent=2) + "\n"),
])
def test_when_a_command_emits_then_json_is_sorted_and_text_is_one_line(args: list[str], stdout: str) -> None:
    done = CliRunner().invoke(_app(), args)
    assert (done.exit_code, done.stdout) == (0, stdout)


@pytest.mark.parametrize(("kind", "stderr"), [
    ("storage", "medguard: error: lake unreadable at zone raw\n"),
    ("value", "medguard: error: bad input\n"),
    ("os", "medguard: error: no such file: x.csv\n"),
])
def test_when_a_nested_command_fails_then_one_line_on_stderr_and_exit_1(kind: str, stderr: str) -> None:
    done = CliRunner().invoke(_app(), ["sub", "fail", kind])
    assert (done.exit_code, done.stderr, done.stdout) == (1, stderr, "")


def test_when_a_command_has_a_bug_then_the_exception_is_not_hidden() -> None:
    done = CliRunner().invoke(_app(), ["sub", "fail", "bug"])
    assert isinstance(done.exception, KeyError)


def test_when_usage_is_wrong_then_typer_reports_it_with_exit_2() -> None:
    assert CliRunner().invoke(_app(), ["sub", "fail"]).exit_code == 2


@pytest.mark.parametrize(("exc", "line"), [
    (AccessDeniedError("denied"), "medguard: error: denied"),
    (ValueError(""), "medguard: error: ValueError"),
    (ValueError("first\nsecond"), "medguard: error: first second"),
])
def test_when_an_error_is_reported_then_it_is_one_prefixed_line(exc: Exception, line: str) -> None:
    assert error_line(exc) == line
