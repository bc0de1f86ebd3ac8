"""The medguard command line: --help everywhere, --json results, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
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


def test_when_demo_runs_then_every_layer_runs_and_no_plaintext_identifier_reaches_the_lake(tmp_path: Path) -> None:
    import os

    from storage_security.local_vault.openbao import free_port_pair

    # 300 patients: at 60 the release-wide risk gate withholds every labelled patient (k = 5 over linked tables),
    # and training has nothing to learn from.
    env = {**os.environ, "MEDGUARD_HOME": str(tmp_path), "MEDGUARD_VAULT__LOCAL_PORT": str(free_port_pair())}
    try:
        # About 4.5 minutes on 2 busy cores (ingest 77 s, deidentify 107 s, train 56 s): room for a slower day.
        done = _run("demo", "--patients", "300", "--json", env=env, timeout=900)
    finally:
        _run("vault", "down", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["generate"]["out_dir"]) == tmp_path / "sources" / "demo"
    assert (tmp_path / "sources" / "demo" / "patients.parquet").is_file()
    steps = {"generate", "security", "ingest", "deidentify", "access", "train", "diagnose", "serve", "verify"}
    assert set(report) == steps | {"step_seconds"} and set(report["step_seconds"]) == steps
    # Off a terminal the demo is not silent: each step says on stderr that it starts and how long it took.
    for step in steps:
        assert f"demo {step}: started" in done.stderr and f"demo {step}: done in " in done.stderr
    assert (tmp_path / "lake" / "raw" / "patients" / "_delta_log").is_dir()
    assert (tmp_path / "lake" / "deidentified" / "patients" / "_delta_log").is_dir()
    # The last step greps every lake file (Parquet decoded) for the demo patients' identifiers.
    assert report["verify"]["plaintext_found"] == 0 and report["verify"]["identifiers_checked"] > 100
    assert "intact" in report["verify"]["audit"]
