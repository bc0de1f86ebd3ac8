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
import hmac
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

__all__ = ["MASKED_VALUE", "QueryGateway", "QueryResult", "disclosable_count"]

MASKED_VALUE = "****"
_PSEUDONYM = re.compile(r"ps1_[A-Za-z0-9]+_[0-9a-f]+")
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_PATIENT_LINK = "patient_pseudonym"
_QUERY_DIGEST_LABEL = "query-digest"
_QUERY_DIGEST_DOMAIN = b"medguard.access.sql.v1\x00"
_CELL_PATIENT = "__medguard_patient"  # the hidden column small-cell suppression counts; no query can name it


class _EngineError(Exception):
    """DuckDB failed on a checked query (a type error, a division by zero...)."""


@dataclass(frozen=True)
class QueryResult:
    """The rows of a granted query, and what the policy did to produce them.

    ``row_filters`` holds one entry per row filter applied to a table: ``{"table", "filter", "description",
    "rows_removed"}`` (``rows_removed`` None where the count is withheld, see :func:`disclosable_count`);
    ``column_masks`` maps each output column that is a masked table column to its mask, so that a front can show
    masked cells differently from missing values.
    """

    table: pa.Table
    decisions: tuple[PolicyDecision, ...]
    sql: str
    seconds: float
    row_filters: tuple[Mapping[str, Any], ...] = ()
    column_masks: Mapping[str, str] = field(default_factory=dict)

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

    def withheld(self) -> dict[str, Any]:
        """What the policy withheld: ``{"row_filters": [{table, filter, description, rows_removed}], "masks":
        {table: {column: mask}}}``, as ``--json``, the HTTP API and the wire protocol's notices report it."""
        return {"row_filters": [dict(f) for f in self.row_filters], "masks": self.masks()}

    def notices(self) -> list[str]:
        """One human-readable line per row filter and per masked column of the query."""
        lines = []
        for f in self.row_filters:
            removed = f.get("rows_removed")
            count = (f"removed {removed:,} row{'s' if removed != 1 else ''}" if removed is not None
                     else "removed rows (count withheld: " + str(f.get("withheld_because", "protected")) + ")")
            lines.append(f"row filter {f['filter']} ({f['description']}) {count} of {f['table']}")
        for table, masks in self.masks().items():
            lines += [f"column {column} of {table} is masked ({mask})" for column, mask in sorted(masks.items())]
        aggregates_only = [d.logical_name for d in self.decisions if d.aggregates_only]
        lines += [f"{t} is released only as aggregates; groups of fewer patients than the small-cell minimum are "
                  "left out" for t in aggregates_only]
        return lines


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
    masks: dict[str, Mask] = field(default_factory=dict)
    filter_notes: list[dict[str, Any]] = field(default_factory=list)


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
        self._digest_key: Any = None  # the query digest's keyed HMAC state, derived on the first query

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

    def describe(self, session: Session, table: str, *, purpose: str | None = None) -> list[dict[str, Any]]:
        """The columns of ``table`` (``zone.table``) the session's principal can see: name, type, class and mask.

        A column the principal would only ever see as null (its mask is null, or it is sealed and they may not
        decrypt it) is left out. Audited as a policy decision.

        Raises:
            AccessDeniedError: no such table, or the principal may not read it (the reason says why).
        """
        principal = session.principal
        purpose = purpose or (principal.purposes[0] if principal.purposes else "unspecified")
        base = {"requested_action": "describe", **session.audit_details()}
        try:
            [view] = self._views([str(table).strip().lower()])
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc).replace("query refused", "describe refused", 1))
        classes = self._column_classes(view.zone, view.table) if self._column_classes else None
        self._decide(view, session, view.columns, purpose, None)
        event = view.decision.audit_event(details=base)
        if not view.decision.allowed:
            self.audit.record(event)
            raise AccessDeniedError(f"describe refused: {view.decision.reason}")
        self.audit.record(event)
        masks = self._effective_masks(view)
        schema = self._schema(view.zone, view.table)
        sealed = set(view.protection.encrypted) if view.protection else set()
        out = []
        for name in view.columns:
            mask = masks[name]
            if mask is Mask.NULL:
                continue
            kind = _catalog_type(view.zone, view.table, name) if name in sealed else None
            out.append({"name": name, "type": kind or str(schema.field(name).type),
                        "class": self.engine.policy.column_class(view.zone, view.table, name, classes).value,
                        "mask": mask.value})
        return out

    def query(self, session: Session, sql: str, *, purpose: str | None = None,
              break_glass_reason: str | None = None) -> QueryResult:
        """Run one analyst query under the policy; ``DESCRIBE zone.table`` answers :meth:`describe` as a table.

        Raises:
            AccessDeniedError: the query is refused (the reason says why); the refusal is audited.
        """
        started = time.perf_counter()
        principal = session.principal
        purpose = purpose or (principal.purposes[0] if principal.purposes else "unspecified")
        try:
            base = {"sql_digest": self._sql_digest(str(sql)), **session.audit_details()}
        except CryptoError as exc:
            # Without the key no digest can be recorded that a reader of the audit log could not confirm by
            # guessing: the query is refused (fail closed) and the refusal recorded without one.
            self._refuse(session, purpose, {"sql_digest": None, **session.audit_details()},
                         f"the query digest key cannot be loaded ({type(exc).__name__})")
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
            described = _sql.describe_target(sql)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc))
        if described is not None:
            rows = self.describe(session, described, purpose=purpose)
            table = pa.table({"column_name": [r["name"] for r in rows], "type": [r["type"] for r in rows],
                              "class": [r["class"] for r in rows], "mask": [r["mask"] for r in rows]})
            return QueryResult(table, (), f"DESCRIBE {described}", time.perf_counter() - started)
        try:
            checked = _sql.check(sql, max_chars=self._max_chars)
            views = self._views(checked.tables)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc))
        try:
            tree = _sql.bind(checked, {v.logical: v.name for v in views},
                             {v.name: v.columns for v in views})
            used = _sql.referenced_columns(tree, {v.name for v in views})
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
        try:
            self._check_aggregates(tree, views)
            if any(v.zone is Zone.DEIDENTIFIED or v.decision.aggregates_only for v in views):
                # Small cells: a group of fewer than k patients computed from de-identified data (or from a
                # table released only as aggregates) is not returned.
                tree = _sql.suppress_small_cells(tree, {v.name: _CELL_PATIENT for v in views if _counts_patients(v)},
                                                 self._small_cell_k)
        except AccessDeniedError as exc:
            self._refuse(session, purpose, base, str(exc), views, events)
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
        outputs = _sql.output_sources(tree, {v.name for v in views})
        patients = self._patients_disclosed(tree, views, outputs, result)
        for view in views:
            # What left the gateway (rows returned, patients whose rows they are) is what bulk-read detection
            # measures; row_count is what the query scanned after the row filters.
            details = {**base, "via": "gateway", "result_rows": result.num_rows, "patients_disclosed": patients}
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
        by_name = {v.name: v for v in views}
        column_masks = {}
        for output, (view_name, column) in outputs.items():
            mask = by_name[view_name].masks.get(column, Mask.PLAINTEXT)
            if mask is not Mask.PLAINTEXT:
                column_masks[output] = mask.value
        filters = tuple(entry for v in views for entry in v.filter_notes)
        return QueryResult(result, tuple(v.decision for v in views), sql_to_run, time.perf_counter() - started,
                           filters, column_masks)

    def _check_aggregates(self, tree: Any, views: Sequence[_View]) -> None:
        """Refuse aggregates whose answer the masks would falsify, and row-level reads of aggregate-only tables.

        An aggregate over a column masked to null sees only nulls (``avg`` is NaN, ``count`` 0); over a pseudonym or
        ``****`` it sees stand-ins, of which only counting non-null values (and, for a pseudonym, distinct values)
        stays true. Such queries are refused with the reason instead of returning a number that looks real.
        """
        by_name = {v.name: v for v in views}
        for name, view_name, column, how in _sql.aggregates_over(tree, set(by_name)):
            view = by_name[view_name]
            mask = self._effective_masks(view).get(column, Mask.NULL)
            true_anyway = (mask is Mask.PLAINTEXT or (mask is Mask.PSEUDONYM and how in ("count", "distinct"))
                           or (mask is Mask.MASKED and how == "count"))
            if not true_anyway:
                shown = {Mask.NULL: "hidden (masked to null)", Mask.PSEUDONYM: "masked to a keyed hash",
                         Mask.MASKED: "masked to ****"}[mask]
                raise _sql.refuse(f"{name}() over {view.logical}.{column} would not be a true answer: the column is "
                                  f"{shown} for {view.decision.principal}; count(*) and aggregates of visible columns "
                                  "are allowed (see `medguard access describe`)")
        row_level = _sql.row_level_views(tree, {v.name for v in views if v.decision.aggregates_only})
        for view in views:
            if view.name in row_level:
                raise _sql.refuse(f"{view.logical} is released to {view.decision.principal} only as aggregates "
                                  f"(GROUP BY with count, avg, sum...; groups of fewer than {self._small_cell_k} "
                                  "patients are left out), not row by row")

    def _patients_disclosed(self, tree: Any, views: Sequence[_View], outputs: Mapping[str, tuple[str, str]],
                            result: pa.Table) -> int:
        """How many patients' own rows the result shows: the distinct patient keys it returns, or for a row-level
        result without one, at most one per row; an aggregate without a patient key discloses no one's rows."""
        keys = [o for o, (_, column) in outputs.items() if column in (_PATIENT_LINK, "patient_id")
                and o in result.column_names]
        if keys:
            return max(len(pc.unique(result.column(k)).drop_null()) for k in keys)
        row_level = _sql.row_level_views(tree, {v.name for v in views if _PATIENT_LINK in v.columns
                                                or "patient_id" in v.columns})
        return result.num_rows if row_level else 0

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
        raise AccessDeniedError(reason if reason.startswith(("query refused", "describe refused"))
                                else f"query refused: {reason}")

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

    def _sql_digest(self, sql: str) -> str:
        """The keyed digest of a query's text that its audit events carry (``sql_digest``, 64 hex).

        An unkeyed hash of the SQL would let any reader of the audit log confirm a guess (``WHERE mrn = '…'`` for
        each MRN they suspect); HMAC-SHA256 under a key derived from the lake's provider-wrapped ``patient``
        pseudonym key (label ``query-digest``, as ingestion derives its keyed digests) cannot be, and the same text
        still gets the same digest, so monitoring can tell one query's events apart from another's.

        Raises:
            KeyProviderUnavailableError, KeyAccessDeniedError: the provider cannot unwrap the pseudonym key.
        """
        if self._digest_key is None:
            secret = self._service_lake().pseudonymizer("patient").derive_key(_QUERY_DIGEST_LABEL)
            self._digest_key = hmac.new(secret, _QUERY_DIGEST_DOMAIN, hashlib.sha256)
        mac = self._digest_key.copy()
        mac.update(sql.encode())
        return mac.hexdigest()

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
        masks = self._effective_masks(view)
        view.masks = masks
        sealed = set(view.protection.encrypted) if view.protection else set()
        decrypt = [c for c in masks if c in sealed and masks[c] is Mask.PLAINTEXT]
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
        view.filter_notes = self._filter_notes(view, session)
        if has_facility:
            # Facility ids are not PHI; the many-facilities detector needs which ones, not just how many.
            view.facilities = sorted(str(f) for f in pc.unique(arrow.column("facility_id")).to_pylist()
                                     if f is not None)[:50]
        view.data = self._mask(view, arrow.select(list(masks)), masks)
        if _counts_patients(view):
            view.data = view.data.append_column(_CELL_PATIENT, arrow.column(_PATIENT_LINK))

    def _effective_masks(self, view: _View) -> dict[str, Mask]:
        """The decision's masks, with sealed columns the principal may not decrypt hidden (null)."""
        masks = dict(view.decision.masks)
        sealed = set(view.protection.encrypted) if view.protection else set()
        may_decrypt = view.decrypt is not None and view.decrypt.allowed
        for column in masks:
            # A sealed column is either decrypted under a decrypt grant or hidden: never shown as ciphertext,
            # and never decrypted merely to be masked.
            if column in sealed and not (masks[column] is Mask.PLAINTEXT and may_decrypt):
                masks[column] = Mask.NULL
        return masks

    def _filter_notes(self, view: _View, session: Session) -> list[dict[str, Any]]:
        """One note per row filter applied to ``view``: which, and how many rows it removed (when disclosable).

        Filters apply in the decision's order; each one's count is of the rows it removed from what the filters
        before it kept, over the whole table (not only the rows the query's own WHERE would have kept).
        """
        names = list(view.decision.row_filters)
        if not names:
            return []
        own = {"facility": "facility_id", "consent": "consent_research"}
        wanted = list(dict.fromkeys(own[n] if own.get(n) in view.columns else _PATIENT_LINK for n in names))
        rows = self.lake.read_arrow(view.zone, view.table, columns=[c for c in wanted if c in view.columns]
                                    or view.columns[:1])
        kept = pa.array([True] * rows.num_rows, pa.bool_())
        notes = []
        for name in names:
            before = pc.sum(pc.cast(kept, pa.int64())).as_py() or 0
            if name == "facility":
                facility = session.principal.facility or ""
                description = f"rows of facility {facility} only"
                column, value = "facility_id", facility
            else:
                description = "patients who consented to research only"
                column, value = "consent_research", True
            if column in rows.column_names:
                hit = pc.fill_null(pc.equal(rows.column(column), pa.scalar(value)), False)
            else:
                allowed = pa.array(sorted(self._linked_patients(view, column, value)), pa.string())
                hit = pc.fill_null(pc.is_in(rows.column(_PATIENT_LINK), allowed), False)
            kept = pc.and_(kept, hit)
            after = pc.sum(pc.cast(kept, pa.int64())).as_py() or 0
            removed, why = disclosable_count(before - after, name, k=self._small_cell_k,
                                             break_glass=view.decision.break_glass)
            note = {"table": view.logical, "filter": name, "description": description, "rows_removed": removed}
            if why:
                note["withheld_because"] = why
            notes.append(note)
        return notes

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
    """Whether small-cell suppression counts this view's patients (a de-identified table with the pseudonym, or
    one the principal may read only as aggregates)."""
    aggregates_only = view.decision is not None and view.decision.aggregates_only
    return (view.zone is Zone.DEIDENTIFIED or aggregates_only) and _PATIENT_LINK in view.columns


