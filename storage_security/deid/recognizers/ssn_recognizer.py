"""US Social Security numbers, with the SSA's never-issued ranges rejected."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer, digits


class SsnRecognizer(HealthcarePatternRecognizer):
    """Dashed SSNs score medium; nine bare digits only with context. Area 000/666, group 00, serial 0000 are void."""

    ENTITY = "US_SSN"
    PATTERNS = (
        Pattern("SSN (dashed)", r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", 0.6),
        Pattern("SSN (bare)", r"\b\d{9}\b", 0.05),
    )
    CONTEXT = ("ssn", "social security", "ss#", "social")

    def invalidate_result(self, pattern_text: str) -> bool:
        number = digits(pattern_text)
        return number[:3] in ("000", "666") or number[3:5] == "00" or number[5:] == "0000"
