"""DEA registration numbers: two letters and seven digits whose last digit is the DEA checksum."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class DeaRecognizer(HealthcarePatternRecognizer):
    """Check digit = last digit of (d1+d3+d5) + 2*(d2+d4+d6)."""

    ENTITY = "DEA_NUMBER"
    PATTERNS = (Pattern("DEA", r"\b[ABCDEFGHJKLMPRSTUX][A-Z9]\d{7}\b", 0.3),)
    CONTEXT = ("dea", "registration", "prescriber")

    def validate_result(self, pattern_text: str) -> bool:
        d = [int(c) for c in pattern_text[2:]]
        return len(d) == 7 and (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10 == d[6]
