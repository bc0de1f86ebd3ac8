"""E-mail addresses on any domain, in any script: Presidio's recognizer drops those whose suffix it does not know."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class AnyDomainEmailRecognizer(HealthcarePatternRecognizer):
    """Addresses such as françoise.roy@hospitalmail.clinic or jb@kl-net.internal: the shape alone tells."""

    ENTITY = "EMAIL_ADDRESS"
    PATTERNS = (
        Pattern("E-mail (any domain)",
                r"(?<![\w.+-])[\w][\w.+'-]{0,63}@[\w](?:[\w-]{0,62}[\w])?(?:\.[\w](?:[\w-]{0,62}[\w])?)+(?![\w-])",
                0.7),
    )
    CONTEXT = ("email", "e-mail", "mail")
