"""``medguard_pseudonym``: the keyed pseudonym ``ps1_<key version>_<hex>`` of a value."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from storage_security.deid.operators._base import MedguardOperator, need
from storage_security.deid.operators.masking_keys import MaskingKeys


class PseudonymOperator(MedguardOperator):
    """The keyed pseudonym of the text under the pseudonym key ``params["key"]``.

    params: ``keys`` (:class:`MaskingKeys`), ``key`` (the pseudonym key's name, e.g. ``encounter``).
    """

    NAME = "medguard_pseudonym"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = need(params, "keys", "key")
        if not isinstance(params["keys"], MaskingKeys):
            raise ValueError("pseudonym 'keys' must be MaskingKeys")
        if not isinstance(params["key"], str) or not params["key"]:
            raise ValueError("pseudonym 'key' must name a pseudonym key")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        return params["keys"].pseudonym(params["key"], text) or ""

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        params = params or {}
        if pa.types.is_null(values.type):
            return pa.nulls(len(values), pa.string())
        return params["keys"].pseudonymize(params["key"], values)
