"""The guard between the deidentified zone and a feature set: only classified, non-identifying columns pass.

De-identification publishes, per table, a column classification (a :class:`~pipeline.catalog.ColumnClass` per
column) through ``storage_security.deid.deidentify.published_report``. A feature may come
only from a column classified as something other than a direct identifier. A table without a published
classification, or a column missing from it, is refused: when in doubt, nothing enters a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pipeline.catalog import ColumnClass
from pipeline.errors import ValidationError
from pipeline.lake import Lake

DIRECT_IDENTIFIER = ColumnClass.DIRECT_IDENTIFIER
ALLOWED_CLASSES = frozenset(ColumnClass) - {DIRECT_IDENTIFIER}

Classifier = Callable[[str], Mapping[str, str]]


def published_classifier(lake: Lake) -> Classifier:
    """Column classes as de-identification published them for each table of ``lake``'s deidentified zone.

    Raises (when called):
        ValidationError: de-identification is not installed or has published no classification for the table.
    """

    def classes(table: str) -> Mapping[str, str]:
        try:
            from storage_security.deid.deidentify import published_report  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ValidationError(
                f"no column classification for deidentified/{table}: de-identification is not available, so "
                "no column can be proven free of direct identifiers; refusing to build features") from exc
        try:
            report = published_report(lake, table)
        except Exception as exc:  # any failure to produce the report means: not proven safe
            raise ValidationError(f"no column classification for deidentified/{table}: {exc}; refusing to "
                                  "build features") from exc
        column_classes = (report or {}).get("column_classes")
        if not column_classes:
            raise ValidationError(f"deidentified/{table} was published without a column classification; "
                                  "refusing to build features")
        return dict(column_classes)

    return classes


def check_columns(classify: Classifier, table: str, columns: Iterable[str]) -> None:
    """Refuse unless every column is classified and none is a direct identifier.

    Raises:
        ValidationError: naming the table, the column and its class (or that it has none).
    """
    classes = classify(table)
    for column in columns:
        cls = classes.get(column)
        if cls == DIRECT_IDENTIFIER:
            raise ValidationError(f"deidentified/{table}.{column} is classified as a direct identifier: it can "
                                  "never enter a feature set")
        if cls not in ALLOWED_CLASSES:
            raise ValidationError(f"deidentified/{table}.{column} has no known column class ({cls!r}); "
                                  "refusing to use it as a feature")


def check_provenance(classify: Classifier, provenance: Mapping[str, tuple[str, str]]) -> None:
    """Assert every feature of a finished feature set traces back to an allowed column.

    Args:
        provenance: feature name -> (table, source column).

    Raises:
        ValidationError: a feature comes from a direct identifier or an unclassified column.
    """
    by_table: dict[str, set[str]] = {}
    for table, column in provenance.values():
        by_table.setdefault(table, set()).add(column)
    for table, columns in sorted(by_table.items()):
        check_columns(classify, table, sorted(columns))
