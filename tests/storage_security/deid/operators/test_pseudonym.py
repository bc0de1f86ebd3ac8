"""medguard_pseudonym: keyed, deterministic, versioned pseudonyms; the column form gives the mention form's."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage_security.deid.operators import PseudonymOperator


def test_when_a_value_is_pseudonymized_then_it_is_keyed_deterministic_and_versioned(keys):
    op, params = PseudonymOperator(), {"keys": keys, "key": "encounter"}
    op.validate(params)
    first, again, other = (op.operate(v, params) for v in ("ENC1", "ENC1", "ENC2"))
    assert first == again != other
    assert first.startswith("ps1_") and len(first.split("_")[1]) == 8   # the key version rides along
    assert keys.pseudonym("patient", "ENC1") != first                 # another key, another pseudonym


@pytest.mark.parametrize("values", [pa.array(["ENC1", None, "ENC2", "ENC1"]), pa.array([7, None, 8, 7])])
def test_when_a_column_is_pseudonymized_then_each_value_gets_its_mention_pseudonym(keys, values):
    op, params = PseudonymOperator(), {"keys": keys, "key": "encounter"}
    out = op.operate_column(values, params).to_pylist()
    expected = [None if v is None else op.operate(str(v), params) for v in values.to_pylist()]
    assert out == expected and out[0] == out[3] != out[2]


def test_when_a_column_holds_only_nulls_then_its_pseudonyms_are_null(keys):
    assert PseudonymOperator().operate_column(pa.nulls(2), {"keys": keys, "key": "row"}).to_pylist() == [None, None]


@pytest.mark.parametrize("params", [{"key": "patient"}, {"keys": object(), "key": "patient"},
                                    {"keys": "KEYS", "key": ""}, {"keys": "KEYS"}])
def test_when_params_are_invalid_then_validate_refuses(keys, params):
    params = {name: keys if value == "KEYS" else value for name, value in params.items()}
    with pytest.raises(ValueError):
        PseudonymOperator().validate(params)
