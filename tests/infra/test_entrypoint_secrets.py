"""Tests for infra/compose/entrypoint.sh: Docker secrets become the variables medguard and Spark read.

The script runs as it does in the image, with the Airflow entry point it hands over to replaced (through its
AIRFLOW_ENTRYPOINT variable) by this interpreter printing the environment it was given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import load_settings

pytestmark = pytest.mark.integration  # runs the script as a subprocess

ENTRYPOINT = Path(__file__).resolve().parents[2] / "infra" / "compose" / "entrypoint.sh"
PRINT_ENV = "import json, os, sys; print(json.dumps(dict(os.environ))); print(sys.argv[1:], file=sys.stderr)"


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "AIRFLOW_ENTRYPOINT": sys.executable}
    return subprocess.run(["bash", str(ENTRYPOINT), "-c", PRINT_ENV, *args], env={**base, **env},
                          capture_output=True, text=True, check=False)


def test_when_a_medguard_setting_comes_as_a_file_then_the_setting_gets_its_content_and_the_file_variable_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret_id").write_text("s3cr3t-id")
    (tmp_path / "role_id").write_text("role-1")
    (tmp_path / "options").write_text(json.dumps({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "xyz"}))
    (tmp_path / "spark").write_text("spark-shared")

    done = _run({"MEDGUARD_VAULT__SECRET_ID_FILE": str(tmp_path / "secret_id"),
                 "MEDGUARD_VAULT__ROLE_ID_FILE": str(tmp_path / "role_id"),
                 "MEDGUARD_STORAGE_OPTIONS_FILE": str(tmp_path / "options"),
                 "_SPARK_AUTH_SECRET_FILE": str(tmp_path / "spark"),
                 "MEDGUARD_VAULT__ADDR": "https://openbao:8200", "MEDGUARD_VAULT__AUTH_METHOD": "approle"})

    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)
    assert env["MEDGUARD_VAULT__SECRET_ID"] == "s3cr3t-id"
    assert env["_SPARK_AUTH_SECRET"] == "spark-shared"
    assert not [name for name in env if name.endswith("_FILE")]
    assert "AIRFLOW_ENTRYPOINT" not in env
    for name in [name for name in list(os.environ) if name.startswith("MEDGUARD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("MEDGUARD_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.vault.secret_id is not None and settings.vault.secret_id.get_secret_value() == "s3cr3t-id"
    assert settings.vault.role_id == "role-1"
    assert settings.storage_options["AWS_SECRET_ACCESS_KEY"].get_secret_value() == "xyz"


def test_when_a_secret_file_is_empty_then_the_container_stops_naming_the_variable_not_the_value(
        tmp_path: Path) -> None:
    (tmp_path / "secret_id").write_text("")

    done = _run({"MEDGUARD_VAULT__SECRET_ID_FILE": str(tmp_path / "secret_id")})

    assert done.returncode == 78
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("entrypoint: MEDGUARD_VAULT__SECRET_ID_FILE names ")


def test_when_a_required_file_is_missing_then_the_container_stops_before_airflow_starts(tmp_path: Path) -> None:
    done = _run({"REQUIRED_SECRET_FILES": str(tmp_path / "airflow_vault_kwargs")})

    assert done.returncode == 78
    assert done.stdout == ""
    assert "airflow_vault_kwargs is missing or empty (run the openbao-setup job" in done.stderr


def test_when_nothing_is_given_as_a_file_then_the_command_runs_with_its_arguments() -> None:
    done = _run({"OTHER_FILE": "/nonexistent"}, "scheduler")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["OTHER_FILE"] == "/nonexistent"
    assert done.stderr.strip() == "['scheduler']"
