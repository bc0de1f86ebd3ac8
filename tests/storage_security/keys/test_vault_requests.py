"""Vault traffic of the key hierarchy, counted against the OpenBao dev server: per 1,000 patients, not per patient.

A generated population goes through the real ingestion path and then de-identification, with the Vault Transit
provider talking to the run's OpenBao through a ``requests.Session`` that counts every HTTP request it sends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.lake import Lake
from pipeline.settings import Settings
from storage_security.audit.log import AuditLog
from storage_security.keys._vault import VaultClient
from storage_security.keys.vault_transit import VaultTransitKeys
from storage_security.protected import ProtectedLake

PATIENTS = 1_200
# What the issue asks: at most 5 Vault requests per 1,000 patients for a first ingestion and for a full
# de-identification, and none for patients a warm process already knows.
PER_THOUSAND = 5
TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes")


class CountingSession(requests.Session):
    """A requests session that counts what it sends, by method and Vault path."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: Counter[str] = Counter()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent[f"{method} {url.split('/v1/', 1)[-1]}"] += 1
        return super().request(method, url, *args, **kwargs)

    def take(self) -> Counter[str]:
        """What was sent since the last call."""
        sent, self.sent = self.sent, Counter()
        return sent


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.synthetic import generate

    out = tmp_path_factory.mktemp("vault-requests") / "pop"
    generate(out, patients=PATIENTS, seed=23, formats=("parquet",))
    return out


@pytest.fixture
def counted(openbao, kek_name: str) -> Iterator[tuple[VaultTransitKeys, CountingSession, str]]:
    session = CountingSession()
    provider = VaultTransitKeys(VaultClient(openbao.addr, token=openbao.token, session=session), mount="transit")
    audit_kek = f"{kek_name}-audit"
    provider.ensure_key(kek_name)
    yield provider, session, audit_kek
    for name in (kek_name, audit_kek):
        provider.destroy_key(name)


def _plake(lake: Lake, provider: VaultTransitKeys, kek_name: str, audit_kek: str, principal: str) -> ProtectedLake:
    return ProtectedLake(lake, provider, principal=principal, kek_name=kek_name,
                         audit=AuditLog(lake, provider, key_name=audit_kek))


def test_when_patients_are_ingested_and_deidentified_then_vault_is_asked_a_few_times_per_thousand(
    counted: tuple[VaultTransitKeys, CountingSession, str], kek_name: str, population: Path, settings: Settings,
    tmp_path: Path,
) -> None:
    from ingestion.batch import ingest_extract
    from storage_security.deid.deidentify import Deidentifier
    from storage_security.deid.detection import PhiDetector

    provider, session, audit_kek = counted
    ingestion = settings.ingestion.model_copy(update={"chunk_rows": 50_000})
    run = settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "ingestion": ingestion})
    lake = Lake(run)
    session.take()

    writer = _plake(lake, provider, kek_name, audit_kek, "svc:ingest")
    loaded = ingest_extract(run, source="tabular", sources_dir=population, plake=writer)
    first_ingest = session.take()

    patients = writer.patient_keys.summary()["patients"]
    assert patients >= PATIENTS * 0.95  # nearly every patient has rows (a few may have none that pass)
    assert loaded["tables"]["observations"]["accepted"] > 10 * PATIENTS
    # The audit log's signing key is made once per lake, at its first signed head (every audited commit is
    # signed, so that is the first one): a key check, the audit KEK and one data key.
    audit_key_made = sum(n for request, n in first_ingest.items() if request.endswith(f"/{audit_kek}"))
    assert audit_key_made <= 3, first_ingest
    assert sum(first_ingest.values()) - audit_key_made <= PER_THOUSAND * patients / 1000, first_ingest
    # New patients' DEKs in batches of 400, plus the patient pseudonym key, made once per lake.
    assert first_ingest[f"POST transit/encrypt/{kek_name}"] == -(-patients // 400) + 1

    # The same process meets the same patients again (another extract of them): no request at all.
    again = population.parent / "again"
    again.mkdir()
    for table in ("encounters", "observations"):
        (again / f"{table}.parquet").write_bytes((population / f"{table}.parquet").read_bytes())
    ingest_extract(run, source="tabular", sources_dir=again, plake=writer)
    assert session.take() == Counter()

    # De-identification in a fresh process: every patient's DEK is unwrapped once, in batches, for all tables.
    # The first run on a lake also makes the masking's own pseudonym keys (date shift, surrogates…): one wrap
    # each, once in the lake's life, whatever the number of patients.
    pseudonym_keys = len(writer.store.records(scope="pseudonym"))
    first = Deidentifier(_plake(lake, provider, kek_name, audit_kek, "svc:deidentify"), run,
                         detector=PhiDetector("medguard"))
    reports = first.publish_all(list(TABLES))
    first_deid = session.take()
    made = len(writer.store.records(scope="pseudonym")) - pseudonym_keys
    assert all("refused" not in report for report in reports.values()), reports
    assert first_deid[f"POST transit/encrypt/{kek_name}"] == made
    assert sum(first_deid.values()) - made <= PER_THOUSAND * patients / 1000, first_deid

    # A full de-identification in another fresh process, the lake's keys all made: a handful of batches.
    deid = Deidentifier(_plake(lake, provider, kek_name, audit_kek, "svc:deidentify"), run,
                        detector=first.detector)
    deid.publish_all(list(TABLES), full=True)  # a rebuild: incremental publication would decrypt nothing here
    deidentify = session.take()
    assert sum(deidentify.values()) <= PER_THOUSAND * patients / 1000, deidentify
    assert deidentify[f"POST transit/decrypt/{kek_name}"] <= -(-patients // 400) + 1

    # The same process rebuilds again: its DEKs are still in memory.
    deid.publish_all(list(TABLES), full=True)
    assert session.take() == Counter()
