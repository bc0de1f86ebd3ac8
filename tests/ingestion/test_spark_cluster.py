"""Layers 1-2 on a Spark standalone cluster: ingestion checks and structured masking run on its executors and
give the same tables as the in-process path.

The cluster is a master and one worker (one core, 1 GiB) started from pyspark's ``spark-class`` on 127.0.0.1.
The project keeps one Spark session per process and the test run's is a ``local[*]`` one, so the cluster's driver
is a subprocess (:mod:`_spark_cluster_driver`), with its own home and a keyring it shares with the executors
through the worker's environment (as a cluster passes secrets to its executors).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration



def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as answer:
            return sum(1 for w in json.load(answer).get("workers", []) if w.get("state") == "ALIVE")
    except OSError:
        return 0


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A standalone master and worker on 127.0.0.1: yields its ``master`` URL and the ``env`` of its processes."""
    from storage_security.keys.keyring import LocalKeyring, encode_master_key

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
    port, ui_port = _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    logs = (root / "master.log").open("wb"), (root / "worker.log").open("wb")
    processes = [subprocess.Popen([str(_spark_class()), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(ui_port)],
                                  env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        processes.append(subprocess.Popen(
            [str(_spark_class()), "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
             "--webui-port", str(_free_port()), "--cores", "1", "--memory", "1g"],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while _workers(ui_port) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the Spark worker did not register; see {root}/master.log and worker.log")
            time.sleep(1)
        yield {"master": master, "env": env}
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


def test_when_compute_is_a_spark_cluster_then_ingestion_and_deidentification_match_the_local_path(
        spark_cluster, tmp_path):
    from pipeline.synthetic.generate import generate

    generate(tmp_path / "sources", patients=200, seed=7, formats=("parquet",), defect_rate=0.02)
    driver = Path(__file__).with_name("_spark_cluster_driver.py")
    run = subprocess.run([sys.executable, str(driver), str(tmp_path / "sources"), spark_cluster["master"]],
                         env=spark_cluster["env"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    tables = result["tables"]
    assert {"raw.patients", "raw.observations", "quarantine.records"} <= set(tables)
    assert {name for name in tables if name.startswith("deidentified.")}, "nothing was published"
    for name, found in tables.items():
        assert found["equal"], f"{name}: {found}"
        assert found["local_rows"] == found["spark_rows"] > 0
    assert result["counts_equal"]
    assert result["published_local"] == result["published_spark"]
    # The work ran on the cluster: every check and mask job succeeded there, and each published table was masked
    # on the executors.
    assert result["jobs"]["ingest"] and set(result["jobs"]["ingest"]) == {"SUCCEEDED"}
    assert result["jobs"]["deidentify"] and set(result["jobs"]["deidentify"]) == {"SUCCEEDED"}
    assert {result["masking"][name] for name in result["published_spark"]} == {"spark"}
