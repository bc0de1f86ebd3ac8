"""medguard_redact: a mention becomes [ENTITY] (or the placeholder); a column becomes null."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage_security.deid.operators import RedactOperator


@pytest.mark.parametrize(("text", "params", "expected"), [
    ("887-57-6670", {"entity_type": "US_SSN"}, "[US_SSN]"),
    ("x", {"entity_type": "X", "placeholder": "<gone>"}, "<gone>"),
    ("x", {}, "[PHI]"),
])
def test_when_a_mention_is_redacted_then_its_label_replaces_it(text, params, expected):
    op = RedactOperator()
    op.validate(params)
    assert op.operate(text, params) == expected


@pytest.mark.parametrize("values", [pa.array(["887-57-6670", None]), pa.array([1, 2]), pa.nulls(2)])
def test_when_a_column_is_redacted_then_every_value_is_null(values):
    out = RedactOperator().operate_column(values, {})
    assert out.type == pa.string() and out.to_pylist() == [None, None]


def test_when_the_placeholder_is_not_text_then_validate_refuses():
    with pytest.raises(ValueError, match="placeholder"):
        RedactOperator().validate({"placeholder": 5})
