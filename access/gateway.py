"""The policy-enforced query gateway: analysts' SQL over logical tables, run on masked, filtered views in DuckDB.

How a query runs (:meth:`QueryGateway.query`):

1. The SQL is parsed and allow-listed (:mod:`access._sql`): one SELECT, allow-listed functions, tables named
   ``zone.table`` or CTEs. Anything else is refused.
2. Each logical table is bound to a view; the query is qualified against the views' columns and every column
   reference is proven to come from a view (or a derived table of the query); otherwise it is refused.
3. For each table the policy decides ``read`` on exactly the columns the query uses (and ``decrypt`` on the
   sealed ones among them whose mask is plaintext). A denial refuses the whole query.
4. The gateway reads only those columns, applies the row filters (facility, consent) and then the masks, in
   Arrow, *before* DuckDB sees any value: a predicate, function, join or aggregate over a masked column only
   ever sees masked values. Each masked column is then checked to hold nothing but its mask's form (all null,
   ``****``, pseudonyms); if not, the query is refused (fail closed). Sealed columns are decrypted only for the
   rows that passed the row filters, through :class:`~storage_security.protected.ProtectedLake`, which audits
   each decrypt.
5. The SQL generated from the checked tree runs in a fresh in-memory DuckDB with external access disabled,
   extension autoloading off, Python replacement scans off and the configuration locked.

Every decision (allow or deny, with the reason) and every refusal is an audit event.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc

from access import _limits, _sql
from access.policy import Action, Mask, PolicyDecision, PolicyEngine, policy_from_settings
from access.principals import Session
from pipeline.errors import AccessDeniedError, CryptoError, MedguardError, StorageError
from pipeline.lake import Lake, Zone
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.keys.base import KeyProvider
    from storage_security.protected import ProtectedLake, Protection

__all__ = ["MASKED_VALUE", "QueryGateway", "QueryResult"]

MASKED_VALUE = "****"
_PSEUDONYM = re.compile(r"ps1_[A-Za-z0-9]+_[0-9a-f]+")
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_PATIENT_LINK = "patient_pseudonym"
_CELL_PATIENT = "__medguard_patient"  # the hidden column small-cell suppression counts; no query can name it


class _EngineError(Exception):
    """DuckDB failed on a checked query (a type error, a division by zero...)."""


@dataclass(frozen=True)
class QueryResult:
    """The rows of a granted query, and what the policy did to produce them."""

    table: pa.Table
    decisions: tuple[PolicyDecision, ...]
    sql: str
    seconds: float

    def to_pandas(self) -> Any:
        return self.table.to_pandas()

    def to_csv(self) -> str:
        import io

        import pyarrow.csv as pcsv

        out = io.BytesIO()
        pcsv.write_csv(self.table, out)
        return out.getvalue().decode()

    def masks(self) -> dict[str, dict[str, str]]:
        """Logical table -> column -> mask, for the columns that are not plaintext."""
        return {d.logical_name: {c: m.value for c, m in d.masks.items() if m is not Mask.PLAINTEXT}
                for d in self.decisions}


@dataclass
class _View:
    logical: str
    zone: Zone
    table: str
    name: str
    columns: list[str]
    protection: Protection | None = None
    decision: PolicyDecision | None = None
    decrypt: PolicyDecision | None = None
    data: pa.Table | None = None
    facilities: list[str] | None = None
    extra_events: list[AuditEvent] = field(default_factory=list)


class QueryGateway:
    """Runs analysts' SQL under the policy, as the principal of a verified session.

    Args:
        lake: the lake holding the tables.
        provider: the key provider (for decrypt grants and pseudonym masks).
        engine: the policy engine.
        audit: the audit log (one over ``lake`` and ``provider`` when omitted).
        max_query_chars: longer queries are refused before parsing.
        max_result_rows: queries returning more rows are refused.
        max_result_bytes: queries returning more bytes (Arrow buffers) are refused, as soon as they pass it.
        queries_per_minute: a principal's queries beyond this many in any minute are refused; None: no limit
            (``from_settings``, what every front uses, sets ``access.queries_per_minute``).
        rate_file: where the rate windows are kept, so separate processes of one home share them (None: memory).
        timeout_seconds: a query still running after this long is interrupted and refused.
        memory_limit: DuckDB's memory limit for one query (e.g. ``"2GB"``).
        column_classes: optional ``(zone, table) -> {column: class}`` (e.g. the de-identification report).
        kek_name: the data KEK (for pseudonym keys created on first use).
        small_cell_k: over de-identified data, every aggregated group (GROUP BY, or one over the whole input) of
            fewer than this many patients is left out of the result (``from_settings``: ``deidentify.k_anonymity``).
            Row-level results are the release itself, k-anonymous by the risk gate, and pass as they are.
    """

    def __init__(self, lake: Lake, provider: KeyProvider, engine: PolicyEngine, *, audit: AuditLog | None = None,
                 max_query_chars: int = 20_000, max_result_rows: int = 1_000_000,
                 column_classes: Callable[[Zone, str], Mapping[str, str] | None] | None = None,
                 kek_name: str = "medguard-kek", timeout_seconds: float = 60.0,
                 memory_limit: str = "2GB", max_result_bytes: int = 256 * 2**20,
                 queries_per_minute: int | None = None, rate_file: Path | None = None,
                 small_cell_k: int = 5) -> None:
        # The gateway records each read itself (rows after filters and masks); a lake's access hook would repeat it.
        self.lake = lake.with_access_hook(None)
        self.kek_name = kek_name
        self._timeout = timeout_seconds
        self._memory_limit = memory_limit
        self.provider = provider
        self.engine = engine
        self.audit = audit or engine.audit or AuditLog(lake, provider)
        self._max_chars = max_query_chars
        self._max_rows = max_result_rows
        self._max_bytes = max_result_bytes
        self._rate = _limits.RateLimiter(queries_per_minute, 60.0, path=rate_file) if queries_per_minute else None
        self._column_classes = column_classes
        self._small_cell_k = small_cell_k
        self._protections: dict[str, Protection | None] = {}
        self._service: ProtectedLake | None = None
        self._con: Any = None
        self._con_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, provider: KeyProvider | None = None) -> QueryGateway:
        """A gateway over the lake, key provider and policy of ``settings``."""
        from storage_security.keys.providers import provider_from_settings

        lake = Lake(settings)
        provider = provider or provider_from_settings(settings)
        audit = AuditLog(lake, provider)
        engine = PolicyEngine(policy_from_settings(settings), audit=audit,
                              min_reason_chars=settings.access.break_glass_min_reason_chars)
        return cls(lake, provider, engine, audit=audit, max_query_chars=settings.access.max_query_chars,
                   max_result_rows=settings.access.max_result_rows, column_classes=_published_classes(lake),
                   kek_name=settings.vault.kek_name, timeout_seconds=settings.access.query_timeout_seconds,
                   memory_limit=settings.access.query_memory_limit,
                   max_result_bytes=settings.access.max_result_bytes, small_cell_k=settings.deidentify.k_anonymity,
                   queries_per_minute=settings.access.queries_per_minute,
                   rate_file=Path(settings.home) / "access" / "query_rate.json")

    def __repr__(self) -> str:
        return f"QueryGateway(lake={self.lake.root!r}, policy_version={self.engine.policy.version})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("QueryGateway holds a key provider and cannot be pickled")

    # catalogue ---------------------------------------------------------------------------------------

    def all_tables(self) -> list[str]:
        """Every table of the lake as ``zone.table``."""
        return [f"{zone.value}.{t}" for zone in Zone for t in self.lake.tables(zone)]

    def tables(self, session: Session, *, purpose: str | None = None) -> list[str]:
        """The logical tables the session's principal may query (``medguard access tables``); audited."""
        names = self.engine.readable_tables(session.principal, self.all_tables(), purpose=purpose)
        self.audit.record(AuditEvent(
            principal=session.principal.qualified, action=AuditAction.POLICY_DECISION, decision=Decision.ALLOW,
            purpose=purpose or "unspecified", reason="list of readable tables",
            details={"requested_action": "list_tables", "tables": names, **session.audit_details()}))
        return names

    # queries -----------------------------------------------------------------------------------------

    def query(self, session: Session, sql: str, *, purpose: str | None = None,
              break_glass_reason: str | None = None) -> QueryResult:
        """Run one analyst query under the policy.

        Raises:
            AccessDeniedError: the query is refused (the reason says why); the refusal is audited.
        """
        started = time.perf_counter()
        principal = session.principal
        purpose = purpose or (principal.purposes[0] if principal.purposes else "unspecified")
        base = {"sql_sha256": hashlib.sha256(str(sql).encode()).hexdigest(), **session.audit_details()}
        if break_glass_reason is not None:
            # The justification is a clinician's own words and reaches the plaintext audit zone: the PHI detector
            # takes out any name, MRN or SSN before the decision is made and recorded.
            from storage_security.audit.redact import redact_free_text

            break_glass_reason = redact_free_text(break_glass_reason)
        if session.expires_at <= datetime.now(UTC):
            self._refuse(session, purpose, base, "session expired")
        if self._rate is not None and not self._rate.allow(principal.qualified):
            self._refuse(session, purpose, base, f"more than {self._rate.limit} queries in a minute (setting "
                         "access.queries_per_minute); try again shortly")
        try:
            checked = _sql.check(sql, max_chars=self._max_chars)
            views = self._views(checked.tables)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc))
        try:
            tree = _sql.bind(checked, {v.logical: v.name for v in views},
                             {v.name: v.columns for v in views})
            used = _sql.referenced_columns(tree, {v.name for v in views})
            if any(v.zone is Zone.DEIDENTIFIED for v in views):
                # Small cells: a group of fewer than k patients computed from de-identified data is not returned.
                tree = _sql.suppress_small_cells(tree, {v.name: _CELL_PATIENT for v in views if _counts_patients(v)},
                                                 self._small_cell_k)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc), views)
        events: list[AuditEvent] = []
        for view in views:
            self._decide(view, session, sorted(used[view.name]), purpose, break_glass_reason)
            events.append(view.decision.audit_event(details=base, break_glass_reason=break_glass_reason))
            if view.decrypt is not None:
                events.append(view.decrypt.audit_event(details=base))
        refused = next((v for v in views if not v.decision.allowed), None)
        if refused is not None:
            self.audit.record_many(events)
            raise AccessDeniedError(f"query refused: {refused.decision.reason}")
        sql_to_run = _sql.render(tree)
        try:
            for view in views:
                self._load(view, session, purpose)
            result = self._run(sql_to_run, views)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc), views, events)
        except (StorageError, CryptoError) as exc:
            # Not a policy refusal, but the attempt and the granted decisions must still be on record.
            try:
                self._refuse(session, purpose, base, f"read failed: {type(exc).__name__}", views, events)
            except AccessDeniedError:
                raise exc from None
        except _EngineError as exc:
            # The engine's message may quote values the principal may see: it goes to the caller, not the log.
            try:
                self._refuse(session, purpose, base, "query failed in the SQL engine", views, events)
            except AccessDeniedError:
                raise AccessDeniedError(f"query failed: {exc}") from exc
        for view in views:
            details = {**base, "via": "gateway", "result_rows": result.num_rows}
            if view.facilities is not None:
                details["facility_ids"] = view.facilities
            events.extend(view.extra_events)
            events.append(AuditEvent(principal=principal.qualified, action=AuditAction.READ, zone=view.zone,
                                     table_name=view.table, columns=tuple(view.data.column_names),
                                     row_count=view.data.num_rows, decision=Decision.ALLOW, purpose=purpose,
                                     details=details))
        seqs = self.audit.record_many(events)
        glass = [(seq, e) for seq, e in zip(seqs, events, strict=True) if e.action == AuditAction.BREAK_GLASS]
        if glass:
            self._alert_break_glass(glass)
        return QueryResult(result, tuple(v.decision for v in views), sql_to_run, time.perf_counter() - started)

    def _alert_break_glass(self, glass: Sequence[tuple[int, AuditEvent]]) -> None:
        # Break glass must alert now, not at the next hourly monitor run.
        from storage_security.audit.monitoring import ActivityMonitor, break_glass_alert

        now = datetime.now(UTC)
        ActivityMonitor(self.lake, self.audit).store([break_glass_alert(seq, event, now) for seq, event in glass])

    def _refuse(self, session: Session, purpose: str, base: Mapping[str, Any], reason: str,
                views: Sequence[_View] = (), events: Sequence[AuditEvent] = ()) -> NoReturn:
        first = views[0] if len(views) == 1 else None
        event = AuditEvent(principal=session.principal.qualified, action=AuditAction.POLICY_DECISION,
                           zone=first.zone if first else None, table_name=first.table if first else None,
                           decision=Decision.DENY, purpose=purpose, reason=reason[:500],
                           details={**base, "requested_action": "query",
                                    "tables": [v.logical for v in views]})
        self.audit.record_many([*events, event])
        raise AccessDeniedError(reason if reason.startswith("query refused") else f"query refused: {reason}")

    def _views(self, logical_tables: Sequence[str]) -> list[_View]:
        views = []
        for index, logical in enumerate(logical_tables):
            zone_name, _, table = logical.partition(".")
            try:
                zone = Zone(zone_name)
                exists = self.lake.exists(zone, table)
            except ValueError:
                exists = False
            if not exists:
                raise _sql.refuse(f"no table {logical} (tables are zone.table; see `medguard access tables`)")
            columns = self._schema(zone, table).names
            views.append(_View(logical, zone, table, f"mgv_{index}_{zone.value}_{table}", list(columns),
                               protection=self._protection(zone, table)))
        return views

    def _schema(self, zone: Zone, table: str) -> pa.Schema:
        return self.lake.schema(zone, table)

    def _protection(self, zone: Zone, table: str) -> Protection | None:
        key = f"{zone.value}.{table}"
        if key not in self._protections:
            self._protections[key] = self._service_lake().protection(zone, table)
        return self._protections[key]

    def _service_lake(self) -> ProtectedLake:
        # One per gateway: it caches the pseudonym keys that masks use.
        if self._service is None:
            self._service = self._plake("svc:access-gateway")
        return self._service

    def _plake(self, principal: str) -> ProtectedLake:
        from storage_security.protected import ProtectedLake

        return ProtectedLake(self.lake, self.provider, principal=principal, audit=self.audit,
                             kek_name=self.kek_name)

    def _decide(self, view: _View, session: Session, columns: list[str], purpose: str,
                break_glass_reason: str | None) -> None:
        classes = self._column_classes(view.zone, view.table) if self._column_classes else None
        view.decision = self.engine.evaluate(session.principal, Action.READ, view.logical, columns,
                                             purpose=purpose, break_glass_reason=break_glass_reason,
                                             column_classes=classes)
        sealed = set(view.protection.encrypted) if view.protection else set()
        wanted = [c for c, m in view.decision.masks.items() if c in sealed and m is Mask.PLAINTEXT]
        if view.decision.allowed and wanted:
            view.decrypt = self.engine.evaluate(session.principal, Action.DECRYPT, view.logical, wanted,
                                                purpose=purpose, break_glass_reason=break_glass_reason,
                                                column_classes=classes)

    def _load(self, view: _View, session: Session, purpose: str) -> None:
        """Read the view's columns, filter rows, then mask: the only data DuckDB will ever see."""
        decision = view.decision
        masks = dict(decision.masks)
        sealed = set(view.protection.encrypted) if view.protection else set()
        decrypt = [c for c in masks if c in sealed and masks[c] is Mask.PLAINTEXT
                   and view.decrypt is not None and view.decrypt.allowed]
        for column in masks:
            # A sealed column is either decrypted under a decrypt grant or hidden: never shown as ciphertext,
            # and never decrypted merely to be masked.
            if column in sealed and column not in decrypt:
                masks[column] = Mask.NULL
        # Which facilities' rows were read feeds the many-facilities detector; it matters for identifiable zones
        # (de-identified research spans facilities by design), so only those pay for it.
        has_facility = "facility_id" in view.columns and view.zone is not Zone.DEIDENTIFIED
        read_columns = list(dict.fromkeys([*masks, *(["facility_id"] if has_facility else [])]))
        predicate, keep = self._filters(view, session, decrypt)
        for name in ("consent_research", _PATIENT_LINK):
            if keep is not None and name in keep[1] and name in view.columns:
                read_columns.append(name)
        if _counts_patients(view):
            read_columns.append(_PATIENT_LINK)
        read_columns = list(dict.fromkeys(read_columns))
        if predicate == "false":
            arrow = self._schema(view.zone, view.table).empty_table().select(read_columns)
        elif decrypt:
            plake = self._plake(session.principal.qualified)
            arrow = plake.read(view.zone, view.table, decrypt=decrypt, columns=read_columns, where=predicate,
                               purpose=purpose)
        else:
            arrow = self.lake.read_arrow(view.zone, view.table, columns=read_columns, where=predicate)
        if keep is not None:
            arrow = arrow.filter(keep[0](arrow))
        if has_facility:
            # Facility ids are not PHI; the many-facilities detector needs which ones, not just how many.
            view.facilities = sorted(str(f) for f in pc.unique(arrow.column("facility_id")).to_pylist()
                                     if f is not None)[:50]
        view.data = self._mask(view, arrow.select(list(masks)), masks)
        if _counts_patients(view):
            view.data = view.data.append_column(_CELL_PATIENT, arrow.column(_PATIENT_LINK))

    def _filters(self, view: _View, session: Session,
                 decrypt: list[str]) -> tuple[str | None, Any]:
        """A pushdown predicate and/or an Arrow filter implementing the decision's row filters."""
        predicates: list[str] = []
        arrow_filters: list[Callable[[pa.Table], pa.Array]] = []
        needed: set[str] = set()
        principal = session.principal
        sealed = set(view.protection.encrypted) if view.protection else set()
        for column in ("facility_id", "consent_research"):
            if column in sealed:
                raise _fail_closed(f"{view.logical}.{column} is encrypted and cannot drive a row filter")
        for name in view.decision.row_filters:
            if name == "facility":
                facility = principal.facility or ""
                if not _SAFE_LITERAL.fullmatch(facility):
                    raise _fail_closed(f"facility {facility!r} cannot be used as a row filter")
                if "facility_id" in view.columns:
                    predicates.append(f"facility_id = '{facility}'")
                    continue
                allowed = self._linked_patients(view, "facility_id", facility)
            else:
                if "consent_research" in view.columns:
                    predicates.append("consent_research = true")  # pushed down into the scan; null is no consent
                    continue
                allowed = self._linked_patients(view, "consent_research", True)
            needed.add(_PATIENT_LINK)
            if decrypt:
                # Decrypt only the permitted patients' rows: push the patient list down to the read.
                bad = [p for p in allowed if not _SAFE_LITERAL.fullmatch(p)]
                if bad:
                    raise _fail_closed("a patient pseudonym is malformed")
                if not allowed:
                    return "false", None
                predicates.append(f"{_PATIENT_LINK} IN ({', '.join(repr(p) for p in sorted(allowed))})")
            else:
                values = pa.array(sorted(allowed), pa.string())
                arrow_filters.append(lambda t, v=values: pc.fill_null(pc.is_in(t.column(_PATIENT_LINK), v), False))
        predicate = " AND ".join(predicates) or None
        if not arrow_filters:
            return predicate, None

        def combined(table: pa.Table) -> pa.Array:
            mask = arrow_filters[0](table)
            for extra in arrow_filters[1:]:
                mask = pc.and_(mask, extra(table))
            return mask

        return predicate, (combined, needed)

    def _linked_patients(self, view: _View, column: str, value: Any) -> set[str]:
        """Patients (pseudonyms) whose ``patients`` row has ``column = value``: the zone's own table first."""
        if _PATIENT_LINK not in view.columns:
            raise _fail_closed(f"the row filter on {column} cannot be applied to {view.logical}: it has "
                                   f"neither {column} nor {_PATIENT_LINK}")
        for zone in dict.fromkeys([view.zone, Zone.RAW]):
            if self.lake.exists(zone, "patients"):
                names = self._schema(zone, "patients").names
                if column in names and _PATIENT_LINK in names:
                    rows = self.lake.read_arrow(zone, "patients", columns=[_PATIENT_LINK, column])
                    if pa.types.is_binary(rows.column(column).type):
                        raise _fail_closed(f"{zone.value}.patients.{column} is encrypted and cannot drive a "
                                               "row filter")
                    hit = pc.fill_null(pc.equal(rows.column(column), pa.scalar(value)), False)
                    return {p for p in rows.column(_PATIENT_LINK).filter(hit).to_pylist() if p is not None}
        raise _fail_closed(f"the row filter on {column} cannot be applied to {view.logical}: no patients "
                               f"table with {column} and {_PATIENT_LINK}")

    def _mask(self, view: _View, arrow: pa.Table, masks: Mapping[str, Mask]) -> pa.Table:
        columns, fields = [], []
        for name in arrow.column_names:
            values = arrow.column(name)
            mask = masks[name]
            if mask is Mask.NULL:
                kind = pa.string() if pa.types.is_binary(values.type) else values.type
                values = pa.nulls(len(values), kind)
            elif mask is Mask.MASKED:
                values = pc.if_else(pc.is_valid(values), pa.scalar(MASKED_VALUE), pa.scalar(None, pa.string()))
            elif mask is Mask.PSEUDONYM:
                pseudonymizer = self._service_lake().pseudonymizer("patient" if name == "patient_id" else "access")
                values = pseudonymizer.pseudonymize(values.combine_chunks() if len(values) else
                                                    pa.array([], values.type))
            columns.append(values)
            fields.append(pa.field(name, values.type))
        masked = pa.Table.from_arrays(columns, schema=pa.schema(fields)) if columns else arrow
        _prove_masked(view, masked, masks)
        return masked

    def _connection(self) -> Any:
        """The gateway's DuckDB: in memory, no file or network access, no extensions, configuration locked.

        One connection serves every query of this gateway (opening one costs tens of milliseconds); queries
        take turns under a lock, and each query's views are unregistered when it ends, so nothing of one
        query is visible to the next. Only SELECTs ever reach it, so no query can leave state behind.
        """
        import duckdb

        if self._con is None:
            con = duckdb.connect(":memory:", config={
                "enable_external_access": False, "autoload_known_extensions": False,
                "autoinstall_known_extensions": False, "python_enable_replacements": False,
                "python_scan_all_frames": False, "memory_limit": self._memory_limit})
            con.execute("SET lock_configuration = true")
            self._con = con
        return self._con

    def _run(self, sql: str, views: Sequence[_View]) -> pa.Table:
        import duckdb

        with self._con_lock:
            con = self._connection()
            timer = threading.Timer(self._timeout, con.interrupt)
            try:
                for view in views:
                    data = view.data
                    if data.num_columns == 0:
                        # DuckDB cannot register a table without columns: count(*) still needs the row count.
                        data = pa.table({"_row": pa.nulls(view.data.num_rows, pa.bool_())})
                    con.register(view.name, data)
                timer.start()
                reader = con.sql(sql).to_arrow_reader(_limits.BATCH_ROWS)
                try:
                    return _limits.collect(reader, reader.schema, max_rows=self._max_rows,
                                           max_bytes=self._max_bytes)
                finally:
                    reader.close()  # a result refused half-read must not hold the connection
            except duckdb.InterruptException as exc:
                raise AccessDeniedError(f"query refused: it ran longer than {self._timeout:g} s and was "
                                        "stopped") from exc
            except duckdb.Error as exc:
                raise _EngineError(str(exc).splitlines()[0][:300]) from exc
            finally:
                fired = timer.finished.is_set()  # before cancel(), which sets it too
                timer.cancel()
                for view in views:
                    con.unregister(view.name)
                if fired:
                    # An interrupt that raced the end of the query must not hit the next one: start afresh.
                    con.close()
                    self._con = None


