"""A shred reaches everything (issue 18, item 4): after ``keys shred`` nothing of the patient decrypts or reads in
any zone or version — the quarantine's batch-keyed payloads (bad encoding, wrong column count, oversize line)
included — while the other patients' records stay readable."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestion.batch import ingest
from ingestion.sources._keyed import SourceKeys
from pipeline.errors import DecryptionError, StorageError
from pipeline.lake import Lake
from pipeline.settings import Settings, load_settings
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.lifecycle import shred_patient
from storage_security.protected import ProtectedLake

HEADER = ('"patient_id","mrn","first_name","last_name","sex","birth_date","ssn","address","city","state","zip",'
          '"phone","email","insurance_member_id","facility_id","consent_research","race","ethnicity","birth_sex"\n')
HANNAH = ('"PAT1-00000000","00104729","Hannah","Marshall","F","1969-08-30","001-01-7920","720 Glover Camp",'
          '"Minneapolis","MN","55434","612-695-8155","hannah.marshall19@example.org","H015485863","FAC-NORTH",true,,,\n')
TREVOR = ('"PAT1-00000001","00153000","Trevor","Smith","M","1983-06-24","887-52-9151","146 Clark Drive",'
          '"Columbus","OH","43207","614-412-2550","trevor.smith46@example.net","W015555484","FAC-NORTH",true,,,\n')
NADIA = ('"PAT1-00000002","00177121","Nadia","Okafor","F","1990-02-11","512-33-0981","9 Elm Row",'
         '"Columbus","OH","43215","614-555-0199","nadia.okafor@example.com","K018811223","FAC-NORTH",true,,,\n')
MAX_RECORD = 2048
# What must never decrypt or read again once Hannah is shredded (her MRN and SSN are not in any other line).
HANNAHS = ("PAT1-00000000", "00104729", "001-01-7920", "hannah.marshall19", "Marshall")


def _hostile_lines() -> bytes:
    """Hannah's records that fail before their fields are read, and one of Trevor's sealed under the same key."""
    bad_encoding = HANNAH.replace("720 Glover Camp", "720 Glover Caf\xe9").encode("latin-1")
    wrong_columns = b'"PAT1-00000000","00104729","Hannah","Marshall","F","1969-08-30","001-01-7920"\n'
    oversize = HANNAH.replace("720 Glover Camp", "720 Glover " + "x" * MAX_RECORD).encode()
    trevor_bad = TREVOR.replace("146 Clark Drive", "146 Cl\xe4rk Drive").encode("latin-1")
    return bad_encoding + wrong_columns + oversize + trevor_bad


@pytest.fixture
def erasure_settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path, key_provider="keyring",
                         ingestion={"max_record_bytes": MAX_RECORD, "chunk_rows": 1000})


@pytest.fixture
def loaded(erasure_settings: Settings, keyring: LocalKeyring, tmp_path: Path) -> ProtectedLake:
    plake = ProtectedLake(Lake(erasure_settings), keyring, principal="test:ops")
    extract = tmp_path / "patients.csv"
    extract.write_bytes((HEADER + HANNAH + TREVOR + NADIA).encode() + _hostile_lines())
    report = ingest(erasure_settings, source="tabular", path=extract, table="patients", plake=plake, docs=False)
    assert (report.tables["patients"].accepted, report.tables["patients"].quarantined) == (3, 4)
    pseudonyms = plake.read("raw", "patients", columns=["patient_pseudonym"]).column("patient_pseudonym").to_pylist()
    # Two releases of a de-identified table and a predictions table keyed by pseudonym, and a training snapshot.
    published = pa.table({"patient_pseudonym": pseudonyms, "age_band": ["55-59", "40-44", "35-39"]})
    plake.overwrite_unsealed("deidentified", "patients", published.slice(0, 2))
    plake.overwrite_unsealed("deidentified", "patients", published)
    plake.overwrite_unsealed("predictions", "diagnoses", published.append_column("probability", pa.array([.1] * 3)))
    run = erasure_settings.home / "analytics" / "runs" / "r1"
    run.mkdir(parents=True)
    pq.write_table(published.append_column("_group", pa.array(pseudonyms)), run / "examples.parquet")
    return plake


def _every_readable_text(plake: ProtectedLake) -> list[str]:
    """Everything any version of any table yields: plain columns, and every sealed cell that still decrypts."""
    lake, texts = plake.lake, []
    for zone in ("raw", "quarantine", "deidentified", "predictions"):
        for table in lake.tables(zone):
            protection = plake.protection(zone, table)
            for version in range(lake.version(zone, table) + 1):
                try:
                    data = lake.read_arrow(zone, table, version=version)
                except StorageError:  # vacuumed: that version's files are gone
                    continue
                for name in data.column_names:
                    if protection is not None and name in protection.encrypted:
                        texts += _decryptable(plake, f"{zone}.{table}", name, data, protection.row_key)
                    else:
                        texts += [str(v) for v in data.column(name).to_pylist() if v is not None]
    return texts


def _decryptable(plake: ProtectedLake, where: str, column: str, data: pa.Table, row_key: str) -> list[str]:
    opened = []
    for cell, key in zip(data.column(column).to_pylist(), data.column(row_key).to_pylist(), strict=True):
        if cell is None:
            continue
        try:
            opened.append(str(plake.cipher.decrypt_cell(cell, table=where, column=column, row_key=key)))
        except DecryptionError:
            continue
    return opened


def test_when_a_patient_is_shredded_then_nothing_of_theirs_decrypts_in_any_zone_or_version(
        loaded: ProtectedLake, erasure_settings: Settings, keyring: LocalKeyring) -> None:
    before = "\n".join(_every_readable_text(loaded))
    assert all(value in before for value in HANNAHS)  # the test can fail: all of it is readable before

    report = shred_patient(loaded, "PAT1-00000000", reason="erasure request 42")

    # A new process, nothing cached: the keys that decrypted Hannah's records are gone for good.
    reader = ProtectedLake(Lake(erasure_settings), keyring, principal="test:auditor")
    after = "\n".join(_every_readable_text(reader))
    assert [value for value in HANNAHS if value in after] == []
    assert "512-33-0981" in after and "887-52-9151" in after  # the others untouched
    snapshot = pq.read_table(erasure_settings.home / "analytics" / "runs" / "r1" / "examples.parquet")
    assert snapshot.num_rows == 2 and report["patient_pseudonym"] not in snapshot.column("_group").to_pylist()
    assert report["quarantine"] == {"scanned": 4, "matched": 3, "rekeyed": 1, "deks_destroyed": 1}
    assert report["tables"] == {"deidentified.patients": 1, "predictions.diagnoses": 1}
    assert report["snapshots"] == {"r1/examples.parquet": 1}
    current = reader.read("quarantine", "records", decrypt=True).to_pylist()
    assert len(current) == 4 and sum(row["payload"] is None for row in current) == 3  # positions and rules stay
    trevors = [row["payload"] for row in current if row["payload"] is not None]
    assert len(trevors) == 1 and "887-52-9151" in trevors[0]  # sealed under Hannah's batch key: re-keyed, readable
    assert reader.audit.verify().ok


def test_when_a_shred_runs_again_then_it_finds_nothing_left_and_still_succeeds(loaded: ProtectedLake) -> None:
    shred_patient(loaded, "PAT1-00000000", reason="erasure request 42")
    again = shred_patient(loaded, "PAT1-00000000", reason="erasure request 42")
    assert again["quarantine"]["matched"] == 0 and again["tables"] == {} and again["snapshots"] == {}


def test_when_a_json_record_fails_on_its_fields_then_its_payload_is_sealed_under_its_patients_key(
        loaded: ProtectedLake, erasure_settings: Settings, tmp_path: Path) -> None:
    extract = tmp_path / "patients.jsonl"
    extract.write_text('{"patient_id": "PAT1-00000000", "ssn": "001-01-7920", "nickname": "Hanna M."}\n')
    ingest(erasure_settings, source="tabular", path=extract, table="patients", plake=loaded, docs=False)
    hannah = loaded.pseudonymizer("patient").pseudonym("PAT1-00000000")
    rows = loaded.read("quarantine", "records", columns=["position", "source_path", "patient_pseudonym"]).to_pylist()
    label = SourceKeys.of_lake(loaded).file_label(extract.name)  # the lake names a file by its keyed label
    assert [r["patient_pseudonym"] for r in rows if r["source_path"] == label] == [hannah]

    report = shred_patient(loaded, "PAT1-00000000", reason="erasure request 42")

    assert report["quarantine"]["scanned"] == 4  # the JSON record needed no scan: its key died with the shred
    assert "Hanna M." not in "\n".join(_every_readable_text(loaded))
