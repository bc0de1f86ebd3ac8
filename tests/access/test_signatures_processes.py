"""The nonce and rate store shared by separate processes, as the workers of one server share it."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from access.signatures import NonceStore

pytestmark = pytest.mark.integration  # starts processes

NONCES = 300
WORKERS = 4


def _claim_all(path: str) -> list[str]:
    """Claim every nonce, in an order of its own; return the ones this process won."""
    store = NonceStore(Path(path))
    won = [f"n{i}" for i in range(NONCES) if store.claim("ep_shared", f"n{i}", ttl_seconds=300)]
    store.close()
    return won


def _mid_minute() -> float:
    return 1_796_040_030.0  # 30 s into a minute, the same in every process: the limit is exact


def _count_requests(path: str) -> int:
    store = NonceStore(Path(path), clock=_mid_minute)
    accepted = 0
    for i in range(50):
        _, retry_after = store.claim_and_count("ep_busy", f"{id(store)}-{i}", ttl_seconds=300, bucket="ep_busy",
                                               rate_per_minute=60)
        accepted += retry_after is None
    return accepted


def test_when_processes_race_for_the_same_nonces_then_each_nonce_is_won_exactly_once(tmp_path):
    path = str(tmp_path / "requests.sqlite3")
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_claim_all, [path] * WORKERS))
    won = [nonce for result in results for nonce in result]
    assert sorted(won) == sorted(f"n{i}" for i in range(NONCES))


def test_when_processes_share_an_endpoints_rate_then_the_limit_holds_in_total(tmp_path):
    path = str(tmp_path / "requests.sqlite3")
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        accepted = sum(pool.map(_count_requests, [path] * WORKERS))
    assert accepted == 60  # of 200, at 60 a minute
