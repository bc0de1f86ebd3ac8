"""The column catalog: for every table of every zone, what each column is — declared once, read by every layer.

The catalog ships as YAML in ``pipeline/catalog/<zone>.yaml`` (``raw``, ``predictions``, ``quarantine``, ``audit``).
For each raw table it gives, per column, the type, whether the column is PHI (sealed in the raw zone), its
:class:`ColumnClass` and the mask de-identification applies (operator and parameters); per table, the published
columns the risk gate counts (``quasi_identifiers``, ``sensitive``); and each quasi-identifier's generalisation
ladder. The deidentified zone is not written down: its columns follow from the raw tables' masks
(:meth:`Catalog.published`). Ingestion takes PHI from here (contracts keep only validation rules),
de-identification builds its masking configuration from here, and access policies class columns from here.

The whole catalog is validated when it loads (:func:`load_catalog`): a PHI or direct-identifier column published as
it is, a risk-gate column that is not published with the right class, a ladder for a column no table counts, all
fail at load naming the file and the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from pipeline.errors import SettingsError

__all__ = ["Catalog", "CatalogColumn", "ColumnClass", "ColumnType", "Mask", "MaskOp", "PublishedColumn",
           "SourceTable", "catalog_file", "load_catalog", "published_class"]

ColumnType = Literal["string", "float", "integer", "boolean", "date", "datetime", "json", "timestamp", "list"]
ZONES = ("raw", "quarantine", "predictions", "audit")


class ColumnClass(StrEnum):
    """How sensitive a column is; the one enum of these classes for the whole product."""

    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"
    SENSITIVE = "sensitive"
    NON_SENSITIVE = "non_sensitive"

    @property
    def rank(self) -> int:
        """Strictness, 0 (non_sensitive) to 3 (direct_identifier): where two sources disagree the stricter wins."""
        return _STRICTNESS.index(self)


_STRICTNESS = [ColumnClass.NON_SENSITIVE, ColumnClass.SENSITIVE, ColumnClass.QUASI_IDENTIFIER,
               ColumnClass.DIRECT_IDENTIFIER]


class MaskOp(StrEnum):
    """What de-identification does with a raw column."""

    KEEP = "keep"
    DROP = "drop"
    REDACT = "redact"
    PARTIAL_MASK = "partial_mask"
    PSEUDONYM = "pseudonym"
    DATE_SHIFT = "date_shift"
    YEAR = "year"
    AGE_BAND = "age_band"
    ZIP3 = "zip3"
    NOTES = "notes"


# The class of a published column by default: a keyed pseudonym links rows within the release, masked notes are
# sensitive text, a generalised or shifted value still narrows who a row is; otherwise the raw column's class.
_PUBLISHED_CLASS = {MaskOp.PSEUDONYM: ColumnClass.QUASI_IDENTIFIER, MaskOp.NOTES: ColumnClass.SENSITIVE,
                    MaskOp.DATE_SHIFT: ColumnClass.QUASI_IDENTIFIER, MaskOp.YEAR: ColumnClass.QUASI_IDENTIFIER,
                    MaskOp.AGE_BAND: ColumnClass.QUASI_IDENTIFIER, MaskOp.ZIP3: ColumnClass.QUASI_IDENTIFIER}
_PUBLISHED_TYPE: dict[MaskOp, ColumnType] = {MaskOp.PSEUDONYM: "string", MaskOp.NOTES: "string",
                                             MaskOp.YEAR: "integer", MaskOp.AGE_BAND: "string",
                                             MaskOp.ZIP3: "string", MaskOp.PARTIAL_MASK: "string"}
# Operators that publish a value derived from the column's own value.
_REVEALING = (MaskOp.KEEP, MaskOp.PARTIAL_MASK)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Mask(_Model):
    """How de-identification publishes a column: the operator, its parameters, the published name and class."""

    op: MaskOp
    key: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")
    as_: str | None = Field(default=None, alias="as", pattern=r"^[a-z_][a-z0-9_]*$")
    published_class: ColumnClass | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_op(cls, value: Any) -> Any:
        return {"op": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _params(self) -> Mask:
        if (self.op is MaskOp.PSEUDONYM) != (self.key is not None):
            raise ValueError("a pseudonym needs a key name (and only a pseudonym takes one)")
        if self.op is MaskOp.DROP and (self.as_ or self.published_class):
            raise ValueError("a dropped column is not published: it takes no 'as' or 'published_class'")
        return self


class CatalogColumn(_Model):
    """One column: its type, whether it is PHI (sealed in raw), its class and, in raw tables, its mask."""

    type: ColumnType
    klass: ColumnClass = Field(alias="class")
    phi: bool = False
    mask: Mask | None = None
    why: str = ""


class SourceTable(_Model):
    """A raw table: its columns and the published columns the risk gate checks."""

    columns: dict[str, CatalogColumn]
    quasi_identifiers: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()


class Table(_Model):
    """A table of another zone (predictions, quarantine, audit): columns with a type and a class, no mask."""

    columns: dict[str, CatalogColumn]

    @model_validator(mode="after")
    def _no_masks(self) -> Table:
        masked = sorted(name for name, column in self.columns.items() if column.mask is not None)
        if masked:
            raise ValueError(f"columns {masked} have a mask, but only raw tables are de-identified")
        return self


@dataclass(frozen=True)
class PublishedColumn:
    """A column of a deidentified table, derived from the raw column it comes from and that column's mask."""

    name: str
    type: ColumnType
    klass: ColumnClass
    source: str


