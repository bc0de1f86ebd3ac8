"""Backup and restore on the local OpenBao: its raft snapshot (``bao operator raft snapshot save``) travels in the
backup and comes back as the restored home's own server, whose Transit keys open the restored lake."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.batch import ingest
from pipeline.settings import load_settings
from storage_security.backup.archive import create_backup, verify_backup
from storage_security.backup.restore import restore_backup
from storage_security.keys.lifecycle import shred_patient
from storage_security.local_vault import openbao
from storage_security.protected import ProtectedLake

pytestmark = pytest.mark.integration


def _mrns(plake: ProtectedLake) -> dict[str, str | None]:
    rows = plake.read("raw", "patients", decrypt=["mrn"], columns=["patient_pseudonym", "mrn"]).to_pylist()
    return {row["patient_pseudonym"]: row["mrn"] for row in rows}


def test_when_a_home_on_the_local_openbao_is_restored_then_its_server_comes_back_and_opens_the_lake(
        tmp_path: Path) -> None:
    from pipeline.synthetic import generate

    settings = load_settings(home=tmp_path / "home", key_provider="vault",
                             vault={"local_port": openbao.free_port_pair()})
    target = None
    openbao.up(settings)
    try:
        generate(tmp_path / "pop", patients=6, seed=3, formats=["csv"])
        plake = ProtectedLake.from_settings(settings, principal="test:ops")
        ingest(settings, source="tabular", path=tmp_path / "pop" / "patients.csv", table="patients", plake=plake,
               docs=False)
        before = _mrns(plake)
        gone = sorted(before)[0]
        shred_patient(ProtectedLake.from_settings(settings, principal="test:ops", role=openbao.KEY_ROTATION_ROLE),
                      gone, reason="erasure ER-9")

        backup = create_backup(settings, principal="test:ops")
        assert backup.key_store == "openbao-raft"
        assert verify_backup(settings, backup.path).ok

        result = restore_backup(settings, backup.path, principal="test:drill", home=tmp_path / "restored")
        target = load_settings(home=tmp_path / "restored", key_provider="vault",
                               vault={"local_port": settings.vault.local_port})
        state = openbao.status(target)

        assert state["running"] and not state["sealed"] and state["addr"] != openbao.status(settings)["addr"]
        restored = ProtectedLake.from_settings(target, principal="test:auditor")
        after = _mrns(restored)
        assert after[gone] is None and before[gone] is not None
        assert {k: v for k, v in after.items() if k != gone} == {k: v for k, v in before.items() if k != gone}
        assert result.audit_ok, result.audit
        assert restored.audit.anchor.where.startswith("vault:") and restored.audit.anchor.read() is not None
    finally:
        if target is not None:
            openbao.down(target)
        openbao.down(settings)
