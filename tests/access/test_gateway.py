"""The query gateway: hostile queries refused and audited, granted queries exact, masks unbreakable by SQL."""

from __future__ import annotations

import pytest

from access.gateway import MASKED_VALUE, QueryGateway
from access.policy import PolicyEngine, load_policy
from access.principals import Principal, PrincipalStore, Role
from pipeline.errors import AccessDeniedError
from pipeline.lake import CommitInfo
from storage_security.audit.log import AuditAction, AuditLog
from storage_security.audit.monitoring import ActivityMonitor
from storage_security.protected import ProtectedLake, Protection

HOSTILE = [
    ("SELECT * FROM raw.patients", "no rule grants analyst read on raw.patients"),
    ("SELECT ssn FROM raw.patients WHERE ssn LIKE '1%'", "no rule grants analyst read on raw.patients"),
    ("SELECT * FROM '/etc/passwd'", "query refused"),
    ("SELECT * FROM read_parquet('/tmp/lake/raw/patients/*.parquet')", "table functions"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table functions"),
    ("SELECT read_text('/etc/passwd')", "not allowed"),
    ("SELECT 1; DROP TABLE x", "exactly one statement"),
    ("SELECT count(*) FROM deidentified.patients; SELECT * FROM raw.patients", "exactly one statement"),
    ("SELECT 1 /* harmless */; ATTACH '/tmp/x.db' AS y -- hidden", "exactly one statement"),
    ("/* SELECT 1; */ COPY (SELECT 1) TO '/tmp/out.csv'", "only SELECT"),
    ("COPY deidentified.patients TO '/tmp/out.parquet'", "only SELECT"),
    ("ATTACH '/tmp/other.db' AS other", "only SELECT"),
    ("INSTALL httpfs", "only SELECT"),
    ("LOAD httpfs", "only SELECT"),
    ("PRAGMA database_list", "only SELECT"),
    ("SET enable_external_access = true", "only SELECT"),
    ("SELECT sex FROM deidentified.patients UNION SELECT ssn FROM raw.patients", "raw.patients"),
    ("SELECT sex FROM deidentified.patients UNION ALL SELECT first_name FROM raw.patients", "raw.patients"),
    ("WITH patients AS (SELECT * FROM raw.patients) SELECT * FROM patients", "raw.patients"),
    ("WITH x AS (SELECT 1 AS a) SELECT * FROM x, raw.encounters", "raw.encounters"),
    ("SELECT (SELECT max(ssn) FROM raw.patients) AS leak", "raw.patients"),
    ("SELECT * FROM deidentified.patients WHERE EXISTS (SELECT 1 FROM raw.patients)", "raw.patients"),
    ('SELECT * FROM "RAW"."PATIENTS"', "raw.patients"),
    ("SELECT * FROM Raw.Patients", "raw.patients"),
    ('SELECT * FROM "raw"."patients"', "raw.patients"),
    ("select * from rAw.pAtIeNtS", "raw.patients"),
    ("SELECT * FROM patients", "unknown table"),
    ("SELECT * FROM mgv_0_raw_patients", "unknown table"),
    ("SELECT * FROM information_schema.tables", "no table information_schema.tables"),
    ("SELECT * FROM pg_catalog.pg_class", "no table pg_catalog.pg_class"),
    ("SELECT * FROM sqlite_master", "unknown table"),
    ("SELECT * FROM duckdb_tables()", "table functions"),
    ("SELECT * FROM memory.main.secrets", "three-part"),
    ("SELECT getenv('HOME')", "function getenv() is not allowed"),
    ("SELECT current_setting('enable_external_access')", "not allowed"),
    ("SELECT list_transform([1, 2], x -> x + 1)", "not allowed"),
    ("SELECT * FROM unnest([1, 2])", "UNNEST() is not allowed"),
    ("SELECT * FROM deidentified.nonexistent", "no table deidentified.nonexistent"),
    ("SELECT * FROM deidentified.patients p JOIN audit.events e ON true", "audit.events"),
    ("DELETE FROM deidentified.patients", "only SELECT"),
    ("SELECT " + "1 + " * 6000 + "1", "characters long"),
    ("SELECT ssn_typo FROM deidentified.patients", "cannot resolve"),
    ("", "empty query"),
    ("SELECT " + "(" * 3000 + "1" + ")" * 3000, "query refused"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r", "recursive"),
]


@pytest.mark.parametrize(("sql", "message"), HOSTILE, ids=[f"q{i:02d}" for i in range(len(HOSTILE))])
def test_when_a_hostile_query_is_sent_then_it_is_refused_with_a_reason_and_audited(world, sql, message):
    with pytest.raises(AccessDeniedError, match="query refused") as caught:
        world.gateway.query(world.session("ann"), sql)
    assert message in str(caught.value)
    last = world.audit.events()[-1].event
    assert last.principal == "user:ann"
    assert last.decision == "deny" and last.action == AuditAction.POLICY_DECISION
    assert last.reason and message.split(" ")[0] in last.reason
    assert ("sql_digest" in last.details and sql[:30] not in str(last.to_dict())) or not sql


def _rows(world, who: str, sql: str, **kwargs) -> list[dict]:
    return world.gateway.query(world.session(who), sql, **kwargs).table.to_pylist()


def test_when_an_analyst_reads_deidentified_patients_then_only_consenting_rows_come_back_with_ssn_hidden(world):
    got = _rows(world, "ann", "SELECT patient_pseudonym, sex, ssn FROM deidentified.patients "
                "ORDER BY patient_pseudonym")
    expected = sorted(({"patient_pseudonym": world.pseudonyms[p["patient_id"]], "sex": p["sex"], "ssn": None}
                       for p in world.patients if p["consent_research"]), key=lambda r: r["patient_pseudonym"])
    assert got == expected


def test_when_an_analyst_reads_a_table_without_consent_then_the_filter_goes_through_patients(world):
    got = _rows(world, "ann", "SELECT icd10_code, count(*) AS n FROM deidentified.conditions GROUP BY 1 ORDER BY 1")
    counts: dict[str, int] = {}
    for i, p in enumerate(world.patients):
        if p["consent_research"]:
            code = "E11.9" if i % 4 == 0 else "I10"
            counts[code] = counts.get(code, 0) + 1
    assert got == [{"icd10_code": c, "n": n} for c, n in sorted(counts.items())]


def test_when_a_clinician_reads_raw_patients_then_plaintext_comes_back_for_their_facility_only(world):
    got = _rows(world, "cleo", "SELECT ssn, first_name, facility_id FROM raw.patients ORDER BY ssn")
    expected = sorted(({"ssn": p["ssn"], "first_name": p["first_name"], "facility_id": "F2"}
                       for p in world.patients if p["facility_id"] == "F2"), key=lambda r: r["ssn"])
    assert got == expected


def test_when_a_clinician_decrypts_then_the_decrypt_is_audited_with_the_facilitys_row_count(world):
    world.gateway.query(world.session("cleo"), "SELECT provider_npi FROM raw.encounters")
    events = [r.event for r in world.audit.events()[-6:]]
    decrypts = [e for e in events if e.action == AuditAction.DECRYPT]
    assert len(decrypts) == 1
    assert decrypts[0].principal == "user:cleo" and decrypts[0].columns == ("provider_npi",)
    assert decrypts[0].row_count == 2 * sum(1 for p in world.patients if p["facility_id"] == "F2")
    decisions = [e for e in events if e.action == AuditAction.POLICY_DECISION]
    assert {e.details["requested_action"] for e in decisions} == {"read", "decrypt"}


def test_when_a_clinician_reads_a_table_without_facility_then_rows_are_filtered_by_patient(world):
    got = _rows(world, "cleo", "SELECT count(*) AS n FROM raw.conditions")
    assert got == [{"n": sum(1 for p in world.patients if p["facility_id"] == "F2")}]


def test_when_a_clinician_has_no_facility_then_the_query_is_refused(world):
    with pytest.raises(AccessDeniedError, match="facility"):
        world.gateway.query(world.session("cleo-nofac"), "SELECT ssn FROM raw.patients")


def test_when_break_glass_is_used_then_every_facility_is_visible_and_it_is_audited(world):
    got = _rows(world, "cleo", "SELECT count(DISTINCT facility_id) AS n FROM raw.patients", purpose="emergency",
                break_glass_reason="cardiac arrest, patient transferred from another facility")
    assert got == [{"n": 3}]
    glass = [r for r in world.audit.events()[-4:] if r.event.action == AuditAction.BREAK_GLASS]
    assert len(glass) == 1 and "cardiac arrest" in glass[0].event.reason
    monitor = ActivityMonitor(world.lake, world.audit)
    raised = [a for a in monitor.alerts() if a["detector"] == "break_glass"]
    assert [a["evidence_seqs"] for a in raised] == [[glass[0].seq]] and raised[0]["severity"] == "critical"
    assert not [a for a in monitor.run() if a.detector == "break_glass"]  # the detector finds it stored already


def test_when_an_engineer_reads_raw_then_identifiers_are_null_and_quasi_identifiers_masked(world):
    got = _rows(world, "dan", "SELECT ssn, zip, sex, _record_hash, consent_research FROM raw.patients")
    assert len(got) == len(world.patients)
    # _record_hash is an unkeyed hash of the record, PHI included: a direct identifier, like the sealed ssn.
    assert {r["ssn"] for r in got} == {None} and {r["_record_hash"] for r in got} == {None}
    assert {r["zip"] for r in got} == {MASKED_VALUE} and {r["sex"] for r in got} == {MASKED_VALUE}
    assert sorted(r["consent_research"] for r in got) == sorted(p["consent_research"] for p in world.patients)


def test_when_comments_hide_text_then_they_are_dropped_and_the_query_runs(world):
    result = world.gateway.query(world.session("ann"),
                                 "SELECT count(*) AS n -- ; DROP TABLE x\nFROM deidentified.patients /* ; COPY */")
    assert result.table.to_pylist() == [{"n": sum(p["consent_research"] for p in world.patients)}]
    assert "DROP" not in result.sql and "COPY" not in result.sql


# Mask-bypass probes: each returns only what the masked, filtered view holds.
ANALYST_PROBES = [
    ("SELECT substr(ssn, 1, 3) AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT substring(ssn, 1, 3) || 'x' AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT concat(ssn, '') AS v FROM deidentified.patients WHERE sex <> ''", {None, ""}),
    ("SELECT CAST(ssn AS VARCHAR) AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT TRY_CAST(replace(ssn, '-', '') AS BIGINT) AS v FROM deidentified.patients WHERE sex <> ''", "refused"),
    ("SELECT lower(upper(ssn)) AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT length(ssn) AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT count(*) AS v FROM deidentified.patients WHERE sex <> '' AND ssn LIKE '1%'", {0}),
    ("SELECT count(*) AS v FROM deidentified.patients WHERE sex <> '' AND ssn IS NOT NULL", {0}),
    ("SELECT count(*) AS v FROM deidentified.patients WHERE sex <> '' AND ssn > '0'", {0}),
    ("SELECT count(DISTINCT ssn) AS v FROM deidentified.patients WHERE sex <> ''", "refused"),
    ("SELECT ssn AS v FROM deidentified.patients WHERE sex <> '' GROUP BY ssn", {None}),
    ("SELECT DISTINCT ssn AS v FROM deidentified.patients WHERE sex <> ''", {None}),
    ("SELECT max(ssn) AS v FROM deidentified.patients WHERE sex <> ''", "refused"),
    ("SELECT CASE WHEN ssn LIKE '10%' THEN 1 ELSE 0 END AS v FROM deidentified.patients WHERE sex <> ''", {0}),
    ("SELECT coalesce(ssn, 'none') AS v FROM deidentified.patients WHERE sex <> ''", {"none"}),
    ("WITH t AS (SELECT ssn AS s FROM deidentified.patients WHERE sex <> '') SELECT s AS v FROM t", {None}),
    ("SELECT v FROM (SELECT ssn AS v FROM deidentified.patients WHERE sex <> '') q", {None}),
    ("SELECT count(*) AS v FROM deidentified.patients p JOIN deidentified.conditions c "
     "ON p.ssn = c.patient_pseudonym AND p.sex <> ''", {0}),
    ("SELECT count(*) AS v FROM deidentified.patients WHERE consent_research = false", {0}),
    ("SELECT count(*) AS v FROM deidentified.patients WHERE NOT consent_research", {0}),
]


def test_when_a_query_touches_only_hidden_columns_then_it_is_refused(world):
    with pytest.raises(AccessDeniedError, match=r"every requested column of deidentified\.patients is hidden"):
        world.gateway.query(world.session("ann"), "SELECT substr(ssn, 1, 3) FROM deidentified.patients")


@pytest.mark.parametrize(("sql", "allowed"), ANALYST_PROBES, ids=[f"p{i:02d}" for i in range(len(ANALYST_PROBES))])
def test_when_an_analyst_probes_a_masked_column_then_nothing_beyond_the_mask_is_revealed(world, sql, allowed):
    if allowed == "refused":
        with pytest.raises(AccessDeniedError):
            world.gateway.query(world.session("ann"), sql)
        return
    got = {r["v"] for r in _rows(world, "ann", sql)}
    assert got <= allowed


def test_when_a_masked_column_orders_the_rows_then_the_order_reveals_nothing(world):
    # Zip codes rise with the patient number and consent does not: ordered by the real zip, consent would interleave.
    got = [r["consent_research"] for r in _rows(world, "dan", "SELECT consent_research FROM raw.patients "
                                                               "ORDER BY zip DESC, consent_research")]
    assert got == sorted(got) and len(set(got)) == 2
    values = _rows(world, "dan", "SELECT count(zip) AS c FROM (SELECT zip FROM raw.patients) q")
    assert values == [{"c": len(world.patients)}]  # counting non-null values stays true under ****


@pytest.mark.parametrize("sql", ["SELECT max(length(z)) FROM (SELECT zip AS z FROM raw.patients) q",
                                 "WITH t AS (SELECT upper(zip) AS z FROM raw.patients) SELECT count(z) FROM t",
                                 "WITH t AS (SELECT zip FROM raw.patients) SELECT count(DISTINCT zip) FROM t"])
def test_when_a_masked_column_reaches_an_aggregate_through_a_cte_then_it_is_refused_too(world, sql):
    with pytest.raises(AccessDeniedError, match=r"over raw\.patients\.zip would not be a true answer"):
        world.gateway.query(world.session("dan"), sql)


@pytest.mark.parametrize("sql", ["SELECT count(DISTINCT zip) FROM raw.patients", "SELECT min(zip) FROM raw.patients",
                                 "SELECT max(length(zip)) FROM raw.patients",
                                 "SELECT count(*) FILTER (WHERE zip LIKE '1%') FROM raw.patients"])
def test_when_an_aggregate_reads_a_masked_column_then_it_is_refused_with_the_reason(world, sql):
    with pytest.raises(AccessDeniedError, match=r"over raw\.patients\.zip would not be a true answer: the column is "
                                                r"masked to \*\*\*\*"):
        world.gateway.query(world.session("dan"), sql)


@pytest.mark.parametrize("sql", [
    "SELECT DISTINCT facility_id AS v FROM raw.patients",
    "SELECT facility_id AS v FROM raw.patients WHERE facility_id <> 'F2' OR true ORDER BY ssn DESC",
    "SELECT facility_id AS v FROM raw.patients GROUP BY facility_id HAVING count(*) > 0",
    "SELECT e.facility_id AS v FROM raw.encounters e JOIN raw.patients p ON e.patient_pseudonym = p.patient_pseudonym",
])
def test_when_a_clinician_probes_other_facilities_then_only_their_facility_is_seen(world, sql):
    assert {r["v"] for r in _rows(world, "cleo", sql)} == {"F2"}


def test_when_a_table_list_is_asked_then_only_granted_tables_are_named(world):
    assert world.gateway.tables(world.session("ann")) == ["deidentified.conditions", "deidentified.patients"]
    assert world.gateway.tables(world.session("cleo")) == ["raw.conditions", "raw.encounters", "raw.patients"]
    # The security administrator reads the audit zone only (it holds no PHI).
    admin = world.gateway.tables(world.session("sam"))
    assert admin and all(t.startswith("audit.") for t in admin)
    assert world.gateway.tables(world.session("otto")) == admin


def test_when_a_query_returns_then_the_result_reports_masks_and_converts(world):
    result = world.gateway.query(world.session("ann"), "SELECT sex, ssn FROM deidentified.patients LIMIT 3")
    assert result.masks() == {"deidentified.patients": {"ssn": "null"}}
    assert result.to_csv().splitlines()[0] == '"sex","ssn"'
    assert list(result.to_pandas().columns) == ["sex", "ssn"]


def test_when_the_keys_live_in_openbao_then_a_clinician_decrypts_through_vault(lake, vault_provider, kek_name,
                                                                               tmp_path, keyring):
    audit = AuditLog(lake, keyring)
    plake = ProtectedLake(lake, vault_provider, principal="svc:ingest", kek_name=kek_name, audit=audit)
    rows = [{"ssn": f"{i:03d}-00-0000", "facility_id": "F1" if i % 2 else "F2", "_record_hash": f"h{i}",
             "patient_pseudonym": f"ps1_test_{i:04x}"} for i in range(6)]
    import pyarrow as pa

    plake.append("raw", "patients", pa.Table.from_pylist(rows),
                 Protection(encrypted=("ssn",), row_key="_record_hash", patient_key="patient_pseudonym"),
                 commit=CommitInfo(principal="svc:ingest"))
    store = PrincipalStore(tmp_path / "principals.json")
    store.add(Principal("cleo", Role.CLINICIAN, facility="F1", purposes=("treatment",)))
    gateway = QueryGateway(lake, vault_provider, PolicyEngine(load_policy(), audit=audit), audit=audit,
                           kek_name=kek_name)
    got = gateway.query(store.local_session("cleo", operator="tester"), "SELECT ssn FROM raw.patients ORDER BY 1")
    assert got.table.column("ssn").to_pylist() == [r["ssn"] for r in rows if r["facility_id"] == "F1"]


def test_when_a_query_runs_too_long_then_it_is_stopped_and_refused(world):
    slow = QueryGateway(world.lake, world.provider, world.engine, audit=world.audit, timeout_seconds=0.2)
    # 24^5 distinct concatenations: seconds of work, far past the 0.2 s limit.
    sql = ("SELECT count(DISTINCT a.zip3 || b.patient_pseudonym || c.patient_pseudonym || d.patient_pseudonym "
           "|| e.patient_pseudonym) AS n FROM deidentified.patients a, deidentified.patients b, "
           "deidentified.patients c, deidentified.patients d, deidentified.patients e")
    with pytest.raises(AccessDeniedError, match="ran longer than"):
        slow.query(world.session("ann"), sql)
    assert "ran longer than" in world.audit.events()[-1].event.reason
    again = slow.query(world.session("ann"), "SELECT count(*) AS n FROM deidentified.patients")
    assert again.table.to_pylist() == [{"n": sum(p["consent_research"] for p in world.patients)}]


def test_when_the_row_filter_column_is_encrypted_then_the_query_is_refused(lake, keyring, tmp_path):
    import pyarrow as pa

    audit = AuditLog(lake, keyring)
    plake = ProtectedLake(lake, keyring, principal="svc:ingest", audit=audit)
    rows = [{"facility_id": f"F{i % 2}", "note": "x", "_record_hash": f"h{i}"} for i in range(4)]
    plake.append("raw", "odd", pa.Table.from_pylist(rows), Protection(encrypted=("facility_id",),
                                                                      row_key="_record_hash"))
    store = PrincipalStore(tmp_path / "principals.json")
    store.add(Principal("cleo", Role.CLINICIAN, facility="F1", purposes=("treatment",)))
    gateway = QueryGateway(lake, keyring, PolicyEngine(load_policy(), audit=audit), audit=audit)
    with pytest.raises(AccessDeniedError, match="encrypted and cannot drive a row filter"):
        gateway.query(store.local_session("cleo", operator="tester"), "SELECT note FROM raw.odd")
    assert audit.events()[-1].event.decision == "deny"


def test_when_an_analyst_reads_predictions_row_by_row_then_it_is_refused_and_no_patient_is_shown(lake, keyring,
                                                                                                 tmp_path):
    import pyarrow as pa

    audit = AuditLog(lake, keyring)
    commit = CommitInfo(principal="test")
    people = [f"ps1_test_{i:04x}" for i in range(12)]
    lake.append("raw", "patients", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "consent_research": i != 0, "facility_id": "F1"} for i, p in enumerate(people)]),
        commit=commit)
    lake.append("predictions", "diagnoses", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "probability": i / 20} for i, p in enumerate(people)]), commit=commit)
    store = PrincipalStore(tmp_path / "principals.json")
    store.add(Principal("ann", Role.ANALYST, purposes=("research",)))
    gateway = QueryGateway(lake, keyring, PolicyEngine(load_policy(), audit=audit), audit=audit)
    session = store.local_session("ann", operator="tester")
    for sql in ("SELECT probability FROM predictions.diagnoses",
                "SELECT DISTINCT probability FROM predictions.diagnoses",
                "WITH p AS (SELECT probability FROM predictions.diagnoses) SELECT avg(probability) FROM p"):
        with pytest.raises(AccessDeniedError, match="released to user:ann only as aggregates"):
            gateway.query(session, sql)
    grouped = gateway.query(session, "SELECT patient_pseudonym, count(*) AS n, max(probability) AS top "
                                     "FROM predictions.diagnoses GROUP BY patient_pseudonym").table.to_pylist()
    assert grouped == [{"patient_pseudonym": None, "n": 11, "top": 0.55}]  # patient 0 did not consent; none named
    assert gateway.query(session, "SELECT round(avg(probability), 4) AS a FROM predictions.diagnoses"
                         ).table.to_pylist() == [{"a": round(sum(i / 20 for i in range(1, 12)) / 11, 4)}]


