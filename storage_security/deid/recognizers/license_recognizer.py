"""Certificate and license numbers (medical, driver's, professional), named by their label."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class LicenseNumberRecognizer(HealthcarePatternRecognizer):
    """Formats vary by state and board; the label is what identifies the number."""

    ENTITY = "LICENSE_NUMBER"
    PATTERNS = (
        Pattern("License (labelled)",
                r"(?<=\b(?:(?:licen[cs]e|certificate|permit)\b|lic\.|cert\.)\s*(?:id|no\.?|number|#)?\s*[:#]?\s*)"
                r"[A-Z]{0,3}-?\d{4,12}[A-Z]?\b", 0.75),
    )
    CONTEXT = ("license", "licence", "certificate", "board")
