"""UCI Heart Disease (tests/fixtures/tabular/heart_disease_uci.csv) as model rows: numeric features, label num > 0.

A third-party diagnostic table we did not generate, used by the privacy, poisoning and evasion experiments. Text
categories become one-hot columns, ``TRUE``/``FALSE`` flags 0/1, empty cells stay missing (xgboost's own
handling); the label is ``num > 0`` (any angiographic narrowing), the row key ``id``. No value is changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analytics.features import GROUP, LABEL, ROW_ID

CSV = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tabular" / "heart_disease_uci.csv"
_CATEGORIES = ("sex", "dataset", "cp", "restecg", "slope", "thal")
_FLAGS = ("fbs", "exang")


def load_heart(path: Path = CSV) -> tuple[pd.DataFrame, list[str]]:
    """The rows (features, ``label``, ``_row_id``, ``_group``) and the feature names."""
    raw = pd.read_csv(path)
    frame = raw.drop(columns=["id", "num", *_CATEGORIES, *_FLAGS])
    for flag in _FLAGS:
        frame[flag] = raw[flag].map({True: 1.0, False: 0.0, "TRUE": 1.0, "FALSE": 0.0})
    for column in _CATEGORIES:
        levels = raw[column].astype("string")
        for level in sorted(levels.dropna().unique()):
            name = f"{column}_{str(level).lower().replace(' ', '_').replace('-', '_')}"
            frame[name] = np.where(levels.isna(), np.nan, (levels == level).astype(float))
    features = list(frame.columns)
    frame = frame.astype(float)
    frame[LABEL] = (raw["num"] > 0).astype(int)
    frame[ROW_ID] = raw["id"].astype(str)
    frame[GROUP] = raw["id"].astype(str)
    return frame, features
