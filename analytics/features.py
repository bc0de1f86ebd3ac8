"""Per-patient feature sets on Spark from deidentified tables, with a contract that fixes their columns.

From a training (or scoring) table keyed by ``patient_pseudonym`` and the other deidentified tables:

- coded numeric events (labs, vitals) in the look-back window before each row's index date become
  ``<prefix>_<code>_last``, ``_mean`` and ``_trend`` (least-squares slope per year); missing stays missing
  (xgboost handles it natively);
- coded events without a value (diagnoses, prescriptions) known at the index date become 0/1 indicators;
- an event's code is its preferred column (``icd10_code``…) or, when that is empty, its ``code`` in the wanted
  system or mapped by the source's crosswalk (SNOMED CT diagnoses to ICD-10-CM), so a diagnosis makes the same
  feature whichever system it came coded in; the mapping used is stored in the contract for scoring;
- the patient table's categorical columns become one-hot features, banded ones (``age_band`` "40-44", "90+")
  the band's lower bound;
- a flat table (any tabular dataset) contributes its own numeric and low-cardinality columns.

The first build (training) picks codes and levels and records them in a :class:`FeatureContract`; scoring
builds with that contract, so the columns are the same. Every feature's source column is checked against the
published column classification: no direct identifier can enter a feature set.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from analytics.config import TrainConfig
from analytics.contract import DIRECT_IDENTIFIER, Classifier, check_columns, check_provenance
from pipeline.errors import ValidationError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

LABEL = "label"
ROW_ID = "_row_id"
GROUP = "_group"
# Provenance carried through (never features): which batch and source a row came from, for the poisoning screen.
PASSTHROUGH = {"_batch_id": "_batch", "_source": "_source", "_ingested_at": "_ingested"}
_NUMERIC = ("byte", "short", "int", "bigint", "long", "float", "double", "boolean", "decimal")
_PROVENANCE_COLUMNS = ("_batch_id", "_ingested_at", "_record_hash")
_SECONDS_PER_YEAR = 365.25 * 86400


def _name(text: Any) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(text)).strip("_").lower() or "x"


@dataclass
class FeatureContract:
    """What a feature set is made of; stored with the model and used to rebuild the same columns for scoring."""

    table: str
    key: str | None
    row_id: str
    label: str | None
    positive_class: Any
    index_time: str | None
    joined: bool
    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    patient_categorical: dict[str, list[str]] = field(default_factory=dict)
    patient_bands: list[str] = field(default_factory=list)
    event_codes: dict[str, list[str]] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    provenance: dict[str, tuple[str, str]] = field(default_factory=dict)
    subgroups: list[str] = field(default_factory=list)
    source_tables: list[str] = field(default_factory=list)
    # Per event prefix: the fallback a row without a preferred code takes, as used at training
    # ({"code", "system", "target", "map": {"<system>|<code>": code}}), so scoring maps codes the same way.
    code_maps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["provenance"] = {k: list(v) for k, v in self.provenance.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureContract:
        data = dict(data)
        data["provenance"] = {k: tuple(v) for k, v in data.get("provenance", {}).items()}
        return cls(**data)


def _dtype(df: DataFrame, column: str) -> str:
    return dict(df.dtypes)[column]


def _is_numeric(dtype: str) -> bool:
    return dtype.startswith(_NUMERIC)


def _band_lower(column: Any) -> Any:
    from pyspark.sql import functions as F

    return F.regexp_extract(column.cast("string"), r"^\s*(\d+)", 1).try_cast("double")


def _timestamp(column: Any) -> Any:
    return column.try_cast("timestamp")


def _label_expr(df: DataFrame, label: str, positive: Any) -> Any:
    from pyspark.sql import functions as F

    dtype = _dtype(df, label)
    if positive is None:
        if dtype == "boolean":
            positive = True
        elif _is_numeric(dtype):
            positive = 1
        else:
            values = sorted(r[0] for r in df.select(label).dropna().distinct().limit(3).collect())
            if len(values) != 2:
                raise ValidationError(f"label {label!r} is a {dtype} column with values {values[:3]}: name the "
                                      "positive class in the training config (positive_class)")
            raise ValidationError(f"label {label!r} has values {values}: name the positive class in the training "
                                  "config (positive_class)")
    col = F.col(label)
    if dtype == "boolean":
        match = col == F.lit(str(positive).lower() in ("true", "1", "yes"))
    elif _is_numeric(dtype):
        match = col.cast("double") == F.lit(float(positive))
    else:
        match = F.lower(col.cast("string")) == F.lit(str(positive).lower())
    return F.when(col.isNull(), None).otherwise(match.cast("int"))


def build_features(tables: dict[str, DataFrame], table: str, config: TrainConfig, classify: Classifier, *,
                   label: str | None = None, contract: FeatureContract | None = None,
                   ) -> tuple[DataFrame, FeatureContract]:
    """One row per row of ``tables[table]`` with its features, row id, group, label and subgroup columns.

    Args:
        tables: deidentified tables as Spark DataFrames, by name (the training table and the sources).
        table: the table whose rows are the examples.
        config: the training config (sources, drops, positive class).
        classify: column classes per table (see :mod:`analytics.contract`).
        label: the label column (training); rows with no label are dropped. None when scoring.
        contract: a training contract to rebuild exactly its columns (scoring); None picks them (training).

    Raises:
        ValidationError: a missing column or table, an identifier reaching the features, no usable feature.
    """
    from pyspark.sql import functions as F

    if table not in tables:
        raise ValidationError(f"deidentified/{table} does not exist")
    base = tables[table]
    src = config.sources
    training = contract is None
    key = src.key if src.key in base.columns else None
    if training:
        if label is not None and label not in base.columns:
            raise ValidationError(f"label column {label!r} is not in deidentified/{table} "
                                  f"(columns: {', '.join(base.columns)})")
        source_tables = [s.table for s in src.events] + ([src.patients.table] if src.patients else [])
        present = [t for t in source_tables if t in tables and t != table]
        joined = key is not None and src.join != "never" and bool(present)
        if src.join == "always" and not joined:
            raise ValidationError(f"join: always, but deidentified/{table} has no {src.key!r} column or no source "
                                  f"table exists ({', '.join(source_tables)})")
        row_id = key if key and base.select(key).distinct().count() == base.count() else (
            "_record_hash" if "_record_hash" in base.columns else ROW_ID)
        index_time = src.index_time if joined and src.index_time in base.columns else None
        contract = FeatureContract(table=table, key=key, row_id=row_id, label=label,
                                   positive_class=config.positive_class, index_time=index_time, joined=joined,
                                   source_tables=sorted(set(present) if joined else set()))
    else:
        missing = [c for c in (contract.key, contract.index_time) if c and c not in base.columns]
        if missing:
            raise ValidationError(f"deidentified/{table} lacks the model's columns {missing}")
    if contract.row_id == ROW_ID:
        base = base.withColumn(ROW_ID, F.monotonically_increasing_id().cast("string"))
    drop = set(config.drop)
    excluded = {contract.key, contract.row_id, contract.label, contract.index_time, *_PROVENANCE_COLUMNS}

    # Own columns of the table (a flat dataset's features; for a patient-keyed table usually few or none).
    if training:
        own_classes = classify(table)
        wanted = set(config.features)
        for column in sorted(wanted & set(base.columns)):
            if own_classes.get(column) == DIRECT_IDENTIFIER:
                raise ValidationError(f"the training config asks for deidentified/{table}.{column}, a direct "
                                      "identifier: it can never enter a feature set")
        for column, dtype in base.dtypes:
            if column in excluded or column in drop or column.startswith("_"):
                continue
            if own_classes.get(column) == DIRECT_IDENTIFIER:
                continue  # never a candidate, whatever its type
            if _is_numeric(dtype):
                contract.numeric.append(column)
            elif dtype == "string":
                levels = [r[0] for r in base.select(column).dropna().distinct().limit(src.max_levels + 1).collect()]
                if 1 < len(levels) <= src.max_levels:
                    contract.categorical[column] = sorted(levels)
        check_columns(classify, table, [*contract.numeric, *contract.categorical])
    cols = [F.col(contract.row_id).alias(ROW_ID) if contract.row_id != ROW_ID else F.col(ROW_ID)]
    cols.append(F.col(contract.key).alias(GROUP) if contract.key else F.col(ROW_ID if contract.row_id == ROW_ID
                                                                            else contract.row_id).alias(GROUP))
    if contract.key:
        cols.append(F.col(contract.key))
    for column in contract.numeric:
        name = _name(column)
        cols.append(F.col(column).cast("double").alias(name))
        contract.provenance.setdefault(name, (table, column))
    for column, levels in contract.categorical.items():
        for level in levels:
            name = f"{_name(column)}_{_name(level)}"
            cols.append((F.col(column) == F.lit(level)).cast("double").alias(name))
            contract.provenance.setdefault(name, (table, column))
    if contract.index_time:
        cols.append(_timestamp(F.col(contract.index_time)).alias("_index_ts"))
    if label is not None and contract.label in base.columns:
        cols.append(_label_expr(base, contract.label, contract.positive_class).alias(LABEL))
    for column in config.subgroups:
        if column in base.columns and column not in {c for c in base.columns if c.startswith("_")}:
            cols.append(F.col(column).cast("string").alias(f"_sub_{column}"))
    cols.extend(F.col(c).cast("string").alias(alias) for c, alias in PASSTHROUGH.items() if c in base.columns)
    out = base.select(*cols)
    if LABEL in out.columns and label is not None:
        out = out.where(F.col(LABEL).isNotNull())

    if contract.joined:
        out = _join_patient_sources(out, tables, config, classify, contract, training)
    if "_index_ts" in out.columns:
        out = out.drop("_index_ts")
    if training:
        candidates = [c for c in contract.provenance if c in out.columns]
        if config.features:
            wanted = set(config.features)
            candidates = [c for c in candidates if c in wanted or contract.provenance[c][1] in wanted]
        candidates = [c for c in candidates if c not in drop and contract.provenance[c][1] not in drop]
        if not candidates:
            raise ValidationError(f"no usable feature in deidentified/{table} after the config's features/drop")
        contract.features = candidates
        contract.provenance = {c: contract.provenance[c] for c in candidates}
        contract.subgroups = [c[len("_sub_"):] for c in out.columns if c.startswith("_sub_")]
    check_provenance(classify, contract.provenance)
    keep = [ROW_ID, GROUP, *([contract.key] if contract.key else []), *contract.features,
            *([LABEL] if LABEL in out.columns else []), *[f"_sub_{s}" for s in contract.subgroups
                                                          if f"_sub_{s}" in out.columns],
            *[alias for alias in PASSTHROUGH.values() if alias in out.columns]]
    missing = [c for c in contract.features if c not in out.columns]
    if missing:
        raise ValidationError(f"the scoring data cannot produce the model's features {missing[:5]}")
    return out.select(*keep), contract


def _event_code(etab: DataFrame, preferred: str, code_map: dict[str, Any] | None) -> Any:
    """An event row's code: the preferred column, else its own code in the target system, else the crosswalk's.

    The crosswalk is a literal Spark map keyed ``<system>|<code>`` (a few hundred entries at most), looked up per
    row on the executors; no join, no Python.
    """
    from pyspark.sql import functions as F

    candidates = []
    if preferred in etab.columns:
        candidates.append(F.nullif(F.trim(F.col(preferred).cast("string")), F.lit("")))
    if code_map is not None:
        system = F.lower(F.trim(F.col(code_map["system"]).cast("string")))
        own = F.trim(F.col(code_map["code"]).cast("string"))
        candidates.append(F.when(system == F.lit(code_map["target"]), own))
        if code_map["map"]:
            lookup = F.create_map(*[F.lit(part) for pair in sorted(code_map["map"].items()) for part in pair])
            candidates.append(F.try_element_at(lookup, F.concat_ws("|", system, own)))  # null when unmapped
    return F.coalesce(*candidates) if len(candidates) > 1 else candidates[0]


def _join_patient_sources(out: DataFrame, tables: dict[str, DataFrame], config: TrainConfig, classify: Classifier,
                          contract: FeatureContract, training: bool) -> DataFrame:
    from pyspark.sql import functions as F

    src = config.sources
    key = contract.key
    assert key is not None
    has_index = "_index_ts" in out.columns
    anchors = out.select(key, "_index_ts").distinct() if has_index else out.select(key).distinct()
    join_keys = [key, "_index_ts"] if has_index else [key]

    patients = src.patients
    if patients and patients.table in contract.source_tables:
        ptab = tables[patients.table]
        if training:
            present_cat = [c for c in patients.categorical if c in ptab.columns]
            contract.patient_bands = [c for c in patients.ordinal_bands if c in ptab.columns]
            check_columns(classify, patients.table, [*present_cat, *contract.patient_bands])
            for column in present_cat:
                levels = [r[0] for r in ptab.select(column).dropna().distinct().limit(src.max_levels + 1).collect()]
                if 1 < len(levels) <= src.max_levels:
                    contract.patient_categorical[column] = sorted(levels)
        pcols = [F.col(key)]
        for column, levels in contract.patient_categorical.items():
            for level in levels:
                name = f"{_name(column)}_{_name(level)}"
                pcols.append((F.col(column) == F.lit(level)).cast("double").alias(name))
                contract.provenance.setdefault(name, (patients.table, column))
        for column in contract.patient_bands:
            name = f"{_name(column)}_lower"
            pcols.append(_band_lower(F.col(column)).alias(name))
            contract.provenance.setdefault(name, (patients.table, column))
        for column in config.subgroups:
            if column in ptab.columns and f"_sub_{column}" not in out.columns:
                pcols.append(F.col(column).cast("string").alias(f"_sub_{column}"))
        # One row per patient: a deidentified patients table has one, but never let a duplicate multiply rows.
        pfeat = ptab.select(*pcols).dropDuplicates([key])
        out = out.join(pfeat, on=key, how="left")

    for event in src.events:
        if event.table not in contract.source_tables:
            continue
        etab = tables[event.table]
        if training:
            fallback = event.fallback
            if fallback is not None and {fallback.code, fallback.system} <= set(etab.columns):
                contract.code_maps[event.prefix] = {"code": fallback.code, "system": fallback.system,
                                                    "target": fallback.target, "map": fallback.pairs()}
        code_map = contract.code_maps.get(event.prefix)
        code_columns = [event.code] if event.code in etab.columns or code_map is None else []
        code_columns += [code_map["code"], code_map["system"]] if code_map is not None else []
        needed = [c for c in (key, *code_columns, event.value, event.time) if c]
        absent = [c for c in needed if c not in etab.columns]
        if absent:
            raise ValidationError(f"deidentified/{event.table} lacks {absent} named in the training config")
        code = _event_code(etab, event.code, code_map)
        if training:
            check_columns(classify, event.table, [c for c in needed if c != key])
            counts = (etab.select(F.col(key), code.alias("_code")).where(F.col("_code").isNotNull())
                      .groupBy("_code").agg(F.countDistinct(key).alias("n"))
                      .where(F.col("n") >= src.min_code_patients).orderBy(F.desc("n"), "_code")
                      .limit(src.max_codes_per_source).collect())
            contract.event_codes[event.prefix] = sorted(str(r[0]) for r in counts)
        codes = contract.event_codes.get(event.prefix, [])
        if not codes:
            continue
        ev = etab.select(F.col(key), code.alias("_code"),
                         *([F.col(event.value).try_cast("double").alias("_value")] if event.value else []),
                         *([_timestamp(F.col(event.time)).alias("_t")] if event.time else []))
        ev = ev.where(F.col("_code").isin(codes)).join(anchors, on=key, how="inner")
        if has_index and event.time:
            window_start = F.col("_index_ts") - F.expr(f"INTERVAL {src.lookback_days} DAYS")
            if event.value:
                ev = ev.where((F.col("_t") < F.col("_index_ts")) & (F.col("_t") >= window_start))
            else:
                ev = ev.where(F.col("_t") <= F.col("_index_ts"))
        names: list[tuple[str, str]] = []
        if event.value:
            aggs = [("mean", F.avg("_value"))]
            if event.time:
                origin = F.unix_timestamp(F.col("_index_ts")) if has_index else F.lit(0)
                ev = ev.withColumn("_years", (F.unix_timestamp("_t") - origin) / _SECONDS_PER_YEAR)
                aggs = [("last", F.max_by("_value", "_t")), *aggs, ("trend", F.regr_slope("_value", "_years"))]
            wide = ev.groupBy(*join_keys).pivot("_code", codes).agg(*[expr.alias(stat) for stat, expr in aggs])
            for code in codes:
                for stat, _ in aggs:
                    name = f"{event.prefix}_{_name(code)}_{stat}"
                    wide = wide.withColumnRenamed(f"{code}_{stat}" if len(aggs) > 1 else code, name)
                    names.append((name, event.value))
            out = out.join(wide, on=join_keys, how="left")
        else:
            wide = ev.groupBy(*join_keys).pivot("_code", codes).agg(F.count(F.lit(1)))
            for code in codes:
                name = f"{event.prefix}_{_name(code)}"
                wide = wide.withColumnRenamed(code, name)
                names.append((name, event.code))
            out = out.join(wide, on=join_keys, how="left")
            for name, _ in names:
                out = out.withColumn(name, F.when(F.col(name) > 0, 1.0).otherwise(0.0))
        for name, column in names:
            contract.provenance.setdefault(name, (event.table, column))
    return out
