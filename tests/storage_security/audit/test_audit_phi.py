"""Issue 18 item 2: a break-glass reason naming a patient leaves no identifier anywhere in the audit zone."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from access.gateway import QueryGateway
from access.policy import PolicyEngine, load_policy
from access.principals import Principal, PrincipalStore, Role
from pipeline.lake import CommitInfo, Lake
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog
from storage_security.audit.redact import scrub_identifiers
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake, Protection

NAME, MRN, SSN = "Margarita Oyelaran", "00482913", "512-44-7781"
REASON = f"Patient {NAME}, MRN {MRN}, SSN {SSN}, arrived unresponsive; her record is at another facility."


@pytest.fixture
def gateway(lake: Lake, tmp_path: Path) -> tuple[QueryGateway, PrincipalStore]:
    provider = LocalKeyring.init(tmp_path / "keyring.json", LocalKeyring.generate_master_key())
    for kek in ("medguard-kek", "medguard-audit"):
        provider.ensure_key(kek)
    audit = AuditLog(lake, provider)
    plake = ProtectedLake(lake, provider, principal="svc:ingest", audit=audit)
    rows = [{"patient_pseudonym": f"pp{i}", "mrn": f"MRN{i:06d}", "facility_id": f"F{i % 3 + 1}",
             "_record_hash": f"h{i}"} for i in range(6)]
    plake.append("raw", "patients", pa.Table.from_pylist(rows),
                 Protection(encrypted=("mrn",), row_key="_record_hash", patient_key="patient_pseudonym"),
                 commit=CommitInfo(principal="svc:ingest", purpose="test"))
    store = PrincipalStore(tmp_path / "home" / "access" / "principals.json")
    store.add(Principal("cleo", Role.CLINICIAN, facility="F2", purposes=("treatment", "emergency")))
    return QueryGateway(lake, provider, PolicyEngine(load_policy(), audit=audit), audit=audit), store


def _audit_bytes(lake: Lake) -> bytes:
    return b"".join(p.read_bytes() for p in (Path(lake.root) / "audit").rglob("*") if p.is_file())


def test_when_a_break_glass_reason_names_a_patient_then_no_identifier_reaches_any_audit_file(
    gateway: tuple[QueryGateway, PrincipalStore], lake: Lake
) -> None:
    gateway, store = gateway
    session = store.local_session("cleo", operator="tester")

    got = gateway.query(session, "SELECT count(*) AS n FROM raw.patients", purpose="emergency",
                        break_glass_reason=REASON)

    assert got.table.to_pylist() == [{"n": 6}]  # break-glass granted: every facility
    glass = [r for r in gateway.audit.events() if r.event.action == AuditAction.BREAK_GLASS]
    assert len(glass) == 1 and "arrived unresponsive" in glass[0].event.reason  # the justification stays readable
    stored = _audit_bytes(lake)
    for value in (NAME, "Margarita", "Oyelaran", MRN, SSN, SSN.replace("-", "")):
        assert value.encode() not in stored, value
    assert gateway.audit.verify().ok


def test_when_any_event_carries_an_identifier_shaped_reason_then_the_log_stores_it_scrubbed(lake: Lake,
                                                                                          tmp_path: Path) -> None:
    provider = LocalKeyring.init(tmp_path / "keyring.json", LocalKeyring.generate_master_key())
    log = AuditLog(lake, provider)

    log.record(AuditEvent(principal="user:op", action=AuditAction.KEY_SHRED, purpose="erasure",
                          reason=f"erasure request for SSN {SSN}, MRN-{MRN}, phone 415-555-0199"))

    stored = _audit_bytes(lake)
    assert SSN.encode() not in stored and MRN.encode() not in stored and b"555-0199" not in stored
    assert log.events()[0].event.reason == scrub_identifiers(f"erasure request for SSN {SSN}, MRN-{MRN}, "
                                                             "phone 415-555-0199")
    assert log.verify().ok
