"""The operator shape every medguard masking operator has: presidio-anonymizer's, plus a column form."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from presidio_anonymizer.operators import Operator, OperatorType


class MedguardOperator(Operator):
    """A presidio-anonymizer ``Operator`` that also masks a whole column.

    As in presidio-anonymizer, callers call ``validate(params)`` first, then ``operate(text, params)`` for one
    mention in a note, or ``operate_column(values, params)`` for an Arrow column of a structured table (one
    vectorised pass; nulls stay null). Both forms of an operator share their code, so a note and a column masked
    with the same operator and params agree. An operator with no column form (surrogates stand in for mentions
    in running text) says so when asked for one.
    """

    NAME = ""

    def operator_name(self) -> str:
        return self.NAME

    def operator_type(self) -> OperatorType:
        return OperatorType.Anonymize

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        """The masked form of every value of ``values`` (same length, nulls stay null)."""
        raise ValueError(f"{self.NAME} masks mentions in notes; it has no column form")


def need(params: dict[str, Any] | None, *names: str) -> dict[str, Any]:
    """``params``, or ``ValueError`` naming those of ``names`` it lacks."""
    params = params or {}
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"masking operator needs params {missing}")
    return params
