"""A predictions table written before the explanation columns existed gains them instead of losing them."""

from __future__ import annotations

import pyarrow as pa

from analytics.flow import PREDICTIONS_TABLE, widen_predictions
from pipeline.lake import Zone


def test_when_an_old_predictions_table_is_merged_into_then_the_new_columns_are_kept(lake):
    old = pa.table({"row_key": ["a"], "model_version": ["m@v1"], "probability": [0.1]})
    lake.merge(Zone.PREDICTIONS, PREDICTIONS_TABLE, old, keys=["row_key", "model_version"])
    new = pa.table({"row_key": ["a", "b"], "model_version": ["m@v1"] * 2, "probability": [0.2, 0.3],
                    "threshold": [0.5, 0.5], "top_features": ['[{"feature": "x"}]', "[]"]})
    assert widen_predictions(lake, new, "day2") == ["threshold", "top_features"]
    lake.merge(Zone.PREDICTIONS, PREDICTIONS_TABLE, new, keys=["row_key", "model_version"])
    rows = lake.read_pandas(Zone.PREDICTIONS, PREDICTIONS_TABLE).sort_values("row_key")
    assert rows["threshold"].tolist() == [0.5, 0.5] and rows["top_features"].tolist()[0] == '[{"feature": "x"}]'
    assert widen_predictions(lake, new, "day3") == []


def test_when_no_predictions_table_exists_then_nothing_is_added(lake):
    assert widen_predictions(lake, pa.table({"row_key": ["a"]}), "day1") == []
    assert not lake.exists(Zone.PREDICTIONS, PREDICTIONS_TABLE)
