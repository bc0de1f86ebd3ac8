"""Lint of the production deployment files in infra/ (docker compose, Dockerfile, OpenBao config, shell scripts).

Pure parsing (unit): every service is built or pulled, checked by a healthcheck and restarted, runs as a non-root
user unless its image drops privileges itself, publishes ports on 127.0.0.1 only, mounts files that exist, takes
every secret from a file, interpolates only variables that .env.example documents with the same default; every
``MEDGUARD_*`` variable a container gets is a setting medguard loads; every ``AIRFLOW__*`` variable is an option of
the installed Airflow (``_CMD`` only where Airflow allows it). With the tools (integration, they start a
subprocess): ``docker-compose config`` (Debian's 1.29, no daemon needed), ``bash -n`` and shellcheck on every
script, and gen-secrets.sh making every secret file the compose file names.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
SCRIPTS = [INFRA / "vault" / "transit.sh", INFRA / "vault" / "approle.sh", COMPOSE_DIR / "gen-secrets.sh",
           COMPOSE_DIR / "entrypoint.sh", COMPOSE_DIR / "openbao" / "setup.sh", COMPOSE_DIR / "minio" / "setup.sh"]

# One-shot jobs: they exit when done, so no healthcheck and no restart.
JOBS = {"openbao-setup", "minio-setup", "airflow-init", "medguard-cli"}
# Services whose image starts as root and drops to its own user in its entry point (and airflow-init, which is
# root only to hand the shared volumes to AIRFLOW_UID before the Airflow entry point runs).
ROOT_THEN_DROPS = {"postgres", "openbao", "minio", "airflow-init"}
# Variable names that would carry a secret: they must come as a file (NAME_FILE) or a command (NAME_CMD).
SECRET_NAME = re.compile(
    r"PASSWORD|SECRET_ID(?!_TTL)|TOKEN|ACCESS_KEY|SECRET_KEY|FERNET|JWT_SECRET|STORAGE_OPTIONS|CONN$")
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """docker compose's substitution: ${NAME:-default} from ``env`` else the default; $$ is a literal $."""
    env = env or {}
    return _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text).replace("$$", "$")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def _example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def test_when_the_compose_file_is_read_then_every_service_is_built_or_pulled_checked_and_restarted() -> None:
    services = _services()
    assert {"postgres", "openbao", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "spark-master", "spark-worker", "medguard-api"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if name in JOBS:
            assert service.get("restart", "no") == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"
        assert service.get("mem_limit") and service.get("cpus"), f"{name} has no resource limits"


def test_when_airflow_runs_then_it_has_a_real_executor_and_postgres_and_the_vault_secrets_backend() -> None:
    services = _services()
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] in ("LocalExecutor", "CeleryExecutor"), name
        assert env["AIRFLOW__SECRETS__BACKEND"] == "airflow.providers.hashicorp.secrets.vault.VaultBackend"
        assert env["AIRFLOW__WORKERS__SECRETS_BACKEND"] == env["AIRFLOW__SECRETS__BACKEND"]
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["MEDGUARD_ORCHESTRATION__SECRETS"] == "vault"
        assert "../../dags:/opt/airflow/dags:ro" in services[name]["volumes"]
    # Every Airflow container starts through entrypoint.sh (the image's ENTRYPOINT, or airflow-init's last step).
    assert "\n/opt/medguard/entrypoint.sh airflow version\n" in services["airflow-init"]["command"][0]
    assert _env(services["airflow-init"])["REQUIRED_SECRET_FILES"] == "/run/secrets/airflow_vault_kwargs"
    conn = (COMPOSE_DIR / "gen-secrets.sh").read_text()
    assert 'write airflow_db_conn "postgresql+psycopg://airflow:' in conn
    assert services["postgres"]["image"].startswith("postgres:")


def test_when_a_service_runs_then_it_is_not_root_unless_its_image_drops_privileges() -> None:
    for name, service in _services().items():
        if name in ROOT_THEN_DROPS:
            continue
        user = str(service.get("user", ""))
        assert user and not user.startswith(("0:", "root")) and user != "0", f"{name} runs as {user or 'root'}"


def test_when_ports_are_published_then_only_on_loopback_and_only_the_ui_and_the_api() -> None:
    published = {name: service["ports"] for name, service in _services().items() if service.get("ports")}
    assert set(published) == {"airflow-apiserver", "medguard-api"}
    for name, ports in published.items():
        assert all(str(port).startswith("127.0.0.1:") for port in ports), name
    data = _compose()["networks"]["data"]
    assert data["internal"] is True
    for name in ("postgres", "openbao", "minio"):
        assert _services()[name]["networks"] == ["data"], name


def test_when_a_secret_is_passed_then_it_is_a_file_never_a_value_in_the_compose_file() -> None:
    compose = _compose()
    for name, secret in compose["secrets"].items():
        assert secret["file"] == f"./secrets/{name}", name
    for name, service in compose["services"].items():
        for variable, value in _env(service).items():
            if SECRET_NAME.search(variable.removesuffix("_FILE").removesuffix("_CMD")):
                assert variable.endswith(("_FILE", "_CMD")), f"{name}: {variable} carries a secret inline"
                assert "/run/secrets/" in value, f"{name}: {variable}={value}"
            if variable.endswith("_FILE") and value.startswith("/run/secrets/"):
                given = {entry if isinstance(entry, str) else entry["source"] for entry in service.get("secrets", [])}
                assert value.removeprefix("/run/secrets/") in given, f"{name}: {variable} names a secret not given"


