"""Activity detectors replay scripted sessions from the audit stream and must fire exactly where they should."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, AuditRecord
from storage_security.audit.monitoring import ActivityMonitor, Thresholds

DAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
T = Thresholds()


def _read(principal: str, at: datetime, rows: int, *, endpoint: str = "10.0.0.5", key_id: str | None = "t1",
          facilities: tuple[str, ...] = ("F1",), action: AuditAction = AuditAction.READ,
          via: str | None = "gateway") -> AuditEvent:
    details: dict = {"endpoint": endpoint, "facility_ids": list(facilities)}
    if key_id:
        details["token_id"] = key_id
    if via:
        details["via"] = via
    return AuditEvent(principal=principal, action=action, zone="deidentified", table_name="patients",
                      row_count=rows, decision="allow", purpose="research", details=details, time=at)


def _deny(principal: str, at: datetime) -> AuditEvent:
    return AuditEvent(principal=principal, action=AuditAction.POLICY_DECISION, zone="raw", table_name="patients",
                      decision="deny", purpose="research", reason="no rule grants analyst read on raw.patients",
                      details={"endpoint": "10.0.0.5", "token_id": "t1"}, time=at)


def _records(events: list[AuditEvent]) -> list[AuditRecord]:
    return [AuditRecord(seq=i, prev_hash="0" * 64, hash=f"{i:064x}", event=e) for i, e in enumerate(events)]


def normal_day(principal: str = "user:ann", day: datetime = DAY) -> list[AuditEvent]:
    """Ten reads of 40-80 rows between 09:00 and 16:00 from one endpoint and token, one facility."""
    return [_read(principal, day + timedelta(hours=9, minutes=42 * i), 40 + 4 * i) for i in range(10)]


def _fired(events: list[AuditEvent]) -> list[tuple[str, str, str]]:
    monitor = ActivityMonitor(lake=None, audit=None, thresholds=T)  # type: ignore[arg-type]  # detect() reads no lake
    return [(a.detector, a.severity, a.principal) for a in monitor.detect(_records(events))]


def test_when_a_normal_day_is_replayed_then_no_alert_fires():
    assert _fired(normal_day() + normal_day("user:bob", DAY + timedelta(days=1))) == []


def test_when_a_bulk_exfiltration_follows_a_normal_day_then_bulk_read_fires_once():
    events = [*normal_day(), _read("user:ann", DAY + timedelta(hours=16, minutes=30), 50_000),
              _read("user:ann", DAY + timedelta(hours=16, minutes=45), 60)]
    assert _fired(events) == [("bulk_read", "high", "user:ann")]


def test_when_a_bulk_decrypt_happens_then_it_is_critical():
    events = [*normal_day("user:cleo"),
              _read("user:cleo", DAY + timedelta(hours=17), 20_000, action=AuditAction.DECRYPT, via=None)]
    assert _fired(events) == [("bulk_read", "critical", "user:cleo")]


def test_when_reads_grow_slowly_then_the_baseline_follows_and_nothing_fires():
    events = [_read("user:ann", DAY + timedelta(hours=9, minutes=5 * i), 100 + 20 * i) for i in range(30)]
    assert _fired(events) == []


def test_when_a_pipeline_service_reads_whole_tables_then_bulk_read_stays_quiet():
    events = [_read("svc:deidentify", DAY + timedelta(hours=h), 2_000_000, via=None, key_id=None, facilities=())
              for h in (9, 10)]
    assert _fired(events) == []


@pytest.mark.parametrize(("hour", "fires"), [(2, True), (6, True), (7, False), (12, False), (18, False), (19, True),
                                             (23, True)])
def test_when_access_happens_outside_working_hours_then_off_hours_fires(hour, fires):
    events = [_read("user:ann", DAY + timedelta(hours=hour, minutes=30), 50)]
    assert _fired(events) == ([("off_hours", "medium", "user:ann")] if fires else [])


def test_when_a_token_is_reused_from_a_new_endpoint_then_a_high_alert_fires():
    events = [*normal_day(), _read("user:ann", DAY + timedelta(hours=16, minutes=50), 50, endpoint="203.0.113.9")]
    assert _fired(events) == [("new_endpoint", "high", "user:ann")]


def test_when_a_principal_uses_a_new_token_then_a_low_alert_fires():
    events = [*normal_day(), _read("user:ann", DAY + timedelta(hours=16, minutes=50), 50, key_id="t2")]
    assert _fired(events) == [("new_endpoint", "low", "user:ann")]


@pytest.mark.parametrize(("count", "spacing_minutes", "fires"), [(5, 1, True), (4, 1, False), (5, 20, False),
                                                                 (10, 1, True)])
def test_when_denials_repeat_quickly_then_repeated_denials_fires(count, spacing_minutes, fires):
    events = [_deny("user:mallory", DAY + timedelta(hours=10, minutes=spacing_minutes * i)) for i in range(count)]
    fired = [f for f in _fired(events) if f[0] == "repeated_denials"]
    assert fired == [("repeated_denials", "high", "user:mallory")] * (count // 5 if fires else 0)


def test_when_break_glass_is_used_then_a_critical_alert_fires():
    event = AuditEvent(principal="user:cleo", action=AuditAction.BREAK_GLASS, zone="raw", table_name="patients",
                       decision="allow", purpose="emergency", reason="unconscious patient",
                       time=DAY + timedelta(hours=11))
    assert _fired([event]) == [("break_glass", "critical", "user:cleo")]


def test_when_one_principal_reads_many_facilities_in_a_day_then_many_facilities_fires():
    events = [*normal_day(), _read("user:ann", DAY + timedelta(hours=15), 50, facilities=("F2",)),
              _read("user:ann", DAY + timedelta(hours=15, minutes=5), 50, facilities=("F3", "F4"))]
    assert _fired(events) == [("many_facilities", "high", "user:ann")]
    next_day = [_read("user:ann", DAY + timedelta(days=1, hours=10), 50, facilities=(f,)) for f in ("F2", "F3")]
    assert _fired([*normal_day(), *next_day]) == []


def test_when_the_monitor_runs_twice_then_alerts_are_stored_once_and_listed(lake, keyring):
    audit = AuditLog(lake, keyring)
    audit.record_many([*normal_day(), _read("user:ann", DAY + timedelta(hours=22), 90_000)])
    monitor = ActivityMonitor(lake, audit, T, clock=lambda: DAY + timedelta(days=1))
    first = monitor.run()
    assert sorted(a.detector for a in first) == ["bulk_read", "off_hours"]
    assert monitor.run() == []
    stored = monitor.alerts()
    assert sorted(row["detector"] for row in stored) == ["bulk_read", "off_hours"]
    assert {row["alert_id"] for row in stored} == {a.alert_id for a in first}
    assert [row["severity"] for row in monitor.alerts(severity="high")] == ["high"]
    assert all("90000" in row["summary"] or "outside" in row["summary"] for row in stored)


@pytest.fixture
def keyring_settings(keyring_home):
    return keyring_home


def test_when_the_dag_tasks_run_then_the_chain_is_verified_and_alerts_stored(keyring_settings):
    from pipeline.lake import Lake
    from storage_security.audit.monitoring import run_detectors, verify_chain

    settings, ring = keyring_settings
    audit = AuditLog(Lake(settings), ring)
    audit.record_many([*normal_day(), _read("user:ann", DAY + timedelta(hours=23), 90_000)])
    audit.sign_head()
    assert verify_chain(settings)["ok"] is True
    assert run_detectors(settings) == {"new_alerts": 2, "by_severity": {"low": 0, "medium": 1, "high": 1,
                                                                        "critical": 0}}
    assert run_detectors(settings)["new_alerts"] == 0


def test_when_the_chain_is_tampered_then_the_verify_task_fails(keyring_settings):
    import pyarrow.compute as pc

    from pipeline.errors import AuditIntegrityError
    from pipeline.lake import CommitInfo, Lake
    from storage_security.audit.monitoring import verify_chain

    settings, ring = keyring_settings
    lake = Lake(settings)
    AuditLog(lake, ring).record_many(normal_day())
    events = lake.read_arrow("audit", "events")
    changed = events.set_column(events.schema.get_field_index("row_count"), "row_count",
                                pc.add(events.column("row_count"), 1))
    lake.overwrite("audit", "events", changed, commit=CommitInfo(principal="attacker"))
    with pytest.raises(AuditIntegrityError, match="first bad event seq 0"):
        verify_chain(settings)


def _gateway_read(at: datetime, scanned: int, returned: int, patients: int, sql: str) -> AuditEvent:
    event = _read("user:ann", at, scanned)
    details = {**event.details, "result_rows": returned, "patients_disclosed": patients, "sql_digest": sql}
    return AuditEvent(principal=event.principal, action=event.action, zone=event.zone, table_name=event.table_name,
                      row_count=scanned, decision="allow", purpose="research", details=details, time=at)


def test_when_aggregates_scan_a_large_table_then_the_returned_rows_count_not_the_scanned_ones():
    # The case: six aggregate queries over 25,741 observations, each returning at most 15 rows.
    events = [_gateway_read(DAY + timedelta(hours=10, minutes=i), 25_741, 15, 0, f"{i:064x}") for i in range(6)]
    assert _fired(events) == []


def test_when_a_query_returns_rows_of_many_patients_then_the_alert_names_the_query_and_why():
    events = [_gateway_read(DAY + timedelta(hours=10), 25_000, 25_000, 25_000, "ab" * 32)]
    monitor = ActivityMonitor(lake=None, audit=None, thresholds=T)  # type: ignore[arg-type]
    [alert] = monitor.detect(_records(events))
    assert (alert.detector, alert.severity) == ("bulk_read", "high")
    assert "received 25000 rows of 25000 patients from deidentified.patients by query abababababab" in alert.summary
    assert alert.details["sql_digest"] == "ab" * 32 and "above the limit of 10000" in alert.details["why"]


def test_when_the_gateway_answers_15_rows_or_all_25000_patients_then_only_the_second_alerts(lake, keyring, tmp_path):
    import pyarrow as pa

    from access.gateway import QueryGateway
    from access.policy import PolicyEngine, load_policy
    from access.principals import Principal, PrincipalStore, Role
    from pipeline.lake import CommitInfo

    patients = 25_000
    lake.append("deidentified", "patients", pa.table({
        "patient_pseudonym": [f"ps1_t_{i:06x}" for i in range(patients)],
        "age_band": [f"{20 + (i % 15) * 5}-{24 + (i % 15) * 5}" for i in range(patients)],
        "sex": ["F" if i % 2 else "M" for i in range(patients)],
        "consent_research": [True] * patients}), commit=CommitInfo(principal="test"))
    audit = AuditLog(lake, keyring)
    store = PrincipalStore(tmp_path / "principals.json")
    store.add(Principal("ann", Role.ANALYST, purposes=("research",)))
    session = store.local_session("ann", operator="tester")
    gateway = QueryGateway(lake, keyring, PolicyEngine(load_policy(), audit=audit), audit=audit)
    monitor = ActivityMonitor(lake, audit, T)

    grouped = gateway.query(session, "SELECT age_band, count(*) FROM deidentified.patients GROUP BY age_band")
    assert grouped.table.num_rows == 15
    assert [a for a in monitor.detect() if a.detector == "bulk_read"] == []

    everything = gateway.query(session, "SELECT * FROM deidentified.patients")
    assert everything.table.num_rows == patients
    [alert] = [a for a in monitor.detect() if a.detector == "bulk_read"]
    assert alert.details["rows"] == patients and alert.details["patients"] == patients
    assert alert.details["table"] == "deidentified.patients"
