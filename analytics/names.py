"""Readable feature names: ``obs_2571_8_last`` → "Triglyceride [Mass/volume] in Serum or Plasma — last value".

Feature building (:mod:`analytics.features`) names a feature after its code: ``obs_<LOINC>_{last,mean,trend}``
for measurements, ``dx_<ICD-10-CM>`` and ``rx_<RxNorm>`` for 0/1 indicators, ``<column>_<level>`` for a one-hot
level and the column's own name for a flat table's numeric column, each code lower-cased with its punctuation
turned into ``_``. The display text comes from the shipped ``analytics/crosswalk/display_names.yaml`` (LOINC Long
Common Names, ICD-10-CM and RxNorm names, data-dictionary text of our tabular columns; its header cites them); an
ICD-10-CM code it does not list is looked up in the ``simple-icd-10-cm`` package's copy of the tabular list. A
name nothing describes is shown with its code system and code, never dropped.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import yaml

_STATS = {"last": "last value", "mean": "mean over the look-back window", "trend": "trend (change per year)"}
_PREFIXES = {"obs": ("loinc", "LOINC"), "dx": ("icd10cm", "ICD-10-CM"), "rx": ("rxnorm", "RxNorm")}


def _key(code: Any) -> str:
    # The same normalisation feature building applies to a code (analytics.features._name).
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(code)).strip("_").lower() or "x"


@cache
def _table() -> dict[str, dict[str, str]]:
    text = resources.files("analytics").joinpath("crosswalk", "display_names.yaml").read_text()
    raw = yaml.safe_load(text)
    return {system: {_key(code): str(name) for code, name in (raw.get(system) or {}).items()}
            for system in ("loinc", "icd10cm", "rxnorm", "columns")}


def _icd10cm(key: str) -> str | None:
    """The tabular list's description of an ICD-10-CM code written as a feature key (``e11_9`` → E11.9)."""
    import simple_icd_10_cm as icd

    code = key.replace("_", "").upper()
    code = f"{code[:3]}.{code[3:]}" if len(code) > 3 else code
    try:
        return str(icd.get_description(code)) if icd.is_valid_item(code) else None
    except ValueError:
        return None


def _code_text(system: str, key: str) -> str:
    """How a code the table does not name is shown: LOINC as written (``2571-8``), the others upper-cased."""
    if system == "loinc" and re.fullmatch(r"\d+_\d", key):
        return key.replace("_", "-")
    return key.replace("_", ".").upper() if system == "icd10cm" else key


def display_name(feature: str) -> str:
    """What a clinician reads for ``feature``: the code's display text and, for a measurement, which statistic.

    Args:
        feature: a feature name of a model's contract.

    Returns:
        The readable name; a code nobody describes keeps its system and code ("LOINC 1234-5 — last value",
        "Diagnosis: ICD-10-CM Z99.99"), a column nobody describes its own name with spaces.
    """
    table = _table()
    prefix, _, rest = feature.partition("_")
    if prefix in _PREFIXES and rest:
        system, fallback = _PREFIXES[prefix]
        stat = None
        if system == "loinc":
            head, _, tail = rest.rpartition("_")
            if tail in _STATS and head:
                rest, stat = head, _STATS[tail]
        text = table[system].get(rest) or (_icd10cm(rest) if system == "icd10cm" else None)
        text = text or f"{fallback} {_code_text(system, rest)}"
        if system == "icd10cm":
            text = f"Diagnosis: {text}"
        elif system == "rxnorm":
            text = f"Medication: {text}"
        return f"{text} — {stat}" if stat else text
    columns = table["columns"]
    if feature in columns:
        return columns[feature]
    # A one-hot level: the longest described column the name starts with.
    for column in sorted(columns, key=len, reverse=True):
        if feature.startswith(f"{column}_"):
            return f"{columns[column]}: {feature[len(column) + 1:].replace('_', ' ')}"
    return feature.replace("_", " ").strip() or feature


def display_names(features: list[str]) -> dict[str, str]:
    """:func:`display_name` of each feature, keyed by the feature."""
    return {f: display_name(f) for f in features}
