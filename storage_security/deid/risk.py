"""The re-identification risk gate: k-anonymity and l-diversity over a table's quasi-identifiers.

:func:`enforce` generalises quasi-identifiers up their ladders (e.g. age band 5 → 10 → 20 years → withheld) and
suppresses the rows of equivalence classes that are still too small (or not diverse enough in the sensitive
attribute), choosing the least generalisation whose suppression stays within ``max_suppression``. A table that
cannot meet k (fewer than k rows, say) raises :class:`RiskGateError` and is not published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.errors import ValidationError
from storage_security.deid.operators import age_bands

WITHHELD = "*"

__all__ = ["RiskGateError", "RiskReport", "enforce", "k_anonymity", "l_diversity"]


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
    """One ladder step: an int widens an age band ("40-44" → width, by the operators' age bands), "*" withholds
    the value; anything that is no band ("90+", a withheld "*") stays as it is."""
    if step == WITHHELD:
        return pd.Series([WITHHELD] * len(values), index=values.index, dtype=object)
    lows = values.astype("string").str.extract(r"^(\d+)-\d+$", expand=False)
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
            individuals, not rows. Without it (or when the table lacks it), rows are counted.

    Raises:
        RiskGateError: the table cannot meet k and l even fully generalised within the suppression budget
            (e.g. it has fewer than k rows).
    """
    qis = [c for c in quasi_identifiers if c in frame.columns]
    sensitive = [c for c in sensitive if c in frame.columns]
    entity = entity if entity in frame.columns else None
    ladders = ladders or {}
    work = frame.copy()
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
    published = work.loc[~failing].reset_index(drop=True) if rows else work
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
