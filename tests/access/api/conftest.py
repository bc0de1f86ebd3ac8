"""The API tests' worlds: a home with endpoints, keys and (or not) a signed current model, and ``medguard serve``
running on it in a subprocess on 127.0.0.1 (the real server: uvicorn, the middleware, the SQLite stores)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from access.endpoints import EndpointRegistry
from pipeline.settings import Settings, load_settings
from storage_security.keys.keyring import LocalKeyring, encode_master_key
from tests.access._signing import KeyPair, key_pair
from tests.access.api._model import register_model

MEDGUARD = str(Path(sys.executable).with_name("medguard"))
ENCOUNTER = {"encounter_ref": "enc-1", "age": 57, "sex": "F",
             "observations": [{"code": "4548-4", "value": 6.4, "unit": "%", "effective": "2026-10-01T09:00:00Z"},
                              {"code": "2345-7", "value": 6.9, "unit": "mmol/L"},
                              {"code": "8480-6", "value": 134, "unit": "mm[Hg]"},
                              {"code": "8462-4", "value": 86, "unit": "mm[Hg]"}],
             "conditions": [{"code": "R73.03"}, {"code": "38341003", "system": "http://snomed.info/sct"}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class World:
    """A home: settings, its keyring, the registry and one key pair per registered endpoint (name → keys, keyid)."""

    root: Path
    settings: Settings
    ring: LocalKeyring
    env: dict[str, str]
    keys: dict[str, tuple[KeyPair, str]] = field(default_factory=dict)

    def keyid(self, name: str) -> str:
        return self.keys[name][1]

    def private(self, name: str) -> Any:
        return self.keys[name][0].private


def make_world(root: Path, *, model: bool) -> World:
    """A home with the endpoints the rejection tests need, and a promoted model when ``model``."""
    home = root / "home"
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(home / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master),
           "MEDGUARD_API__AUDIT_FLUSH_SECONDS": "0.5"}
    settings = load_settings(home=home, key_provider="keyring", keyring={"path": ring.path})
    world = World(root, settings, ring, env)
    registry = EndpointRegistry(home / "access" / "endpoints.json")  # where the server's from_settings reads
    specs: dict[str, dict[str, Any]] = {
        "ward7": {}, "slow": {"rate_per_minute": 2}, "readonly": {"operations": ("models.read",)},
        "elsewhere": {"networks": ("10.0.0.0/8",)}, "paused": {}, "gone": {}, "pinned":
            {"client_cert_sha256": "ab" * 32}, "rotated": {}, "fuzz": {"rate_per_minute": 1_000_000}}
    for name, kwargs in specs.items():
        keys = key_pair("ecdsa-p256" if name == "readonly" else "ed25519")
        endpoint = registry.register(name, keys.public_pem, operator="tester", **kwargs)
        world.keys[name] = (keys, endpoint.keys[0].keyid)
    registry.suspend("paused", operator="tester")
    registry.revoke("gone", operator="tester")
    registry.rotate_key("rotated", key_pair().public_pem, overlap=timedelta(0), operator="tester")
    if model:
        register_model(settings, ring)
    return world


class Server:
    """``medguard serve`` in a subprocess; stopped with SIGTERM."""

    def __init__(self, world: World, *args: str, base_scheme: str = "http", verify: Any = True) -> None:
        self.port = free_port()
        self.base = f"{base_scheme}://127.0.0.1:{self.port}"
        self.log = world.root / f"serve-{self.port}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen([MEDGUARD, "serve", "--port", str(self.port), *args], env=world.env,
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"medguard serve exited: {self.log.read_text()[-2000:]}")
            try:
                with httpx.Client(verify=verify, timeout=2) as probe:
                    ok = probe.get(f"{self.base}/healthz").status_code == 200
                if ok:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("medguard serve did not answer /healthz within 120 s")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A home with a current model and ``medguard serve`` on it: (world, server)."""
    world = make_world(tmp_path_factory.mktemp("api-served"), model=True)
    server = Server(world)
    yield world, server
    server.stop()


@pytest.fixture(scope="module")
def served_bare(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A home with endpoints but no model, and ``medguard serve`` on it: (world, server)."""
    world = make_world(tmp_path_factory.mktemp("api-bare"), model=False)
    server = Server(world)
    yield world, server
    server.stop()
