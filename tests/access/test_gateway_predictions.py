"""The issue's case on a demo-like home: an analyst's prediction aggregates are true, a masked one is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from access.gateway import QueryGateway
from access.principals import Principal, PrincipalStore, Role
from pipeline.errors import AccessDeniedError
from pipeline.lake import CommitInfo, Lake

PATIENTS = 60


@pytest.fixture
def home(keyring_home):
    """A home as the demo leaves it: raw patients with consent, two model versions' predictions of every patient."""
    settings, _ = keyring_home
    lake = Lake(settings)
    commit = CommitInfo(principal="test")
    people = [f"ps1_demo_{i:04x}" for i in range(PATIENTS)]
    consent = [i % 3 != 0 for i in range(PATIENTS)]
    lake.append("raw", "patients", pa.Table.from_pylist(
        [{"patient_pseudonym": p, "consent_research": c, "facility_id": f"F{i % 2}"}
         for i, (p, c) in enumerate(zip(people, consent, strict=True))]), commit=commit)
    rows = []
    for version in ("1", "2"):
        for i, person in enumerate(people):
            probability = ((i * 37 + int(version) * 11) % 100) / 100
            rows.append({"row_key": f"rk{i}", "patient_pseudonym": person, "model_version": version,
                         "threshold": 0.5, "probability": probability, "flag": probability >= 0.5,
                         "top_features": '[{"feature": "hba1c", "value": 6.4}]', "out_of_profile": False,
                         "out_of_profile_reasons": "[]", "drift_status": "ok", "batch_id": f"b{version}",
                         "scored_at": datetime(2026, 11, int(version), tzinfo=UTC)})
    lake.append("predictions", "diagnoses", pa.Table.from_pylist(rows), commit=commit)
    store = PrincipalStore.from_settings(settings)
    store.add(Principal("ann", Role.ANALYST, purposes=("research",)))
    consenting = [r for r in rows if consent[int(r["row_key"][2:])]]
    return settings, store.local_session("ann", operator="tester"), consenting, rows


def test_when_an_analyst_aggregates_predictions_then_the_numbers_are_true_and_the_filter_is_reported(home):
    settings, session, consenting, rows = home
    gateway = QueryGateway.from_settings(settings)
    result = gateway.query(session, "SELECT model_version, round(avg(probability), 6), count(*) FILTER (WHERE flag) "
                                    "FROM predictions.diagnoses GROUP BY model_version ORDER BY model_version")
    expected = []
    for version in ("1", "2"):
        mine = [r for r in consenting if r["model_version"] == version]
        expected.append({"model_version": version,
                         "round_avg_probability": round(sum(r["probability"] for r in mine) / len(mine), 6),
                         "count_flag": sum(r["flag"] for r in mine)})
    assert result.table.to_pylist() == expected
    assert all(e["count_flag"] > 0 for e in expected)
    assert result.withheld()["row_filters"] == [{
        "table": "predictions.diagnoses", "filter": "consent", "description": "patients who consented to research only",
        "rows_removed": len(rows) - len(consenting)}]


@pytest.mark.parametrize("sql", ["SELECT model_version, count(row_key) FROM predictions.diagnoses GROUP BY 1",
                                 "SELECT model_version, count(DISTINCT patient_pseudonym) FROM predictions.diagnoses "
                                 "GROUP BY model_version",
                                 "SELECT avg(probability), max(top_features) FROM predictions.diagnoses"])
def test_when_an_analyst_aggregates_a_hidden_prediction_column_then_it_is_refused_not_zero(home, sql):
    settings, session, _, _ = home
    with pytest.raises(AccessDeniedError, match=r"would not be a true answer: the column is hidden \(masked to null\)"):
        QueryGateway.from_settings(settings).query(session, sql)


def test_when_an_analyst_describes_predictions_then_the_patient_and_its_values_are_not_listed(home):
    settings, session, _, _ = home
    names = [c["name"] for c in QueryGateway.from_settings(settings).describe(session, "predictions.diagnoses")]
    assert "probability" in names and "flag" in names and "model_version" in names
    assert not {"patient_pseudonym", "row_key", "top_features", "out_of_profile_reasons"} & set(names)
