"""``medguard access …`` and ``medguard query``: JSON results, one-line refusals on stderr with exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.lake import CommitInfo, Lake
from pipeline.settings import load_settings
from storage_security.keys.keyring import LocalKeyring, encode_master_key

pytestmark = pytest.mark.e2e  # every test runs the medguard command

MEDGUARD = str(Path(sys.executable).with_name("medguard"))


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("access-cli-home")
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(home / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master)}
    lake = Lake(load_settings(home=home, key_provider="keyring"))
    rows = [{"patient_pseudonym": f"ps1_x_{i:04x}", "sex": "F" if i % 2 else "M", "consent_research": i % 4 != 0,
             "ssn": f"{i:03d}-45-6789"} for i in range(12)]
    lake.append("deidentified", "patients", pa.Table.from_pylist(rows), commit=CommitInfo(principal="test"))
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDGUARD, *args], capture_output=True, text=True, timeout=300, env=env, check=False)


def _one_line_error(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medguard: error:") and fragment in lines[0], done.stderr


@pytest.mark.parametrize("command", [["access", "add-principal"], ["query"], ["audit", "alerts"]])
def test_when_help_is_asked_then_every_access_command_describes_itself(command):
    done = subprocess.run([MEDGUARD, *command, "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and "Usage" in done.stdout


def test_when_an_analyst_is_added_then_tables_and_queries_follow_the_policy(cli_env):
    added = _run(cli_env, "access", "add-principal", "ann", "--role", "analyst", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["purposes"] == ["research"]
    _one_line_error(_run(cli_env, "access", "add-principal", "ann", "--role", "analyst"), "exists already")
    tables = _run(cli_env, "access", "tables", "--as", "ann", "--json")
    assert json.loads(tables.stdout) == ["deidentified.patients"], tables.stderr
    granted = _run(cli_env, "query", "--as", "ann", "--json",
                   "SELECT sex, count(*) AS n, ssn AS s FROM deidentified.patients GROUP BY sex, ssn ORDER BY sex")
    assert granted.returncode == 0, granted.stderr
    result = json.loads(granted.stdout)
    # the 3 men are a cell smaller than k = 5: small-cell suppression leaves it out
    assert result["rows"] == [{"sex": "F", "n": 6, "s": None}]
    assert result["masks"] == {"deidentified.patients": {"ssn": "null"}}
    _one_line_error(_run(cli_env, "query", "--as", "ann", "SELECT sex, max(ssn) FROM deidentified.patients "
                         "GROUP BY sex"), "max() over deidentified.patients.ssn would not be a true answer")
    _one_line_error(_run(cli_env, "query", "--as", "ann", "SELECT * FROM raw.patients"), "query refused")
    _one_line_error(_run(cli_env, "query", "--as", "ann", "SELECT 1; DROP TABLE x"), "exactly one statement")
    _one_line_error(_run(cli_env, "query", "--as", "nobody", "SELECT 1"), "unknown principal")


def test_when_a_token_is_issued_then_it_authenticates_until_revoked(cli_env):
    _run(cli_env, "access", "add-principal", "tia", "--role", "analyst", "--purpose", "research")
    issued = json.loads(_run(cli_env, "access", "issue-token", "tia", "--json").stdout)
    sql = "SELECT count(*) AS n FROM deidentified.patients"
    done = _run(cli_env, "query", "--token", issued["token"], "--json", sql)
    assert json.loads(done.stdout)["rows"] == [{"n": 9}], done.stderr
    revoked = _run(cli_env, "access", "revoke-token", issued["token_id"], "--json")
    assert json.loads(revoked.stdout)["revoked"] is True
    _one_line_error(_run(cli_env, "query", "--token", issued["token"], sql), "token revoked")
    listed = json.loads(_run(cli_env, "audit", "alerts", "--json").stdout)
    assert listed == {"alerts": [], "count": 0}


def test_when_a_query_hides_cells_then_text_marks_them_and_json_says_what_was_withheld(cli_env):
    _run(cli_env, "access", "add-principal", "wes", "--role", "analyst")
    text = _run(cli_env, "query", "--as", "wes", "SELECT sex, ssn, CAST(NULL AS VARCHAR) AS gap "
                                                 "FROM deidentified.patients ORDER BY sex LIMIT 3")
    assert text.returncode == 0, text.stderr
    body = text.stdout.splitlines()
    assert body[1].split() == ["F", "‹masked›", "null"]  # hidden by the policy vs simply missing
    assert "note: column ssn of deidentified.patients is masked (null)" in body
    # 3 of 12 patients did not consent: fewer than k = 5, so the count itself is withheld
    assert any(line.startswith("note: row filter consent") and "count withheld: fewer than 5 rows" in line
               for line in body), text.stdout
    done = _run(cli_env, "query", "--as", "wes", "--json", "SELECT sex, ssn FROM deidentified.patients LIMIT 1")
    result = json.loads(done.stdout)
    assert result["withheld"] == {
        "row_filters": [{"table": "deidentified.patients", "filter": "consent", "rows_removed": None,
                         "description": "patients who consented to research only",
                         "withheld_because": "fewer than 5 rows"}],
        "masks": {"deidentified.patients": {"ssn": "null"}}}
    assert result["column_masks"] == {"ssn": "null"}


def test_when_a_table_is_described_then_only_visible_columns_are_listed_with_type_class_and_mask(cli_env):
    _run(cli_env, "access", "add-principal", "vic", "--role", "analyst")
    done = _run(cli_env, "access", "describe", "deidentified.patients", "--as", "vic", "--json")
    assert done.returncode == 0, done.stderr
    columns = {c["name"]: c for c in json.loads(done.stdout)}
    assert "ssn" not in columns and columns["sex"] == {"name": "sex", "type": "string", "class": "quasi_identifier",
                                                       "mask": "plaintext"}
    text = _run(cli_env, "access", "describe", "deidentified.patients", "--as", "vic")
    assert any(line.split()[:2] == ["sex", "string"] for line in text.stdout.splitlines())
    counted = json.loads(_run(cli_env, "access", "tables", "--as", "vic", "--columns", "--json").stdout)
    assert counted == [{"table": "deidentified.patients", "columns": len(columns)}]
    _one_line_error(_run(cli_env, "access", "describe", "raw.nothing", "--as", "vic"), "describe refused: no table")
