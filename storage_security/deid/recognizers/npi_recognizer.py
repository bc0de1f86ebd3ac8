"""National Provider Identifiers: 10 digits starting 1 or 2, Luhn check over "80840" + the number (CMS)."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer, digits, luhn_ok


class NpiRecognizer(HealthcarePatternRecognizer):
    """A number that passes the NPI check digit is reported at full confidence."""

    ENTITY = "NPI"
    PATTERNS = (
        Pattern("NPI", r"\b[12]\d{9}\b", 0.1),
        Pattern("NPI (grouped)", r"\b[12]\d{3}[ -]\d{3}[ -]\d{3}\b", 0.3),
    )
    CONTEXT = ("npi", "national provider", "provider")

    def validate_result(self, pattern_text: str) -> bool:
        number = digits(pattern_text)
        return len(number) == 10 and luhn_ok("80840" + number)
