"""A tiny signed-registry fixture shared by the registry tests: a booster, a bundle and a card writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb


def booster_bytes() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    return bytes(xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, y), 5).save_raw("ubj"))


BUNDLE = {"calibrator": {"method": "platt", "params": {"a": [1.0], "b": [0.0]}}, "threshold": 0.5, "params": {},
          "contract": {"features": ["a", "b", "c"], "table": "t"}, "sources": {}, "profile": {}}


def write_card(manifest: dict, path: Path) -> None:
    path.write_text(f"<html><h1>{manifest['model_version']}</h1><p>AUROC {manifest['metrics']['auroc']}</p></html>")
