"""Social Security and national identity numbers: US SSNs (never-issued ranges rejected), any form after a label."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer, after_label, digits

_LABELS = (r"SSN|SS#|social\s+security(?:\s+number)?|social\s+security\s+no|national\s+id|"
           r"national\s+insurance(?:\s+number)?|NI\s+number|NINO|SIN|tax\s+id|TIN")
# Groups of letters and digits; a trailing group is kept when it has a digit or is one or two capitals ("A").
_VALUE = r"(?-i:(?=[A-Z ]{0,4}\d)[A-Z0-9]{1,12}(?:[ -](?:[A-Z0-9]*\d[A-Z0-9]*|[A-Z]{1,2}\b)){0,4})"


class SsnRecognizer(HealthcarePatternRecognizer):
    """Dashed SSNs score medium; nine bare digits only with context. Area 000/666, group 00, serial 0000 are void."""

    ENTITY = "US_SSN"
    PATTERNS = (
        Pattern("SSN (dashed)", r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", 0.6),
        Pattern("SSN (bare)", r"\b\d{9}\b", 0.05),
        Pattern("National id (labelled, any form)", after_label(_LABELS) + _VALUE, 0.7),
    )
    CONTEXT = ("ssn", "social security", "ss#", "social")

    def invalidate_result(self, pattern_text: str) -> bool:
        number = digits(pattern_text)
        if len(number) != 9 or not pattern_text[:1].isdigit():
            return False  # a labelled national id of another form: no SSA ranges to check
        return number[:3] in ("000", "666") or number[3:5] == "00" or number[5:] == "0000"
