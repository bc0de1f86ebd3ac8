"""Fixtures of the security-core tests: one OpenBao dev server per test run (or a real Vault), providers on it.

``openbao`` starts ``bao server -dev`` once per run on 127.0.0.1 and a free port, and kills it at the end of
the run (also when tests fail, and on Linux also when the test process is killed). When ``VAULT_ADDR`` and
``VAULT_TOKEN`` are set, the same tests run against that Vault instead; its token must be allowed to mount
Transit (if it is not mounted at ``transit/``), create and delete keys, write policies and create tokens.
``vault_provider`` is a :class:`VaultTransitKeys` on the KEK named by ``kek_name``, unique per test and
destroyed afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from storage_security._vault import VaultClient
from storage_security.openbao import dev_server, enable_transit
from storage_security.vault_transit import VaultTransitKeys


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
