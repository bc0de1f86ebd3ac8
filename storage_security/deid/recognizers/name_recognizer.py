"""Personal names in clinical positions: after a title, a "Patient:"/"Name:" label, a relation, or "signed by"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_NAME = r"[A-Z][a-z]+(?:['-][A-Z]?[a-z]+)?"
_FULL = rf"(?!(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)\b){_NAME}(?:\s+[A-Z]\.)?(?:\s+{_NAME}){{0,2}}"


class ClinicalNameRecognizer(HealthcarePatternRecognizer):
    """The statistical model misses names in note headers and signatures; their position gives them away."""

    ENTITY = "PERSON"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("Titled name", rf"(?<=\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)\.?\s+){_FULL}", 0.8),
        Pattern("Labelled name", rf"(?<=\b(?:Patient|Pt|Name|Patient name|Guarantor|Contact)\b\s*:\s*){_FULL}", 0.85),
        Pattern("Relative",
                rf"(?<=\b(?:daughter|son|wife|husband|sister|brother|caregiver|mother|father|spouse|partner|"
                rf"friend|neighbor|niece|nephew|grandson|granddaughter)\s+){_FULL}", 0.7),
        Pattern("Signed by", rf"(?<=\b(?:signed by|seen by|dictated by|cc:)\s+(?:Dr\.?\s+)?){_FULL}", 0.8),
        Pattern("Name before age", rf"{_FULL}(?=\s+is\s+an?\s+\d{{1,3}}[- ]year)", 0.7),
    )
    CONTEXT = ("patient", "name", "dr", "mr", "ms", "signed")
