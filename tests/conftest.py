"""Shared fixtures: an isolated MEDGUARD_HOME per test run, one Spark session and one Vault for the whole run.

``openbao`` starts ``bao server -dev`` once per run on 127.0.0.1 and a free port, and kills it at the end of
the run (also when tests fail, and on Linux also when the test process is killed). When ``VAULT_ADDR`` and
``VAULT_TOKEN`` are set, the same tests run against that Vault instead; its token must be allowed to mount
Transit (if it is not mounted at ``transit/``), create and delete keys, write policies and create tokens.
``vault_provider`` is a :class:`VaultTransitKeys` on the KEK named by ``kek_name``, unique per test and
destroyed afterwards. ``keyring`` is a fast local keyring for tests that only need some key provider.

Every test is in exactly one tier, given here by :func:`pytest_collection_modifyitems` so that a new test gets one
without saying so: ``e2e`` when it uses ``keyring_env`` (a command or DAG that builds its own settings),
``integration`` when it uses a real engine, service or data fixture (Spark, Vault/OpenBao, S3, the shared training
run, a generated ``population``), otherwise ``unit``. A test that starts a subprocess, runs Airflow or a whole
command by other means says its tier with an explicit ``pytest.mark.integration`` / ``pytest.mark.e2e`` (on the
test or as the module's ``pytestmark``), which wins over the fixture rule. ``make test-fast`` runs ``-m unit``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports airflow or pyspark: all state of a test run stays in its own home.
_RUN_HOME = Path(tempfile.mkdtemp(prefix="medguard-test-"))
os.environ["MEDGUARD_HOME"] = str(_RUN_HOME)
os.environ["AIRFLOW_HOME"] = str(_RUN_HOME / "airflow")
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
for _name in list(os.environ):
    if _name.startswith("MEDGUARD_") and _name not in {"MEDGUARD_HOME"}:
        del os.environ[_name]

from pipeline.settings import Settings, get_settings, load_settings  # noqa: E402
from storage_security.keys._vault import VaultClient  # noqa: E402
from storage_security.keys.keyring import LocalKeyring  # noqa: E402
from storage_security.keys.vault_transit import VaultTransitKeys  # noqa: E402
from storage_security.local_vault.openbao import dev_server, enable_transit  # noqa: E402

# py4j logs at INFO from finalizers after pytest has closed its capture streams ("Logging error" noise).
logging.getLogger("py4j").setLevel(logging.WARNING)

TIERS = ("unit", "integration", "e2e")
# Fixtures that bring a real engine, service or a generated population into a test (the closure of a test's
# fixtures is checked, so ``vault_provider`` counts through ``openbao``), and fixtures that mean a whole command or
# DAG runs.
INTEGRATION_FIXTURES = frozenset({"spark", "spark_cluster", "openbao", "s3_endpoint", "t2d_run", "population"})
E2E_FIXTURES = frozenset({"keyring_env"})
# Explicit tiers for tests in files another change owns (they can take a marker in the file later).
EXPLICIT_TIERS = {
    "tests/storage_security/keys/test_keyring.py::test_when_processes_add_keys_at_once_then_none_is_lost":
        "integration",  # worker subprocesses race on one keyring file
}


def tier_of(item: pytest.Item) -> str:
    """The tier of a collected test: its explicit tier marker, else the one its fixtures imply."""
    explicit = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {sorted(explicit)}: a test has exactly one tier")
    if explicit:
        return explicit.pop()
    if item.nodeid.split("[")[0] in EXPLICIT_TIERS:
        return EXPLICIT_TIERS[item.nodeid.split("[")[0]]
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & E2E_FIXTURES:
        return "e2e"
    if fixtures & INTEGRATION_FIXTURES:
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def _no_local_openbao_left_running() -> Iterator[None]:
    """Stop a local OpenBao that a test started in the run's home (``vault up`` via the demo or a command)."""
    yield
    from storage_security.local_vault import openbao

    openbao.down(load_settings())


