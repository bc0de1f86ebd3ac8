"""medguard_partial_mask: all but the last letters/digits become *, in a mention and in a column alike."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage_security.deid.operators import PartialMaskOperator

CASES = [
    ("887-57-6670", {}, "***-**-6670"),
    ("H108470662", {"keep": 2}, "********62"),
    ("abc", {}, "abc"),
    ("(503) 555-0101", {"keep": 0}, "(***) ***-****"),
]


@pytest.mark.parametrize(("text", "params", "expected"), CASES)
def test_when_a_mention_is_masked_then_only_the_last_characters_show(text, params, expected):
    op = PartialMaskOperator()
    op.validate(params)
    assert op.operate(text, params) == expected


@pytest.mark.parametrize(("text", "params", "expected"), CASES)
def test_when_a_column_is_masked_then_each_value_matches_the_mention_form(text, params, expected):
    out = PartialMaskOperator().operate_column(pa.array([text, None, text]), params)
    assert out.to_pylist() == [expected, None, expected]


def test_when_a_numeric_column_is_masked_then_its_text_form_is_masked():
    assert PartialMaskOperator().operate_column(pa.array([5035550101]), {}).to_pylist() == ["******0101"]


@pytest.mark.parametrize("keep", [-1, "4", 2.5, True])
def test_when_keep_is_not_a_count_then_validate_refuses(keep):
    with pytest.raises(ValueError, match="keep"):
        PartialMaskOperator().validate({"keep": keep})
