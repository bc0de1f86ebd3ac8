"""`medguard deidentify` off a terminal: a progress line per table on stderr, pure JSON on stdout."""

from __future__ import annotations

import json

import pytest
from _deid_raw import generated, load_raw
from typer.testing import CliRunner

from pipeline.lake import Lake
from storage_security.protected import ProtectedLake


@pytest.mark.e2e
def test_when_deidentify_runs_off_a_terminal_then_stderr_counts_the_tables_and_stdout_is_json(
        tmp_path, monkeypatch, keyring_env) -> None:
    from pipeline.cli import app
    from pipeline.settings import get_settings, load_settings

    monkeypatch.setenv("MEDGUARD_HOME", str(tmp_path))
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    lake = Lake(load_settings(home=tmp_path, lake_root=str(tmp_path / "lake")))
    load_raw(ProtectedLake(lake, keyring_env, principal="svc:ingest"), generated(60, 11), ("outcomes", "conditions"))
    get_settings.cache_clear()

    done = CliRunner().invoke(app, ["deidentify", "--json"])

    assert done.exit_code in (0, 1), done.output  # 1 when the risk gate refuses a table: still a full report
    assert set(json.loads(done.stdout)["tables"]) == {"conditions", "outcomes"}
    progress = [line for line in done.stderr.splitlines()
                if line.startswith("deidentify") and "still running" not in line]
    assert progress[0] == "deidentify: conditions: 1/2 tables (50%)"
    assert progress[-1] == "deidentify: 2/2 tables (100%) — done"
