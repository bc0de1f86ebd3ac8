"""Adversarial augmentation on the served model, measured where a difference shows (hundreds of flagged positives).

The synthetic T2D population (default 40,000 patients, features built on Spark with the shipped T2D config) is
split by patient; per seed the served model is trained twice as training trains it
(:func:`bench.t2d_examples.fit_served`: first grid candidate, the membership defence as
``analytics.membership_defence`` applies it, Platt calibration, rounded output, threshold at the target
sensitivity): once without and once with adversarial augmentation (``analytics.adversarial_augmentation``,
adversarial versions of up to ``--augment`` flagged training positives added to the train split). Each is
attacked (:func:`analytics.robustness.attack`, the bounds training uses) on up to ``--samples`` flagged true
positives of the test split. Printed per seed and pooled: success rate with its 95 % (Wilson) interval, clean
test AUROC of the served probability, and the one-sided p-value that augmentation lowers the success rate.

``--variants`` also runs :func:`analytics.robustness.evaluate_robustness` on the model without augmentation:
the retrained baseline, monotone constraints (the clinical directions below, no longer in the shipped config
because they measured no gain), adversarial augmentation and input-profile refusal.

Run: ``python -m bench.evasion_bench [--patients 40000] [--seeds 3] [--samples 1000] [--augment 1000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import LABEL

# Clinically justified directions (risk never falls as HbA1c, glucose, BMI, triglycerides or age rise, nor as HDL
# falls): the monotone-constraint variant of --variants.
MONOTONE = {"obs_4548_4_last": 1, "obs_2345_7_last": 1, "obs_39156_5_last": 1, "obs_2571_8_last": 1,
            "obs_2085_9_last": -1, "age_band_lower": 1}
SERVED = ("served", "served_augmented")
VARIANTS = ("undefended", "baseline_retrained", "monotone", "adversarial_augmentation", "profile_refusal")


def attacked(model: Any, test: pd.DataFrame, config: Any, samples: int, seed: int) -> dict[str, Any]:
    """Attack up to ``samples`` flagged true positives of ``test`` on the served model; success and clean AUROC."""
    from sklearn.metrics import roc_auc_score

    from analytics.robustness import attack, flagged_positives, model_attack_bounds

    x = flagged_positives(model.booster, model.calibrator, model.threshold, test, model.features, samples,
                           np.random.default_rng(seed))
    result = attack(model.booster, model.calibrator, model.threshold, x, model.features,
                    model_attack_bounds(model, config), model.profile)
    return {**result.summary(), "auroc": float(roc_auc_score(test[LABEL], model.predict_proba(test))),
            "threshold": model.threshold, "augmentation": model.defences.get("adversarial_augmentation")}


def measure(examples: pd.DataFrame, contract: Any, config: Any, seed: int, samples: int, augment: int,
            variants: bool) -> dict[str, Any]:
    from analytics.robustness import evaluate_robustness, lower_rate_p, model_attack_bounds
    from bench.t2d_examples import fit_served

    plain = fit_served(examples, contract, config, seed)
    augmented = fit_served(examples, contract, config, seed, augmentation_examples=augment)
    out = {"served": attacked(plain["model"], plain["test"], config, samples, seed),
           "served_augmented": attacked(augmented["model"], augmented["test"], config, samples, seed)}
    a, b = out["served_augmented"], out["served"]
    a["p_lower"] = lower_rate_p(a["succeeded"], a["attacked"], b["succeeded"], b["attacked"])
    if variants:
        model = plain["model"]
        out["variants"] = evaluate_robustness(
            model, plain["train"], plain["calibration"], plain["test"], bounds=model_attack_bounds(model, config),
            monotone=MONOTONE, samples=samples, seed=seed, membership=False, augmentation_samples=augment)
    return out


def _row(label: str, v: dict[str, Any]) -> str:
    i = v.get("success_interval") or {}
    low, high = i.get("low"), i.get("high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    return (f"{label:>34}: {v['succeeded']:>4}/{v['attacked']:<4} = {v['success_rate']:.3f}{interval}, "
            f"clean AUROC {v['auroc']:.4f}" + (f", p {v['p_lower']:.3g}" if v.get("p_lower") is not None else "")
            + (f", kept {v['kept']}" if "kept" in v else "")
            + (f", clean rows refused {v['clean_refused']:.3f}" if "clean_refused" in v else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=40_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the built T2D examples for the next run (synthetic rows only)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--augment", type=int, default=1000)
    parser.add_argument("--variants", action="store_true")
    args = parser.parse_args()
    from analytics.robustness import kept_defences, lower_rate_p, wilson
    from bench.t2d_examples import CONFIG, t2d_examples

    started = time.perf_counter()
    examples, contract, config = t2d_examples(args.patients, cache=args.cache)
    print(f"T2D: {args.patients:,} synthetic patients, {len(examples):,} labelled rows, "
          f"{int(examples[LABEL].sum()):,} positives ({CONFIG.name}); up to {args.samples} attacks per model, up "
          f"to {args.augment} adversarial training rows; features {time.perf_counter() - started:.0f} s")
    reports = []
    for seed in range(1, args.seeds + 1):
        started = time.perf_counter()
        report = measure(examples, contract, config, seed, args.samples, args.augment, args.variants)
        reports.append(report)
        for name in SERVED:
            extra = report[name]["augmentation"]
            print(f"seed {seed} " + _row(name, report[name])
                  + (f"; {extra['examples_added']} adversarial rows added ({extra['evaded']} evaded)" if extra else ""))
        for name in VARIANTS if args.variants else ():
            print(f"seed {seed} " + _row(f"variant {name}", report["variants"][name]))
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s")
    pooled: dict[str, Any] = {}
    for name in SERVED:
        succeeded = sum(r[name]["succeeded"] for r in reports)
        total = sum(r[name]["attacked"] for r in reports)
        low, high = wilson(succeeded, total)
        pooled[name] = {"succeeded": succeeded, "attacked": total, "success_rate": succeeded / total,
                        "success_interval": {"low": low, "high": high},
                        "auroc": float(np.mean([r[name]["auroc"] for r in reports]))}
    a, b = pooled["served_augmented"], pooled["served"]
    a["p_lower"] = lower_rate_p(a["succeeded"], a["attacked"], b["succeeded"], b["attacked"])
    for name in SERVED:
        print("pooled " + _row(name, pooled[name]))
    print(f"augmentation on the served model: success {b['success_rate']:.3f} → {a['success_rate']:.3f} "
          f"(p {a['p_lower']:.3g}), clean AUROC {b['auroc']:.4f} → {a['auroc']:.4f}")
    if args.variants:
        variants: dict[str, Any] = {}
        for name in VARIANTS:
            entries = [r["variants"][name] for r in reports]
            succeeded, total = sum(e["succeeded"] for e in entries), sum(e["attacked"] for e in entries)
            variants[name] = {"succeeded": succeeded, "attacked": total, "success_rate": succeeded / total,
                              "auroc": float(np.mean([e["auroc"] for e in entries]))}
            if name == "profile_refusal":
                variants[name]["clean_refused"] = float(np.mean([e["clean_refused"] for e in entries]))
                variants[name]["refuse_rate"] = entries[0]["refuse_rate"]
        kept = kept_defences(variants, 0.01)
        for name in VARIANTS:
            print("pooled " + _row(f"variant {name}", variants[name]))
        print(f"kept (pooled, retrained variants): {', '.join(kept) or 'none'}")


if __name__ == "__main__":
    main()
