"""The medguard command line: --help everywhere, --json results, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every test runs the medguard command

MEDGUARD = str(Path(sys.executable).with_name("medguard"))


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDGUARD, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("command", [[], ["generate"], ["demo"]])
def test_when_help_requested_then_every_command_describes_itself(command: list[str]) -> None:
    done = _run(*command, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout


def test_when_generate_with_json_then_stdout_is_the_summary(tmp_path: Path) -> None:
    done = _run("generate", "--out", str(tmp_path / "p"), "--patients", "25", "--seed", "2",
                "--formats", "csv,notes", "--defect-rate", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["patients"] == 25
    assert summary["notes"] >= 25
    assert (tmp_path / "p" / "patients.csv").is_file()
    assert summary["defects"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--formats", "xml"], "unknown format"),
        (["--defect-rate", "0.3", "--formats", ""], "unknown format"),
    ],
)
def test_when_generate_fails_then_one_line_reason_on_stderr(tmp_path: Path, args: list[str], reason: str) -> None:
    done = _run("generate", "--out", str(tmp_path / "p"), "--patients", "3", *args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and reason in done.stderr
    assert done.stdout == ""


def test_when_settings_invalid_then_cli_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "MEDGUARD_K_ANONYMITY": "1"}
    done = _run("generate", "--out", str(tmp_path / "p"), "--patients", "3", env=env)
    assert done.returncode == 1
    assert "MEDGUARD_K_ANONYMITY" in done.stderr
    assert not (tmp_path / "p").exists()


def test_when_usage_is_wrong_then_exit_status_is_2(tmp_path: Path) -> None:
    assert _run("generate", "--out", str(tmp_path), "--patients", "0").returncode == 2


def test_when_config_is_given_then_what_the_command_starts_reads_the_same_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `medguard --config FILE demo` starts `airflow dags test` and `medguard serve` as subprocesses: they inherit
    # the environment, so the file must be named there, not only loaded in this process.
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.settings import CONFIG_ENV

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("MEDGUARD_HOME", str(tmp_path / "home"))
    config = tmp_path / "medguard.yaml"
    config.write_text("log_level: WARNING\n")
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["--config", "medguard.yaml", "endpoints", "list", "--json"])

    assert result.exit_code == 0, result.output
    assert os.environ[CONFIG_ENV] == str(config.resolve())
