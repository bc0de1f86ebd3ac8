"""Bounded queries: a result over the byte budget (one huge string, or many small ones) or the row budget is
refused while it is read, and a principal's queries beyond the rate limit are refused; every refusal is audited."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from access._limits import RateLimiter, collect
from access.gateway import QueryGateway
from pipeline.errors import AccessDeniedError


def _gateway(world, **limits) -> QueryGateway:
    return QueryGateway(world.lake, world.provider, world.engine, audit=world.audit, **limits)


def test_when_a_result_passes_the_byte_budget_then_it_is_refused_by_its_size_and_audited(world):
    gateway = _gateway(world, max_result_bytes=1 * 2**20)
    # 10,000-character values, one per pair of patients: megabytes from a short query.
    with pytest.raises(AccessDeniedError, match="larger than 1,048,576 bytes"):
        gateway.query(world.session("ann"), "SELECT lpad(p.sex, 10000, 'x') AS big FROM deidentified.patients p, "
                                            "deidentified.patients q")
    last = world.audit.events()[-1].event
    assert last.decision == "deny" and "larger than" in last.reason


def test_when_many_small_values_add_up_past_the_byte_budget_then_the_result_is_refused(world):
    gateway = _gateway(world, max_result_bytes=64 * 1024)
    with pytest.raises(AccessDeniedError, match="larger than 65,536 bytes"):
        gateway.query(world.session("ann"), "SELECT lpad(p.sex, 500, 'x') AS s FROM deidentified.patients p, "
                                            "deidentified.patients q")


def test_when_a_result_is_within_the_limits_then_it_comes_back_whole(world):
    gateway = _gateway(world, max_result_bytes=1 * 2**20, max_result_rows=10_000)
    result = gateway.query(world.session("ann"), "SELECT count(*) AS n FROM deidentified.patients")
    assert result.table.num_rows == 1


def test_when_a_result_has_more_rows_than_allowed_then_it_is_refused(world):
    gateway = _gateway(world, max_result_rows=5)
    with pytest.raises(AccessDeniedError, match="more than 5 rows"):
        gateway.query(world.session("ann"), "SELECT p.sex FROM deidentified.patients p, deidentified.patients q")


def test_when_a_principal_passes_the_query_rate_then_further_queries_are_refused_but_others_run(world):
    gateway = _gateway(world, queries_per_minute=3)
    sql = "SELECT count(*) AS n FROM deidentified.patients"
    for _ in range(3):
        gateway.query(world.session("ann"), sql)
    with pytest.raises(AccessDeniedError, match="more than 3 queries in a minute"):
        gateway.query(world.session("ann"), sql)
    assert world.audit.events()[-1].event.decision == "deny"
    assert gateway.query(world.session("dan"), "SELECT count(*) AS n FROM raw.conditions").table.num_rows == 1


def test_when_the_window_passes_then_the_rate_limit_allows_again():
    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    assert limiter.allow("user:a") and limiter.allow("user:a") and not limiter.allow("user:a")
    assert limiter.allow("user:b")
    now[0] = 61.0
    assert limiter.allow("user:a")


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (5, 0.0)])
def test_when_a_rate_limit_is_not_positive_then_it_is_rejected(limit, window):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(limit, window)


def test_when_batches_are_collected_then_reading_stops_at_the_first_batch_over_the_budget():
    pulled = []

    def batches():
        for i in range(100):
            pulled.append(i)
            yield pa.record_batch({"s": pa.array(["x" * 1000] * 10)})

    schema = pa.schema([("s", pa.string())])
    with pytest.raises(AccessDeniedError, match="larger than"):
        collect(batches(), schema, max_rows=10**6, max_bytes=50_000)
    assert len(pulled) < 10


@pytest.mark.parametrize("sql", [
    "SELECT lpad('x', 2000000000, 'x') AS big FROM deidentified.patients",  # the 2 GB value of the attack
    "SELECT rpad(sex, 10001, 'x') AS big FROM deidentified.patients",
    "SELECT lpad('x', length(sex) * 1000000000, 'x') AS big FROM deidentified.patients",
    "WITH a AS (SELECT sex || sex || sex || sex || sex AS s FROM deidentified.patients), "
    "b AS (SELECT s || s || s || s AS s FROM a), c AS (SELECT s || s || s || s AS s FROM b), "
    "d AS (SELECT s || s || s || s AS s FROM c), e AS (SELECT concat(s, s, s, s, s) AS s FROM d) SELECT s FROM e",
])
def test_when_a_query_could_build_huge_values_then_it_is_refused_before_it_runs(world, sql):
    gateway = _gateway(world)
    started = time.perf_counter()
    with pytest.raises(AccessDeniedError, match=r"lpad/rpad take a literal length|concatenates strings"):
        gateway.query(world.session("ann"), sql)
    assert time.perf_counter() - started < 5


def test_when_a_query_pads_and_concatenates_modestly_then_it_runs(world):
    result = _gateway(world).query(world.session("ann"), "SELECT lpad(sex, 5, '_') || '/' || age_band AS s "
                                                         "FROM deidentified.patients LIMIT 3")
    assert result.table.num_rows == 3


def test_when_separate_gateways_share_a_home_then_they_share_the_rate_window(world, tmp_path):
    # Each `medguard query` is a process with its own gateway: the window lives in the home, not in memory.
    rate_file = tmp_path / "access" / "query_rate.json"
    sql = "SELECT count(*) AS n FROM deidentified.patients"
    for _ in range(2):
        _gateway(world, queries_per_minute=2, rate_file=rate_file).query(world.session("ann"), sql)
    with pytest.raises(AccessDeniedError, match="more than 2 queries in a minute"):
        _gateway(world, queries_per_minute=2, rate_file=rate_file).query(world.session("ann"), sql)
    assert oct(rate_file.stat().st_mode & 0o777) == "0o600"


def test_when_the_shared_window_passes_then_queries_are_allowed_again(tmp_path):
    now = [1_000.0]
    path = tmp_path / "rate.json"
    first, second = (RateLimiter(1, 60.0, clock=lambda: now[0], path=path) for _ in range(2))
    assert first.allow("user:a") and not second.allow("user:a")
    now[0] += 61
    assert second.allow("user:a")
