"""Fixtures of the pipeline tests: a local S3 server (moto_server) for lakes on an object store.

moto runs as its own process: delta-rs's listing blocks while holding the GIL, so a server in a thread of the
test process would never answer it. One server serves the whole test run; each test writes under its own prefix.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_BUCKET = "medguard-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
