"""The risk gate: k-anonymity and l-diversity hold after enforcement, checked by plain counting here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storage_security.deid.risk import RiskGateError, enforce, k_anonymity, l_diversity

LADDERS = {"age_band": [10, 20, "*"], "zip3": ["*"], "sex": ["*"]}


def _population(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ages = rng.integers(18, 95, n)
    return pd.DataFrame({
        "age_band": ["90+" if a >= 90 else f"{a // 5 * 5}-{a // 5 * 5 + 4}" for a in ages],
        "sex": rng.choice(["F", "M"], n),
        "zip3": rng.choice(["100", "606", "941", "021", "303"], n),
        "diagnosis": rng.choice(["E11.9", "I10", "J45", "K21.9"], n),
    })


def _smallest_class(frame: pd.DataFrame, qis: list[str]) -> int:
    return min(len(rows) for _, rows in frame.groupby(qis, dropna=False))


@pytest.mark.parametrize(("rows", "k", "ell"), [(60, 5, 1), (300, 5, 2), (300, 10, 3), (1000, 20, 2)])
def test_when_the_gate_passes_then_every_class_has_k_rows_and_l_values(rows, k, ell):
    frame = _population(rows)
    qis = ["age_band", "sex", "zip3"]
    out, report = enforce(frame, qis, ["diagnosis"], k=k, ell=ell, ladders=LADDERS, max_suppression=0.05)
    assert _smallest_class(out, qis) >= k
    assert min(g["diagnosis"].nunique() for _, g in out.groupby(qis)) >= ell
    assert report.suppressed == rows - len(out) <= 0.05 * rows
    assert report.k == k_anonymity(out, qis) >= k


def test_when_a_table_is_already_k_anonymous_then_nothing_changes():
    frame = pd.DataFrame({"sex": ["F"] * 5 + ["M"] * 5, "v": range(10)})
    out, report = enforce(frame, ["sex"], [], k=5)
    assert out.equals(frame) and report.suppressed == 0 and report.generalization == {}


def test_when_a_few_rows_are_unique_then_they_are_suppressed_not_the_table_generalised():
    frame = pd.DataFrame({"sex": ["F"] * 50 + ["M"] * 50 + ["X"], "v": range(101)})
    out, report = enforce(frame, ["sex"], [], k=5, max_suppression=0.05)
    assert report.suppressed == 1 and "X" not in set(out["sex"]) and report.generalization == {}


def test_when_k_cannot_be_met_then_the_gate_refuses():
    with pytest.raises(RiskGateError):
        enforce(pd.DataFrame({"sex": ["F", "M", "F"]}), ["sex"], [], k=5)


def test_when_a_class_has_one_sensitive_value_then_l_diversity_forces_action():
    frame = pd.DataFrame({"zip3": ["100"] * 10 + ["606"] * 10,
                          "dx": ["I10"] * 10 + ["I10", "E11.9"] * 5})
    assert l_diversity(frame, ["zip3"], "dx") == 1
    out, report = enforce(frame, ["zip3"], ["dx"], k=5, ell=2, ladders={"zip3": ["*"]}, max_suppression=0.0)
    assert l_diversity(out, ["zip3"], "dx") >= 2 and report.generalization == {"zip3": ["*"]}


def test_when_one_person_has_many_rows_then_k_counts_people_not_rows():
    frame = pd.DataFrame({"patient": ["a"] * 6 + ["b", "c", "d", "e", "f"], "facility": ["F1"] * 6 + ["F2"] * 5})
    assert k_anonymity(frame, ["facility"]) == 5 and k_anonymity(frame, ["facility"], "patient") == 1
    out, report = enforce(frame, ["facility"], [], k=5, entity="patient", ladders={"facility": ["*"]})
    assert out.groupby("facility")["patient"].nunique().min() >= 5 and report.counted == "patient"
    assert set(out["facility"]) == {"*"} and report.suppressed == 0
