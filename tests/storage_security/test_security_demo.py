"""The security demo steps: the final check finds plaintext identifiers in the lake, compressed or not."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.demo import DEMO_SOURCES
from pipeline.errors import PlaintextLeakError
from pipeline.lake import Lake
from pipeline.settings import load_settings
from storage_security.demo import verify_step
from storage_security.protected import ProtectedLake, Protection

SSN = "123-45-6789"


@pytest.fixture
def settings(tmp_path: Path):
    settings = load_settings(home=tmp_path, key_provider="keyring")
    sources = tmp_path / DEMO_SOURCES
    sources.mkdir(parents=True)
    with (sources / "patients.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "ssn", "email"])
        writer.writeheader()
        writer.writerow({"patient_id": "PAT1", "ssn": SSN, "email": "ann.lee@example.org"})
    return settings


def test_when_identifiers_are_sealed_then_the_check_passes_and_when_one_leaks_it_is_named(
    settings, keyring_env
) -> None:
    assert keyring_env.path == settings.keyring.path  # the step finds the keyring through the settings
    lake = Lake(settings)
    ProtectedLake(lake, keyring_env, principal="test").append(
        "raw", "patients", pa.table({"row_id": ["r1"], "ssn": [SSN], "email": ["ann.lee@example.org"]}),
        Protection(encrypted=("ssn", "email"), row_key="row_id"))
    result = verify_step(settings)
    assert result["plaintext_found"] == 0 and result["identifiers_checked"] == 2
    assert "intact" in result["audit"]

    lake.append("quarantine", "leak", pa.table({"note": [f"patient ssn {SSN} " * 50]}))  # compressible: hidden
    with pytest.raises(PlaintextLeakError, match=r"quarantine/leak/.*\.parquet \(ssn\)") as leak:
        verify_step(settings)
    assert SSN not in str(leak.value)  # the error names the file and the kind, never the value


def test_when_an_identifier_only_appears_inside_a_longer_token_then_it_is_no_leak() -> None:
    from storage_security.demo import _Finder

    finder = _Finder({b"10529035", b"ann.lee@example.org"})
    assert finder.find(b"ps1_7445779a_26fc86519a0f6a97addabb1052903516") == set()
    assert finder.find(b"mrn: 10529035;") == {b"10529035"}
    assert finder.find(b"\x00ann.lee@example.org") == {b"ann.lee@example.org"}