def test_when_compose_interpolates_a_variable_then_env_example_documents_it_with_the_same_default() -> None:
    used = {m.group(1): m.group(2) for m in _VARIABLE.finditer(COMPOSE.read_text())}
    example = _example()
    assert set(used) == set(example), "docker-compose.yml and .env.example name different variables"
    for name, default in used.items():
        assert default is not None, f"${{{name}}} has no default"
        assert example[name] == default, f"{name}: .env.example says {example[name]!r}, the compose default {default!r}"
    # The compose file's own variables never look like medguard settings (which reject unknown MEDGUARD_* names).
    assert not [name for name in used if name.startswith("MEDGUARD_")]


def test_when_a_file_is_mounted_then_it_exists_in_the_repository() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                if source == "./secrets":
                    continue  # made by gen-secrets.sh, ignored by git
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in _compose()["volumes"], f"{name} mounts an undeclared volume {source}"
        if isinstance(service.get("build"), dict):
            assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert (INFRA / "spark" / "spark-defaults.conf").is_file()


@pytest.mark.parametrize("service", ["airflow-scheduler", "airflow-apiserver", "medguard-api", "spark-worker",
                                     "medguard-cli"])
def test_when_a_container_gets_medguard_variables_then_they_are_settings_medguard_loads(
        service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(_services()[service])
    for variable in [name for name in os.environ if name.startswith("MEDGUARD_")]:
        monkeypatch.delenv(variable)
    # As entrypoint.sh exports them: NAME_FILE becomes NAME with the file's content (stand-ins of the right shape).
    stand_in = {"MEDGUARD_STORAGE_OPTIONS": json.dumps({"AWS_ENDPOINT_URL": "http://minio:9000",
                                                         "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}),
                "MEDGUARD_VAULT__ROLE_ID": "role-id", "MEDGUARD_VAULT__SECRET_ID": "secret-id"}
    names = set()
    for variable, value in env.items():
        if not variable.startswith("MEDGUARD_"):
            continue
        variable = variable.removesuffix("_FILE") if variable.endswith("_FILE") else variable
        names.add(variable)
        monkeypatch.setenv(variable, stand_in.get(variable, value))

    settings = load_settings()

    assert names, f"{service} gets no MEDGUARD_* variable"
    assert settings.lake_root == "s3://medguard-lake/lake"
    assert settings.key_provider == "vault"
    assert settings.spark.master == "spark://spark-master:7077"
    assert settings.spark.conf["spark.authenticate"] == settings.spark.conf["spark.network.crypto.enabled"] == "true"
    assert str(settings.vault.ca_cert) == "/run/secrets/ca_cert"
    if "MEDGUARD_VAULT__ADDR" in names:
        assert settings.vault.addr == "https://openbao:8200" and settings.vault.auth_method == "approle"
        assert settings.vault.secret_id is not None and settings.storage_options
    else:
        assert settings.orchestration.secrets == "vault"


def _airflow_options() -> dict[tuple[str, str], dict[str, Any]]:
    # The installed Airflow's option template, read without importing airflow (which would set up its database).
    spec = importlib.util.find_spec("airflow")
    assert spec is not None and spec.origin is not None
    config = yaml.safe_load((Path(spec.origin).parent / "config_templates" / "config.yml").read_text())
    return {(section, option): spec for section, body in config.items()
            for option, spec in (body.get("options") or {}).items()}


def test_when_airflow_is_configured_by_variables_then_each_is_an_option_of_the_installed_airflow() -> None:
    options = _airflow_options()
    for name, service in _services().items():
        for variable in _env(service):
            if not variable.startswith("AIRFLOW__"):
                continue
            section, option = variable.removeprefix("AIRFLOW__").lower().split("__", 1)
            command = option.endswith("_cmd")
            option = option.removesuffix("_cmd")
            assert (section, option) in options, f"{name}: {variable} is not an Airflow option"
            if command:
                assert options[(section, option)].get("sensitive"), f"{name}: Airflow ignores {variable}"


def test_when_the_image_is_built_then_it_copies_only_what_dockerignore_lets_through_and_matches_the_lock() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            parts = [part for part in line.split()[1:] if not part.startswith("--")]
            copied.extend(parts[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is copied but .dockerignore keeps it out of the build context"
    assert "secrets" not in " ".join(allowed) and ".venv" not in allowed
    airflow = importlib.metadata.version("apache-airflow")
    base = re.search(r"ARG AIRFLOW_IMAGE=apache/airflow:(\S+)-python(\S+)", dockerfile)
    assert base is not None
    assert base.group(1) == airflow
    assert base.group(2) == "3.11"
    assert f"apache-airflow=={airflow} " in (ROOT / "requirements.lock").read_text()
    assert "--require-hashes -r /opt/medguard/requirements.lock" in dockerfile


def test_when_approle_sh_creates_roles_then_they_are_the_roles_of_the_local_openbao() -> None:
    from storage_security.local_vault.openbao import ROLES

    script = (INFRA / "vault" / "approle.sh").read_text()
    roles = dict(re.findall(r"\[(medguard-[a-z-]+)\]=\"([^\"]+)\"", script))
    assert set(roles) == set(ROLES)
    for role, policies in ROLES.items():
        assert roles[role].split(",") == [f"medguard-{policy}" for policy in policies], role


def test_when_openbao_is_configured_then_raft_tls_and_declared_audit_devices_are_in_the_config() -> None:
    config = (COMPOSE_DIR / "openbao" / "config.hcl").read_text()
    assert re.search(r'storage "raft" \{', config)
    assert "tls_disable" not in config
    assert "tls_cert_file   = \"/run/secrets/openbao_tls_cert\"" in config
    assert len(re.findall(r'^audit "file" "[a-z]+" \{', config, flags=re.MULTILINE)) == 2


# With the tools -----------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_when_docker_compose_reads_the_file_then_it_is_valid(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (`make install` installs Debian's as root)")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_"))}
    done = subprocess.run([binary, "-f", str(COMPOSE), "--profile", "setup", "--profile", "tools", "config"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == set(_services())
    assert resolved["services"]["spark-master"]["command"][-1].startswith('exec "$$(python -c')
    # An operator's .env made from the example (changed values must reach the file).
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace("LAKE_BUCKET=medguard-lake", "LAKE_BUCKET=st-elsewhere")
                        .replace("AIRFLOW_UID=50000", "AIRFLOW_UID=1234"))
    with_env = subprocess.run([binary, "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
                              capture_output=True, text=True, env=env, check=False)
    assert with_env.returncode == 0, with_env.stderr
    services = yaml.safe_load(with_env.stdout)["services"]
    assert services["airflow-scheduler"]["environment"]["MEDGUARD_LAKE_ROOT"] == "s3://st-elsewhere/lake"
    assert services["medguard-api"]["user"] == "1234:0"


@pytest.mark.integration
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: str(path.relative_to(INFRA)))
def test_when_a_script_is_checked_then_bash_parses_it_and_shellcheck_finds_nothing(script: Path) -> None:
    shell = "sh" if script.read_text().startswith("#!/bin/sh") else "bash"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    parsed = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert parsed.returncode == 0, parsed.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (`make install` installs Debian's as root)")
    checked = subprocess.run([shellcheck, "-s", shell, str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.integration
def test_when_gen_secrets_runs_then_every_secret_the_compose_names_exists_and_none_is_rewritten(
        tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    first = subprocess.run(["bash", str(COMPOSE_DIR / "gen-secrets.sh"), str(out)], capture_output=True, text=True,
                           check=False)
    assert first.returncode == 0, first.stderr
    assert out.stat().st_mode & 0o777 == 0o700
    for name in _compose()["secrets"]:
        assert (out / name).is_file(), f"gen-secrets.sh makes no {name}"
    made_later = {"medguard_vault_role_id", "medguard_vault_secret_id", "airflow_vault_kwargs"}
    assert {name for name in _compose()["secrets"] if (out / name).stat().st_size == 0} == made_later
    options = json.loads((out / "medguard_storage_options").read_text())
    assert options["AWS_ACCESS_KEY_ID"] == (out / "medguard_s3_access_key").read_text()
    assert load_settings(storage_options=options).storage_options["AWS_SECRET_ACCESS_KEY"].get_secret_value() == \
        (out / "medguard_s3_secret_key").read_text()
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca_cert"), str(out / "openbao_tls_cert"),
                               str(out / "medguard_api_tls_cert")], capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    again = subprocess.run(["bash", str(COMPOSE_DIR / "gen-secrets.sh"), str(out)], capture_output=True, text=True,
                           check=False)

    assert again.returncode == 0, again.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


@pytest.mark.integration
def test_when_airflow_reads_its_secret_options_then_each_cmd_yields_its_file(tmp_path: Path) -> None:
    env = _env(_services()["airflow-scheduler"])
    commands = {name: value for name, value in env.items() if name.startswith("AIRFLOW__") and name.endswith("_CMD")}
    assert len(commands) >= 7
    child = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    expected = {}
    for name, command in commands.items():
        secret = command.split("/run/secrets/", 1)[1]
        value = "postgresql+psycopg://airflow:pw@postgres:5432/airflow" if secret == "airflow_db_conn" else \
            f"value-of-{secret}"
        (tmp_path / secret).write_text(value)
        child[name] = command.replace("/run/secrets/", f"{tmp_path}/")
        section, option = name.removeprefix("AIRFLOW__").removesuffix("_CMD").lower().split("__", 1)
        expected[f"{section}.{option}"] = value
    code = ("import json, sys\nfrom airflow.configuration import conf\n"
            "print(json.dumps({key: conf.get(*key.split('.')) for key in sys.argv[1:]}))")

    done = subprocess.run([sys.executable, "-c", code, *expected], env=child, capture_output=True, text=True,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
