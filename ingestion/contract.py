"""Data contracts: one declarative YAML file per table (schema, types, validation rules), loaded and checked.

A contract is data, not code. The shipped contracts live in ``ingestion/contracts/<table>.yaml``; a user can
pass any file of the same shape (``medguard ingest --contract FILE``) or let :mod:`ingestion.infer` draft one.

Shape::

    table: observations            # the raw table it loads
    key: observation_id            # unique per record within a batch
    patient_column: patient_id     # whose record it is (pseudonymised into patient_pseudonym); optional
    columns:
      <name>: {type: string|float|integer|boolean|date|datetime|json, required: bool,
               enum: [...], pattern: REGEX, min: x, max: y, min_length: n, max_length: n,
               code_system: icd10cm|icd9cm|snomed|loinc|rxnorm|ndc|cvx|cpt|hcpcs|ucum,
               normalize: phone|us_state|ssn, default: TEXT, phi: bool}
    codes:                         # code columns whose system is named per row (mapped to short names at conform)
      - {code: code, system: code_system}
    ranges:                        # value limits that depend on a code (vitals and labs per LOINC), in a unit
      - {column: value, by: loinc_code, unit: unit, limits: {"8480-6": [60, 260, "mm[Hg]"], ...}}
    order:                         # one column's value may not be earlier than another's
      - {before: admit_time, after: discharge_time}

Which columns are PHI (sealed in the raw zone) is declared once, in the column catalog (:mod:`pipeline.catalog`):
a contract for a table the catalog knows takes ``phi`` from it. ``phi:`` in a contract is for columns the catalog
does not know (a new extract's table or extra field); a contract that says ``phi:`` for a catalogued column and
disagrees with the catalog, or declares another type than the catalog, fails at load naming both places.

Dates are kept as ISO-8601 strings (``date``: ``YYYY-MM-DD``, ``datetime``: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC): the
conform step brings ISO partial dates, offsets and HL7 / CDA ``TS`` values to that form (:mod:`ingestion.normalize`),
and the rules check format *and* calendar validity. ``normalize:`` does the same for a phone (E.164), a US state
(USPS code) or an SSN (``ddd-dd-dddd``) column; a value with no unambiguous normal form is kept as written.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from pipeline.catalog import catalog_file, load_catalog
from pipeline.errors import ValidationError

__all__ = ["CONFORMED_TABLES", "Column", "Contract", "builtin_contract", "load_contract", "with_defaults"]

ColumnType = Literal["string", "float", "integer", "boolean", "date", "datetime", "json"]
# The short names of ingestion.codes.SYSTEMS: a column whose every code is of one system.
CodeSystem = Literal["icd10cm", "icd9cm", "snomed", "loinc", "rxnorm", "ndc", "cvx", "cpt", "hcpcs", "ucum"]
# How the conform step normalises a column's values before the rules run (ingestion.normalize); a value with no
# unambiguous normal form is kept as written.
Normalizer = Literal["phone", "us_state", "ssn"]
CONFORMED_TABLES = ("patients", "encounters", "observations", "conditions", "medications", "procedures",
                    "immunizations", "allergies", "diagnostic_reports", "outcomes", "notes", "resources")
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ARROW = {"string": pa.string(), "float": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(),
          "date": pa.string(), "datetime": pa.string(), "json": pa.string()}
# Provenance and join columns the loader adds; a source column may not take these names.
RESERVED = ("patient_pseudonym", "_source", "_batch_id", "_ingested_at", "_record_hash", "_identity")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Model):
    """One column's type and rules."""

    type: ColumnType = "string"
    required: bool = False
    # None: as the column catalog says (not PHI for a column the catalog does not know). Resolved at load.
    phi: bool | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    code_system: CodeSystem | None = None
    normalize: Normalizer | None = None
    # The value a null takes at conform (before the rules run), e.g. ingestion.default_facility for facility_id.
    default: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from exc
        return value

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.type]


class CodedRange(_Model):
    """Inclusive limits of ``column`` for each code found in ``by`` (e.g. a vital's range per LOINC code).

    A code's limits may name the UCUM unit they are in (``[60, 260, "mm[Hg]"]``); with ``unit`` (the column of each
    row's unit) a value written in another unit of the same quantity (``[in_i]`` for ``cm``) is converted before
    the comparison, and one in a unit that does not convert is not range-checked (its plausibility is unknown, not
    wrong). A row with no unit is taken to be in the limits' unit.
    """

    column: str
    by: str
    limits: dict[str, tuple[float, float] | tuple[float, float, str]]
    unit: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> CodedRange:
        for code, limit in self.limits.items():
            if limit[0] > limit[1]:
                raise ValueError(f"range for {code}: low {limit[0]} is above high {limit[1]}")
        return self

    def bounds(self, code: str) -> tuple[float, float]:
        """The low and high limit of ``code``."""
        return self.limits[code][0], self.limits[code][1]

    def unit_of(self, code: str) -> str | None:
        """The UCUM unit ``code``'s limits are in, when they name one."""
        limit = self.limits[code]
        return limit[2] if len(limit) == 3 else None


class CodedColumn(_Model):
    """A code column whose system is named per row in another column (``code`` and ``code_system``)."""

    code: str
    system: str


class Order(_Model):
    """``after`` may not be earlier than ``before`` (both ISO strings of the same format)."""

    before: str
    after: str


