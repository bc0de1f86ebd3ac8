"""No file name in plaintext, no unkeyed digest: Synthea's patient-named bundles through ``medguard ingest``.

Synthea names each file after its patient (``Johnnie679_Hermiston71_<uuid>.json``). The bundles are Synthea's own
(tests/fixtures/fhir/synthea, see tests/fixtures/README.md); one Observation is broken so that it is quarantined.
Every file the run leaves under its home (lake tables read column by column, Delta logs, key store, audit log,
reports) and everything the command prints is searched for the name's parts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lxml import etree
from typer.testing import CliRunner

from ingestion.batch import ingest
from ingestion.sources._keyed import FILE_LABEL, SourceKeys
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings
from storage_security.protected import ProtectedLake

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JOHNNIE = "Johnnie679_Hermiston71_2cd30bd6-3a87-4191-af90-6daa70f58f55.json"
LUNA = "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json"
# The parts of the two file names; the patients' names inside the bundles are sealed PHI columns.
NAME_PARTS = ("Johnnie679", "Hermiston71", "2cd30bd6-3a87-4191-af90-6daa70f58f55", "Luna60", "McCullough561",
              "6662f0ca-b617-4e02-8f55-7275e9f49aa0")


def _bundles(folder: Path) -> Path:
    """The two Synthea bundles in ``folder``; Johnnie's first Observation gets a code that is plain text (FHIR wants a
    CodeableConcept), so it is quarantined. (Luna's bundle has two records the FHIR model refuses as it stands.)"""
    folder.mkdir()
    shutil.copy(FIXTURES / "fhir" / "synthea" / LUNA, folder / LUNA)
    bundle = json.loads((FIXTURES / "fhir" / "synthea" / JOHNNIE).read_text())
    broken = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    broken["code"] = "Body Height"
    (folder / JOHNNIE).write_text(json.dumps(bundle, indent=1))
    return folder


def _leaks(home: Path, needles: tuple[str, ...]) -> list[str]:
    """Where under ``home`` any needle occurs: every string or binary column of every Parquet file (Delta tables
    and checkpoints), and the bytes of every other file (Delta logs, key store, audit anchor, reports)."""
    found = []
    wanted = [n.encode() for n in needles]
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                for value in table.column(name).to_pylist():
                    data = value if isinstance(value, bytes) else json.dumps(value, default=str).encode()
                    found += [f"{path}:{name}" for needle in wanted if needle in data]
        else:
            data = path.read_bytes()
            found += [str(path) for needle in wanted if needle in data]
    return found


def _versions(lake: Lake) -> dict[str, tuple[int, int]]:
    return {f"{zone}.{table}": (lake.version(zone, table), lake.read_arrow(zone, table).num_rows)
            for zone in (Zone.RAW, Zone.QUARANTINE) for table in lake.tables(zone)}


@pytest.fixture
def home_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring_home) -> Settings:
    settings, _ = keyring_home
    monkeypatch.setenv("MEDGUARD_HOME", str(settings.home))
    monkeypatch.setenv("MEDGUARD_KEY_PROVIDER", "keyring")
    return settings


def _medguard(*args: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, list(args))


