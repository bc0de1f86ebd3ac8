"""Evasion defences compared at a size where a difference is measurable (hundreds of flagged positives attacked).

The synthetic T2D population (default 40,000 patients, features built on Spark with the shipped T2D config) is
split by patient; per seed a model is trained as training does (first grid candidate, single-node xgboost, Platt
calibration, threshold at the target sensitivity on the calibration split) and
:func:`analytics.robustness.evaluate_robustness` attacks every flagged true positive of the test split (up to
``--samples``) on the model, the retrained baseline, and each defence: monotone constraints, adversarial
augmentation, input-profile refusal. Printed per seed and pooled over seeds: success rate with its 95 % (Wilson)
interval, clean AUROC, and whether the defence is kept (significantly lower success than the baseline, p < 0.05,
at a clean-AUROC cost of at most 0.01).

Run: ``python -m bench.evasion_bench [--patients 40000] [--seeds 3] [--samples 1000]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import LABEL

VARIANTS = ("undefended", "baseline_retrained", "monotone", "adversarial_augmentation", "profile_refusal")


def measure(examples: pd.DataFrame, contract: Any, config: Any, seed: int, samples: int) -> dict[str, Any]:
    from analytics.robustness import attack_bounds, evaluate_robustness
    from analytics.train import TrainedModel, choose_threshold, profile
    from bench.t2d_examples import fit_default

    features = contract.features
    fit = fit_default(examples, features, config, seed)
    train, cal, test, params = fit["train"], fit["calibration"], fit["test"], fit["params"]
    booster, calibrator = fit["booster"], fit["calibrator"]
    model = TrainedModel(booster=booster, contract=contract, calibrator=calibrator, threshold=0.5, params=params,
                         profile=profile(train, features, seed=seed))
    model.threshold = choose_threshold(model.predict_proba(cal), cal[LABEL].to_numpy(),
                                       float(config.target_sensitivity or 0.85))
    attackable = [f for f in features if f.startswith("obs_") and not f.endswith("_trend")]
    bounds = attack_bounds(features, model.profile, config.attack_bounds, config.attack_epsilon, attackable)
    return evaluate_robustness(model, train, cal, test, bounds=bounds, monotone=config.monotone, samples=samples,
                               seed=seed, membership=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=40_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    from analytics.robustness import kept_defences, wilson
    from bench.t2d_examples import CONFIG, t2d_examples

    examples, contract, config = t2d_examples(args.patients)
    print(f"T2D: {args.patients:,} synthetic patients, {len(examples):,} labelled rows, "
          f"{int(examples[LABEL].sum()):,} positives ({CONFIG.name}); up to {args.samples} attacks per variant")
    reports = []
    for seed in range(1, args.seeds + 1):
        started = time.perf_counter()
        report = measure(examples, contract, config, seed, args.samples)
        reports.append(report)
        for name in VARIANTS:
            v = report[name]
            i = v["success_interval"]
            print(f"seed {seed} {name:>25}: {v['succeeded']:>4}/{v['attacked']:<4} = {v['success_rate']:.3f} "
                  f"[{i['low']:.3f}, {i['high']:.3f}], clean AUROC {v['auroc']:.4f}"
                  + (f", kept {v['kept']} (p {v['p_lower']:.3g})" if "kept" in v else "")
                  + (f", clean rows refused {v['clean_refused']:.3f}" if "clean_refused" in v else ""))
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s")
    pooled: dict[str, Any] = {}
    for name in VARIANTS:
        succeeded = sum(r[name]["succeeded"] for r in reports)
        attacked = sum(r[name]["attacked"] for r in reports)
        auroc = float(np.mean([r[name]["auroc"] for r in reports]))
        pooled[name] = {"succeeded": succeeded, "attacked": attacked, "success_rate": succeeded / attacked,
                        "auroc": auroc}
        if name == "profile_refusal":
            pooled[name]["clean_refused"] = float(np.mean([r[name]["clean_refused"] for r in reports]))
            pooled[name]["refuse_rate"] = reports[0][name]["refuse_rate"]
    kept = kept_defences(pooled, 0.01)
    for name in VARIANTS:
        v = pooled[name]
        low, high = wilson(v["succeeded"], v["attacked"])
        print(f"pooled {name:>25}: {v['succeeded']}/{v['attacked']} = {v['success_rate']:.3f} [{low:.3f}, {high:.3f}], "
              f"clean AUROC {v['auroc']:.4f}" + (f", p {v['p_lower']:.3g}" if "p_lower" in v else ""))
    print(f"kept (pooled): {', '.join(kept) or 'none'}")


if __name__ == "__main__":
    main()
