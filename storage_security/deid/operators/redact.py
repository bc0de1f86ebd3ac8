"""``medguard_redact``: a note's mention becomes ``[ENTITY]``; a column's values become null."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from storage_security.deid.operators._base import MedguardOperator


class RedactOperator(MedguardOperator):
    """Replace the text with ``[ENTITY]`` (or ``params["placeholder"]``); in a column, every value with null.

    params: ``entity_type`` (given by the anonymizer engine for notes; not needed for a column), ``placeholder``.
    """

    NAME = "medguard_redact"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        placeholder = (params or {}).get("placeholder")
        if placeholder is not None and not isinstance(placeholder, str):
            raise ValueError("redact 'placeholder' must be a string")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        return params.get("placeholder") or f"[{params.get('entity_type', 'PHI')}]"

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        return pa.nulls(len(values), pa.string())
