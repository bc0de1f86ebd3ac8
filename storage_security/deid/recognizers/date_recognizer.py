"""Dates more specific than a year: numeric, ISO, month-name forms, and month-day mentions; "admitted on" context."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:19|20)\d{2}"


class ClinicalDateRecognizer(HealthcarePatternRecognizer):
    """Every HIPAA date element except the year alone is PHI: admission, discharge, birth, death, service dates."""

    ENTITY = "DATE_TIME"
    PATTERNS = (
        Pattern("ISO date", rf"\b{_YEAR}-{_MON}-{_DAY}(?:[T ]\d{{2}}:\d{{2}}(?::\d{{2}})?Z?)?\b", 0.75),
        Pattern("US numeric date", rf"\b{_MON}[/-]{_DAY}[/-](?:{_YEAR}|\d{{2}})\b", 0.7),
        Pattern("Month day, year", rf"\b{_MONTH}\s+{_DAY}(?:st|nd|rd|th)?,?\s+{_YEAR}\b", 0.8),
        Pattern("Day month year", rf"\b{_DAY}(?:st|nd|rd|th)?\s+{_MONTH},?\s+{_YEAR}\b", 0.8),
        Pattern("Month day", rf"\b{_MONTH}\s+{_DAY}(?:st|nd|rd|th)?\b(?!\s*(?:mg|ml|units?|%))", 0.4),
        Pattern("Month year", rf"\b{_MONTH}\s+{_YEAR}\b", 0.5),
        Pattern("Numeric month/day", rf"(?<=\b(?:on|since|from|until|dated?)\s){_MON}/{_DAY}\b", 0.5),
    )
    CONTEXT = ("admitted", "admission", "discharged", "discharge", "dob", "born", "birth", "died", "death",
               "date", "seen", "service", "on", "visit")
