"""The ``50_access`` demo step: granted and refused queries over whatever tables exist, or a clear skip."""

from __future__ import annotations

import pyarrow as pa
import pytest

from access.demo import step
from pipeline.lake import CommitInfo, Lake
from storage_security.protected import ProtectedLake, Protection

pytestmark = pytest.mark.e2e  # the demo's access step, whole


@pytest.fixture
def demo_settings(keyring_home):
    return keyring_home


def test_when_no_tables_exist_then_the_step_skips_with_a_note(demo_settings):
    settings, _ = demo_settings
    assert "skipped" in step(settings)


def test_when_raw_and_deidentified_tables_exist_then_granted_and_refused_queries_are_reported(demo_settings):
    settings, ring = demo_settings
    lake = Lake(settings)
    plake = ProtectedLake(lake, ring, principal="svc:ingest")
    rows = [{"ssn": f"{i:03d}-00-0000", "facility_id": f"F{i % 2}", "_record_hash": f"h{i}",
             "patient_pseudonym": f"ps1_demo_{i:04x}", "consent_research": True} for i in range(8)]
    plake.append("raw", "patients", pa.Table.from_pylist(rows),
                 Protection(encrypted=("ssn",), row_key="_record_hash", patient_key="patient_pseudonym"))
    lake.append("deidentified", "patients", pa.Table.from_pylist(
        [{"patient_pseudonym": r["patient_pseudonym"], "consent_research": True, "sex": "F"} for r in rows]),
        commit=CommitInfo(principal="test"))
    result = step(settings)
    outcome = {(q["principal"], q["sql"].split(" FROM ")[-1]): q["granted"] for q in result["queries"]}
    assert outcome[("demo-analyst", "deidentified.patients")] is True
    assert outcome[("demo-analyst", "raw.patients")] is False
    assert outcome[("demo-clinician", "raw.patients")] is True
    clinician_rows = [q for q in result["queries"] if q["principal"] == "demo-clinician" and "count" in q["sql"]]
    assert clinician_rows[0]["rows"] == 1
    assert result["refused"] >= 3 and result["tables_for_analyst"] == ["deidentified.patients"]
    assert "000-00-0000" not in str(result)
    again = step(settings)  # principals exist already: the step is re-runnable
    assert again["granted"] == result["granted"]


def test_when_predictions_exist_then_the_analyst_gets_true_aggregates_and_a_hidden_column_is_refused(demo_settings):
    settings, _ = demo_settings
    lake = Lake(settings)
    people = [f"ps1_demo_{i:04x}" for i in range(10)]
    lake.append("raw", "patients", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "consent_research": i != 0, "facility_id": "F1"} for i, p in enumerate(people)]),
        commit=CommitInfo(principal="test"))
    lake.append("deidentified", "patients", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "consent_research": i != 0, "sex": "F"} for i, p in enumerate(people)]),
        commit=CommitInfo(principal="test"))
    lake.append("predictions", "diagnoses", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "model_version": "1", "probability": i / 10, "flag": i >= 5}
         for i, p in enumerate(people)]), commit=CommitInfo(principal="test"))
    result = step(settings)
    by_sql = {q["sql"]: q for q in result["queries"]}
    aggregate = next(q for sql, q in by_sql.items() if "avg(probability), 3)" in sql)
    assert aggregate["granted"] and aggregate["columns"] == ["model_version", "round_avg_probability", "count_flag"]
    assert any("row filter consent" in n for n in aggregate["notices"])
    hidden = next(q for sql, q in by_sql.items() if "count(DISTINCT patient_pseudonym)" in sql)
    assert not hidden["granted"] and "would not be a true answer" in hidden["reason"]
    assert by_sql["DESCRIBE predictions.diagnoses"]["granted"]
