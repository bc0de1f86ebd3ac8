"""The pgwire endpoint with real clients (psycopg, pandas, psql) against a server on 127.0.0.1.

The server runs :func:`access.pgwire.run_pg_server` in a thread over the access tests' small lake (``world``): the
same gateway the tests of ``medguard query`` use, so a row seen here is compared with the gateway's own answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from access.gateway import MASKED_VALUE, QueryGateway
from access.pgwire import run_pg_server
from pipeline.settings import Settings
from storage_security.audit.log import AuditAction

pytestmark = pytest.mark.integration


@dataclass
class Pg:
    port: int
    tokens: dict[str, str]

    def connect(self, user: str, password: str | None = None, **kwargs) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="medguard",
                               password=self.tokens[user] if password is None else password,
                               sslmode="disable", connect_timeout=10, **kwargs)


@pytest.fixture(scope="module")
def pg(world, settings: Settings) -> Iterator[Pg]:
    tokens = {name: world.store.issue_token(name).secret for name in ("ann", "cleo", "dan")}
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_pg_server, args=(settings, "127.0.0.1", 0),
                              kwargs={"stop": stop, "ready": ready, "gateway": world.gateway, "store": world.store},
                              daemon=True)
    thread.start()
    assert ready.wait(10)
    yield Pg(ready.port, tokens)
    stop.set()
    thread.join(10)


def _gateway_rows(world, who: str, sql: str) -> list[tuple]:
    table = world.gateway.query(world.session(who), sql).table
    return [tuple(r.values()) for r in table.to_pylist()]


def test_when_an_analyst_queries_then_the_rows_are_the_gateways_masked_rows_with_notices(world, pg):
    sql = "SELECT patient_pseudonym, sex, ssn FROM deidentified.patients ORDER BY patient_pseudonym"
    notices: list[str] = []
    with pg.connect("ann") as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        got = conn.execute(sql).fetchall()
    assert got == _gateway_rows(world, "ann", sql)
    assert got and all(row[2] is None for row in got)  # ssn masked
    assert len(got) == sum(p["consent_research"] for p in world.patients)
    assert any("ssn" in n and "masked" in n for n in notices), notices
    assert any("row filter" in n for n in notices), notices


def test_when_a_clinician_queries_raw_then_their_facilitys_plaintext_comes_back(world, pg):
    sql = "SELECT ssn, first_name, facility_id FROM raw.patients ORDER BY ssn"
    with pg.connect("cleo") as conn:
        got = conn.execute(sql).fetchall()
    assert got == _gateway_rows(world, "cleo", sql)
    assert {r[2] for r in got} == {"F2"}
    assert all(r[0] and r[0].count("-") == 2 for r in got)


def test_when_cells_are_masked_then_they_arrive_as_null_and_a_notice_names_the_column(world, pg):
    sql = "SELECT zip, consent_research FROM raw.patients ORDER BY consent_research"
    notices: list[str] = []
    with pg.connect("dan") as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        got = conn.execute(sql).fetchall()
    expected = _gateway_rows(world, "dan", sql)
    assert {r[0] for r in expected} == {MASKED_VALUE}  # the gateway's form of a masked quasi-identifier
    assert got == [(None, r[1]) for r in expected]
    assert any("zip" in n and "masked" in n for n in notices), notices


def test_when_a_principal_passes_the_rate_limit_then_the_next_query_is_refused(world, settings):
    limited = QueryGateway(world.lake, world.provider, world.engine, audit=world.audit, queries_per_minute=2)
    token = world.store.issue_token("ann").secret
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_pg_server, args=(settings, "127.0.0.1", 0),
                              kwargs={"stop": stop, "ready": ready, "gateway": limited, "store": world.store},
                              daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        with psycopg.connect(host="127.0.0.1", port=ready.port, user="ann", password=token, dbname="medguard",
                             sslmode="disable", autocommit=True) as conn:
            for _ in range(2):
                conn.execute("SELECT sex FROM deidentified.patients").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="queries in a minute"):
                conn.execute("SELECT sex FROM deidentified.patients").fetchall()
    finally:
        stop.set()
        thread.join(10)


def test_when_an_analyst_asks_for_the_raw_zone_then_it_is_refused(pg):
    with pg.connect("ann") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT first_name FROM raw.patients").fetchall()


def test_when_copy_or_two_statements_are_sent_then_they_are_refused(pg):
    with pg.connect("ann", autocommit=True) as conn:
        with (pytest.raises(psycopg.errors.FeatureNotSupported, match="COPY"),
              conn.cursor().copy("COPY (SELECT sex FROM deidentified.patients) TO STDOUT") as copy):
            list(copy)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="one statement"):
            conn.execute(b"SELECT sex FROM deidentified.patients; SELECT 1", prepare=False)
        assert conn.execute("SELECT count(*) AS n FROM deidentified.patients").fetchone()[0] > 0


@pytest.mark.parametrize("sql", [
    "SELECT upper(ssn) FROM deidentified.patients WHERE sex = %s",
    "SELECT md5(ssn) FROM deidentified.patients WHERE sex = %s",
    "SELECT count(*) FROM deidentified.patients WHERE ssn LIKE %s",
])
def test_when_a_prepared_statement_puts_a_masked_column_in_a_function_then_nothing_of_it_comes_back(pg, sql):
    with pg.connect("ann") as conn:
        try:
            rows = conn.execute(sql, ("F",), prepare=True).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return
    # Granted only where the column is masked before the function sees it: no SSN digit comes back.
    assert all(v is None or not any(ch.isdigit() for ch in str(v)) for row in rows for v in row) or \
        rows == [(0,)]


def test_when_parameters_hold_quotes_then_they_stay_values(world, pg):
    sql = "SELECT sex, age_band FROM deidentified.patients WHERE sex = %s ORDER BY age_band"
    with pg.connect("ann") as conn:
        injected = conn.execute(sql, ("F' OR '1'='1",)).fetchall()
        same = conn.execute(sql, ("F",)).fetchall()
    assert injected == []
    assert same == _gateway_rows(world, "ann", sql.replace("%s", "'F'"))
    assert same and {r[0] for r in same} == {"F"}


def test_when_the_catalog_is_asked_then_only_granted_tables_and_visible_columns_show(world, pg):
    with pg.connect("ann") as conn:
        tables = conn.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                              "WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'main')").fetchall()
        columns = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                               "'deidentified' AND table_name = 'patients'").fetchall()
        hidden = conn.execute("SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c "
                              "ON a.attrelid = c.oid WHERE a.attname = 'ssn'").fetchall()
        version = conn.execute("SELECT version()").fetchone()[0]
    assert sorted(t for (t,) in tables) == sorted(world.gateway.tables(world.session("ann")))
    assert "raw.patients" not in {t for (t,) in tables}
    assert {c for (c,) in columns} == {c["name"] for c in world.gateway.describe(world.session("ann"),
                                                                                 "deidentified.patients")}
    assert "ssn" not in {c for (c,) in columns}
    assert hidden == []
    assert version


def test_when_the_password_is_wrong_then_the_login_is_refused_and_audited(world, pg):
    before = len(world.audit.events())
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect("ann", password="mgt_0000000000000000_" + "A" * 43)
    with pytest.raises(psycopg.OperationalError, match="not this user"):
        pg.connect("ann", password=pg.tokens["cleo"])
    with pg.connect("ann") as conn:
        conn.execute("SELECT 1").fetchall()
    logins = [r.event for r in world.audit.events()[before:] if r.event.action == AuditAction.REQUEST]
    assert [(e.decision, e.details["front"]) for e in logins] == [("deny", "pgwire"), ("deny", "pgwire"),
                                                                  ("allow", "pgwire")]
    assert logins[-1].principal == "user:ann" or logins[-1].principal.endswith("ann")
    assert not any(pg.tokens["cleo"] in str(e.to_dict()) or pg.tokens["ann"] in str(e.to_dict()) for e in logins)


def test_when_pandas_reads_sql_then_it_gets_the_gateways_rows(world, pg):
    pandas = pytest.importorskip("pandas")
    sql = "SELECT icd10_code, count(*) AS n FROM deidentified.conditions GROUP BY 1 ORDER BY 1"
    with pg.connect("ann") as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas prefers SQLAlchemy, and says so
        frame = pandas.read_sql(sql, conn)
    assert [tuple(r) for r in frame.itertuples(index=False)] == _gateway_rows(world, "ann", sql)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_when_psql_lists_describes_and_selects_then_it_sees_the_granted_view(world, pg):
    env = {**os.environ, "PGPASSWORD": pg.tokens["ann"], "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    base = ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "ann", "-d", "medguard", "-X", "-A", "-t"]
    listing = subprocess.run([*base, "-c", r"\dt deidentified.*"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "patients" in listing.stdout and "conditions" in listing.stdout
    table = subprocess.run([*base, "-c", r"\d deidentified.patients"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert table.returncode == 0, table.stderr
    assert "sex" in table.stdout and "age_band" in table.stdout
    assert "ssn" not in table.stdout  # hidden from ann: not in her catalogue either
    select = subprocess.run([*base, "-c", "SELECT count(*) AS n FROM deidentified.patients"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert select.returncode == 0, select.stderr
    n = _gateway_rows(world, "ann", "SELECT count(*) AS n FROM deidentified.patients")[0][0]
    assert select.stdout.strip() == str(n)
    assert "NOTICE" in select.stderr  # the consent filter is announced
