"""What a clinician reads per prediction: model version, threshold, flag, calibrated probability, the features that
drove the score (readable names and the patient's values), out-of-profile reasons; and one current row per
patient."""

from __future__ import annotations

import json

import numpy as np

from analytics.flow import CURRENT_TABLE, PREDICTIONS_TABLE, diagnose
from analytics.names import display_name
from pipeline.lake import Lake, Zone


def test_when_diagnosing_then_every_row_carries_threshold_flag_and_its_top_contributors(t2d_run):
    local, ring, classify = t2d_run["settings"], t2d_run["provider"], t2d_run["classes"].classify
    result = diagnose(local, provider=ring, batch_id="explain", classify=classify)
    rows = Lake(local).read_pandas(Zone.PREDICTIONS, PREDICTIONS_TABLE)
    assert len(rows) == result["rows"] == 8000
    assert (rows["threshold"] == t2d_run["result"]["threshold"]).all()
    assert (rows["flag"] == (rows["probability"] >= rows["threshold"])).all()
    features = set(json.loads((t2d_run["run_dir"] / "state.json").read_text())["contract"]["features"])
    for cell in rows["top_features"]:
        top = json.loads(cell)
        assert len(top) == local.governance.top_features
        assert {t["feature"] for t in top} <= features
        assert all(t["name"] == display_name(t["feature"]) and not t["name"].startswith("obs_") for t in top)
        sizes = [abs(t["contribution"]) for t in top]
        assert sizes == sorted(sizes, reverse=True)
    # The flagged patient with the highest probability: what pushed the score up is among its top features.
    riskiest = json.loads(rows.sort_values("probability").iloc[-1]["top_features"])
    assert max(t["contribution"] for t in riskiest) > 0
    reasons = rows["out_of_profile_reasons"].map(json.loads)
    assert (reasons.map(len).gt(0) == rows["out_of_profile"]).all()
    for listed in reasons[reasons.map(len) > 0].head(20):
        for r in listed:
            assert r["side"] in {"below", "above"} and r["feature"] in features
            assert (r["value"] < r["bound"]) if r["side"] == "below" else (r["value"] > r["bound"])


def test_when_diagnosed_twice_then_current_holds_one_row_per_patient_from_the_latest_run(t2d_run):
    local, ring, classify = t2d_run["settings"], t2d_run["provider"], t2d_run["classes"].classify
    diagnose(local, provider=ring, batch_id="monday", classify=classify)
    second = diagnose(local, provider=ring, batch_id="tuesday", classify=classify)
    current = Lake(local).read_pandas(Zone.PREDICTIONS, CURRENT_TABLE)
    assert second["current_rows"] == len(current) == current["patient_pseudonym"].nunique() == 8000
    assert set(current["model_version"]) == {t2d_run["result"]["promotion"]["current"]}
    assert set(current["batch_id"]) == {"tuesday"}
    assert np.isfinite(current["probability"]).all()