def test_when_synthea_bundles_named_after_patients_are_ingested_then_no_name_part_is_stored_or_printed_and_the_label_locates_the_file(  # noqa: E501
        tmp_path: Path, home_env: Settings) -> None:
    folder = _bundles(tmp_path / "synthea")

    first = _medguard("ingest", "--source", "fhir", "--path", str(folder), "--json")

    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["tables"]["observations"]["quarantined"] == 2
    lake = Lake(home_env)
    rejects = lake.read_arrow("quarantine", "records").to_pylist()
    assert len(rejects) == 3 and {r["rules"][0] for r in rejects} == {"fhir:model"}
    assert all(FILE_LABEL.fullmatch(r["source_path"]) and FILE_LABEL.match(r["position"]) for r in rejects)
    (bad,) = [r for r in rejects if "Observation fails the FHIR model at code" in r["reason"]]
    printed = first.stdout + first.stderr
    assert not [n for n in NAME_PARTS if n in printed]
    assert _leaks(home_env.home, NAME_PARTS) == []

    # The engineer holding the lake's key finds the bad file from its position, and only that file.
    located = _medguard("ingest", "--locate", bad["position"], "--path", str(folder), "--json")
    assert located.exit_code == 0, located.stderr
    assert json.loads(located.stdout)["files"] == [str(folder / JOHNNIE)]
    others = {_medguard("ingest", "--locate", r["position"], "--path", str(folder)).stdout.strip()
              for r in rejects if r is not bad}
    assert others == {str(folder / LUNA)}
    stranger = _medguard("ingest", "--locate", "fd_0123456789abcdef", "--path", str(folder))
    assert stranger.exit_code != 0 and "no file in" in stranger.stderr

    # The same folder again: the same batch, replayed from the ledger; no table gains a row or a version.
    before = _versions(lake)
    again = _medguard("ingest", "--source", "fhir", "--path", str(folder), "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["replayed"] and json.loads(again.stdout)["batch_id"] == bad["batch_id"]
    assert _versions(lake) == before
    assert _leaks(home_env.home, NAME_PARTS) == []


def test_when_the_ledger_row_is_lost_then_a_rerun_of_the_named_files_adds_nothing_twice(
        tmp_path: Path, home_env: Settings, keyring_home) -> None:
    _, ring = keyring_home
    folder = _bundles(tmp_path / "synthea")
    plake = ProtectedLake(Lake(home_env), ring, principal="svc:ingest")
    first = ingest(home_env, source="fhir", path=folder, plake=plake, docs=False)
    plake.lake.delete("quarantine", "batches", where=f"batch_id = '{first.batch_id}'")
    counts = {t: plake.lake.read_arrow("raw", t).num_rows for t in plake.lake.tables("raw")}

    again = ingest(home_env, source="fhir", path=folder, plake=plake, docs=False)

    assert again.batch_id == first.batch_id and not again.replayed
    assert {t: plake.lake.read_arrow("raw", t).num_rows for t in plake.lake.tables("raw")} == counts
    assert plake.lake.read_arrow("quarantine", "records").num_rows == 3  # Johnnie's broken record, Luna's two


# Enumerating candidates against each digest that used to be unkeyed ------------------------------------------------


def _unkeyed(data: bytes) -> set[str]:
    """What an attacker without the key computes of a candidate: plain digests, in full and cut as medguard cut."""
    out = set()
    inner = hashlib.sha256(data).hexdigest()[:32].encode()  # what the keyed content digest MACs: unkeyed, it is no key
    for text in (data, inner):
        for digest in (hashlib.sha256(text).hexdigest(), hashlib.sha3_256(text).hexdigest(),
                       hashlib.blake2b(text).hexdigest(), hashlib.sha512(text).hexdigest()):
            out |= {digest, digest[:16], digest[:24], digest[:32]}
    return out


def _old_batch_id(settings: Settings, report, files: list[Path]) -> str:
    """The batch id as it was computed before it was keyed: SHA-256 of the source, contracts, chunk size, files."""
    digest = hashlib.sha256(json.dumps([report.source, sorted(report.contracts.items()),
                                        settings.ingestion.chunk_rows]).encode())
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:24]


def _hex_parts(value: str) -> set[str]:
    """The hex runs of a stored key (``Claim/hmac:…``, ``bk…``, ``fd_…``)."""
    import re

    return set(re.findall(r"[0-9a-f]{16,}", value))