# Row filters over the whole population (not about one patient or one emergency), whose counts may be shown.
_POPULATION_FILTERS = frozenset({"facility", "consent"})


def disclosable_count(removed: int, row_filter: str, *, k: int, break_glass: bool = False) -> tuple[int | None, str]:
    """The number of rows a row filter removed as a result may report it, and why it is withheld when it is.

    The rule: a count is shown only for a population filter (``facility``, ``consent``) outside break glass, and
    only when it is 0 or at least ``k`` (``deidentify.k_anonymity``). A count of 1 to k-1 says that a handful of
    patients did not consent (or belong elsewhere), which with what else a user knows may single them out; a
    filter scoped to one patient or granted by break glass would tell how much of someone else's record exists.
    Returns ``(count or None, reason withheld or "")``.
    """
    if break_glass:
        return None, "break-glass access"
    if row_filter not in _POPULATION_FILTERS:
        return None, "a per-patient filter"
    if 0 < removed < k:
        return None, f"fewer than {k} rows"
    return removed, ""


def _catalog_type(zone: Zone, table: str, column: str) -> str | None:
    """The column catalog's type for a column (a sealed column is stored as bytes but holds this type)."""
    from pipeline.catalog import load_catalog

    try:
        catalog = load_catalog()
        if zone is Zone.RAW:
            entry = catalog.raw_columns(table).get(column)
        else:
            entry = catalog.zones.get(zone.value, {}).get(table)
            entry = entry.columns.get(column) if entry is not None else None
    except (KeyError, ValueError, MedguardError):
        return None
    return str(getattr(entry, "type", "")) or None if entry is not None else None


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
