"""The local OpenBao of ``medguard vault up/down/status``: initialised once, private files, idempotent, restartable.

One persistent server per module, in its own home and on free ports; it is stopped at the end even when a
test fails. Also the dev server helper and the checks that need no server at all.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import CryptoError, KeyAccessDeniedError, KeyProviderUnavailableError
from pipeline.settings import Settings, load_settings
from storage_security.keys.providers import provider_from_settings
from storage_security.local_vault import openbao

MEDGUARD = str(Path(sys.executable).with_name("medguard"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """A started local OpenBao in a fresh home, and the result of its first ``up``."""
    home = tmp_path_factory.mktemp("openbao-home")
    settings = load_settings(home=home, vault={"local_port": openbao.free_port_pair()})
    try:
        yield settings, openbao.up(settings)
    finally:
        openbao.down(settings)


@pytest.mark.integration
def test_when_up_the_first_time_then_it_initialises_once_and_keeps_secrets_private(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, first = local
    paths = openbao.local_paths(settings)

    assert first["status"] == "started" and first["initialized_now"] is True
    assert first["addr"] == f"http://127.0.0.1:{settings.vault.local_port}"
    assert _mode(paths.root) == 0o700 and _mode(paths.data) == 0o700
    assert _mode(paths.init) == 0o600 and _mode(paths.approle) == 0o600
    secrets = json.loads(paths.init.read_text())
    assert secrets["root_token"] and len(secrets["unseal_keys_b64"]) == 1
    assert set(json.loads(paths.approle.read_text())) == set(openbao.ROLES)
    assert f'address         = "127.0.0.1:{settings.vault.local_port}"' in paths.config.read_text()
    assert json.loads(paths.pid.read_text())["pid"] == first["pid"]


@pytest.mark.integration
def test_when_up_again_then_it_is_already_running_and_nothing_is_reinitialised(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = local
    paths = openbao.local_paths(settings)
    before = paths.init.read_bytes(), paths.approle.read_bytes()

    again = openbao.up(settings)

    assert again["status"] == "already running" and again["initialized_now"] is False
    assert again["pid"] == openbao.status(settings)["pid"]
    assert (paths.init.read_bytes(), paths.approle.read_bytes()) == before
    state = openbao.status(settings)
    assert state["running"] is True and state["sealed"] is False and state["status"] == "unsealed"


@pytest.mark.integration
def test_when_restarted_then_it_unseals_and_a_dek_from_before_still_unwraps(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = local
    paths = openbao.local_paths(settings)
    kek = settings.vault.kek_name
    provider = provider_from_settings(settings)
    key = provider.generate_data_key(kek)
    creds_before = paths.approle.read_bytes()

    stopped = openbao.down(settings)
    assert stopped["status"] == "stopped"
    assert openbao.status(settings)["running"] is False
    assert openbao.down(settings)["status"] == "not running"
    with pytest.raises(KeyProviderUnavailableError, match="is unreachable"):
        provider.unwrap(kek, key.wrapped)  # fails closed while the server is down
    with pytest.raises(KeyProviderUnavailableError, match="medguard vault up"):
        provider_from_settings(settings)

    with ThreadPoolExecutor(2) as pool:  # two `vault up` at once: one starts it, the other finds it running
        results = list(pool.map(lambda _: openbao.up(settings), range(2)))
    restarted = next(result for result in results if result["status"] == "started")

    assert sorted(result["status"] for result in results) == ["already running", "started"]
    assert restarted["initialized_now"] is False
    assert results[0]["pid"] == results[1]["pid"]
    assert openbao.status(settings)["sealed"] is False
    assert paths.approle.read_bytes() == creds_before
    assert provider_from_settings(settings).unwrap(kek, key.wrapped) == key.plaintext


@pytest.mark.integration
def test_when_the_pipeline_logs_in_by_approle_then_it_wraps_but_cannot_rotate(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = local
    kek = settings.vault.kek_name
    pipeline = provider_from_settings(settings)
    rotation = provider_from_settings(settings, role=openbao.KEY_ROTATION_ROLE)

    key = pipeline.generate_data_key(kek)
    with pytest.raises(KeyAccessDeniedError, match=rf"transit/keys/{kek}/rotate.*key-rotation\.hcl"):
        pipeline.rotate(kek)
    latest = rotation.rotate(kek)

    assert pipeline.health()["token"]["policies"] == ["default", "medguard-pipeline-writer"]
    assert latest == rotation.versions(kek).latest >= 2
    [rewrapped] = rotation.rewrap(kek, [key.wrapped])
    assert rewrapped.startswith(f"vault:v{latest}:")
    assert pipeline.unwrap(kek, rewrapped) == key.plaintext


@pytest.mark.integration
def test_when_the_pipeline_wraps_patient_keys_then_it_batches_under_the_data_kek_and_makes_no_kek_of_its_own(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    from storage_security.keys._vault import VaultClient
    from storage_security.keys.vault_transit import VaultTransitKeys

    settings, _ = local
    kek = settings.vault.kek_name
    pipeline = provider_from_settings(settings)
    rotation = provider_from_settings(settings, role=openbao.KEY_ROTATION_ROLE)
    material = [os.urandom(48) for _ in range(3)]

    wrapped = pipeline.wrap_many(kek, material)

    assert pipeline.unwrap_each(kek, wrapped) == material
    with pytest.raises(KeyAccessDeniedError, match="transit/keys/patient-new"):
        pipeline.ensure_key("patient-new")
    # A per-patient KEK of a lake written before the data-KEK hierarchy: the rotation role migrates and deletes it.
    root_token = json.loads(openbao.local_paths(settings).init.read_text())["root_token"]
    operator = VaultTransitKeys(VaultClient(f"http://127.0.0.1:{settings.vault.local_port}", token=root_token),
                                mount=settings.vault.transit_mount)
    legacy = "patient-test-shred"
    operator.ensure_key(legacy)
    key = operator.generate_data_key(legacy)
    with pytest.raises(KeyAccessDeniedError, match=f"transit/keys/{legacy}"):
        pipeline.destroy_key(legacy)
    assert rotation.unwrap(legacy, key.wrapped) == key.plaintext

    rotation.destroy_key(legacy)

    assert not rotation.key_exists(legacy)
    with pytest.raises(CryptoError, match="decryption failed"):
        rotation.unwrap(legacy, key.wrapped)


@pytest.mark.integration
def test_when_a_secret_file_is_readable_by_others_then_it_is_refused(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = local
    approle = openbao.local_paths(settings).approle
    approle.chmod(0o644)
    try:
        with pytest.raises(CryptoError, match="chmod 600"):
            provider_from_settings(settings)
    finally:
        approle.chmod(0o600)


@pytest.mark.e2e
def test_when_status_asked_on_the_command_line_then_json_reports_the_running_server(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = local
    env = {**os.environ, "MEDGUARD_HOME": str(settings.home)}

    done = subprocess.run([MEDGUARD, "vault", "status", "--json"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["running"] is True and result["sealed"] is False
    assert result["addr"] == f"http://127.0.0.1:{settings.vault.local_port}"


def test_when_the_port_is_taken_then_up_fails_naming_it_and_starts_nothing(tmp_path: Path) -> None:
    port = openbao.free_port_pair()
    settings = load_settings(home=tmp_path, vault={"local_port": port})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 1))
        squatter.listen()
        with pytest.raises(KeyProviderUnavailableError, match=f"127.0.0.1:{port + 1} is in use"):
            openbao.up(settings)

    assert not openbao.local_paths(settings).pid.exists()
    assert openbao.status(settings)["running"] is False


def test_when_never_started_then_status_and_down_say_so_and_the_provider_points_to_vault_up(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)

    assert openbao.status(settings) | {"home": None} == {
        "status": "not running", "running": False, "addr": None, "pid": None, "initialized": False,
        "sealed": None, "version": None, "home": None,
    }
    assert openbao.down(settings)["status"] == "not running"
    with pytest.raises(KeyProviderUnavailableError, match="run `medguard vault up`"):
        provider_from_settings(settings)


@pytest.mark.integration
def test_when_a_dev_server_stops_then_its_process_is_gone(tmp_path: Path) -> None:
    import psutil

    with openbao.dev_server(tmp_path / "dev.log") as server:
        pid = server.pid
        assert pid is not None
        assert server.client().read("sys/mounts/transit") is not None
        assert server.token not in repr(server)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_when_policies_loaded_for_another_kek_and_mount_then_every_path_names_them() -> None:
    policies = openbao.load_policies(kek_name="acme-kek", mount="kms")

    assert set(policies) == {f"medguard-{name}" for role in openbao.ROLES.values() for name in role}
    for name, text in policies.items():
        assert "medguard-kek" not in text and '"transit/' not in text
        if name == "medguard-audit-anchor":  # KV only (the audit chain's anchor): no Transit path, no KEK
            assert '"kms/' not in text and 'path "medguard-audit/data/anchors/*"' in text
            continue
        assert '"kms/' in text and "acme-kek" in text
    with pytest.raises(ValueError, match="KEK name"):
        openbao.load_policies(kek_name='x" { capabilities = ["sudo"] }')


def _medguard(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDGUARD_HOME": str(settings.home),
           "MEDGUARD_VAULT__LOCAL_PORT": str(settings.vault.local_port)}
    return subprocess.run([MEDGUARD, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.e2e
def test_when_key_lifecycle_commands_run_on_the_local_openbao_then_data_stays_readable_and_shreds_stick(
    local: tuple[Settings, dict[str, Any]],
) -> None:
    import pyarrow as pa

    from pipeline.lake import Lake
    from storage_security.protected import ProtectedLake, Protection

    settings, _ = local
    writer = ProtectedLake.from_settings(settings, principal="svc:test")  # the pipeline-writer AppRole
    patients = writer.pseudonymizer("patient").pseudonymize(["PAT1", "PAT2"])
    protection = Protection(encrypted=("ssn",), row_key="row_id", patient_key="patient")
    writer.append("raw", "people", pa.table({"row_id": ["r1", "r2", "r3"],
                                             "patient": [patients[0].as_py(), patients[1].as_py(), None],
                                             "ssn": ["111", "222", "333"]}), protection)

    rotated = _medguard(settings, "keys", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["min_decryption_version"]
    reencrypted = _medguard(settings, "keys", "reencrypt", "raw.people", "--json")
    assert reencrypted.returncode == 0, reencrypted.stderr
    assert json.loads(reencrypted.stdout)["rows"] == 3
    refused = _medguard(settings, "keys", "shred", "PAT1")
    assert refused.returncode == 2 and "--reason" in refused.stderr
    shredded = _medguard(settings, "keys", "shred", "PAT1", "--reason", "erasure ER-9", "--json")
    assert shredded.returncode == 0, shredded.stderr
    assert json.loads(shredded.stdout)["patient_pseudonym"] == patients[0].as_py()

    reader = ProtectedLake(Lake(settings), provider_from_settings(settings), principal="svc:reader")
    for version in range(Lake(settings).version("raw", "people") + 1):
        ssn = dict(zip(*reader.read("raw", "people", decrypt=True, version=version).select(
            ["row_id", "ssn"]).to_pydict().values(), strict=True))
        assert ssn == {"r1": None, "r2": "222", "r3": "333"}
    verified = _medguard(settings, "audit", "verify", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True
    actions = {str(record.event.action) for record in reader.audit.events()}
    assert {"encrypt", "key_rotate", "key_rewrap", "key_retire", "reencrypt", "key_shred", "decrypt"} <= actions


@pytest.mark.integration
def test_when_a_task_fails_on_a_new_lake_then_its_alert_is_stored_although_nothing_was_audited_before(
        local: tuple[Settings, dict[str, Any]], tmp_path: Path) -> None:
    from storage_security.audit.monitoring import ActivityMonitor, record_task_failure, task_failure_alert

    settings = local[0].model_copy(update={"lake_root": str(tmp_path / "new-lake")})
    facts = {"dag_id": "medguard_deidentify", "task_id": "check_raw", "run_id": "manual__1", "try_number": 1,
             "error": "ValidationError"}
    # The auditor's role may unwrap the audit signing key but not make the first one.
    with pytest.raises(Exception, match=r"(?i)denied|forbidden|permission|403"):
        ActivityMonitor.from_settings(settings).store([task_failure_alert(**facts, at=datetime.now(UTC))])

    alert = record_task_failure(settings, **facts)

    stored = ActivityMonitor.from_settings(settings).alerts()
    assert [a["summary"] for a in stored] == [alert.summary] and "check_raw" in alert.summary
