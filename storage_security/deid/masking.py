"""Applies the masking configuration to a table: per column, and per entity type in notes.

:func:`load_masking_config` builds the configuration from the column catalog (:mod:`pipeline.catalog`: each column's
class and mask, the risk-gate columns, the ladders) and the ``deidentify`` settings (reference date, suppression
budget, Spark threshold, note entity operators); :func:`mask_table` turns a raw table (pandas,
decrypted) into its de-identified form with the operators of :mod:`storage_security.deid.operators`;
:class:`NoteMasker` detects PHI in notes (batched) and replaces each mention through presidio-anonymizer with the
operator its entity type is configured for (surrogates by default), using the patient's own date offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from pipeline.catalog import Catalog, CatalogColumn, Mask, MaskOp, load_catalog, published_class
from storage_security.deid.operators import COLUMN_OPERATORS, NOTE_OPERATORS, MaskingKeys

if TYPE_CHECKING:
    from pipeline.settings import DeidentifySettings


__all__ = ["NoteMasker", "load_masking_config", "mask_table"]


def load_masking_config(settings: DeidentifySettings | None = None, *,
                        catalog: Catalog | None = None) -> dict[str, Any]:
    """The masking configuration: per raw table and column its class and mask, from the column catalog.

    Returns:
        ``{"provenance": {column: rule}, "tables": {table: {"columns": {column: rule}, "quasi_identifiers": [...],
        "sensitive": [...]}}, "generalize": {column: ladder}, "note_entities", "reference_date", "max_suppression",
        "spark_min_rows"}``; a rule is ``{"class", "op", "published_class"}`` plus ``"key"`` (pseudonyms) and
        ``"as"`` (the published name, when it differs).

    Args:
        settings: the ``deidentify`` settings (those of :func:`~pipeline.settings.get_settings` by default).
        catalog: the column catalog (the shipped one by default; it is validated when it loads).
    """
    if settings is None:
        from pipeline.settings import get_settings

        settings = get_settings().deidentify
    catalog = catalog or load_catalog()
    tables = {}
    for name, spec in catalog.raw.tables.items():
        tables[name] = {"columns": {column: _rule(entry) for column, entry in spec.columns.items()},
                        "quasi_identifiers": list(spec.quasi_identifiers), "sensitive": list(spec.sensitive)}
    return {"reference_date": settings.reference_date.isoformat(),
            "provenance": {column: _rule(entry) for column, entry in catalog.raw.provenance.items()},
            "note_entities": dict(settings.note_entities), "generalize": catalog.ladders(),
            "spark_min_rows": settings.spark_min_rows, "max_suppression": settings.max_suppression, "tables": tables}


def _rule(entry: CatalogColumn) -> dict[str, Any]:
    # The catalog gives every raw column a mask; a column without one is not published.
    mask = entry.mask or Mask(op=MaskOp.DROP)
    rule: dict[str, Any] = {"class": entry.klass.value, "op": mask.op.value}
    if mask.key:
        rule["key"] = mask.key
    if mask.as_:
        rule["as"] = mask.as_
    if mask.op is not MaskOp.DROP:
        rule["published_class"] = published_class(entry).value
    return rule


def table_rules(config: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    """The per-column rules of ``table`` (provenance columns included)."""
    spec = (config.get("tables") or {}).get(table, {})
    return {**config.get("provenance", {}), **spec.get("columns", {})}


def _column(values: pd.Series) -> pa.Array:
    """A pandas column as Arrow (a column of nothing but nulls as strings)."""
    array = pa.Array.from_pandas(values)
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


def _series(array: pa.Array, index: pd.Index) -> pd.Series:
    """An operator's Arrow result as a pandas column on ``index`` (integers nullable: a year column is Int64)."""
    series = array.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    series.index = index
    return series


