"""Dates more specific than a year: numeric, ISO, month-name forms, and month-day mentions; "admitted on" context."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:19|20)\d{2}"
_ORDINAL = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
            r"fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth|"
            r"twenty-(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)|thirty-first")


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
        Pattern("Numeric month/day",
                rf"(?<=\b(?:on|since|from|until|dated?|seen|through|thru|to|by|before|after|RTC|of)\s){_MON}/{_DAY}\b"
                rf"(?!/|\s*(?:mg|mmHg|ml))", 0.5),
        # Written-out days: "the third of July", "3rd of July 2093", "the twenty-first of May".
        Pattern("Ordinal day of month",
                rf"\b(?:the\s+)?(?:{_ORDINAL}|{_DAY}(?:st|nd|rd|th))\s+(?:day\s+)?of\s+{_MONTH}(?:,?\s+{_YEAR})?\b",
                0.75),
        Pattern("Month of year", rf"\b{_MONTH}\s+of\s+{_YEAR}\b", 0.7),
        Pattern("Weekday, month day", rf"\b(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day,?\s+{_MONTH}\s+{_DAY}\b", 0.75),
        Pattern("Day-month-year", rf"\b{_DAY}[-./ ]{_MONTH}[-./ ](?:{_YEAR}|\d{{2}})\b", 0.75),
        Pattern("Dotted date", rf"\b{_DAY}\.{_MON}\.(?:{_YEAR}|\d{{2}})\b", 0.6),
        Pattern("Second date of a range", rf"(?<=\b{_MON}/{_DAY}\s*(?:-|to|–|through)\s*){_MON}/{_DAY}\b", 0.6),
        Pattern("Month/year", rf"(?<=\b(?:in|since|from|until|of|on|dated?)\s){_MON}/(?:{_YEAR}|\d{{2}})\b", 0.5),
    )
    CONTEXT = ("admitted", "admission", "discharged", "discharge", "dob", "born", "birth", "died", "death",
               "date", "seen", "service", "on", "visit")
