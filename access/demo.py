"""Demo step ``80_access``: an analyst and a clinician query the lake through the policy-enforced gateway.

Creates two principals (once), runs granted and refused queries over the tables the chain's DAG runs wrote, and
reports what happened — row counts, masks and refusal reasons, never cell values. The activity detectors run
afterwards, in the demo's audit monitor DAG run.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any

from pipeline.errors import MedguardError
from pipeline.lake import Lake, Zone

if TYPE_CHECKING:
    from pipeline.settings import Settings

ANALYST = "demo-analyst"
CLINICIAN = "demo-clinician"


def _facility(lake: Lake) -> str | None:
    for zone in (Zone.RAW, Zone.DEIDENTIFIED):
        for table in ("patients", "encounters"):
            if lake.exists(zone, table):
                rows = lake.read_arrow(zone, table)
                if "facility_id" in rows.column_names and rows.num_rows:
                    return str(rows.column("facility_id")[0].as_py())
    return None


def _select(what: str, zone: str, table: str, tail: str = "") -> str:
    # Table names come from Lake.tables (lower_snake_case directories), and the gateway parses the SQL anyway.
    return f"SELECT {what} FROM {zone}.{table}{tail}"  # noqa: S608


def _ensure(store: Any, name: str, role: str, facility: str | None, purposes: tuple[str, ...]) -> None:
    from access.principals import Principal, Role

    if name not in {p.name for p in store.list()}:
        store.add(Principal(name, Role(role), facility=facility, purposes=purposes))


def step(settings: Settings) -> dict[str, Any]:
    """Run the access demo; skips with a note when no raw or de-identified table exists yet."""
    from access.gateway import QueryGateway
    from access.principals import PrincipalStore

    lake = Lake(settings)
    deidentified, raw = lake.tables(Zone.DEIDENTIFIED), lake.tables(Zone.RAW)
    if not deidentified and not raw:
        return {"skipped": "no raw or deidentified tables yet (ingestion/de-identification steps did not run)"}
    store = PrincipalStore.from_settings(settings)
    _ensure(store, ANALYST, "analyst", None, ("research",))
    _ensure(store, CLINICIAN, "clinician", _facility(lake), ("treatment",))
    gateway = QueryGateway.from_settings(settings)
    operator = getpass.getuser()
    plans: list[tuple[str, str]] = []
    if deidentified:
        first = "patients" if "patients" in deidentified else deidentified[0]
        plans += [(ANALYST, _select("count(*) AS n", "deidentified", first)),
                  (ANALYST, _select("*", "deidentified", first, " LIMIT 20"))]
    if raw:
        first = "patients" if "patients" in raw else raw[0]
        plans += [(ANALYST, _select("*", "raw", first)),
                  (CLINICIAN, _select("*", "raw", first, " LIMIT 20")),
                  (CLINICIAN, _select("count(*) AS n", "raw", first))]
    if "diagnoses" in lake.tables(Zone.PREDICTIONS):
        # The analyst's view of predictions: true aggregates, a refusal for an aggregate of a hidden column.
        plans += [(ANALYST, "SELECT model_version, round(avg(probability), 3), count(*) FILTER (WHERE flag) "
                            "FROM predictions.diagnoses GROUP BY model_version ORDER BY model_version"),
                  (ANALYST, "SELECT count(DISTINCT patient_pseudonym), avg(probability) FROM predictions.diagnoses"),
                  (ANALYST, "DESCRIBE predictions.diagnoses")]
    plans += [(ANALYST, "SELECT * FROM read_parquet('/etc/passwd')"),
              (ANALYST, "SELECT 1; DROP TABLE x")]
    results = []
    for name, sql in plans:
        session = store.local_session(name, operator=operator)
        try:
            result = gateway.query(session, sql)
            results.append({"principal": name, "sql": sql, "granted": True, "rows": result.table.num_rows,
                            "columns": result.table.column_names, "masks": result.masks(),
                            "notices": result.notices()})
        except MedguardError as exc:  # a refusal, or a table the step cannot read: reported, not fatal
            results.append({"principal": name, "sql": sql, "granted": False, "reason": str(exc)})
    return {"queries": results, "granted": sum(r["granted"] for r in results),
            "refused": sum(not r["granted"] for r in results),
            "tables_for_analyst": gateway.tables(store.local_session(ANALYST, operator=operator))}
