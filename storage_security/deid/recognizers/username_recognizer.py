"""User names and log-ins (portal, EHR, e-mail handles), named by their label: a unique identifying code."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer, after_label

_LABELS = r"user\s*name|user\s*id|user|login|log-in|handle|screen\s+name|portal\s+(?:id|account)|account\s+name"


class UsernameRecognizer(HealthcarePatternRecognizer):
    """A user name has no format; the label is the evidence, so only the labelled form is matched."""

    ENTITY = "USERNAME"
    PATTERNS = (Pattern("Username (labelled)", after_label(_LABELS) + r"@?[A-Za-z][\w.-]{2,31}\b", 0.75),)
    CONTEXT = ("username", "user", "login", "portal")
