"""``medguard_partial_mask``: every letter and digit but the last few becomes ``*``; separators stay."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage_security.deid.operators._base import MedguardOperator


class PartialMaskOperator(MedguardOperator):
    """Mask every letter and digit but the last ``keep`` (default 4); separators stay, so formats stay readable.

    params: ``keep``.
    """

    NAME = "medguard_partial_mask"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        keep = (params or {}).get("keep", 4)
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise ValueError("partial mask 'keep' must be a non-negative integer")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        keep = (params or {}).get("keep", 4)
        positions = [i for i, ch in enumerate(text) if ch.isalnum()]
        hide = set(positions[:max(0, len(positions) - keep)])
        return "".join("*" if i in hide else ch for i, ch in enumerate(text))

    def operate_column(self, values: pa.Array, params: dict[str, Any] | None = None) -> pa.Array:
        # No Arrow kernel counts letters and digits from the end: value by value, once per distinct value.
        text = values.cast(pa.string())
        distinct = text.unique().drop_null()
        masked = pa.array([self.operate(v, params) for v in distinct.to_pylist()], pa.string())
        return masked.take(pc.index_in(text, value_set=distinct))
