"""MaskingKeys: keyed date offsets (one HMAC per distinct patient), surrogate name pools, no pickling or key in repr."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest


def test_when_offsets_are_derived_for_a_column_then_each_row_gets_its_patients_offset(keys):
    patients = ["p1", "p2", None, "p1", "p3"]
    out = keys.shift_days_many(pa.array(patients)).to_pylist()
    assert out == [None if p is None else keys.shift_days(p) for p in patients]
    assert out[0] == out[3] and all(1 <= abs(d) <= 365 for d in out if d is not None)


def test_when_many_patients_get_offsets_then_none_is_zero_and_they_spread(keys):
    out = keys.shift_days_many([f"p{i}" for i in range(500)]).to_pylist()
    assert 0 not in out and min(out) < -300 and max(out) > 300


def test_when_masking_keys_are_printed_or_pickled_then_no_key_leaves(keys):
    assert "key provider" in repr(keys)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)


def test_when_names_are_forbidden_then_no_surrogate_is_one_of_them(keys):
    # "Evan" and "Clark" are in the pools: a draw that lands on one of them is drawn again.
    out = {keys.surrogate_token(w, scope=f"p{i}") for i in range(300) for w in ("Evan", "Clark", "Ann", "Lee")}
    assert not {n.lower() for n in out} & {"evan", "clark"} and len(out) > 200
