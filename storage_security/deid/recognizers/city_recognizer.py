"""Cities (geographic subdivisions smaller than a state): the place name in "…, City, ST 12345" and "lives in City"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer
from storage_security.deid.recognizers.zip_recognizer import _STATES

_PLACE = r"[A-Z][a-z]+(?:[ -](?:[A-Z][a-z]+|de|la|of)){0,3}"


class CityRecognizer(HealthcarePatternRecognizer):
    """spaCy finds well-known places; this finds any place in an address line, known or not."""

    ENTITY = "LOCATION"
    CASE_SENSITIVE = True
    PATTERNS = (
        # A comma or a ZIP after the state code: "Member ID 123" is not a place in Idaho.
        Pattern("City before state", rf"\b{_PLACE}(?=,[ ]*(?:{_STATES})\b|[ ]+(?:{_STATES})[ ]+\d{{5}}\b)", 0.6),
        Pattern("City after preposition",
                rf"(?<=\b(?:lives in|resides in|moved to|from|transferred to|home in)\s){_PLACE}"
                rf"(?=,?\s+(?:{_STATES})\b)",
                0.7),
        # Any country's place before a region and a postal code, in any script ("Łowicz, TX 74948").
        Pattern("Place before region and postal code",
                r"(?<![\p{L}])\p{Lu}[\p{L}'’.-]*(?:[ -][\p{L}'’.-]+){0,3}"
                r"(?=,[ ]+(?:\p{Lu}{2}|\p{Lu}\p{Ll}+)[ ]+\d{4,5}\b)", 0.6),
        Pattern("Place after where someone lives",
                r"(?<=\b(?i:lives|living|lived|live|resides|moved|relocated|stays|staying|based|located|born|flew|"
                r"travel{1,2}(?:ed|ing)|trip|visiting|vacation(?:ing)?)\b[^.\n]{0,40}\b(?:in|to|at) )"
                r"\p{Lu}[\p{L}'’-]+(?:[ ]\p{Lu}[\p{L}'’-]+){0,3}", 0.6),
        # A place written in capitals after a preposition ("flew to TØNSBERG"); six letters or more, so
        # clinical acronyms ("in ICU", "of CHF") are not taken.
        Pattern("Capitalised place after a preposition",
                r"(?<=\b(?:in|to|at|from|near|of) )(?!(?:NSTEMI|STEMI|ANEMIA|SEPSIS|CANCER|NORMAL|STABLE)\b)"
                r"\p{Lu}{6,}(?:[ -]\p{Lu}{3,})?(?![\p{L}\d])", 0.5),
    )
    CONTEXT = ("lives", "city", "town", "resides")
