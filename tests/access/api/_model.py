"""A small T2D-shaped model, trained here in a second and registered (signed, promoted) in a test home.

The API tests need a *current signed model* in the registry, not a good one: this trains xgboost on 1,500
synthetic rows whose features are named and built the way ``analytics.features`` names them (LOINC ``_last``/
``_mean``/``_trend``, ICD-10-CM and RxNorm indicators, the age band's lower bound), calibrates it, profiles it and
goes through ``ModelRegistry.register`` and ``promote`` — the same signing and verification the trained models get.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

OBS = ["4548-4", "2345-7", "39156-5", "8480-6", "8462-4", "2093-3", "2085-9"]
DX = ["E66.9", "I10", "R73.03"]
RX = ["860975"]
MODEL_NAME = "outcomes__t2d_within_1y"


def _name(code: str) -> str:
    return code.replace("-", "_").replace(".", "_").lower()


def features() -> list[str]:
    out = ["age_band_lower"]
    for code in OBS:
        out += [f"obs_{_name(code)}_{stat}" for stat in ("last", "mean", "trend")]
    return out + [f"dx_{_name(c)}" for c in DX] + [f"rx_{_name(c)}" for c in RX]


def register_model(settings: Any, provider: Any, *, seed: int = 7, promote: bool = True) -> dict[str, Any]:
    """Train, register and (by default) promote a model; returns its manifest."""
    import xgboost as xgb

    from analytics.registry import ModelRegistry
    from analytics.train import Calibrator

    rng = np.random.default_rng(seed)
    names = features()
    n = 1500
    cols = {"age_band_lower": rng.integers(4, 18, n) * 5.0}
    means = {"4548-4": (5.8, 0.8), "2345-7": (105, 25), "39156-5": (29, 5), "8480-6": (128, 15), "8462-4": (80, 9),
             "2093-3": (195, 35), "2085-9": (52, 12)}
    for code, (mu, sd) in means.items():
        v = rng.normal(mu, sd, n)
        cols[f"obs_{_name(code)}_last"] = v
        cols[f"obs_{_name(code)}_mean"] = v + rng.normal(0, sd / 5, n)
        cols[f"obs_{_name(code)}_trend"] = rng.normal(0, sd / 10, n)
    for code in DX + RX:
        prefix = "dx" if code in DX else "rx"
        cols[f"{prefix}_{_name(code)}"] = (rng.random(n) < 0.2).astype(float)
    x = np.column_stack([cols[f] for f in names])
    logit = 1.6 * (cols["obs_4548_4_last"] - 5.8) + 0.02 * (cols["obs_2345_7_last"] - 105) + cols["dx_r73_03"] - 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    booster = xgb.train({"max_depth": 3, "eta": 0.2, "objective": "binary:logistic", "seed": seed},
                        xgb.DMatrix(x, label=y, feature_names=names), num_boost_round=30)
    raw = booster.inplace_predict(x)
    calibrator = Calibrator.fit("platt", raw, y)
    profile = {f: {"min": float(np.nanmin(x[:, j])), "max": float(np.nanmax(x[:, j])), "missing": 0.0}
               for j, f in enumerate(names)}
    contract = {"table": "outcomes", "key": "patient_pseudonym", "row_id": "patient_pseudonym",
                "label": "t2d_within_1y", "positive_class": True, "index_time": None, "joined": True,
                "numeric": [], "categorical": {}, "patient_categorical": {}, "patient_bands": ["age_band"],
                "event_codes": {"obs": OBS, "dx": DX, "rx": RX}, "features": names,
                "provenance": {f: ["observations", "value"] for f in names}, "subgroups": [],
                "source_tables": ["conditions", "medications", "observations", "patients"],
                "code_maps": {"dx": {"code": "code", "system": "code_system", "target": "icd10cm",
                                     "map": {"snomed|38341003": "I10", "snomed|15777000": "R73.03"}}}}
    sources = {"events": [
        {"table": "observations", "code": "loinc_code", "value": "value", "time": "effective_time", "prefix": "obs",
         "fallback": {"code": "code", "system": "code_system", "target": "loinc", "crosswalks": []}},
        {"table": "conditions", "code": "icd10_code", "value": None, "time": "onset_date", "prefix": "dx",
         "fallback": {"code": "code", "system": "code_system", "target": "icd10cm", "crosswalks": []}},
        {"table": "medications", "code": "rxnorm_code", "value": None, "time": "start_date", "prefix": "rx",
         "fallback": {"code": "code", "system": "code_system", "target": "rxnorm", "crosswalks": []}}]}
    bundle = {"calibrator": {"method": calibrator.method, "params": calibrator.params}, "contract": contract,
              "params": {}, "profile": profile, "sources": sources, "threshold": 0.3}
    registry = ModelRegistry(settings, provider)
    manifest = registry.register(MODEL_NAME, booster_raw=bytes(booster.save_raw("ubj")), bundle=bundle,
                                 metrics={"auroc": 0.8}, table_versions={"outcomes": 0},
                                 data_sha256="0" * 64, fingerprint=f"api-test-{seed}")
    if promote:
        registry.promote(MODEL_NAME, manifest["version"], reason="api test model", principal="svc:test")
    return json.loads(json.dumps(manifest))