class Contract(_Model):
    """A table's data contract. Build with :func:`load_contract` / :func:`builtin_contract`."""

    table: str
    description: str = ""
    key: str | None = None
    patient_column: str | None = None
    columns: dict[str, Column]
    ranges: tuple[CodedRange, ...] = ()
    order: tuple[Order, ...] = ()
    codes: tuple[CodedColumn, ...] = ()

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(f"table {value!r} must be lower_snake_case: [a-z][a-z0-9_]*")
        return value

    @model_validator(mode="after")
    def _names_exist(self) -> Contract:
        if not self.columns:
            raise ValueError("a contract needs at least one column")
        names = set(self.columns)
        reserved = sorted((names & set(RESERVED)) | {n for n in names if n.startswith("__")})
        if reserved:
            raise ValueError(f"columns {reserved} are reserved for the loader's provenance columns "
                             "(and names starting with '__' for the validator's own)")
        wanted = [self.key, self.patient_column]
        wanted += [n for r in self.ranges for n in (r.column, r.by, r.unit)]
        wanted += [n for o in self.order for n in (o.before, o.after)]
        wanted += [n for c in self.codes for n in (c.code, c.system)]
        missing = sorted({n for n in wanted if n is not None and n not in names})
        if missing:
            raise ValueError(f"the contract refers to columns it does not declare: {missing}")
        for rng in self.ranges:
            if self.columns[rng.column].type not in ("float", "integer"):
                raise ValueError(f"range column {rng.column!r} must be float or integer")
        for pair in self.codes:
            if self.columns[pair.code].type != "string" or self.columns[pair.system].type != "string":
                raise ValueError(f"codes: {pair.code!r} and {pair.system!r} must both be string columns")
            if self.columns[pair.code].code_system is not None:
                raise ValueError(f"codes: {pair.code!r} has a fixed code_system; a per-row system is one or the other")
        return self

    @model_validator(mode="after")
    def _agrees_with_catalog(self) -> Contract:
        catalog = load_catalog()
        resolved: dict[str, Column] = {}
        for name, column in self.columns.items():
            known = catalog.column(self.table, name)
            there = f"the column catalog {catalog_file('raw')} (tables.{self.table}.columns.{name})"
            if known is not None and column.phi is not None and column.phi != known.phi:
                raise ValueError(f"columns.{name}: phi: {str(column.phi).lower()} here, but {there} says phi: "
                                 f"{str(known.phi).lower()}; PHI is declared in the catalog only")
            if known is not None and column.type != known.type:
                raise ValueError(f"columns.{name}: type {column.type} here, but {there} says type {known.type}")
            phi = known.phi if known is not None else bool(column.phi)
            resolved[name] = column if column.phi is phi else column.model_copy(update={"phi": phi})
        object.__setattr__(self, "columns", resolved)
        return self

    @property
    def phi_columns(self) -> tuple[str, ...]:
        """The columns sealed by the security core before anything is written."""
        return tuple(name for name, col in self.columns.items() if col.phi)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The schema of the source columns as loaded (before encryption)."""
        return pa.schema([(name, col.arrow_type) for name, col in self.columns.items()])

    @property
    def fingerprint(self) -> str:
        """A short digest of the contract's content, recorded with every batch validated against it."""
        text = self.model_dump_json(exclude={"description"})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The contract as YAML (what :func:`load_contract` reads)."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["columns"] = {name: col.model_dump(mode="json", exclude_defaults=True, exclude={"phi"})
                           | ({"phi": True} if col.phi else {}) for name, col in self.columns.items()}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _parse(text: str, where: str) -> Contract:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"contract {where} is not readable YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError(f"contract {where} must be a mapping, not {type(data).__name__}")
    try:
        return Contract.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'contract'}: {e['msg']}" for e in exc.errors())
        raise ValidationError(f"contract {where} is invalid: {problems}") from exc


def load_contract(path: str | Path) -> Contract:
    """Read a contract file.

    Raises:
        ValidationError: the file is missing, not YAML, or not a valid contract (the message names the field).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"cannot read contract {file}: {exc.strerror or exc}") from exc
    return _parse(text, str(file))


def builtin_contract(table: str) -> Contract:
    """The shipped contract of a conformed table.

    Raises:
        ValidationError: no contract ships for ``table``.
    """
    if table not in CONFORMED_TABLES:
        raise ValidationError(f"no shipped contract for table {table!r}; shipped: {', '.join(CONFORMED_TABLES)}")
    text = resources.files("ingestion").joinpath(f"contracts/{table}.yaml").read_text(encoding="utf-8")
    return _parse(text, f"ingestion/contracts/{table}.yaml")


def with_defaults(contract: Contract, *, facility: str | None) -> Contract:
    """``contract`` with the settings' defaults for missing values: a ``facility_id`` column with no default of its
    own takes ``facility`` (``ingestion.default_facility``), so a null facility becomes it at conform.

    The contract's fingerprint changes with the default, so the same input loaded with another default is another
    batch.
    """
    column = contract.columns.get("facility_id")
    if facility is None or column is None or column.default is not None or column.type != "string":
        return contract
    columns = {**contract.columns, "facility_id": column.model_copy(update={"default": facility})}
    return contract.model_copy(update={"columns": columns})
