"""The poisoning screen on a table we did not generate: UCI Heart Disease (label num > 0), a new batch with 20 % of
its labels flipped, screened against trusted rows with the production settings (bench/poisoning_uci_bench.py)."""

from __future__ import annotations

import pytest

# Integration tier: three seeds, each two screening passes of 5-fold xgboost plus four model fits.
pytestmark = pytest.mark.integration


def test_when_a_fifth_of_a_batchs_labels_are_flipped_then_the_screen_finds_a_meaningful_share_of_them():
    from bench.poisoning_uci_bench import run

    table = run(rates=(0.20,), seeds=3)
    # Measured over these seeds: recall 0.469 ± 0.143, false-flag rate 0.040 ± 0.012 (322-row batch, 64 flips).
    recall, false_flags = table["recall"].mean(), table["false_flag_rate"].mean()
    assert recall >= 0.30
    assert false_flags <= 0.08
    # Far better than flagging at random at the same rate (which would find false_flags of the flips).
    assert recall >= 5 * false_flags
    assert (table["flipped"] == round(0.2 * table["batch_rows"])).all()