class RawZone(_Model):
    """``raw.yaml``: the provenance columns every raw table carries, the ladders, and the source tables."""

    provenance: dict[str, CatalogColumn]
    ladders: dict[str, tuple[int | str, ...]] = Field(default_factory=dict)
    tables: dict[str, SourceTable]

    @model_validator(mode="after")
    def _consistent(self) -> RawZone:
        for table, spec in self.tables.items():
            shared = sorted(set(spec.columns) & set(self.provenance))
            if shared:
                raise ValueError(f"tables.{table}: columns {shared} are provenance columns, declared once above")
            for name, column in {**spec.columns, **self.provenance}.items():
                where = f"tables.{table}.columns.{name}" if name in spec.columns else f"provenance.{name}"
                if column.mask is None:
                    raise ValueError(f"{where}: a raw column needs a mask (how de-identification publishes it)")
                if column.mask.op in _REVEALING and (column.phi or column.klass is ColumnClass.DIRECT_IDENTIFIER):
                    raise ValueError(f"{where}: a {'PHI' if column.phi else 'direct-identifier'} column may not "
                                     f"be published with '{column.mask.op}'")
            published = _published(spec, self.provenance, f"tables.{table}")
            for field, wanted in (("quasi_identifiers", ColumnClass.QUASI_IDENTIFIER),
                                  ("sensitive", ColumnClass.SENSITIVE)):
                for name in getattr(spec, field):
                    if name not in published:
                        raise ValueError(f"tables.{table}.{field}: {name!r} is not a published column of {table}")
                    if published[name].klass is not wanted:
                        raise ValueError(f"tables.{table}.{field}: {name!r} is published as "
                                         f"{published[name].klass}, not {wanted}")
        counted = {name for spec in self.tables.values() for name in spec.quasi_identifiers}
        stray = sorted(set(self.ladders) - counted)
        if stray:
            raise ValueError(f"ladders: {stray} are not quasi-identifiers of any table")
        return self


def published_class(column: CatalogColumn) -> ColumnClass:
    """The class of a raw column once de-identification has published it through its mask."""
    if column.mask is None:
        return column.klass
    return column.mask.published_class or _PUBLISHED_CLASS.get(column.mask.op, column.klass)


