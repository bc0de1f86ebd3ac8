"""A small lake for the access tests: raw tables with sealed PHI, de-identified tables, principals and a gateway.

Built once per test run (module code is slow to repeat: encryption, Delta commits); tests that write (alerts,
principals) use their own lakes and stores.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from access.gateway import QueryGateway
from access.policy import PolicyEngine, load_policy
from access.principals import Principal, PrincipalStore, Role, Session
from pipeline.lake import CommitInfo, Lake
from pipeline.settings import Settings
from storage_security.audit.log import AuditLog
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake, Protection

FACILITIES = ("F1", "F2", "F3")
PATIENTS = 30


def patient_rows() -> list[dict]:
    rows = []
    for i in range(PATIENTS):
        rows.append({
            "patient_id": f"P{i:04d}", "mrn": f"MRN{i:06d}", "first_name": f"Name{i}", "last_name": f"Family{i}",
            "ssn": f"{100 + i:03d}-45-{6000 + i:04d}", "zip": f"{10000 + i * 37:05d}", "sex": "F" if i % 2 else "M",
            "facility_id": FACILITIES[i % 3], "consent_research": i % 5 != 0,
        })
    return rows


def _hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass
class World:
    """Everything a gateway test needs, with plaintext expectations computed from the source rows."""

    lake: Lake
    provider: LocalKeyring
    audit: AuditLog
    engine: PolicyEngine
    gateway: QueryGateway
    store: PrincipalStore
    patients: list[dict]
    pseudonyms: dict[str, str]

    def session(self, name: str) -> Session:
        return self.store.local_session(name, operator="tester")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> World:
    root = tmp_path_factory.mktemp("access-world")
    lake = Lake(settings.model_copy(update={"lake_root": str(root / "lake")}))
    provider = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    provider.ensure_key("medguard-kek")
    provider.ensure_key("medguard-audit")
    audit = AuditLog(lake, provider)
    plake = ProtectedLake(lake, provider, principal="svc:ingest", audit=audit)
    rows = patient_rows()
    pseudonyms = dict(zip([r["patient_id"] for r in rows],
                          plake.pseudonymizer("patient").pseudonymize([r["patient_id"] for r in rows]).to_pylist(),
                          strict=True))
    commit = CommitInfo(principal="svc:ingest", purpose="test")
    raw_patients = [{**r, "patient_pseudonym": pseudonyms[r["patient_id"]], "_record_hash": _hash(r["patient_id"])}
                    for r in rows]
    plake.append("raw", "patients", pa.Table.from_pylist(raw_patients),
                 Protection(encrypted=("patient_id", "mrn", "first_name", "last_name", "ssn"),
                            row_key="_record_hash", patient_key="patient_pseudonym"), commit=commit)
    encounters = [{"encounter_id": f"E{i:04d}-{k}", "patient_pseudonym": pseudonyms[r["patient_id"]],
                   "facility_id": r["facility_id"], "encounter_type": "outpatient" if k else "inpatient",
                   "provider_npi": f"{1000000000 + i * 10 + k}", "_record_hash": _hash(r["patient_id"], str(k))}
                  for i, r in enumerate(rows) for k in range(2)]
    plake.append("raw", "encounters", pa.Table.from_pylist(encounters),
                 Protection(encrypted=("provider_npi",), row_key="_record_hash", patient_key="patient_pseudonym"),
                 commit=commit)
    conditions = [{"condition_id": f"C{i:04d}", "patient_pseudonym": pseudonyms[r["patient_id"]],
                   "icd10_code": "E11.9" if i % 4 == 0 else "I10", "_record_hash": _hash("c", r["patient_id"])}
                  for i, r in enumerate(rows)]
    lake.append("raw", "conditions", pa.Table.from_pylist(conditions), commit=commit)
    deid_patients = [{"patient_pseudonym": pseudonyms[r["patient_id"]], "sex": r["sex"],
                      "age_band": f"{40 + (i % 5) * 5}-{44 + (i % 5) * 5}", "zip3": r["zip"][:3],
                      "facility_id": r["facility_id"], "consent_research": r["consent_research"],
                      # A direct identifier left in a de-identified table, so masks have something to hide.
                      "ssn": r["ssn"]}
                     for i, r in enumerate(rows)]
    lake.append("deidentified", "patients", pa.Table.from_pylist(deid_patients), commit=commit)
    deid_conditions = [{"patient_pseudonym": c["patient_pseudonym"], "icd10_code": c["icd10_code"],
                        "onset_year": 2020 + i % 3} for i, c in enumerate(conditions)]
    lake.append("deidentified", "conditions", pa.Table.from_pylist(deid_conditions), commit=commit)
    store = PrincipalStore(root / "home" / "access" / "principals.json")
    for principal in (
        Principal("ann", Role.ANALYST, facility="F1", purposes=("research",)),
        Principal("cleo", Role.CLINICIAN, facility="F2", purposes=("treatment", "emergency")),
        Principal("cleo-nofac", Role.CLINICIAN, purposes=("treatment",)),
        Principal("dan", Role.DATA_ENGINEER, purposes=("operations",)),
        Principal("mia", Role.ML_PIPELINE, purposes=("model_training",)),
        Principal("otto", Role.AUDITOR, purposes=("audit",)),
        Principal("sam", Role.SECURITY_ADMIN, purposes=("administration",)),
    ):
        store.add(principal)
    engine = PolicyEngine(load_policy(), audit=audit)
    gateway = QueryGateway(lake, provider, engine, audit=audit)
    return World(lake, provider, audit, engine, gateway, store, rows, pseudonyms)


def fixed_clock(start: datetime):
    """A clock tests can move: ``clock.now`` is returned; ``clock.advance(minutes=...)`` moves it."""

    class Clock:
        def __init__(self) -> None:
            self.now = start

        def __call__(self) -> datetime:
            return self.now

        def advance(self, **delta: float) -> None:
            self.now = self.now + timedelta(**delta)

    return Clock()


@pytest.fixture
def clock():
    return fixed_clock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))


@pytest.fixture
def store(tmp_path: Path, clock) -> PrincipalStore:
    return PrincipalStore(tmp_path / "home" / "access" / "principals.json", max_failures=3,
                          lockout=timedelta(minutes=15), session_ttl=timedelta(minutes=30), clock=clock)
