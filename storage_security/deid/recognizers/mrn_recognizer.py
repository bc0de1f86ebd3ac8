"""Medical record numbers: named by "MRN", "medical record", "chart", "unit number" or "patient ID"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import LABELLED_VALUE, HealthcarePatternRecognizer, after_label

_LABELS = (r"MRN|MR|MR\s*#|med(?:ical)?\s+rec(?:ord)?s?|record|chart|unit|hospital|patient|pt|case|"
           r"accession|acc")


class MrnRecognizer(HealthcarePatternRecognizer):
    """An MRN right after its label is near certain; a bare number of that length only with context words."""

    ENTITY = "MEDICAL_RECORD_NUMBER"
    PATTERNS = (
        Pattern("MRN (labelled)",
                r"(?<=\b(?:MRN|MR#|medical record(?: number| no\.?)?|chart(?: number| no\.?)?)\s*[:#]?\s*)"
                r"[A-Z]{0,3}\d{6,10}\b", 0.85),
        Pattern("Record id (labelled, any wording)", after_label(_LABELS) + LABELLED_VALUE, 0.6),
        Pattern("MRN (weak)", r"\b[A-Z]{0,2}\d{6,10}\b", 0.05),
    )
    CONTEXT = ("mrn", "medical record", "record number", "chart", "hospital number")
