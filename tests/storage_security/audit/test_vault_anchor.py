"""The audit anchor in Vault/OpenBao (KV v2): only the audit writer's policy moves it, so a pipeline token that
cuts the log's tail cannot hide it, and the auditor's token reads it to verify."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import KeyAccessDeniedError
from pipeline.lake import Lake, Zone
from storage_security.audit._anchor import AnchoredHead, VaultKVAnchor
from storage_security.audit.log import EVENTS_SCHEMA, HEADS_SCHEMA, AuditAction, AuditEvent, AuditLog
from storage_security.keys._vault import VaultClient
from storage_security.local_vault.openbao import enable_audit_anchors, write_policies

sys.path.insert(0, str(Path(__file__).parent))
from _audit_workers import FakeKeyProvider

MASTER = bytes(range(32))


def _token_client(openbao, policy: str) -> VaultClient:
    answer = openbao.client().write("auth/token/create", {"policies": [policy], "ttl": "10m"})
    return VaultClient(openbao.addr, token=answer["auth"]["client_token"])


@pytest.fixture
def clients(openbao) -> dict[str, VaultClient]:
    root = openbao.client()
    enable_audit_anchors(root)
    write_policies(root)
    return {role: _token_client(openbao, f"medguard-{role}")
            for role in ("audit-anchor", "auditor", "pipeline-writer")}


@pytest.mark.e2e
def test_when_the_tail_is_cut_with_a_pipeline_token_then_the_vault_anchor_still_names_the_gap(
        lake: Lake, clients: dict[str, VaultClient]) -> None:
    provider = FakeKeyProvider(MASTER)
    lake_id = AuditLog(lake, provider).lake_id
    writer = AuditLog(lake, provider, anchor=VaultKVAnchor(clients["audit-anchor"], lake_id))
    for i in range(6):
        writer.record(AuditEvent(principal="user:dr-cole", action=AuditAction.BREAK_GLASS, zone=Zone.RAW,
                                 table_name="patients", row_count=1, purpose="treatment", details={"grant": i}))
    auditor = AuditLog(lake, provider, anchor=VaultKVAnchor(clients["auditor"], lake_id))
    assert auditor.verify().ok and auditor.verify().anchored_seq == 5

    # The attacker holds the lake and the pipeline's Vault token: cut the last three events and their heads...
    events = [r for r in lake.read_arrow(Zone.AUDIT, "events").to_pylist() if r["seq"] < 3]
    heads = [h for h in lake.read_arrow(Zone.AUDIT, "heads").to_pylist() if h["seq"] < 3]
    lake.overwrite(Zone.AUDIT, "events", pa.Table.from_pylist(events, schema=EVENTS_SCHEMA))
    lake.overwrite(Zone.AUDIT, "heads", pa.Table.from_pylist(heads, schema=HEADS_SCHEMA))
    # ...and try to move the anchor back to match.
    back = AnchoredHead(heads[-1]["seq"], heads[-1]["hash"], heads[-1]["signature"], heads[-1]["key_ref"],
                        heads[-1]["signed_at"])
    with pytest.raises(KeyAccessDeniedError):
        VaultKVAnchor(clients["pipeline-writer"], lake_id).write(back)
    with pytest.raises(KeyAccessDeniedError):
        VaultKVAnchor(clients["auditor"], lake_id).write(back)

    report = auditor.verify()

    assert (report.ok, report.first_bad_seq, report.anchored_seq) == (False, 3, 5)
    assert "events 3..5 are gone" in report.reason and "vault:medguard-audit/data/anchors/" in report.reason


@pytest.mark.integration
def test_when_the_local_openbao_is_the_key_provider_then_the_log_anchors_in_its_kv_as_the_audit_anchor_role(
        tmp_path: Path) -> None:
    from pipeline.settings import load_settings
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault import openbao

    settings = load_settings(home=tmp_path / "home", lake_root=str(tmp_path / "lake"), key_provider="vault",
                             vault={"local_port": openbao.free_port_pair()})
    openbao.up(settings)
    try:
        log = AuditLog(Lake(settings), provider_from_settings(settings))
        log.record(AuditEvent(principal="user:dr-cole", action=AuditAction.BREAK_GLASS, zone=Zone.RAW,
                              table_name="patients", row_count=1, purpose="treatment"))
        auditor = AuditLog(Lake(settings), provider_from_settings(settings, role=openbao.AUDITOR_ROLE))
        pipeline = openbao.local_credentials(settings, openbao.PIPELINE_ROLE)
        as_pipeline = VaultClient(pipeline.addr, auth_method="approle", role_id=pipeline.role_id,
                                  secret_id=pipeline.secret_id)

        assert log.anchor.where == f"vault:medguard-audit/data/anchors/{log.lake_id}"
        assert log.anchor.read().seq == 0 and auditor.verify().ok
        assert not list((tmp_path / "home").rglob("audit-anchors"))  # no file anchor beside it
        with pytest.raises(KeyAccessDeniedError):
            VaultKVAnchor(as_pipeline, log.lake_id).write(log.anchor.read())
    finally:
        openbao.down(settings)
