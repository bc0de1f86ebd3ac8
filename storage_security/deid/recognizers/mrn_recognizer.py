"""Medical record numbers: 6–10 digits (optionally with a letter prefix) named by "MRN" or "medical record"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class MrnRecognizer(HealthcarePatternRecognizer):
    """An MRN right after its label is near certain; a bare number of that length only with context words."""

    ENTITY = "MEDICAL_RECORD_NUMBER"
    PATTERNS = (
        Pattern("MRN (labelled)",
                r"(?<=\b(?:MRN|MR#|medical record(?: number| no\.?)?|chart(?: number| no\.?)?)\s*[:#]?\s*)"
                r"[A-Z]{0,3}\d{6,10}\b", 0.85),
        Pattern("MRN (weak)", r"\b[A-Z]{0,2}\d{6,10}\b", 0.05),
    )
    CONTEXT = ("mrn", "medical record", "record number", "chart", "hospital number")