def test_when_candidates_are_enumerated_against_every_former_unkeyed_digest_then_none_is_found_without_the_key(
        tmp_path: Path, home_env: Settings, keyring_home) -> None:
    _, ring = keyring_home
    # An id-less FHIR resource (kept whole in resources), a C-CDA document with id-less entries, Synthea's bundle.
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    claim = {"resourceType": "Claim", "status": "active", "use": "claim", "created": "2020-01-02",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                  "code": "professional"}]},
             "patient": {"reference": "Patient/p1"}, "provider": {"display": "Dr. X"},
             "priority": {"coding": [{"code": "normal"}]}, "insurance": [{"sequence": 1, "focal": True,
                                                                          "coverage": {"display": "Plan"}}]}
    (fhir / "claim.json").write_text(json.dumps(claim))
    shutil.copy(FIXTURES / "fhir" / "synthea" / LUNA, fhir / LUNA)
    ccda = FIXTURES / "ccda" / "practice_fusion_jeremy_bates.xml"
    plake = ProtectedLake(Lake(home_env), ring, principal="svc:ingest")
    fhir_batch = ingest(home_env, source="fhir", path=fhir, plake=plake, docs=False)
    ccda_batch = ingest(home_env, source="ccda", path=ccda, plake=plake, docs=False)

    resources = plake.read("raw", "resources", decrypt=True).to_pylist()
    claim_key = next(r["resource_key"] for r in resources if r["resource_type"] == "Claim" and not r["resource_id"])
    immunizations = plake.read("raw", "immunizations", decrypt=True).to_pylist()
    ccda_keys = [r["immunization_id"] for r in immunizations if r["immunization_id"].startswith("hmac:")]
    assert claim_key.startswith("Claim/hmac:") and ccda_keys
    stored = {claim_key: [json.dumps(claim, sort_keys=True, ensure_ascii=False).encode()]}
    # The attacker holds the whole C-CDA document: every element of it is a candidate for an entry's key.
    elements = [etree.tostring(e) for e in etree.parse(str(ccda)).getroot().iter()]
    stored |= {key: elements for key in ccda_keys}
    # Batch ids and file labels: the candidates are the very files and names that went in.
    stored[fhir_batch.batch_id] = [_old_batch_id(home_env, fhir_batch, [fhir / "claim.json", fhir / LUNA])]
    stored[ccda_batch.batch_id] = [_old_batch_id(home_env, ccda_batch, [ccda])]
    quarantine_labels = {r["source_path"] for r in plake.lake.read_arrow("quarantine", "batches").to_pylist()}
    stored |= {label: [LUNA.encode(), b"fhir", ccda.name.encode()] for label in quarantine_labels}

    for key, candidates in stored.items():
        digests = set().union(*(_unkeyed(c) for c in candidates if isinstance(c, bytes)))
        digests |= {c for c in candidates if isinstance(c, str)}
        assert not _hex_parts(key) & digests, key

    # The same enumeration with the lake's key finds them: the test can tell a keyed digest from a miss.
    keys = SourceKeys.of_lake(plake)
    assert claim_key == "Claim/" + keys.content(stored[claim_key][0])
    assert set(ccda_keys) <= {keys.content(e) for e in elements}
    assert keys.file_label(fhir.name) in quarantine_labels


def test_when_a_lake_holds_batches_from_before_keyed_digests_then_keys_status_counts_their_rows_per_table(
        tmp_path: Path, home_env: Settings) -> None:
    import pyarrow as pa

    lake = Lake(home_env)
    old, new = "b" + "0123456789abcdef01234567", "bk" + "0123456789abcdef01234567"
    lake.append("raw", "resources", pa.table({"resource_key": ["Claim/sha256:00", "Claim/hmac:11", "Claim/sha256:22"],
                                              "_batch_id": [old, new, old]}))
    lake.append("quarantine", "records", pa.table({"position": ["Aaron697_Brekke496.json entry 3"],
                                                   "batch_id": [old]}))
    lake.append("raw", "notes", pa.table({"note_id": ["n1"], "_batch_id": [new]}))

    result = _medguard("keys", "status", "--json")
    text = _medguard("keys", "status")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["unkeyed_digests"] == {"raw.resources": 2, "quarantine.records": 1}
    assert "unkeyed digests: 2 tables hold rows of batches ingested before digests were keyed" in text.stdout
