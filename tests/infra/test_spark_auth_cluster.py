"""The compose deployment's Spark: an authenticated, encrypted standalone cluster, joined through entrypoint.sh.

A master and a one-core worker start from pyspark's ``spark-class`` on 127.0.0.1 the way infra/compose starts them
(their SPARK_MASTER_OPTS / SPARK_WORKER_OPTS read from docker-compose.yml, the shared secret given as a file through
entrypoint.sh), and a driver started through entrypoint.sh as an Airflow task would be (MEDGUARD_SPARK__CONF from the
compose file, the secret as a file) opens medguard's Spark session on that master and runs a job on the worker.
infra/spark/spark-defaults.conf is used less its Delta lines (spark.jars*, the Delta extension and catalog):
Delta's jars cannot be fetched here, and this test is about the cluster's authentication.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
import yaml
from _ports import free_ports

pytestmark = pytest.mark.integration  # starts a Spark master, a worker and a driver as subprocesses

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "compose"
SPARK_CLASS = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
DELTA_LINES = ("spark.jars", "spark.sql.extensions", "spark.sql.catalog.spark_catalog")
DRIVER = """
from pipeline.settings import load_settings
from pipeline.spark import get_spark, stop_spark
spark = get_spark(load_settings())
print("MASTER", spark.sparkContext.master)
print("SUM", spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"])
stop_spark()
"""


def _compose_env(service: str) -> dict[str, str]:
    services = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())["services"]
    return {name: str(value) for name, value in services[service]["environment"].items()}


def _json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our local master
        return json.loads(response.read())


def _alive_workers(ui: int) -> int | None:
    """The master's count of live workers, or None while its web UI does not answer with JSON yet."""
    try:
        return int(_json(f"http://127.0.0.1:{ui}/json/")["aliveworkers"])  # type: ignore[call-overload]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    root = tmp_path_factory.mktemp("spark-auth")
    (root / "spark_auth_secret").write_text("compose-shared-secret-0123456789")
    port, ui, worker_ui = free_ports(3)
    base = {"PATH": os.environ["PATH"], "HOME": str(root), "JAVA_HOME": os.environ.get("JAVA_HOME", ""),
            "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "true",
            "SPARK_LOG_DIR": str(root / "logs"), "AIRFLOW_ENTRYPOINT": "/usr/bin/env",
            "_SPARK_AUTH_SECRET_FILE": str(root / "spark_auth_secret")}
    master_env = {**base, "SPARK_MASTER_OPTS": _compose_env("spark-master")["SPARK_MASTER_OPTS"]}
    worker = _compose_env("spark-worker")
    worker_env = {**base, "SPARK_WORKER_OPTS": worker["SPARK_WORKER_OPTS"], "SPARK_WORKER_CORES": "1",
                  "SPARK_WORKER_MEMORY": "1g", "SPARK_WORKER_DIR": str(root / "work")}
    processes = []
    try:
        with (root / "master.log").open("w") as log:
            processes.append(subprocess.Popen(
                ["bash", str(COMPOSE_DIR / "entrypoint.sh"), SPARK_CLASS, "org.apache.spark.deploy.master.Master",
                 "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
                env=master_env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while _alive_workers(ui) is None:
            if time.monotonic() > deadline:
                raise RuntimeError((root / "master.log").read_text()[-2000:])
            time.sleep(0.5)
        with (root / "worker.log").open("w") as log:
            processes.append(subprocess.Popen(
                ["bash", str(COMPOSE_DIR / "entrypoint.sh"), SPARK_CLASS, "org.apache.spark.deploy.worker.Worker",
                 "--webui-port", str(worker_ui), f"spark://127.0.0.1:{port}"],
                env=worker_env, stdout=log, stderr=subprocess.STDOUT))
        while _alive_workers(ui) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError((root / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}", ui, root
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def test_when_a_task_joins_the_authenticated_cluster_through_the_entrypoint_then_its_job_runs_on_the_worker(
        cluster: tuple[str, int, Path]) -> None:
    master, ui, root = cluster
    conf = root / "spark-conf"
    conf.mkdir()
    shipped = (ROOT / "infra" / "spark" / "spark-defaults.conf").read_text().splitlines()
    (conf / "spark-defaults.conf").write_text("\n".join(line for line in shipped if not line.startswith(DELTA_LINES)))
    task = _compose_env("airflow-scheduler")
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "JAVA_HOME": os.environ.get("JAVA_HOME", ""),
           "SPARK_LOCAL_IP": "127.0.0.1", "AIRFLOW_ENTRYPOINT": sys.executable, "TMPDIR": str(root),
           "MEDGUARD_HOME": str(root / "home"), "MEDGUARD_SPARK__MASTER": master,
           "MEDGUARD_SPARK__CONF": task["MEDGUARD_SPARK__CONF"], "MEDGUARD_SPARK__UI_ENABLED": "false",
           "MEDGUARD_SPARK__DRIVER_MEMORY": "512m", "MEDGUARD_KEY_PROVIDER": "keyring",
           "SPARK_CONF_DIR": str(conf), "_SPARK_AUTH_SECRET_FILE": task["_SPARK_AUTH_SECRET_FILE"].replace(
               "/run/secrets/", f"{root}/")}

    done = subprocess.run(["bash", str(COMPOSE_DIR / "entrypoint.sh"), "-c", DRIVER], env=env, capture_output=True,
                          text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MASTER {master}" in done.stdout
    assert "SUM 499500" in done.stdout
    apps = _json(f"http://127.0.0.1:{ui}/json/")
    assert len(apps["completedapps"]) + len(apps["activeapps"]) >= 1
    assert "compose-shared-secret" not in (conf / "spark-defaults.conf").read_text()  # the copy got it, not this


def test_when_a_driver_has_no_secret_then_spark_refuses_to_start_it(cluster: tuple[str, int, Path]) -> None:
    master, _, root = cluster
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "JAVA_HOME": os.environ.get("JAVA_HOME", ""),
           "SPARK_LOCAL_IP": "127.0.0.1", "AIRFLOW_ENTRYPOINT": sys.executable, "TMPDIR": str(root),
           "MEDGUARD_HOME": str(root / "home-nosecret"), "MEDGUARD_SPARK__MASTER": master,
           "MEDGUARD_SPARK__CONF": _compose_env("airflow-scheduler")["MEDGUARD_SPARK__CONF"],
           "MEDGUARD_SPARK__UI_ENABLED": "false", "MEDGUARD_KEY_PROVIDER": "keyring"}

    done = subprocess.run(["bash", str(COMPOSE_DIR / "entrypoint.sh"), "-c", DRIVER], env=env, capture_output=True,
                          text=True, timeout=300, check=False)

    assert done.returncode != 0
    assert "A secret key must be specified via the spark.authenticate.secret config" in done.stderr
