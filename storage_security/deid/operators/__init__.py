"""Masking operators, one per module, and the registry that maps the masking configuration's op names to them.

Each operator is a presidio-anonymizer ``Operator`` (``validate(params)`` then ``operate(text, params)``; the
engine always validates first) with a column form, ``operate_column(values, params)`` over an Arrow array, so a
mention in a note and a column of a structured table are masked by the same code
(:mod:`storage_security.deid.masking` applies both). Keys never pass through params in the clear: keyed
operators get a :class:`MaskingKeys`.

- ``medguard_redact`` (:mod:`.redact`): ``[LABEL]`` in a note, null in a column.
- ``medguard_partial_mask`` (:mod:`.partial_mask`): all but the last 4 letters/digits become ``*``.
- ``medguard_pseudonym`` (:mod:`.pseudonym`): ``ps1_<key version>_<hex>`` under a named pseudonym key.
- ``medguard_date_shift`` (:mod:`.date_shift`): the patient's keyed offset, the date's own format kept.
- ``medguard_generalize`` (:mod:`.generalize`): age → 5-year band (``90+``), ZIP → 3 digits, date → year.
- ``medguard_surrogate`` (:mod:`.surrogate`): a realistic stand-in of the same kind (notes only).

Configuration names them by op: :data:`COLUMN_OPERATORS` for a table's columns (``keep``, ``drop`` and
``notes`` are not operators: the column is published as it is, left out, or handed to the note masker) and
:data:`NOTE_OPERATORS` for the entity types found in notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage_security.deid.operators._base import MedguardOperator
from storage_security.deid.operators._dates import parse_date, shift_text_date
from storage_security.deid.operators.date_shift import DateShiftOperator
from storage_security.deid.operators.generalize import (
    RESTRICTED_ZIP3,
    GeneralizeOperator,
    age_bands,
    ages_at,
    is_age_column,
    top_code_ages,
    zip3,
    zip3_column,
)
from storage_security.deid.operators.masking_keys import MaskingKeys
from storage_security.deid.operators.partial_mask import PartialMaskOperator
from storage_security.deid.operators.pseudonym import PseudonymOperator
from storage_security.deid.operators.redact import RedactOperator
from storage_security.deid.operators.surrogate import SurrogateOperator

__all__ = [
    "COLUMN_OPERATORS",
    "NOTE_OPERATORS",
    "RESTRICTED_ZIP3",
    "ColumnOp",
    "DateShiftOperator",
    "GeneralizeOperator",
    "MaskingKeys",
    "MedguardOperator",
    "PartialMaskOperator",
    "PseudonymOperator",
    "RedactOperator",
    "SurrogateOperator",
    "age_bands",
    "ages_at",
    "is_age_column",
    "parse_date",
    "shift_text_date",
    "top_code_ages",
    "zip3",
    "zip3_column",
]


@dataclass(frozen=True)
class ColumnOp:
    """A column op of the masking configuration: the operator it runs, the params its name fixes, and the params
    the table supplies (``context``: ``keys`` and the rule's ``key``, each row's patient offset ``days``, the
    ``reference_date`` ages are counted at)."""

    operator: type[MedguardOperator]
    params: dict[str, Any] = field(default_factory=dict)
    context: tuple[str, ...] = ()


COLUMN_OPERATORS: dict[str, ColumnOp] = {
    "redact": ColumnOp(RedactOperator),
    "partial_mask": ColumnOp(PartialMaskOperator),
    "pseudonym": ColumnOp(PseudonymOperator, context=("keys", "key")),
    "date_shift": ColumnOp(DateShiftOperator, context=("days",)),
    "year": ColumnOp(GeneralizeOperator, {"kind": "date"}),
    "age_band": ColumnOp(GeneralizeOperator, {"kind": "age"}, context=("reference_date",)),
    "zip3": ColumnOp(GeneralizeOperator, {"kind": "zip"}),
}
NOTE_OPERATORS: dict[str, type[MedguardOperator]] = {
    "surrogate": SurrogateOperator,
    "redact": RedactOperator,
    "partial_mask": PartialMaskOperator,
}
