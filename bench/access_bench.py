"""Policy-enforced query time against the same query on the unmasked Arrow table, and policy decisions per second.

The baseline is what an analyst with no gateway would do: read the query's columns of the Delta table with
``Lake.read_arrow`` and run the query in DuckDB over the Arrow table. The gateway run is everything: parse and
allow-list, qualify and prove lineage, decide, read only the used columns, filter rows (consent), mask (a
direct identifier nulled), check the masks, run in a locked-down DuckDB, and write the audit events. Both are
timed in interleaved pairs so drift hits both alike; the ratio compares the median of each side.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from access.gateway import QueryGateway
from access.policy import PolicyEngine, load_policy
from access.principals import Principal, PrincipalStore, Role
from pipeline.lake import CommitInfo, Lake
from pipeline.settings import load_settings
from storage_security.audit.log import AuditLog
from storage_security.keys.keyring import LocalKeyring

QUERY = ("SELECT age_band, sex, count(*) AS n, count(DISTINCT zip3) AS zips, avg(value) AS mean "
         "FROM deidentified.observations WHERE value > 10 GROUP BY age_band, sex ORDER BY age_band, sex")
BASELINE = QUERY.replace("deidentified.observations", "observations")


def _table(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    patients = rng.integers(0, max(rows // 20, 1), rows)
    return pa.table({
        "patient_pseudonym": pa.array([f"ps1_bench_{p:08x}" for p in patients]),
        "age_band": pa.array(np.array(["20-24", "40-44", "60-64", "90+"])[patients % 4]),
        "sex": pa.array(np.where(patients % 2 == 0, "F", "M")),
        "zip3": pa.array([f"{100 + p % 400:03d}" for p in patients]),
        "facility_id": pa.array([f"F{p % 5}" for p in patients]),
        "consent_research": pa.array(patients % 10 != 0),
        "value": pa.array(rng.normal(50, 20, rows)),
        # A direct identifier left in, so the mask has work to do.
        "ssn": pa.array([f"{p % 900 + 100:03d}-45-{p % 10000:04d}" for p in patients]),
    })


def access_figures(rows: int, repeats: int = 7) -> Iterator[tuple[str, float, str, str]]:
    """Yield ``(name, value, unit, details)`` figures."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="medguard-access-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(home=root / "home", key_provider="keyring")
        lake = Lake(settings.model_copy(update={"lake_root": str(root / "lake")}))
        provider = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
        provider.ensure_key("medguard-kek")
        provider.ensure_key("medguard-audit")
        lake.append("deidentified", "observations", _table(rows), commit=CommitInfo(principal="bench"))
        audit = AuditLog(lake, provider)
        engine = PolicyEngine(load_policy(), audit=audit)
        gateway = QueryGateway(lake, provider, engine, audit=audit)
        store = PrincipalStore(root / "principals.json")
        analyst = store.add(Principal("ann", Role.ANALYST, purposes=("research",)))
        session = store.local_session("ann", operator="bench")

        con = duckdb.connect(":memory:")  # one connection, as the gateway keeps one

        def baseline() -> pa.Table:
            # Only the columns the query uses, as the gateway reads: the tight baseline.
            con.register("observations", lake.read_arrow("deidentified", "observations",
                                                         columns=["age_band", "sex", "zip3", "value"]))
            try:
                return con.sql(BASELINE).to_arrow_table()
            finally:
                con.unregister("observations")

        gateway.query(session, QUERY)  # warm caches on both sides (pseudonym keys, manifests, page cache)
        baseline()
        plain, enforced = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            baseline()
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            gateway.query(session, QUERY)
            enforced.append(time.perf_counter() - start)
        ratio = statistics.median(enforced) / statistics.median(plain)
        yield ("access.query_overhead", ratio, "x",
               f"policy-enforced vs unmasked Arrow, {rows:,} rows, median of {repeats} pairs: "
               f"{statistics.median(enforced) * 1e3:.0f} ms vs {statistics.median(plain) * 1e3:.0f} ms; target <= 1.3")
        yield ("access.query_seconds", statistics.median(enforced), "s", f"gateway, {rows:,} rows, incl. audit")

        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            engine.evaluate(analyst, "read", "deidentified.observations", ["age_band", "sex", "ssn", "value"])
            count += 1
        yield ("access.decisions_per_s", count / (time.perf_counter() - start), "decisions/s",
               "PolicyEngine.evaluate, 4 columns, in memory")
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2.0:
            engine.decide(analyst, "read", "deidentified.observations", ["age_band", "sex", "ssn", "value"])
            count += 1
        yield ("access.audited_decisions_per_s", count / (time.perf_counter() - start), "decisions/s",
               "PolicyEngine.decide: each decision also appended to the hash-chained audit log (one Delta commit)")
