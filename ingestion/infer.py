"""Draft a data contract from an extract that has none: types, observed ranges, enumerations, PHI columns.

The draft is deliberately strict about what it saw (observed numeric range, small enumerations, required
when no value was missing) so that anything new is quarantined for a person to look at, and generous about
PHI: a column is PHI when its *name* looks like an identifier (name, SSN, MRN, phone, email, address, ZIP,
birth date, member id…) or when most sampled *values* look like one (SSN, phone, email, ZIP patterns). The
de-identification layer refines this classification; ingestion only needs to know what to seal. Drafts are
saved under ``$MEDGUARD_HOME/contracts/<table>.draft.yaml`` for review.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ingestion.contract import RESERVED, Column, Contract
from pipeline.catalog import load_catalog
from pipeline.settings import Settings

__all__ = ["classify_phi", "infer_contract", "save_draft"]

_PHI_NAME = re.compile(
    r"(^|_)(first|last|given|family|middle|full|patient|maiden)?_?name$|(^|_)(ssn|social|mrn|medical_record|"
    r"phone|tel|telephone|mobile|fax|email|e_mail|address|street|addr|zip|zipcode|postal|postcode|city|"
    r"birth|dob|birth_date|birthdate|member|insurance|policy|license|licence|passport|account|ip_address|url|"
    r"device_serial|vin|plate|photo)(_|$)|(^|_)patient_id$|(^|_)person_id$", re.IGNORECASE)
_PHI_VALUES = {
    "ssn": re.compile(r"^\d{3}-\d{2}-\d{4}$"),
    "phone": re.compile(r"^(\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}$"),
    "email": re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"),
    "zip": re.compile(r"^\d{5}(-\d{4})?$"),
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_ENUM_MAX = 12
_ENUM_MIN_ROWS = 50


def classify_phi(name: str, values: list[Any]) -> str | None:
    """Why a column is PHI (``name`` or the value pattern that matched), or None."""
    if _PHI_NAME.search(name):
        return "name"
    sample = [v for v in values if isinstance(v, str) and v][:1000]
    if not sample:
        return None
    for label, pattern in _PHI_VALUES.items():
        if sum(1 for v in sample if pattern.match(v)) >= 0.8 * len(sample):
            return label
    return None


def _column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "string"
    if all(isinstance(v, bool) for v in present):
        return "boolean"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "integer" if all(float(v).is_integer() for v in present) else "float"
    text = [str(v) for v in present]
    lowered = {t.lower() for t in text}
    if lowered <= {"true", "false"}:
        return "boolean"
    if all(_DATETIME.match(t) for t in text):
        return "datetime"
    if all(_DATE.match(t) for t in text):
        return "date"
    try:
        numbers = [float(t) for t in text]
    except ValueError:
        return "string"
    if any(t.startswith("0") and len(t) > 1 and "." not in t for t in text):
        return "string"  # leading zeros: an identifier (MRN, ZIP), not a number
    return "integer" if all(n.is_integer() and "." not in t for n, t in zip(numbers, text, strict=True)) else "float"


def _sample(path: Path, table: str, sample_rows: int) -> tuple[list[str], list[dict[str, Any]]]:
    from ingestion.sources.tabular import tabular_format

    fmt = tabular_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        rows = []
        for batch in parquet.iter_batches(batch_size=min(sample_rows, 65_536)):
            rows += batch.to_pylist()
            if len(rows) >= sample_rows:
                break
        return parquet.schema_arrow.names, rows[:sample_rows]
    if fmt == "csv":
        import csv

        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            rows = []
            for fields in reader:
                if len(fields) == len(header):
                    rows.append({h: (v if v != "" else None) for h, v in zip(header, fields, strict=True)})
                if len(rows) >= sample_rows:
                    break
        return header, rows
    import json

    rows, names = [], {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                rows.append(record)
                names.update(dict.fromkeys(record))
            if len(rows) >= sample_rows:
                break
    return list(names), rows


def infer_contract(path: str | Path, *, table: str, sample_rows: int = 10_000) -> Contract:
    """A draft contract for ``table`` from the first ``sample_rows`` records of an extract.

    Raises:
        ValueError: the file has no header/columns, or a column name the lake cannot take.
    """
    file = Path(path)
    names, rows = _sample(file, table, sample_rows)
    if not names:
        raise ValueError(f"{file.name}: no columns found to infer a contract from")
    columns: dict[str, Column] = {}
    for name in names:
        if name in RESERVED:
            raise ValueError(f"{file.name}: column {name!r} is reserved for provenance; rename it")
        values = [row.get(name) for row in rows]
        # A column the column catalog knows has the catalog's type and PHI flag; only the others are guessed.
        known = load_catalog().column(table, name)
        kind = known.type if known else _column_type(values)
        present = [v for v in values if v is not None]
        options: dict[str, Any] = {"type": kind, "required": bool(rows) and len(present) == len(values),
                                   "phi": known.phi if known else classify_phi(name, values) is not None}
        if kind in ("integer", "float") and present:
            numbers = [float(v) for v in present]
            options.update(min=min(numbers), max=max(numbers))
        if kind == "string" and not options["phi"] and len(rows) >= _ENUM_MIN_ROWS:
            distinct = sorted({str(v) for v in present})
            if 0 < len(distinct) <= _ENUM_MAX:
                options["enum"] = tuple(distinct)
        columns[name] = Column(**options)
    key = next((n for n in names if n.endswith("_id") and columns[n].required
                and len({row.get(n) for row in rows}) == len(rows)), None)
    patient = next((n for n in names if n.lower() in ("patient_id", "person_id", "mrn")), None)
    return Contract(table=table, description=f"Draft inferred from {file.name} ({len(rows)} rows); review it.",
                    key=key, patient_column=patient, columns=columns)


def save_draft(settings: Settings, contract: Contract) -> Path:
    """Write a draft contract under ``$MEDGUARD_HOME/contracts/`` and return its path."""
    folder = settings.home / "contracts"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{contract.table}.draft.yaml"
    target.write_text("# Draft contract inferred by medguard: review it, then pass it with --contract.\n"
                      + contract.to_yaml(), encoding="utf-8")
    return target