def test_when_the_gateway_is_given_a_hooked_lake_then_each_read_is_recorded_once_by_the_gateway(world):
    seen = []
    gateway = QueryGateway(world.lake.with_access_hook(seen.append), world.provider, world.engine, audit=world.audit)
    before = len(world.audit.events())

    gateway.query(world.session("ann"), "SELECT sex FROM deidentified.patients LIMIT 3")

    reads = [r.event for r in world.audit.events()[before:] if r.event.action == AuditAction.READ]
    assert seen == [] and [(e.table_name, e.details["via"]) for e in reads] == [("patients", "gateway")]


def test_when_a_patients_consent_is_null_then_research_reads_treat_it_as_no_consent(lake, keyring, tmp_path):
    import pyarrow as pa

    # Real exports carry no consent (FHIR Patient, HL7 PID): the column is optional, and a null must never pass.
    audit = AuditLog(lake, keyring)
    commit = CommitInfo(principal="test")
    people = [f"ps1_test_{i:04x}" for i in range(6)]
    consent = [True, None, False, True, None, True]
    patients = pa.Table.from_pylist([{"patient_pseudonym": p, "consent_research": c, "sex": "F"}
                                     for p, c in zip(people, consent, strict=True)],
                                    schema=pa.schema([("patient_pseudonym", pa.string()),
                                                      ("consent_research", pa.bool_()), ("sex", pa.string())]))
    lake.append("raw", "patients", patients, commit=commit)
    lake.append("deidentified", "patients", patients, commit=commit)
    lake.append("predictions", "diagnoses", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "probability": i / 10} for i, p in enumerate(people)]), commit=commit)
    store = PrincipalStore(tmp_path / "principals.json")
    store.add(Principal("ann", Role.ANALYST, purposes=("research",)))
    # three consenting patients: a cell that small-cell suppression keeps only with k at most 3
    gateway = QueryGateway(lake, keyring, PolicyEngine(load_policy(), audit=audit), audit=audit, small_cell_k=2)
    session = store.local_session("ann", operator="tester")
    direct = gateway.query(session, "SELECT count(*) AS n FROM deidentified.patients").table.to_pylist()
    assert direct == [{"n": 3}]
    linked = gateway.query(session, "SELECT count(*) AS n, round(sum(probability), 4) AS s "
                                    "FROM predictions.diagnoses").table.to_pylist()
    assert linked == [{"n": 3, "s": 0.8}]
