"""Evaluation with a class missing: a clear ValidationError before any work, and a card that still renders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.evaluate import metrics, plots, require_both_classes, subgroup_metrics, write_model_card
from pipeline.errors import ValidationError


@pytest.mark.parametrize(("labels", "splits", "message"), [
    ([], [], "has no labelled rows"),
    ([0, 0, 0, 0], ["train", "test", "train", "calibration"], "no positive case in 4 rows"),
    ([1, 1, 1], ["train", "test", "calibration"], "no negative case"),
    ([1, 0, 0, 1, 0, 1], ["train", "train", "test", "calibration", "calibration", "train"],
     "the test split of label 'y' has 0 positive of 1 rows"),
])
def test_when_a_split_lacks_a_class_then_a_validation_error_names_the_split(labels, splits, message):
    with pytest.raises(ValidationError, match=message):
        require_both_classes(pd.Series(labels, dtype=int), pd.Series(splits, dtype=object), "label 'y'")


def test_when_every_split_has_both_classes_then_nothing_is_raised():
    require_both_classes(pd.Series([1, 0, 1, 0]), pd.Series(["train", "train", "test", "test"]), "label 'y'")


def test_when_the_test_split_has_no_positive_then_plots_and_the_card_render_without_a_type_error(tmp_path):
    y = np.zeros(40, dtype=int)
    prob = np.linspace(0, 1, 40)
    m = metrics(y, prob, 0.5)
    assert m["auroc"] is None and m["sensitivity"] is None
    images = plots(y, prob, 0.5, {"a": 1.0})
    frame = pd.DataFrame({"sex": ["F", "M"] * 20})
    card = write_model_card(tmp_path / "card.html", title="t", summary={}, test_metrics=m,
                            subgroups=subgroup_metrics(frame, y, prob, 0.5, ["sex"]), images=images, sections={})
    assert "–" in card.read_text() and len(images) == 5


def test_when_the_largest_gap_has_a_missing_value_then_the_card_still_renders(tmp_path):
    gap = {"column": "sex", "metric": "auroc", "gap": 0.2, "low": "F", "high": "M", "low_value": None,
           "high_value": 0.9}
    card = write_model_card(tmp_path / "card.html", title="t", summary={}, test_metrics={},
                            subgroups={"groups": {}, "largest_gap": gap}, images={}, sections={})
    assert "Largest subgroup gap" in card.read_text()
