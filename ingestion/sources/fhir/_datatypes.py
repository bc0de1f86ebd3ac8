"""Readers of FHIR datatypes in resource JSON (already checked by the model): values as written, never raising."""

from __future__ import annotations

from typing import Any

__all__ = ["as_dict", "as_dicts", "as_str", "code_in", "coded", "first_code", "number", "quantity_text",
           "range_text", "when"]


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def as_dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def coded(concept: Any) -> tuple[str | None, str | None, str | None]:
    """(code, system, display) of a CodeableConcept's first coding with a code; display falls back to its text."""
    concept = as_dict(concept)
    for coding in as_dicts(concept.get("coding")):
        if as_str(coding.get("code")):
            display = as_str(coding.get("display")) or as_str(concept.get("text"))
            return coding["code"], as_str(coding.get("system")), display
    return None, None, as_str(concept.get("text"))


def code_in(concept: Any, systems: set[str]) -> str | None:
    for coding in as_dicts(as_dict(concept).get("coding")):
        if coding.get("system") in systems and as_str(coding.get("code")):
            return coding["code"]
    return None


def first_code(concepts: Any) -> str | None:
    """The code of the first coding of the first CodeableConcept of a list (a category, an interpretation)."""
    for concept in as_dicts(concepts) if isinstance(concepts, list) else [as_dict(concepts)]:
        code, _, _ = coded(concept)
        if code:
            return code
    return None


def when(resource: dict[str, Any], prefix: str) -> str | None:
    """``<prefix>DateTime``, ``<prefix>Instant`` or the start of ``<prefix>Period``, as written."""
    return (as_str(resource.get(f"{prefix}DateTime")) or as_str(resource.get(f"{prefix}Instant"))
            or as_str(as_dict(resource.get(f"{prefix}Period")).get("start")))


def number(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond a double's range: kept as text by the caller
        return None


def quantity_text(quantity: Any) -> str | None:
    quantity = as_dict(quantity)
    value = quantity.get("value")
    if value is None:
        return None
    comparator = as_str(quantity.get("comparator")) or ""
    unit = as_str(quantity.get("unit")) or as_str(quantity.get("code"))
    return f"{comparator}{value}" + (f" {unit}" if unit else "")


def range_text(reference_range: dict[str, Any]) -> str | None:
    if as_str(reference_range.get("text")):
        return reference_range["text"]
    low, high = (as_dict(reference_range.get(k)).get("value") for k in ("low", "high"))
    if low is not None and high is not None:
        return f"{low}-{high}"
    if low is not None:
        return f">={low}"
    return f"<={high}" if high is not None else None
