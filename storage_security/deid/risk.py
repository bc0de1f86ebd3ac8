"""The re-identification risk gate: k-anonymity and l-diversity over a table's quasi-identifiers.

:func:`enforce` generalises quasi-identifiers up their ladders (e.g. age band 5 → 10 → 20 years → withheld) and
suppresses the rows of equivalence classes that are still too small (or not diverse enough in the sensitive
attribute), choosing the least generalisation whose suppression stays within ``max_suppression``. A table that
cannot meet k (fewer than k rows, say) raises :class:`RiskGateError` and is not published.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.errors import ValidationError
from storage_security.deid.operators import age_bands

WITHHELD = "*"

__all__ = ["ReleaseReport", "RiskGateError", "RiskReport", "apply_release", "count_band", "enforce", "enforce_release",
           "k_anonymity", "l_diversity", "release_vectors"]


class RiskGateError(ValidationError):
    """Raised by the risk gate when a table cannot meet the configured k-anonymity / l-diversity."""


@dataclass
class RiskReport:
    """What the gate did: the k and l achieved, generalisation levels, rows suppressed."""

    k_required: int
    l_required: int
    k: int
    l_diversity: int | None
    quasi_identifiers: list[str]
    sensitive: list[str]
    generalization: dict[str, Any] = field(default_factory=dict)
    suppressed: int = 0
    rows_in: int = 0
    rows_out: int = 0
    counted: str = "rows"

    def to_dict(self) -> dict[str, Any]:
        return {"k_required": self.k_required, "l_required": self.l_required, "k": self.k,
                "l": self.l_diversity, "quasi_identifiers": self.quasi_identifiers, "sensitive": self.sensitive,
                "generalization": self.generalization, "suppressed": self.suppressed, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "counted": self.counted}


def _keys(frame: pd.DataFrame, qis: Sequence[str]) -> pd.DataFrame:
    # Nulls form their own class: groupby would otherwise drop them silently.
    return frame[list(qis)].astype(object).where(frame[list(qis)].notna(), "<null>")


def k_anonymity(frame: pd.DataFrame, quasi_identifiers: Sequence[str], entity: str | None = None) -> int:
    """The size of the smallest equivalence class, in rows or, with ``entity``, in distinct individuals.

    Counting individuals matters when a person has several rows (events, or the same patient from two sources):
    five rows of one patient are one person, not five. With no quasi-identifiers the table is one class.
    """
    if frame.empty:
        return 0
    if not quasi_identifiers:
        return int(frame[entity].nunique()) if entity else len(frame)
    keys = _keys(frame, quasi_identifiers)
    groups = (frame[entity] if entity else keys[quasi_identifiers[0]]).groupby(
        [keys[c] for c in quasi_identifiers], sort=False)
    return int((groups.nunique() if entity else groups.size()).min())


def l_diversity(frame: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: str) -> int:
    """The fewest distinct (non-null) values of ``sensitive`` in any equivalence class."""
    if frame.empty:
        return 0
    if not quasi_identifiers:
        return int(frame[sensitive].nunique())
    keys = _keys(frame, quasi_identifiers)
    return int(frame[sensitive].groupby([keys[c] for c in quasi_identifiers], sort=False).nunique().min())


def _generalize(values: pd.Series, step: Any) -> pd.Series:
    """One ladder step: an int widens an age band ("40-44" → width, by the operators' age bands) or makes a band of
    an age given as a number (a research table's own ``age``: 47 or "47" → "45-49"), "*" withholds the value;
    anything that is neither ("90+", a withheld "*") stays as it is."""
    if step == WITHHELD:
        return pd.Series([WITHHELD] * len(values), index=values.index, dtype=object)
    text = values.astype("string")
    lows = text.str.extract(r"^(\d+)-\d+$", expand=False)
    lows = lows.fillna(text.str.extract(r"^\s*(\d+)(?:\.\d*)?\s*$", expand=False))
    bands = lows.notna()
    out = values.astype(object)
    out[bands] = age_bands(pa.array(lows[bands].astype("int64")), int(step)).to_numpy(zero_copy_only=False)
    return out


def _apply_levels(frame: pd.DataFrame, qis: Sequence[str], levels: dict[str, int],
                  ladders: dict[str, Sequence[Any]]) -> pd.DataFrame:
    """``frame`` with each quasi-identifier taken ``levels[c]`` steps up its ladder."""
    out = frame.copy()
    for column in qis:
        for step in list(ladders.get(column, [WITHHELD]))[:levels[column]]:
            out[column] = _generalize(out[column], step)
    return out


def _failing(frame: pd.DataFrame, qis: Sequence[str], sensitive: Sequence[str], k: int, ell: int,
             entity: str | None = None) -> pd.Series:
    """Rows whose equivalence class has fewer than k individuals (rows) or fewer than l sensitive values."""
    if not qis:
        size = frame[entity].nunique() if entity else len(frame)
        bad = size < k or any(frame[s].nunique() < ell for s in sensitive)
        return pd.Series(bad, index=frame.index)
    keys = _keys(frame, qis)
    if entity:
        bad = frame[entity].groupby([keys[c] for c in qis], sort=False).transform("nunique") < k
    else:
        bad = keys.groupby(list(qis), sort=False)[qis[0]].transform("size") < k
    for column in sensitive:
        diverse = frame[column].groupby([keys[c] for c in qis], sort=False).transform("nunique")
        bad |= diverse < ell
    return bad


def enforce(frame: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: Sequence[str], *, k: int,
            ell: int = 1, ladders: dict[str, Sequence[Any]] | None = None,
            max_suppression: float = 0.05, entity: str | None = None) -> tuple[pd.DataFrame, RiskReport]:
    """Generalise and suppress until every equivalence class has ≥ k individuals and ≥ l sensitive values.

    Greedy: while suppressing the failing rows would exceed ``max_suppression`` of the table, take the ladder
    step that leaves the fewest failing rows; then undo steps no longer needed, and suppress what still fails.

    Args:
        entity: the column naming the individual (``patient_pseudonym``): classes are sized in distinct
            individuals, not rows. Without it (or when the table lacks it or it is null throughout), rows are
            counted.

    With no quasi-identifier listed (a flat research table the catalog does not know), the whole table is one
    equivalence class: k is its number of individuals, and l is each listed sensitive column's number of distinct
    values over the whole table (none listed: l is not applicable and reported as null).

    Raises:
        RiskGateError: the table cannot meet k and l even fully generalised within the suppression budget
            (e.g. it has fewer than k rows).
    """
    qis = [c for c in quasi_identifiers if c in frame.columns]
    sensitive = [c for c in sensitive if c in frame.columns]
    # A table whose rows are linked to no patient (a research table without an id column: the pseudonym is null
    # throughout) has one individual per row.
    entity = entity if entity in frame.columns and frame[entity].notna().any() else None
    ladders = ladders or {}
    work = frame  # never changed in place: each ladder step is tried on a copy
    levels = {c: 0 for c in qis}
    rows = len(work)
    budget = int(max_suppression * rows)
    while True:
        failing = _failing(work, qis, sensitive, k, ell, entity) if rows else pd.Series(dtype=bool)
        if int(failing.sum()) <= budget:
            break
        candidates = [c for c in qis if levels[c] < len(ladders.get(c, [WITHHELD]))]
        if not candidates:
            raise RiskGateError(f"cannot reach k={k}, l={ell} over {qis} even fully generalised: "
                                f"{int(failing.sum())} of {rows} rows would be suppressed (budget {budget})")
        # The step that leaves the fewest failing rows: the least information lost for the most safety.
        trials = {}
        for c in candidates:
            trial = work.copy()
            trial[c] = _generalize(trial[c], list(ladders.get(c, [WITHHELD]))[levels[c]])
            trials[c] = (int(_failing(trial, qis, sensitive, k, ell, entity).sum()), trial)
        column = min(candidates, key=lambda c: (trials[c][0], -work[c].nunique(), c))
        work = trials[column][1]
        levels[column] += 1
    # Minimality: undo any step the final state no longer needs (the greedy path may have taken one too early).
    changed = True
    while changed and rows:
        changed = False
        for column in sorted((c for c in qis if levels[c]), key=lambda c: -levels[c]):
            trial_levels = {**levels, column: levels[column] - 1}
            trial = _apply_levels(frame, qis, trial_levels, ladders)
            trial_failing = _failing(trial, qis, sensitive, k, ell, entity)
            if int(trial_failing.sum()) <= budget:
                levels, work, failing, changed = trial_levels, trial, trial_failing, True
    suppressed = int(failing.sum()) if rows else 0
    if rows and bool(failing.any()):
        published = work.loc[~failing].reset_index(drop=True)
    else:  # nothing to suppress: no copy of a table that may be millions of rows
        published = work if isinstance(work.index, pd.RangeIndex) else work.reset_index(drop=True)
    if rows and published.empty:
        raise RiskGateError(f"k={k} would suppress every row of the table")
    report = RiskReport(
        k_required=k, l_required=ell, k=k_anonymity(published, qis, entity),
        l_diversity=min((l_diversity(published, qis, s) for s in sensitive), default=None),
        quasi_identifiers=qis, sensitive=sensitive,
        generalization={c: list(ladders.get(c, [WITHHELD]))[:levels[c]] for c in qis if levels[c]},
        suppressed=suppressed, rows_in=rows, rows_out=len(published), counted=entity or "rows")
    if rows and report.k < k:
        raise RiskGateError(f"k-anonymity {report.k} < {k} after generalisation")
    return published, report


ROWS = "#rows"
"""The release column that counts a patient's rows in an event table (their number of encounters, say)."""
BANDED = "#rows_band"
"""The release column that gives a patient's count of rows, in :func:`count_band` bands, in a table with no
quasi-identifier listed (their number of observations, notes or procedures)."""


def count_band(rows: int) -> str:
    """A count of rows as its band: ``0``, ``1``, then ``2-4``, ``5-9``, ``10-19``, ``20-49``, ``50-99``, ``100-199``…

    Bands on a 1-2-5 scale: each as wide as it is far from zero, so a count is known to about a factor of two and a
    half, the precision one may assume of an outsider's knowledge of how many tests or notes someone had.
    """
    if rows <= 1:
        return str(max(rows, 0))
    low, step = 2, 0
    while True:
        high = (5, 10, 20)[step % 3] * 10 ** (step // 3)
        if rows < high:
            return f"{low}-{high - 1}"
        low, step = high, step + 1


@dataclass
class ReleaseReport:
    """What the release gate did over the tables published together: one k per patient, not one per table."""

    k_required: int
    k: int
    patients: int
    suppressed_patients: int
    quasi_identifiers: dict[str, list[str]]
    generalization: dict[str, list[Any]] = field(default_factory=dict)
    over_budget: bool = False
    rows_suppressed: dict[str, int] = field(default_factory=dict)
    # What the gate did, to apply it to the tables' other columns (apply_release); never in the report: the
    # suppressed patients' pseudonyms are no figure to publish.
    steps: dict[tuple[str, str], list[Any]] = field(default_factory=dict, repr=False)
    dropped: frozenset[str] = field(default_factory=frozenset, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"k_required": self.k_required, "k": self.k, "patients": self.patients,
                "suppressed_patients": self.suppressed_patients, "quasi_identifiers": self.quasi_identifiers,
                "generalization": self.generalization, "over_budget": self.over_budget,
                "rows_suppressed": self.rows_suppressed}


def release_vectors(tables: dict[str, pd.DataFrame], quasi_identifiers: dict[str, Sequence[str]],
                    entity: str = "patient_pseudonym") -> pd.DataFrame:
    """One row per patient: every quasi-identifier a pseudonym links to them across ``tables``.

    A table with one row per patient (patients, outcomes) gives its quasi-identifiers' values; an event table gives
    the set of its rows' quasi-identifier tuples (the facilities and encounter types a patient was seen with,
    together, so a per-row class is never finer than the patient's) and the exact count of the patient's rows,
    which anyone holding the table can count. A table with no quasi-identifier listed (observations, notes,
    procedures) gives the patient's count of rows in :func:`count_band` bands (0 for a patient absent from it): an
    attacker may know roughly how many tests or notes someone had, not the exact number, and exact counts of
    dozens of observations would leave nearly every patient unique. A table without the pseudonym links nothing and
    is left out; a patient absent from a table gets ``<none>`` and 0.
    """
    columns: dict[str, pd.Series] = {}
    for table, frame in sorted(tables.items()):
        columns.update(_table_vectors(table, frame, quasi_identifiers.get(table, ()), entity))
    return _combine(columns)


def _table_vectors(table: str, frame: pd.DataFrame, quasi_identifiers: Sequence[str],
                   entity: str) -> dict[str, pd.Series]:
    """One table's columns of :func:`release_vectors`, each indexed by pseudonym."""
    qis = [c for c in quasi_identifiers if c in frame.columns]
    if entity not in frame.columns:
        return {}
    linked = frame[frame[entity].notna()]
    if not qis:
        # A table the catalog lists no quasi-identifier for still says who is in it and about how often.
        counts = linked.groupby(entity, sort=False).size()
        return {f"{table}{BANDED}": counts.map(count_band)}
    keys = _keys(linked, qis).astype(str)
    per_patient = linked.groupby(entity, sort=False).size()
    if per_patient.empty:
        return {}
    if int(per_patient.max()) <= 1:
        return {f"{table}.{c}": keys[c].set_axis(linked[entity]) for c in qis}
    return {f"{table}.{'+'.join(qis)}": _tuple_sets(linked[entity], keys), f"{table}{ROWS}": per_patient}


def _coded(frame: pd.DataFrame, entity: str, universe: pd.Index) -> pd.DataFrame:
    """``frame`` with its ``entity`` column as each patient's position in ``universe`` (null stays null)."""
    if entity not in frame.columns:
        return frame
    codes = pd.Series(universe.get_indexer(frame[entity]), index=frame.index)
    return frame.assign(**{entity: codes.where(codes >= 0).astype("Int64")})


def _combine(columns: dict[str, pd.Series]) -> pd.DataFrame:
    """The per-table columns as one frame over every patient (absent from a table: ``<none>``, 0 rows)."""
    if not columns:
        return pd.DataFrame()
    out = pd.DataFrame(columns)
    for name in out.columns:
        if name.endswith(ROWS):
            out[name] = out[name].fillna(0).astype(int)
        elif name.endswith(BANDED):
            out[name] = out[name].fillna(count_band(0))
        else:
            out[name] = out[name].fillna("<none>")
    return out


def _tuple_sets(entities: pd.Series, keys: pd.DataFrame) -> pd.Series:
    """Per patient, the set of their rows' quasi-identifier tuples, as one code: equal codes, equal sets.

    Vectorised: each distinct tuple gets a code, each patient's sorted distinct codes are one key, and each distinct
    key a code again (a Python step per patient, not per row or per group of pandas).
    """
    import numpy as np

    tuple_code = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    patient_code, patients = pd.factorize(entities, sort=False)
    pairs = np.unique(np.stack([patient_code, tuple_code], axis=1), axis=0)  # sorted by patient, then tuple
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    codes = pairs[:, 1].tolist()
    bounds = [*starts.tolist(), len(codes)]
    sets = [tuple(codes[a:b]) for a, b in itertools.pairwise(bounds)]
    signature, _ = pd.factorize(pd.Series(sets, dtype=object), sort=False)
    return pd.Series(signature, index=patients[pairs[starts, 0]])


def _small(vectors: pd.DataFrame, k: int) -> pd.Series:
    """Patients (rows of ``vectors``) whose class over every column has fewer than k patients."""
    if vectors.empty:
        return pd.Series(False, index=vectors.index)
    return vectors.groupby(list(vectors.columns), sort=False)[vectors.columns[0]].transform("size") < k


def _release_at(tables: dict[str, pd.DataFrame], steps: dict[tuple[str, str], list[Any]],
                levels: dict[tuple[str, str], int]) -> dict[str, pd.DataFrame]:
    out = dict(tables)
    for (table, column), level in levels.items():
        if level:
            frame = out[table] = out[table].copy()
            for step in steps[(table, column)][:level]:
                frame[column] = _generalize(frame[column], step)
    return out


def apply_release(table: pa.Table, name: str, report: ReleaseReport, entity: str = "patient_pseudonym") -> pa.Table:
    """``table``, the whole published table ``name`` as Arrow, as :func:`enforce_release` released it: its
    quasi-identifiers taken up the same ladder steps and the suppressed patients' rows left out; the same object if
    the release changed nothing in it.

    The gate decides over the tables' quasi-identifiers and pseudonyms alone (a projection); this applies its
    decision to the table as written, in Arrow: only the generalised columns pass through pandas.
    """
    import pyarrow.compute as pc

    out = table
    if report.dropped and entity in out.column_names:
        gone = pc.fill_null(pc.is_in(out.column(entity), value_set=pa.array(sorted(report.dropped), pa.string())),
                            False)
        if pc.any(gone).as_py():
            out = out.filter(pc.invert(gone))
    for (owner, column), taken in report.steps.items():
        if owner == name and column in out.column_names:
            values = out.column(column).to_pandas()
            for step in taken:
                values = _generalize(values, step)
            index = out.column_names.index(column)
            out = out.set_column(index, column, pa.array(values.astype(object).where(values.notna(), None),
                                                         from_pandas=True))
    return out


def enforce_release(tables: dict[str, pd.DataFrame], quasi_identifiers: dict[str, Sequence[str]], *, k: int,
                    ladders: dict[str, Sequence[Any]] | None = None, max_suppression: float = 0.05,
                    entity: str = "patient_pseudonym") -> tuple[dict[str, pd.DataFrame], ReleaseReport]:
    """Make the tables published together k-anonymous per patient over all of them (:func:`release_vectors`).

    Generalisation is chosen over the release: while more than ``max_suppression`` of the patients would sit in
    classes smaller than k, take the ladder step (a wider age band, a column withheld in one table) that leaves the
    fewest such patients; undo steps the end state no longer needs; then the remaining patients' rows are
    suppressed from every table. Row counts cannot be generalised (anyone can count rows), so when the ladders run
    out the patients still in small classes are suppressed even past the budget (``over_budget``): the release is
    never published unsafe. Tables without the pseudonym (flat research tables) are returned unchanged.

    Returns:
        The tables as they may be published, and the report; a table the gate left alone is the same object.
    """
    ladders = ladders or {}
    steps = {(t, c): list(ladders.get(c, [WITHHELD])) for t, frame in tables.items()
             for c in quasi_identifiers.get(t, ()) if c in frame.columns and entity in frame.columns}
    levels = dict.fromkeys(steps, 0)
    stepped = {t: [c for (name, c) in steps if name == t] for t in tables}
    # Patients as integers while the gate searches: aligning tables on long pseudonym strings was most of its time.
    linked = [frame[entity] for frame in tables.values() if entity in frame.columns]
    universe = pd.Index(pd.unique(pd.concat(linked).dropna())) if linked else pd.Index([])
    coded = {t: _coded(frame, entity, universe) for t, frame in tables.items()}
    # A trial changes one table's level: every other table's columns are those of an earlier trial.
    memo: dict[tuple[str, tuple[int, ...]], dict[str, pd.Series]] = {}

    def table_columns(table: str, at: dict[tuple[str, str], int]) -> dict[str, pd.Series]:
        key = (table, tuple(at[(table, c)] for c in stepped[table]))
        if key not in memo:
            frame = coded[table]
            if any(key[1]):
                frame = frame.copy()
                for c in stepped[table]:
                    for step in steps[(table, c)][:at[(table, c)]]:
                        frame[c] = _generalize(frame[c], step)
            memo[key] = _table_vectors(table, frame, quasi_identifiers.get(table, ()), entity)
        return memo[key]

    def failing(at: dict[tuple[str, str], int]) -> pd.Series:
        columns: dict[str, pd.Series] = {}
        for table in sorted(tables):
            columns.update(table_columns(table, at))
        return _small(_combine(columns), k)

    bad = failing(levels)
    patients = len(bad)
    budget = int(max_suppression * patients)
    over_budget = False
    while int(bad.sum()) > budget:
        candidates = [key for key in steps if levels[key] < len(steps[key])]
        if not candidates:
            over_budget = True
            break
        trials = {key: failing({**levels, key: levels[key] + 1}) for key in candidates}
        best = min(candidates, key=lambda key: (int(trials[key].sum()), levels[key], key))
        levels[best] += 1
        bad = trials[best]
    # Minimality: undo steps the end state does not need. Past the budget, a step that saved no patient (row counts
    # alone left them unique) is undone too, so withholding everything does not buy nothing.
    floor = max(budget, int(bad.sum()))
    changed = True
    while changed:
        changed = False
        for key in sorted((key for key in steps if levels[key]), key=lambda key: -levels[key]):
            trial = failing({**levels, key: levels[key] - 1})
            if int(trial.sum()) <= floor:
                levels[key] -= 1
                bad, changed = trial, True
    released = _release_at(tables, steps, levels)
    dropped = set(universe[bad.index[bad].to_numpy(dtype=int)])
    rows_suppressed: dict[str, int] = {}
    for table, frame in released.items():
        if dropped and entity in frame.columns:
            keep = ~frame[entity].isin(dropped)
            if not keep.all():
                rows_suppressed[table] = int((~keep).sum())
                released[table] = frame.loc[keep].reset_index(drop=True)
    vectors = release_vectors(released, quasi_identifiers, entity)
    achieved = int(vectors.groupby(list(vectors.columns), sort=False).size().min()) if not vectors.empty else 0
    report = ReleaseReport(
        k_required=k, k=achieved, patients=patients, suppressed_patients=len(dropped),
        quasi_identifiers={t: [c for c in quasi_identifiers.get(t, ()) if (t, c) in steps]
                           for t in tables if any(key[0] == t for key in steps)},
        generalization={f"{t}.{c}": steps[(t, c)][:level] for (t, c), level in levels.items() if level},
        over_budget=over_budget, rows_suppressed=rows_suppressed,
        steps={key: steps[key][:level] for key, level in levels.items() if level}, dropped=frozenset(dropped))
    if not vectors.empty and achieved < k:
        raise RiskGateError(f"release k-anonymity {achieved} < {k} after generalisation and suppression")
    return released, report
