"""Certificate and license numbers (medical, driver's, professional), named by their label."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import LABELLED_VALUE, HealthcarePatternRecognizer, after_label

_LABELS = r"licen[cs]e|lic|certificate|cert|permit|DL|driver'?s?\s+licen[cs]e|registration"


class LicenseNumberRecognizer(HealthcarePatternRecognizer):
    """Formats vary by state and board; the label is what identifies the number."""

    ENTITY = "LICENSE_NUMBER"
    PATTERNS = (Pattern("License (labelled)", after_label(_LABELS) + LABELLED_VALUE, 0.75),)
    CONTEXT = ("license", "licence", "certificate", "board")
