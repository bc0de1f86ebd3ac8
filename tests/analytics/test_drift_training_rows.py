"""Drift is measured only on rows the model did not train on: rows of its training snapshot are excluded (and
marked ``training_data``), rows added after it are assessed."""

from __future__ import annotations

import shutil

from analytics.flow import PREDICTIONS_TABLE, diagnose, drift_check
from pipeline.lake import CommitInfo, Lake, Zone


def test_when_new_rows_follow_the_training_snapshot_then_only_they_are_drift_assessed(t2d_run, tmp_path):
    local, ring, classify = t2d_run["settings"], t2d_run["provider"], t2d_run["classes"].classify
    copy = local.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    shutil.copytree(local.home, copy.home)
    shutil.copytree(local.lake_root, copy.lake_root)
    lake = Lake(copy)
    # 50 outcome rows of patients the training snapshot never held (the table grew after training).
    new = lake.read_pandas(Zone.DEIDENTIFIED, "outcomes").head(50)
    new["patient_pseudonym"] = [f"ps1_new{i:04d}" for i in range(len(new))]
    lake.append(Zone.DEIDENTIFIED, "outcomes", new, commit=CommitInfo(principal="svc:test", purpose="new rows"))

    checked = drift_check(copy, "outcomes", provider=ring, classify=classify)
    assert checked["rows"] == 50 and checked["excluded_training_rows"] == 8000
    assert "training snapshot" in checked["assessed"]

    result = diagnose(copy, "outcomes", provider=ring, batch_id="grown", classify=classify)
    rows = Lake(copy).read_pandas(Zone.PREDICTIONS, PREDICTIONS_TABLE)
    fresh = rows["patient_pseudonym"].str.startswith("ps1_new")
    assert result["rows"] == 8050 and result["drift"]["rows"] == 50
    assert set(rows.loc[~fresh, "drift_status"]) == {"training_data"}
    assert set(rows.loc[fresh, "drift_status"]) == {result["drift"]["status"]} <= {"ok", "drift"}
