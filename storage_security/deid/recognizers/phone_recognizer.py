"""North American phone numbers in the usual written forms (dashes, dots, parentheses, +1)."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class UsPhoneRecognizer(HealthcarePatternRecognizer):
    """Separated forms score medium (dates and ids rarely look like them); ten bare digits need context."""

    ENTITY = "PHONE_NUMBER"
    PATTERNS = (
        Pattern("Phone (separated)", r"(?<![\d-])(?:\+?1[ .-])?\(?[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}\b", 0.6),
        Pattern("Phone (bare)", r"\b[2-9]\d{9}\b", 0.05),
    )
    CONTEXT = ("phone", "call", "cell", "tel", "telephone", "mobile", "reached", "contact", "pager")
