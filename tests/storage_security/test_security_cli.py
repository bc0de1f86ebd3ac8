"""The ``medguard keys`` commands as an operator runs them: exit status, one-line errors, ``--json`` results."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.settings import load_settings
from storage_security.protected import ProtectedLake, Protection


def test_when_keys_shred_names_no_stored_patient_then_it_exits_1_and_notes_nothing(
    keyring_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    writer = ProtectedLake.from_settings(load_settings(), principal="svc:ingest")
    pseudonym = writer.pseudonymizer("patient").pseudonym("PAT1")
    writer.append("raw", "people", pa.table({"row_id": ["r1"], "patient": [pseudonym], "ssn": ["111"]}),
                  Protection(encrypted=("ssn",), row_key="row_id", patient_key="patient"))
    runner = CliRunner()

    typo = runner.invoke(app, ["keys", "shred", "PAT11", "--reason", "erasure ER-5"])
    assert typo.exit_code == 1 and typo.stdout == ""
    assert typo.stderr.startswith("medguard: error: no data key is stored for patient ps1_")
    assert typo.stderr.count("\n") == 1 and "nothing to shred" in typo.stderr

    done = runner.invoke(app, ["keys", "shred", " PAT1", "--reason", "erasure ER-5", "--json"])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["patient_pseudonym"] == pseudonym and json.loads(done.stdout)["deks_dropped"] == 1
    again = runner.invoke(app, ["keys", "shred", "PAT1", "--reason", "erasure ER-5", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["deks_dropped"] == 0
    assert ProtectedLake.from_settings(load_settings(), principal="test:reader").shredded() == {pseudonym}