def mask_table(frame: pd.DataFrame, rules: dict[str, dict[str, Any]], keys: MaskingKeys, *,
               reference_date: date, note_masker: NoteMasker | None = None,
               patient_column: str = "patient_pseudonym",
               note_spans: Sequence[Sequence[Any]] | None = None) -> pd.DataFrame:
    """The de-identified form of ``frame``: each column with a rule is kept, dropped or masked by it.

    Columns without a rule are left out (the caller classifies them first). A masked column goes through its op's
    operator (:data:`~storage_security.deid.operators.COLUMN_OPERATORS`), validated first, in one vectorised pass
    over Arrow. Date shifts use each row's patient offset (``patient_column``), so a patient's intervals survive.
    ``note_spans`` are PHI spans already detected (on Spark) for the notes column, one list per row.

    Raises:
        ValueError: a date shift or notes rule on a table with no patient pseudonym column, an op no operator runs,
            or params its operator refuses (a pseudonym without a key name).
    """
    out: dict[str, pd.Series] = {}
    shift_days: pa.Array | None = None
    for column in frame.columns:
        rule = rules.get(column)
        if rule is None or rule["op"] == "drop":
            continue
        values = frame[column]
        op, name = rule["op"], rule.get("as", column)
        if op == "keep":
            out[name] = values
            continue
        spec = COLUMN_OPERATORS.get(op)
        if spec is None and op != "notes":
            raise ValueError(f"column {column!r}: no masking op is called {op!r}")
        if op == "notes" or "days" in spec.context:
            if patient_column not in frame.columns:
                raise ValueError(f"column {column!r}: '{op}' needs the patient pseudonym column {patient_column!r}")
            if shift_days is None:
                shift_days = keys.shift_days_many(_column(frame[patient_column]))
        if spec is None:
            if note_masker is None:
                raise ValueError(f"column {column!r} holds notes but no note masker was given")
            out[name] = pd.Series(note_masker.mask(values.tolist(), shift_days.to_pylist(), spans=note_spans,
                                                   scopes=frame[patient_column].tolist()),
                                  index=values.index, dtype=object)
            continue
        supplied = {"keys": keys, "key": rule.get("key"), "days": shift_days, "reference_date": reference_date}
        params = {**spec.params, **{param: supplied[param] for param in spec.context}}
        operator = spec.operator()
        operator.validate(params)  # as presidio-anonymizer's engine does, before the operator runs
        out[name] = _series(operator.operate_column(_column(values), params), values.index)
    return pd.DataFrame(out, index=frame.index).reset_index(drop=True)


class NoteMasker:
    """Masks free text: detect PHI (batched), then replace each mention with its entity type's operator.

    Args:
        detector: a :class:`~storage_security.deid.detection.PhiDetector`.
        keys: the masking keys (surrogate names, date offsets).
        entity_ops: entity type → a note op of :data:`~storage_security.deid.operators.NOTE_OPERATORS`
            (``surrogate`` | ``redact`` | ``partial_mask``; ``default`` for the rest, surrogates when not given).

    Raises:
        ValueError: an entity type is given an op that is not a note op.
    """

    def __init__(self, detector: Any, keys: MaskingKeys, entity_ops: dict[str, str] | None = None) -> None:
        from presidio_anonymizer import AnonymizerEngine

        unknown = {entity: op for entity, op in (entity_ops or {}).items() if op not in NOTE_OPERATORS}
        if unknown:
            raise ValueError(f"note ops must be one of {sorted(NOTE_OPERATORS)}; got {unknown}")
        self.detector = detector
        self.keys = keys
        self.entity_ops = {"default": "surrogate", **(entity_ops or {})}
        self.engine = AnonymizerEngine()
        for operator in NOTE_OPERATORS.values():
            self.engine.add_anonymizer(operator)

    def _operators(self, days: int, scope: str) -> dict[str, Any]:
        from presidio_anonymizer.entities import OperatorConfig

        params = {"keys": self.keys, "days": days, "scope": scope}
        return {"DEFAULT" if entity == "default" else entity: OperatorConfig(NOTE_OPERATORS[op].NAME, dict(params))
                for entity, op in self.entity_ops.items()}

    def mask(self, texts: Sequence[str | None], shift_days: Sequence[int | None], *,
             spans: Sequence[Sequence[Any]] | None = None,
             scopes: Sequence[str | None] | None = None) -> list[str | None]:
        """Each text with its PHI replaced; ``shift_days[i]`` is text i's patient offset (None: 1 day) and
        ``scopes[i]`` its patient, so a person keeps one surrogate name across all of the patient's notes."""
        from presidio_anonymizer.entities import ConflictResolutionStrategy, RecognizerResult

        present = [i for i, t in enumerate(texts) if t is not None]
        if spans is None:
            detected = self.detector.detect_batch([texts[i] for i in present])
        else:
            detected = [spans[i] for i in present]
        out: list[str | None] = [None] * len(texts)
        for i, found in zip(present, detected, strict=True):
            results = [RecognizerResult(s.entity_type, s.start, s.end, s.score) for s in _prefer_patterns(found)]
            days = shift_days[i] or 1
            scope = str(scopes[i] or "") if scopes is not None else ""
            masked = self.engine.anonymize(
                text=str(texts[i]), analyzer_results=results, operators=self._operators(days, scope),
                conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS)
            out[i] = masked.text
        return out


def _prefer_patterns(spans: Sequence[Any]) -> list[Any]:
    """Drop statistical-model spans inside a pattern match (the pattern knows the identifier's kind).

    A model span that reaches past the pattern match is kept: the anonymizer trims the overlap, and every
    character either recognizer flagged stays masked.
    """
    patterns = [s for s in spans if getattr(s, "recognizer", "") != "SpacyRecognizer"]
    return patterns + [s for s in spans if getattr(s, "recognizer", "") == "SpacyRecognizer"
                       and not any(p.start <= s.start and s.end <= p.end for p in patterns)]