def _published(spec: SourceTable, provenance: Mapping[str, CatalogColumn], where: str) -> dict[str, PublishedColumn]:
    out: dict[str, PublishedColumn] = {}
    for name, column in {**spec.columns, **provenance}.items():
        mask = column.mask
        if mask is None or mask.op is MaskOp.DROP:
            continue
        output = mask.as_ or name
        if output in out:
            raise ValueError(f"{where}: {out[output].source!r} and {name!r} are both published as {output!r}")
        out[output] = PublishedColumn(output, _PUBLISHED_TYPE.get(mask.op, column.type), published_class(column), name)
    return out


class OtherZone(_Model):
    """``predictions.yaml``, ``quarantine.yaml``, ``audit.yaml``: tables with classed columns."""

    tables: dict[str, Table]


@dataclass(frozen=True)
class Catalog:
    """The loaded catalog. Build it with :func:`load_catalog`."""

    raw: RawZone
    zones: Mapping[str, Mapping[str, Table]]

    def source(self, table: str) -> SourceTable | None:
        """The raw table's entry, or None when the catalog does not know the table."""
        return self.raw.tables.get(table)

    def column(self, table: str, column: str) -> CatalogColumn | None:
        """A raw table's column (provenance included), or None when the catalog does not know it."""
        spec = self.raw.tables.get(table)
        if spec is None:
            return None
        return spec.columns.get(column) or self.raw.provenance.get(column)

    def raw_columns(self, table: str) -> dict[str, CatalogColumn]:
        """Every column of ``raw.<table>``: the source columns, then the provenance columns."""
        spec = self.raw.tables.get(table)
        return {} if spec is None else {**spec.columns, **self.raw.provenance}

    def published(self, table: str) -> dict[str, PublishedColumn]:
        """The columns of ``deidentified.<table>`` that masking writes, by published name."""
        return dict(self._published.get(table, {}))

    @cached_property
    def _published(self) -> dict[str, dict[str, PublishedColumn]]:
        # Derived once: access asks for a deidentified column's class on every query.
        return {table: _published(spec, self.raw.provenance, f"tables.{table}")
                for table, spec in self.raw.tables.items()}

    def column_class(self, zone: str, table: str, column: str) -> ColumnClass | None:
        """The class of ``zone.table.column``, or None when the catalog does not know the column.

        A provenance column (``patient_pseudonym``, ``_batch_id``…) keeps its class in every table of every zone.
        """
        zone = str(zone)
        if zone == "raw":
            known = self.column(table, column)
            found = known.klass if known else None
        elif zone == "deidentified":
            published = self._published.get(table, {}).get(column)
            found = published.klass if published else None
        else:
            entry = self.zones.get(zone, {}).get(table)
            known = entry.columns.get(column) if entry else None
            found = known.klass if known else None
        if found is None and column in self.raw.provenance and zone != "deidentified":
            found = self.raw.provenance[column].klass
        return found

    def ladders(self) -> dict[str, list[int | str]]:
        """Each risk-gate quasi-identifier's generalisation levels, coarsest last."""
        return {name: list(levels) for name, levels in self.raw.ladders.items()}


def catalog_file(zone: str) -> str:
    """Where a zone's catalog lives, as error messages name it."""
    return f"pipeline/catalog/{zone}.yaml"


def _load(zone: str, model: type[_Model]) -> Any:
    where = catalog_file(zone)
    try:
        data = yaml.safe_load(resources.files("pipeline").joinpath(f"catalog/{zone}.yaml").read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"column catalog {where} is not readable YAML: {exc}") from exc
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'catalog'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid column catalog {where}: {problems}") from exc


@cache
def load_catalog() -> Catalog:
    """The shipped column catalog, validated (loaded once per process).

    Raises:
        SettingsError: a catalog file is unreadable or inconsistent; the message names the file and the column.
    """
    raw = _load("raw", RawZone)
    return Catalog(raw, {zone: _load(zone, OtherZone).tables for zone in ZONES if zone != "raw"})
