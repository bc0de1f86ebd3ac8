"""Column classification: direct identifier, quasi-identifier, sensitive or non-sensitive, for every column.

A column's class (:class:`~pipeline.catalog.ColumnClass`) comes from the masking configuration, built from the
column catalog, when it names the column; a column the catalog does not know (a new extract's extra field) is
classified from evidence: if the data contract marked it PHI (it is sealed in the raw zone) it is a direct
identifier; otherwise a sample of its values is scanned with Presidio, and a column where PHI turns up in at least
``threshold`` of the sampled values is a direct identifier too.
Unknown columns are *flagged* either way and never published as they are.

:func:`name_quasi_identifier` says which unknown columns are quasi-identifiers by their name — an age, a birth year,
a birth date — whatever the scan found: a number is no PHI to Presidio, yet an exact age or birth year is what an
attacker links a release with.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.catalog import ColumnClass

__all__ = ["AGE", "BIRTH_DATE", "BIRTH_YEAR", "Classified", "TableClassification", "classify", "name_quasi_identifier"]

AGE, BIRTH_YEAR, BIRTH_DATE = "age", "birth_year", "birth_date"
_BIRTH_YEAR = re.compile(r"(?<![a-z])(?:birth_?year|year_?of_?birth|yob|birth_?yr)(?![a-z])")
_BIRTH_DATE = re.compile(r"(?<![a-z])(?:dob|birth_?date|date_?of_?birth|birth_?dt|birthday|born(?:_on)?)(?![a-z])")


@dataclass(frozen=True)
class Classified:
    """One column's class, how it was decided (``config``/``contract``/``scan``), and the scan's evidence."""

    column: str
    klass: ColumnClass
    source: str
    phi_share: float | None = None
    entities: tuple[str, ...] = ()


@dataclass
class TableClassification:
    """Every column's class; ``flagged`` lists the columns nobody tagged that were found to hold PHI."""

    columns: dict[str, Classified] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        return [c.column for c in self.columns.values()
                if c.source != "config" and c.klass is ColumnClass.DIRECT_IDENTIFIER]

    @property
    def unknown(self) -> list[str]:
        return [c.column for c in self.columns.values() if c.source != "config"]

    def classes(self) -> dict[str, str]:
        return {name: c.klass.value for name, c in self.columns.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"column_classes": self.classes(), "flagged_columns": self.flagged,
                "scanned": {c.column: {"phi_share": c.phi_share, "entities": list(c.entities)}
                            for c in self.columns.values() if c.source == "scan"}}


def classify(frame: pd.DataFrame, rules: dict[str, dict[str, Any]], *, contract_phi: Collection[str] = (),
             detector: Any = None, sample: int = 200, threshold: float = 0.2, seed: int = 0) -> TableClassification:
    """Classify every column of ``frame``.

    Args:
        rules: the table's per-column masking rules (each with a ``class``).
        contract_phi: columns the data contract marks as PHI (the columns sealed in the raw zone).
        detector: a :class:`~storage_security.deid.detection.PhiDetector` for the sampled scan.
        sample: at most this many non-null values are scanned per unknown column.
        threshold: share of sampled values with PHI from which a column counts as a direct identifier.
    """
    result = TableClassification()
    for column in frame.columns:
        if column in rules:
            result.columns[column] = Classified(column, ColumnClass(rules[column]["class"]), "config")
        elif column in contract_phi:
            result.columns[column] = Classified(column, ColumnClass.DIRECT_IDENTIFIER, "contract")
        else:
            result.columns[column] = _scan(frame[column], column, detector, sample, threshold, seed)
    return result


def _scan(values: pd.Series, column: str, detector: Any, sample: int, threshold: float, seed: int) -> Classified:
    present = values.dropna()
    if present.empty:
        return Classified(column, ColumnClass.NON_SENSITIVE, "scan", 0.0)
    if detector is None:
        # No scanner: an unknown column cannot be shown harmless, so it is treated as PHI.
        return Classified(column, ColumnClass.DIRECT_IDENTIFIER, "scan", None)
    picked = present.sample(min(sample, len(present)), random_state=seed).astype(str).tolist()
    # The column name is context ("ssn: 123-45-6789"), as a human reading the extract would use it.
    label = column.replace("_", " ")
    found = detector.detect_batch([f"{label}: {v}" for v in picked])
    offset = len(label) + 2
    hits = [[s for s in spans if s.end > offset] for spans in found]
    share = sum(1 for h in hits if h) / len(picked)
    entities = Counter(s.entity_type for h in hits for s in h)
    klass = ColumnClass.DIRECT_IDENTIFIER if share >= threshold else ColumnClass.NON_SENSITIVE
    return Classified(column, klass, "scan", round(share, 3), tuple(e for e, _ in entities.most_common(3)))


def name_quasi_identifier(column: str) -> str | None:
    """What a column's name says it holds among the quasi-identifiers of age: :data:`AGE` (``age``, ``age_years``,
    ``patientAge``), :data:`BIRTH_YEAR` (``birth_year``, ``year_of_birth``, ``yob``, ``birthYear``) or
    :data:`BIRTH_DATE` (``dob``, ``birth_date``, ``date_of_birth``, ``birthday``); None for any other name."""
    from storage_security.deid.operators import is_age_column

    # camelCase words apart, then one spelling: "birthYear" → "birth_year", "Year-of-Birth" → "year_of_birth"
    name = re.sub(r"[^a-z0-9]+", "_", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", column).lower())
    if _BIRTH_YEAR.search(name):
        return BIRTH_YEAR
    if _BIRTH_DATE.search(name):
        return BIRTH_DATE
    return AGE if is_age_column(column) else None