def _counts_patients(view: _View) -> bool:
    """Whether small-cell suppression counts this view's patients (a de-identified table with the pseudonym)."""
    return view.zone is Zone.DEIDENTIFIED and _PATIENT_LINK in view.columns


def _fail_closed(reason: str) -> AccessDeniedError:
    return AccessDeniedError(f"query refused: {reason} (fail closed)")


def _prove_masked(view: _View, table: pa.Table, masks: Mapping[str, Mask]) -> None:
    """Check that each masked column holds only its mask's form; refuse otherwise (fail closed)."""
    for name, mask in masks.items():
        values = table.column(name)
        if mask is Mask.NULL:
            ok = values.null_count == len(values)
        elif mask is Mask.MASKED:
            ok = not len(values) or bool(pc.all(pc.fill_null(pc.equal(values, MASKED_VALUE), True)).as_py())
        elif mask is Mask.PSEUDONYM:
            ok = all(v is None or _PSEUDONYM.fullmatch(v) for v in pc.unique(values).to_pylist())
        else:
            ok = True
        if not ok:
            raise AccessDeniedError(f"query refused: cannot prove that {view.logical}.{name} holds only "
                                    f"{mask.value} values (fail closed)")


def _published_classes(lake: Lake) -> Callable[[Zone, str], Mapping[str, str] | None]:
    """Column classes from the de-identification report, when that layer is installed and has one."""
    def classes(zone: Zone, table: str) -> Mapping[str, str] | None:
        if zone is not Zone.DEIDENTIFIED:
            return None
        try:
            from storage_security.deid.deidentify import published_report
        except ImportError:
            return None
        try:
            return published_report(lake, table).get("column_classes")
        except (ValueError, MedguardError):  # published before reports existed: the policy's classes apply
            return None

    return classes
