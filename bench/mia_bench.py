"""Membership inference on the served model (membership defence applied) beside an undefended retraining.

Two populations, each split by patient into train / calibration / test as training splits them:

- the synthetic T2D population (``pipeline.synthetic``, features built on Spark with the shipped T2D config);
- UCI Heart Disease (920 patients we did not generate, label ``num > 0``), 50 / 20 / 30.

The served model is trained as training trains it with ``analytics.membership_defence`` on
(:func:`analytics.train.fit_calibrated`: the first grid candidate under the defence's regularisation, stopped
early on the calibration split, Platt calibration, probabilities rounded to 2 significant figures); the undefended
side is the same candidate retrained without the defence. Printed per population and seed: attack AUROC (members =
training rows vs non-members = test rows, equal numbers), advantage, TPR at 1 % FPR, and the clean test AUROC,
undefended → served (defended); then the mean over seeds.

Run: ``python -m bench.mia_bench [--patients 20000] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def measure(examples: pd.DataFrame, contract: Any, config: Any, seed: int) -> dict[str, Any]:
    """Train the served (defended) model and run :func:`analytics.privacy.membership_report` on it."""
    from analytics.privacy import MembershipDefence, membership_report
    from bench.t2d_examples import fit_served

    fit = fit_served(examples, contract, config, seed)
    model = fit["model"]
    return membership_report(model.predict_proba, fit["train"], fit["calibration"], fit["test"], contract.features,
                             model.params, defence=MembershipDefence(), applied=True,
                             undefended_params=fit["params"], calibration_method=config.calibration, seed=seed)


def heart_contract(features: list[str]) -> Any:
    """A feature contract for the UCI heart rows (a flat table: every feature its own numeric column)."""
    from analytics.features import FeatureContract

    return FeatureContract(table="heart_disease_uci", key=None, row_id="id", label="num", positive_class=None,
                           index_time=None, joined=False, numeric=list(features), features=list(features),
                           provenance={f: ("heart_disease_uci", f) for f in features})


def _line(name: str, seed: Any, r: dict[str, Any]) -> str:
    u, d = r["undefended"], r["defended"]
    return (f"{name:>10} seed {seed}: attack AUROC {u['attack_auroc']:.3f} → {d['attack_auroc']:.3f} "
            f"(advantage {u['advantage']:.3f} → {d['advantage']:.3f}; TPR@1%FPR {u['tpr_at_fpr']:.3f} → "
            f"{d['tpr_at_fpr']:.3f}); clean AUROC {u['clean_auroc']:.3f} → {d['clean_auroc']:.3f}; "
            f"{r['members']} members vs {r['non_members']} non-members; {r['defended']['rounds']} rounds served")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the built T2D examples for the next run (synthetic rows only)")
    args = parser.parse_args()
    from dataclasses import asdict

    from analytics.config import load_train_config
    from analytics.privacy import MembershipDefence
    from bench.t2d_examples import CONFIG, t2d_examples
    from bench.uci_heart import load_heart
    from pipeline.settings import load_settings

    t2d, t2d_contract, t2d_config = t2d_examples(args.patients, cache=args.cache)
    heart, heart_features = load_heart()
    heart_config = load_train_config(None, load_settings(), test_fraction=0.3, calibration_fraction=0.2)
    print(f"T2D: {args.patients:,} synthetic patients, {len(t2d):,} labelled rows ({CONFIG.name}); "
          f"UCI Heart Disease: {len(heart)} patients. Defence (applied to the served model): "
          f"MembershipDefence() = {asdict(MembershipDefence())}. Figures: undefended retraining → served.")
    for name, frame, contract, config in (("T2D", t2d, t2d_contract, t2d_config),
                                          ("UCI heart", heart, heart_contract(heart_features), heart_config)):
        results = [measure(frame, contract, config, seed) for seed in range(1, args.seeds + 1)]
        for seed, r in enumerate(results, start=1):
            print(_line(name, seed, r))

        def mean(key: str, side: str, rs: list[dict[str, Any]] = results) -> float:
            return float(np.mean([r[side][key] for r in rs]))

        print(f"{name:>10} mean: attack AUROC {mean('attack_auroc', 'undefended'):.3f} → "
              f"{mean('attack_auroc', 'defended'):.3f}, advantage {mean('advantage', 'undefended'):.3f} → "
              f"{mean('advantage', 'defended'):.3f}, TPR@1%FPR {mean('tpr_at_fpr', 'undefended'):.3f} → "
              f"{mean('tpr_at_fpr', 'defended'):.3f}, clean AUROC {mean('clean_auroc', 'undefended'):.3f} → "
              f"{mean('clean_auroc', 'defended'):.3f}")


if __name__ == "__main__":
    main()
