"""Postal codes: US ZIP codes (five digits, ZIP+4 too) after a state code or with "zip" nearby; British postcodes."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_STATES = ("AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|"
           "NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI")


class ZipCodeRecognizer(HealthcarePatternRecognizer):
    """The state code before it is what tells a ZIP from any other five-digit number."""

    ENTITY = "ZIP_CODE"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("ZIP after state", rf"(?<=\b(?:{_STATES}),?\s+)\d{{5}}(?:-\d{{4}})?\b", 0.75),
        Pattern("ZIP", r"\b\d{5}(?:-\d{4})?\b", 0.05),
        Pattern("Postal code (labelled)",
                r"(?<=\b(?i:zip|zip code|zipcode|postal code|postcode)\b\s*(?i:is|:)?\s*)"
                r"[A-Z0-9]{2,5}(?:[ -][A-Z0-9]{2,4})?\b", 0.7),  # "1012 AB" (Dutch) too
        # A British postcode has a shape of its own: outward code, a space, digit and two letters ("LS2 9JT").
        Pattern("UK postcode", r"\b(?:[A-Z]{1,2}\d[A-Z\d]?|GIR) \d[ABD-HJLNP-UW-Z]{2}\b", 0.6),
    )
    CONTEXT = ("zip", "zipcode", "postal")
