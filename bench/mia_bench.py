"""Membership inference on the served model, with and without the defence (analytics.privacy), side by side.

Two populations, each split by patient into train / calibration / test as training splits them:

- the synthetic T2D population (``pipeline.synthetic``, features built on Spark with the shipped T2D config);
- UCI Heart Disease (920 patients we did not generate, label ``num > 0``), 50 / 20 / 30.

The model is xgboost with the training defaults (the first grid candidate, ``scale_pos_weight`` from the labels,
Platt calibration), as :func:`analytics.train.train` fits it. Printed per population and seed: attack AUROC
(members = training rows vs non-members = test rows, equal numbers), advantage, TPR at 1 % FPR, and the clean
test AUROC, undefended and defended; then the mean over seeds.

Run: ``python -m bench.mia_bench [--patients 20000] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd


def measure(examples: pd.DataFrame, features: list[str], config: Any, seed: int) -> dict[str, Any]:
    """Train the default model on the train split and run :func:`analytics.privacy.membership_report`."""
    from analytics.privacy import membership_report
    from analytics.train import matrix
    from bench.t2d_examples import fit_default

    fit = fit_default(examples, features, config, seed)
    train, cal, test, params = fit["train"], fit["calibration"], fit["test"], fit["params"]
    booster, calibrator = fit["booster"], fit["calibrator"]

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return calibrator.apply(booster.inplace_predict(matrix(frame, features)))

    return membership_report(predict, train, cal, test, features, params, calibration_method=config.calibration,
                             seed=seed)


def _line(name: str, seed: Any, r: dict[str, Any]) -> str:
    u, d = r["undefended"], r["defended"]
    return (f"{name:>10} seed {seed}: attack AUROC {u['attack_auroc']:.3f} → {d['attack_auroc']:.3f} "
            f"(advantage {u['advantage']:.3f} → {d['advantage']:.3f}; TPR@1%FPR {u['tpr_at_fpr']:.3f} → "
            f"{d['tpr_at_fpr']:.3f}); clean AUROC {u['clean_auroc']:.3f} → {d['clean_auroc']:.3f}; "
            f"{r['members']} members vs {r['non_members']} non-members")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    from dataclasses import asdict

    from analytics.config import load_train_config
    from analytics.privacy import MembershipDefence
    from bench.t2d_examples import CONFIG, t2d_examples
    from bench.uci_heart import load_heart
    from pipeline.settings import load_settings

    t2d, t2d_contract, t2d_config = t2d_examples(args.patients)
    t2d_features = t2d_contract.features
    heart, heart_features = load_heart()
    heart_config = load_train_config(None, load_settings(), test_fraction=0.3, calibration_fraction=0.2)
    print(f"T2D: {args.patients:,} synthetic patients, {len(t2d):,} labelled rows ({CONFIG.name}); "
          f"UCI Heart Disease: {len(heart)} patients. Defence: MembershipDefence() = {asdict(MembershipDefence())}.")
    for name, frame, features, config in (("T2D", t2d, t2d_features, t2d_config),
                                          ("UCI heart", heart, heart_features, heart_config)):
        results = [measure(frame, features, config, seed) for seed in range(1, args.seeds + 1)]
        for seed, r in enumerate(results, start=1):
            print(_line(name, seed, r))

        def mean(key: str, side: str, rs: list[dict[str, Any]] = results) -> float:
            return float(np.mean([r[side][key] for r in rs]))

        print(f"{name:>10} mean: attack AUROC {mean('attack_auroc', 'undefended'):.3f} → "
              f"{mean('attack_auroc', 'defended'):.3f}, TPR@1%FPR {mean('tpr_at_fpr', 'undefended'):.3f} → "
              f"{mean('tpr_at_fpr', 'defended'):.3f}, clean AUROC {mean('clean_auroc', 'undefended'):.3f} → "
              f"{mean('clean_auroc', 'defended'):.3f}")


if __name__ == "__main__":
    main()
