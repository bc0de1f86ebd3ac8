"""Fax numbers: a North American phone number named by "fax"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class FaxRecognizer(HealthcarePatternRecognizer):
    """Presidio's phone recognizer finds the number; this one names it a fax when the label says so."""

    ENTITY = "FAX_NUMBER"
    PATTERNS = (
        Pattern("Fax (labelled)",
                r"(?<=\bfax\s*(?:no\.?|number|#)?\s*[:#]?\s*)(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b", 0.85),
    )
    CONTEXT = ("fax", "facsimile")