@pytest.fixture(scope="session")
def run_home() -> Path:
    """The MEDGUARD_HOME shared by the whole test run."""
    return _RUN_HOME


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the test run: embedded defaults under the run's home, Spark UI off, two local cores."""
    return load_settings(spark={"master": "local[2]", "ui_enabled": False, "driver_memory": "2g"})


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[object]:
    """The one Spark session of the test run."""
    from pipeline.spark import get_spark, stop_spark

    session = get_spark(settings)
    yield session
    stop_spark()


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 patients in every format with 5 % defects (each one listed in defects.jsonl), for ingestion and its DAG."""
    from pipeline.synthetic import generate

    out = tmp_path_factory.mktemp("ingest-population") / "pop"
    generate(out, patients=60, seed=11, defect_rate=0.05)
    return out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class SparkCluster:
    """A running standalone cluster: its master URL, the environment of its processes (for a driver subprocess;
    it holds the keyring's master key) and its web UIs' ports."""

    master: str
    env: dict[str, str] = field(repr=False)
    master_ui_port: int
    worker_ui_port: int

    def master_state(self) -> dict[str, Any]:
        """The master UI's ``/json/``: its workers, active and completed applications."""
        return _ui_json(self.master_ui_port)

    def worker_executors(self) -> list[dict[str, Any]]:
        """The executors the worker runs and has run (each with its application's ``appid``)."""
        state = _ui_json(self.worker_ui_port)
        return [*state.get("executors", []), *state.get("finishedexecutors", [])]


def _ui_json(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=2) as answer:
            return json.load(answer)
    except OSError:
        return {}


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark standalone master and one worker (one core, 1 GiB) started on 127.0.0.1 from pyspark's own
    ``spark-class``.

    The test run's own session is ``local[*]`` and there is one Spark session per process, so a cluster test runs
    its driver as a subprocess with ``env``. That env holds a keyring the executors share through the worker's
    environment (as a cluster passes secrets to its executors), selected by ``MEDGUARD_KEY_PROVIDER=keyring``.
    """
    import pyspark

    from storage_security.keys.keyring import encode_master_key

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    root = tmp_path_factory.mktemp("spark-cluster")
    master_key = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(root / "keyring.json", master_key)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEDGUARD_")},
           "MEDGUARD_HOME": str(root / "home"), "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master_key),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(root / "logs"), "SPARK_WORKER_DIR": str(root / "work"), "GX_ANALYTICS_ENABLED": "False"}
    port, ui_port, worker_ui_port = _free_port(), _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    cluster = SparkCluster(master, env, ui_port, worker_ui_port)
    logs = (root / "master.log").open("wb"), (root / "worker.log").open("wb")
    processes = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(ui_port)],
                                  env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        # One core is enough for xgboost.spark's barrier stage with num_workers=1 (it needs a core per worker).
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
             "--webui-port", str(worker_ui_port), "--cores", "1", "--memory", "1g"],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while not any(w.get("state") == "ALIVE" for w in cluster.master_state().get("workers", [])):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the Spark worker did not register; see {root}/master.log and worker.log")
            time.sleep(1)
        yield cluster
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


@pytest.fixture
def lake(tmp_path: Path, settings: Settings):
    """A lake under a fresh root, so tests never see each other's tables."""
    from pipeline.lake import Lake

    return Lake(settings.model_copy(update={"lake_root": str(tmp_path / "lake")}))


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass(frozen=True)
class VaultEndpoint:
    """Where the tests' Vault is and its root (or operator) token."""

    addr: str
    token: str = field(repr=False)

    def client(self, **kwargs: Any) -> VaultClient:
        """A client with the operator token; keyword arguments go to :class:`VaultClient`."""
        return VaultClient(self.addr, token=self.token, **kwargs)


@pytest.fixture(scope="session")
def openbao(run_home: Path) -> Iterator[VaultEndpoint]:
    """The run's Vault: a real one from VAULT_ADDR/VAULT_TOKEN, else one OpenBao dev server for the run."""
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if addr and token:
        endpoint = VaultEndpoint(addr, token)
        enable_transit(endpoint.client())
        yield endpoint
        return
    with dev_server(run_home / "openbao-dev.log") as server:
        yield VaultEndpoint(server.addr, server.token)


@pytest.fixture
def kek_name() -> str:
    """A KEK name no other test uses."""
    return f"test-kek-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def vault_provider(openbao: VaultEndpoint, kek_name: str) -> Iterator[VaultTransitKeys]:
    """A Transit provider with the operator token, its KEK ``kek_name`` created, and destroyed after the test."""
    provider = VaultTransitKeys(openbao.client(), mount="transit")
    provider.ensure_key(kek_name)
    yield provider
    provider.destroy_key(kek_name)


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    """A local keyring in a fresh file with the data KEK and the audit KEK, for tests that need some key
    provider but not Vault itself."""
    ring = LocalKeyring.init(tmp_path / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    return ring


@pytest.fixture
def keyring_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalKeyring:
    """A keyring at ``tmp_path/keyring.json`` with both KEKs, selected through the environment.

    For code that builds its own settings or runs in a subprocess (``airflow dags test``, the ``medguard``
    command), which inherit ``MEDGUARD_KEY_PROVIDER``, ``MEDGUARD_KEYRING__PATH`` and the master key.
    """
    from storage_security.keys.keyring import encode_master_key

    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(tmp_path / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    monkeypatch.setenv("MEDGUARD_KEY_PROVIDER", "keyring")
    monkeypatch.setenv("MEDGUARD_KEYRING__PATH", str(ring.path))
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    return ring


@pytest.fixture
def keyring_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, LocalKeyring]:
    """Settings of a fresh home at ``tmp_path/home`` on the keyring provider (its master key in the environment),
    and that keyring with both KEKs: a home the in-process layers can read and write, no Vault needed."""
    from storage_security.keys.keyring import encode_master_key

    master = LocalKeyring.generate_master_key()
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    settings = load_settings(home=tmp_path / "home", key_provider="keyring")
    ring = LocalKeyring.init(settings.keyring.path, master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    return settings, ring


# A local S3 (moto_server) for lakes on an object store. moto runs as its own process: delta-rs's listing blocks
# while holding the GIL, so a server in a thread of the test process would never answer it. One server serves the
# whole test run; each test writes under its own prefix.
S3_BUCKET = "medguard-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one empty bucket, ``medguard-test``; its URL."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed (requirements.lock's moto[server])")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310 - a local test server
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict[str, str]:
    """``storage_options`` that reach the moto server: plain HTTP, and no locking provider, so renames are
    allowed without one (each test is its prefix's only writer)."""
    return {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "AKIAMEDGUARDTEST",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-medguard-test", "AWS_ALLOW_HTTP": "true",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
