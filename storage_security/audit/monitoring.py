"""Activity monitoring: detectors over the audit stream, raising alerts into ``audit/alerts`` and the log.

Each detector is a function of the audit records (:meth:`AuditLog.events`) and the thresholds in
``settings.access``; it returns alerts with a severity and a deterministic id, so running the monitor again
(hourly, from ``dags/audit_monitor.py``) never stores an alert twice. Detectors:

- ``bulk_read``: a read or decrypt that disclosed far more than the principal's baseline (``bulk_factor`` times
  the median of its earlier reads, and at least ``bulk_min_rows``); before ``baseline_min_events`` reads, above
  ``bulk_factor * bulk_min_rows``. Alerting reads do not enter the baseline, so an exfiltration cannot raise it.
  What counts is disclosure, not scanning: for a query through the gateway, the rows it returned and the distinct
  patients whose rows they are (``result_rows``, ``patients_disclosed`` in the read event), so an aggregate over a
  25,000-row table returning 15 rows is 15; other reads and decrypts count their rows. The alert names the query
  (``sql_digest``, keyed), the table and why.
- ``off_hours``: a person's access outside ``[working_hours_start, working_hours_end)`` UTC (one alert per
  principal and day).
- ``new_endpoint``: a principal seen from an endpoint it never used before, or with a new API token; an
  existing token used from a new endpoint (token reuse) is high severity.
- ``repeated_denials``: ``denial_threshold`` denials within ``denial_window_minutes``.
- ``break_glass``: every break-glass grant (critical).
- ``many_facilities``: one principal reading rows of ``facility_threshold`` or more facilities in a day.

People are ``user:`` principals; services (``svc:``) are watched by ``bulk_read`` only when they read through
the query gateway, since pipeline jobs read whole tables by design. Alerts name principals, tables, counts and
sequence numbers of the evidence — no PHI, like the audit log itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.lake import CommitInfo, Lake, Zone
from storage_security.audit.log import (
    ALERTS_TABLE,
    AuditAction,
    AuditEvent,
    AuditLog,
    AuditRecord,
    Decision,
    alert_digest,
)
from storage_security.local_vault.openbao import AUDITOR_ROLE

if TYPE_CHECKING:
    from pipeline.settings import AccessSettings, Settings

__all__ = ["ALERTS_TABLE", "ActivityMonitor", "Alert", "Thresholds", "break_glass_alert", "record_task_failure",
           "run_detectors", "task_failure_alert", "verify_chain"]

SEVERITIES = ("low", "medium", "high", "critical")
ALERTS_SCHEMA = pa.schema([
    ("alert_id", pa.string()),
    ("detected_at", pa.timestamp("us", tz="UTC")),
    ("event_time", pa.timestamp("us", tz="UTC")),
    ("detector", pa.string()),
    ("severity", pa.string()),
    ("principal", pa.string()),
    ("summary", pa.string()),
    ("evidence_seqs", pa.list_(pa.int64())),
    ("details", pa.string()),
])
_LOG = logging.getLogger("medguard.monitoring")
_LEVELS = {"low": logging.INFO, "medium": logging.WARNING, "high": logging.ERROR, "critical": logging.CRITICAL}
_DATA_ACTIONS = (AuditAction.READ, AuditAction.DECRYPT)


@dataclass(frozen=True)
class Thresholds:
    """The detectors' knobs (``settings.access``)."""

    working_hours_start: int = 7
    working_hours_end: int = 19
    bulk_factor: float = 10.0
    bulk_min_rows: int = 1_000
    baseline_min_events: int = 5
    denial_threshold: int = 5
    denial_window_minutes: int = 10
    facility_threshold: int = 3

    @classmethod
    def from_settings(cls, access: AccessSettings) -> Thresholds:
        return cls(**{name: getattr(access, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Alert:
    """One finding of a detector."""

    detector: str
    severity: str
    principal: str
    summary: str
    event_time: datetime
    evidence_seqs: tuple[int, ...]
    key: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    @property
    def alert_id(self) -> str:
        """Stable across runs: the detector, the principal and what the finding is about."""
        return hashlib.sha256(f"{self.detector}|{self.principal}|{self.key}".encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(alert_id=self.alert_id, event_time=self.event_time.isoformat(),
                   evidence_seqs=list(self.evidence_seqs))
        return out


def _is_person(principal: str) -> bool:
    return principal.startswith("user:")


def _details(record: AuditRecord) -> dict[str, Any]:
    return dict(record.event.details)


def _time(record: AuditRecord) -> datetime:
    assert record.event.time is not None  # stored events always carry their time
    return record.event.time.astimezone(UTC)


def _disclosed(record: AuditRecord) -> tuple[int | None, int | None]:
    """Rows an event disclosed and the distinct patients they belong to (None: not known).

    A gateway read records what it scanned as ``row_count`` and what left it as ``result_rows`` and
    ``patients_disclosed``; other reads and decrypts disclose what they count.
    """
    event, details = record.event, _details(record)
    if event.action == AuditAction.READ and isinstance(details.get("result_rows"), int):
        patients = details.get("patients_disclosed")
        return details["result_rows"], patients if isinstance(patients, int) else None
    return event.row_count, None


def detect_bulk_reads(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    history: dict[str, list[int]] = defaultdict(list)
    alerts = []
    previous: tuple[str, Any, int] | None = None
    for record in records:
        event = record.event
        rows, patients = _disclosed(record)
        if event.action not in _DATA_ACTIONS or rows is None or event.decision == Decision.DENY:
            continue
        details = _details(record)
        if not (_is_person(event.principal) or details.get("via") == "gateway"):
            continue
        query = details.get("sql_digest")
        # A join reads several tables in one query, recorded one after another: its result counts once.
        same_query = previous == (event.principal, query, record.seq - 1) and query is not None \
            and event.action == AuditAction.READ
        previous = (event.principal, query, record.seq)
        if same_query:
            continue
        measure = max(rows, patients or 0)
        past = history[event.principal]
        if len(past) >= t.baseline_min_events:
            baseline = statistics.median(past)
            limit = max(t.bulk_factor * baseline, t.bulk_min_rows)
        else:
            baseline, limit = None, t.bulk_factor * t.bulk_min_rows
        if measure > limit:
            table = f"{event.zone}.{event.table_name}"
            base = f"baseline median {baseline:g}" if baseline is not None else "no baseline yet"
            if event.action == AuditAction.DECRYPT:
                what = f"decrypted {rows} rows of {table}"
            else:
                who = f" of {patients} patients" if patients else ""
                what = f"received {rows} rows{who} from {table}"
            why = f"above the limit of {limit:g} ({base})"
            source = f" by query {query[:12]}" if query else ""
            alerts.append(Alert("bulk_read", "critical" if event.action == AuditAction.DECRYPT else "high",
                                event.principal, f"{event.principal} {what}{source}: {why}", _time(record),
                                (record.seq,), f"seq:{record.seq}",
                                {"rows": rows, "patients": patients, "scanned_rows": event.row_count,
                                 "table": table, "sql_digest": query, "baseline": baseline, "limit": limit,
                                 "why": why}))
        else:
            past.append(measure)
    return alerts


def detect_off_hours(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    found: dict[tuple[str, str], list[AuditRecord]] = defaultdict(list)
    for record in records:
        event = record.event
        if not _is_person(event.principal) or event.action not in (*_DATA_ACTIONS, AuditAction.POLICY_DECISION,
                                                                   AuditAction.BREAK_GLASS):
            continue
        hour = _time(record).hour
        if not t.working_hours_start <= hour < t.working_hours_end:
            found[(event.principal, _time(record).date().isoformat())].append(record)
    return [Alert("off_hours", "medium", principal, f"{principal} acted {len(hits)} times outside working hours "
                  f"({t.working_hours_start:02d}:00-{t.working_hours_end:02d}:00 UTC) on {day}", _time(hits[0]),
                  tuple(r.seq for r in hits[:50]), f"day:{day}", {"events": len(hits)})
            for (principal, day), hits in sorted(found.items())]


def detect_new_endpoints(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    endpoints: dict[str, set[str]] = defaultdict(set)
    tokens: dict[str, set[str]] = defaultdict(set)
    token_endpoints: dict[str, set[str]] = defaultdict(set)
    alerts = []
    for record in records:
        principal, details = record.event.principal, _details(record)
        endpoint, token = details.get("endpoint"), details.get("token_id")
        if not endpoint and not token:
            continue
        known = bool(endpoints[principal] or tokens[principal])
        if token and endpoint and token_endpoints[token] and endpoint not in token_endpoints[token]:
            alerts.append(Alert("new_endpoint", "high", principal, f"token {token} of {principal} used from a new "
                                f"endpoint {endpoint} (seen before from {sorted(token_endpoints[token])})",
                                _time(record), (record.seq,), f"token:{token}|{endpoint}",
                                {"token_id": token, "endpoint": endpoint}))
        elif known and endpoint and endpoint not in endpoints[principal]:
            alerts.append(Alert("new_endpoint", "medium", principal, f"{principal} seen from a new endpoint "
                                f"{endpoint}", _time(record), (record.seq,), f"endpoint:{endpoint}",
                                {"endpoint": endpoint}))
        if known and token and token not in tokens[principal]:
            alerts.append(Alert("new_endpoint", "low", principal, f"{principal} used a new API token {token}",
                                _time(record), (record.seq,), f"newtoken:{token}", {"token_id": token}))
        if endpoint:
            endpoints[principal].add(endpoint)
        if token:
            tokens[principal].add(token)
            if endpoint:
                token_endpoints[token].add(endpoint)
    return alerts


def detect_repeated_denials(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    window = timedelta(minutes=t.denial_window_minutes)
    recent: dict[str, list[AuditRecord]] = defaultdict(list)
    alerts = []
    for record in records:
        if record.event.decision != Decision.DENY:
            continue
        principal = record.event.principal
        burst = [r for r in recent[principal] if _time(record) - _time(r) <= window] + [record]
        if len(burst) >= t.denial_threshold:
            alerts.append(Alert("repeated_denials", "high", principal, f"{principal} was denied {len(burst)} times "
                                f"within {t.denial_window_minutes} minutes", _time(burst[0]),
                                tuple(r.seq for r in burst), f"from:{burst[0].seq}", {"denials": len(burst)}))
            burst = []  # a new burst must build up again before the next alert
        recent[principal] = burst
    return alerts


def break_glass_alert(seq: int, event: AuditEvent, at: datetime) -> Alert:
    """The alert for the break-glass event stored at ``seq`` (the same id whoever raises it)."""
    return Alert("break_glass", "critical", event.principal, f"{event.principal} used break-glass access to "
                 f"{event.zone}.{event.table_name}", at, (seq,), f"seq:{seq}",
                 {"table": f"{event.zone}.{event.table_name}", "purpose": event.purpose})


def task_failure_alert(*, dag_id: str, task_id: str, run_id: str, try_number: int, error: str,
                       at: datetime) -> Alert:
    """The alert for one failed try of an Airflow task: names the DAG, task, run, try and the error's type only."""
    return Alert("task_failure", "high", "svc:airflow", f"{dag_id}.{task_id} failed in run {run_id} "
                 f"(try {try_number}): {error}", at, (), f"{dag_id}|{task_id}|{run_id}|{try_number}",
                 {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "try_number": try_number, "error": error})


def record_task_failure(settings: Settings, *, dag_id: str, task_id: str, run_id: str, try_number: int,
                        error: str) -> Alert:
    """Store :func:`task_failure_alert` at once (the DAGs' failure callback); storing it again stores nothing.

    Stored as the pipeline that failed (its role may make the audit signing key): a task can fail before anything
    was audited on a new lake, and the auditor's role may only unwrap that key, never make it.
    """
    alert = task_failure_alert(dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=try_number, error=error,
                               at=datetime.now(UTC))
    ActivityMonitor.from_settings(settings, role=None).store([alert])
    return alert


def detect_break_glass(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    return [break_glass_alert(r.seq, r.event, _time(r)) for r in records
            if r.event.action == AuditAction.BREAK_GLASS and r.event.decision != Decision.DENY]


def detect_many_facilities(records: Sequence[AuditRecord], t: Thresholds) -> list[Alert]:
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    evidence: dict[tuple[str, str], list[int]] = defaultdict(list)
    first: dict[tuple[str, str], datetime] = {}
    for record in records:
        facilities = _details(record).get("facility_ids")
        if record.event.action not in _DATA_ACTIONS or not facilities:
            continue
        key = (record.event.principal, _time(record).date().isoformat())
        seen[key].update(str(f) for f in facilities)
        evidence[key].append(record.seq)
        first.setdefault(key, _time(record))
    return [Alert("many_facilities", "high", principal, f"{principal} read rows of {len(found)} facilities on {day}",
                  first[(principal, day)], tuple(evidence[(principal, day)][:50]), f"day:{day}",
                  {"facilities": len(found)})
            for (principal, day), found in sorted(seen.items()) if len(found) >= t.facility_threshold]


DETECTORS: dict[str, Callable[[Sequence[AuditRecord], Thresholds], list[Alert]]] = {
    "bulk_read": detect_bulk_reads,
    "off_hours": detect_off_hours,
    "new_endpoint": detect_new_endpoints,
    "repeated_denials": detect_repeated_denials,
    "break_glass": detect_break_glass,
    "many_facilities": detect_many_facilities,
}


class ActivityMonitor:
    """Runs the detectors over an audit log and keeps their alerts in ``audit/alerts``.

    Args:
        lake: the lake whose audit zone holds the log and the alerts.
        audit: the audit log to read (None when only listing stored alerts).
        thresholds: the detectors' knobs.
        clock: the time written as ``detected_at``.
    """

    def __init__(self, lake: Lake, audit: AuditLog | None, thresholds: Thresholds | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.lake = lake
        self.audit = audit
        self.thresholds = thresholds or Thresholds()
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, role: str | None = AUDITOR_ROLE) -> ActivityMonitor:
        from storage_security.keys.providers import provider_from_settings

        lake = Lake(settings)
        return cls(lake, AuditLog(lake, provider_from_settings(settings, role=role)),
                   Thresholds.from_settings(settings.access))

    def detect(self, records: Iterable[AuditRecord] | None = None) -> list[Alert]:
        """Every alert the detectors find in ``records`` (the whole log by default); nothing is written."""
        if records is None:
            if self.audit is None:
                raise ValueError("detect() needs records or an audit log to read them from")
            records = self.audit.events()
        records = sorted(records, key=lambda r: r.seq)
        alerts = [alert for detector in DETECTORS.values() for alert in detector(records, self.thresholds)]
        return sorted(alerts, key=lambda a: (a.event_time, a.detector, a.alert_id))

    def run(self) -> list[Alert]:
        """Detect, store the alerts not stored before, log each new one at its severity; returns the new ones."""
        return self.store(self.detect())

    def store(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Store the alerts not stored before (by id) and log each at its severity; returns the new ones.

        Callers that must alert at once (a break-glass grant) store their alert directly; the detector finds
        the same alert (same id) on its next run and does not store it twice. Each stored alert joins the audit
        chain as an ``alert`` event with its id and the digest of its row (signed at once), so deleting or
        altering it in ``audit/alerts`` fails ``medguard audit verify``.

        Raises:
            ValueError: there are new alerts and the monitor has no audit log to chain them into.
        """
        known = {row["alert_id"] for row in self.alerts()}
        fresh = [a for a in alerts if a.alert_id not in known]
        fresh = list({a.alert_id: a for a in fresh}.values())
        if fresh:
            if self.audit is None:
                raise ValueError("storing alerts needs the audit log they are chained into")
            now = self._clock()
            rows = [{"alert_id": a.alert_id, "detected_at": now, "event_time": a.event_time,
                     "detector": a.detector, "severity": a.severity, "principal": a.principal, "summary": a.summary,
                     "evidence_seqs": list(a.evidence_seqs), "details": json.dumps(a.details, sort_keys=True)}
                    for a in fresh]
            self.lake.append(Zone.AUDIT, ALERTS_TABLE, pa.Table.from_pylist(rows, schema=ALERTS_SCHEMA),
                             commit=CommitInfo(principal="svc:medguard-monitor", purpose="activity monitoring"))
            # Re-read as stored, so the digest is of the row verify will read (timestamps at Parquet precision).
            stored = {row["alert_id"]: row for row in self.lake.read_arrow(
                Zone.AUDIT, ALERTS_TABLE, where=_in_list("alert_id", [a.alert_id for a in fresh])).to_pylist()}
            self.audit.record_many(_alert_event(a.alert_id, a.detector, a.severity, alert_digest(stored[a.alert_id]))
                                   for a in fresh)
            for alert in fresh:
                _LOG.log(_LEVELS[alert.severity], "alert %s [%s] %s", alert.detector, alert.severity, alert.summary)
        return fresh

    def chain_stored_alerts(self) -> int:
        """Record an ``alert`` event for every stored alert that has none; returns how many.

        For alerts stored before alerts joined the audit chain, which ``medguard audit verify`` names as having no
        event. An operator action: run it once after checking those alerts, since it vouches for them.
        """
        if self.audit is None:
            raise ValueError("chaining alerts needs the audit log they are chained into")
        chained = {str(r.event.details.get("alert_id")) for r in self.audit.events()
                   if r.event.action == AuditAction.ALERT and r.event.table_name == ALERTS_TABLE}
        rows = self.lake.read_arrow(Zone.AUDIT, ALERTS_TABLE).to_pylist() \
            if self.lake.exists(Zone.AUDIT, ALERTS_TABLE) else []
        missing = [row for row in rows if row["alert_id"] not in chained]
        self.audit.record_many(_alert_event(row["alert_id"], row["detector"], row["severity"], alert_digest(row))
                               for row in missing)
        return len(missing)

    def alerts(self, *, severity: str | None = None) -> list[dict[str, Any]]:
        """Stored alerts, oldest first (at least ``severity`` when given)."""
        if not self.lake.exists(Zone.AUDIT, ALERTS_TABLE):
            return []
        rows = self.lake.read_arrow(Zone.AUDIT, ALERTS_TABLE).to_pylist()
        if severity is not None:
            floor = SEVERITIES.index(severity)
            rows = [r for r in rows if SEVERITIES.index(r["severity"]) >= floor]
        for row in rows:
            row["details"] = json.loads(row["details"] or "{}")
        return sorted(rows, key=lambda r: (r["event_time"], r["alert_id"]))


def _alert_event(alert_id: str, detector: str, severity: str, digest: str) -> AuditEvent:
    return AuditEvent(principal="svc:medguard-monitor", action=AuditAction.ALERT, zone=Zone.AUDIT,
                      table_name=ALERTS_TABLE, row_count=1, purpose="activity monitoring",
                      details={"alert_id": alert_id, "detector": detector, "severity": severity, "digest": digest})


def _in_list(column: str, values: Sequence[str]) -> str:
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"


def verify_chain(settings: Settings) -> dict[str, Any]:
    """Verify the audit chain (the DAG's first task).

    Raises:
        AuditIntegrityError: the chain or a signed head does not verify (names the first bad event).
    """
    from pipeline.errors import AuditIntegrityError
    from storage_security.keys.providers import provider_from_settings

    report = AuditLog(Lake(settings), provider_from_settings(settings, role=AUDITOR_ROLE)).verify()
    if not report.ok:
        raise AuditIntegrityError(report.summary())
    return report.to_dict()


def run_detectors(settings: Settings) -> dict[str, Any]:
    """Run every detector and store new alerts (the DAG's second task); returns counts by severity."""
    fresh = ActivityMonitor.from_settings(settings).run()
    by_severity = {s: sum(1 for a in fresh if a.severity == s) for s in SEVERITIES}
    return {"new_alerts": len(fresh), "by_severity": by_severity}
