"""Phone numbers: North American written forms (dashes, dots, parentheses, +1), and any form after a label."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class UsPhoneRecognizer(HealthcarePatternRecognizer):
    """Separated forms score medium (dates and ids rarely look like them); ten bare digits need context."""

    ENTITY = "PHONE_NUMBER"
    PATTERNS = (
        Pattern("Phone (separated)", r"(?<![\d-])(?:\+?1[ .-])?\(?[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}\b", 0.6),
        # European forms in pairs of digits ("20-41-66-18", "01.42.68.53.00"); four dotted pairs are an IP address.
        Pattern("Phone (pairs of digits)",
                r"(?<![\d.-])\+?(?:\d{2}(?:-\d{2}){3,4}|\d{2}(?:\.\d{2}){4})(?![\d.-]?\d)", 0.5),
        Pattern("Phone (bare)", r"\b[2-9]\d{9}\b", 0.05),
        # Foreign and short forms ("433 5227", "26 148459") are numbers only their label identifies.
        Pattern("Phone (labelled, any form)",
                r"(?<=\b(?:phone|tel|telephone|mobile|cell|desk|office|home|work|fax|pager|call me (?:on|at)|"
                r"reach me (?:on|at)|messages to|registered|number is)\b\.?\s*(?:no\.?|number|#)?\s*[:=]?\s*)"
                r"\+?\(?\d[\d ().-]{4,18}\d\b", 0.6),
    )
    CONTEXT = ("phone", "call", "cell", "tel", "telephone", "mobile", "reached", "contact", "pager")
