"""Ages over 89 (HIPAA Safe Harbor aggregates them as 90+): "92-year-old", "age 95", "93 y/o"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_OVER_89 = r"(?:9\d|1[0-1]\d)"


class AgeOver89Recognizer(HealthcarePatternRecognizer):
    """Younger ages are not PHI and are left alone."""

    ENTITY = "AGE"
    PATTERNS = (
        Pattern("Age, year-old", rf"\b{_OVER_89}(?=[- ]?(?:years?|yrs?|y/?o|yo)\b)", 0.85),
        Pattern("Age, labelled", rf"(?<=\b(?:age|aged)\b\s*:?\s*){_OVER_89}\b", 0.85),
    )
    CONTEXT = ("age", "aged", "year-old", "years old")
