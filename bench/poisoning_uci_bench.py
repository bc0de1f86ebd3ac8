"""Poisoning screen on a table we did not generate: UCI Heart Disease (920 patients, label num > 0).

Per seed the patients are split into trusted rows (40 %), a new batch (35 %), validation (10 %, the screen's
reject-on-negative-impact check) and a test set (15 %). A share of the batch's labels (5, 10, 20 %) is flipped,
the batch screened against the trusted rows with the production settings, and reported:

- recall: the share of flipped rows the screen flags; false-flag rate: the share of untouched batch rows it flags;
- test AUROC of a model trained on trusted + the clean batch, on trusted + the poisoned batch as it came
  (undefended) and on trusted + what the screen kept (defended): the drops are against the clean model.

Run: ``python -m bench.poisoning_uci_bench [--seeds 5]``. The numbers are means over seeds (± standard deviation).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd

from analytics.features import GROUP, LABEL, ROW_ID

RATES = (0.05, 0.10, 0.20)
PARAMS = {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.1, "tree_method": "hist", "random_state": 7,
          "min_child_weight": 1.0, "subsample": 1.0}


def _split(frame: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    cuts = np.cumsum([int(0.40 * len(frame)), int(0.35 * len(frame)), int(0.10 * len(frame))])
    parts = np.split(order, cuts)
    return {name: frame.iloc[np.sort(idx)] for name, idx in zip(("trusted", "batch", "validation", "test"), parts,
                                                                 strict=True)}


def one_run(frame: pd.DataFrame, features: list[str], rate: float, seed: int, *,
            false_flag_rate: float, max_auroc_loss: float) -> dict[str, Any]:
    """Flip ``rate`` of the batch's labels, screen it, and measure the screen and the models."""
    from sklearn.metrics import roc_auc_score

    from analytics.poisoning import screen
    from analytics.train import fit_local, matrix

    parts = _split(frame, seed)
    batch = parts["batch"].copy()
    rng = np.random.default_rng(seed + 1000)
    flipped_idx = rng.permutation(len(batch))[: round(rate * len(batch))]
    flipped = np.zeros(len(batch), dtype=bool)
    flipped[flipped_idx] = True
    batch[LABEL] = np.where(flipped, 1 - batch[LABEL], batch[LABEL])
    pos = parts["trusted"][LABEL].sum()
    params = {**PARAMS, "scale_pos_weight": float((len(parts["trusted"]) - pos) / pos)}
    kept, flagged, report = screen(batch, features, params, trusted=parts["trusted"], validation=parts["validation"],
                                   false_flag_rate=false_flag_rate, max_auroc_loss=max_auroc_loss,
                                   batch_id=f"uci-{rate}-{seed}", seed=seed)
    flagged_ids = set(flagged[ROW_ID]) - set(flagged.loc[flagged["reason"] == "negative_impact", ROW_ID])
    is_flagged = batch[ROW_ID].isin(flagged_ids).to_numpy()
    test, x_test = parts["test"], matrix(parts["test"], features)

    def auroc(train: pd.DataFrame) -> float:
        return float(roc_auc_score(test[LABEL], fit_local(train, features, params).inplace_predict(x_test)))

    clean = auroc(pd.concat([parts["trusted"], parts["batch"]]))
    undefended = auroc(pd.concat([parts["trusted"], batch]))
    defended = auroc(pd.concat([parts["trusted"], kept])) if report.accepted else auroc(parts["trusted"])
    return {"rate": rate, "seed": seed, "batch_rows": len(batch), "flipped": int(flipped.sum()),
            "recall": float(is_flagged[flipped].mean()) if flipped.any() else None,
            "false_flag_rate": float(is_flagged[~flipped].mean()), "accepted": report.accepted,
            "auroc_clean": clean, "drop_undefended": clean - undefended, "drop_defended": clean - defended}


def run(rates: tuple[float, ...] = RATES, seeds: int = 5, false_flag_rate: float | None = None,
        max_auroc_loss: float | None = None) -> pd.DataFrame:
    """One row per (rate, seed); thresholds default to the production settings' screen."""
    from bench.uci_heart import load_heart
    from pipeline.settings import AnalyticsSettings

    defaults = AnalyticsSettings()
    frame, features = load_heart()
    frame[GROUP] = frame[ROW_ID]
    rows = [one_run(frame, features, rate, seed,
                    false_flag_rate=false_flag_rate or defaults.screen_false_flag_rate,
                    max_auroc_loss=defaults.screen_max_auroc_loss if max_auroc_loss is None else max_auroc_loss)
            for rate in rates for seed in range(seeds)]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    table = run(seeds=args.seeds)
    print(f"UCI Heart Disease, 920 patients, label num > 0; a new batch of {table['batch_rows'].iloc[0]} rows "
          f"screened against {round(0.4 * 920)} trusted; {args.seeds} seeds")
    for rate, group in table.groupby("rate"):
        def ms(column: str, frame: pd.DataFrame = group) -> str:
            return f"{frame[column].mean():.3f} ± {frame[column].std():.3f}"
        print(f"flipped {rate:.0%}: recall {ms('recall')}, false-flag rate {ms('false_flag_rate')}, "
              f"AUROC drop undefended {ms('drop_undefended')} vs defended {ms('drop_defended')} "
              f"(clean AUROC {group['auroc_clean'].mean():.3f}; batch accepted {int(group['accepted'].sum())}"
              f"/{len(group)})")


if __name__ == "__main__":
    main()
