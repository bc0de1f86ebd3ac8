"""Account and encounter/billing numbers named by their label ("account #", "acct no.", "billing number")."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class AccountNumberRecognizer(HealthcarePatternRecognizer):
    """Account numbers have no common format; only the labelled form is trusted."""

    ENTITY = "ACCOUNT_NUMBER"
    PATTERNS = (
        Pattern("Account (labelled)",
                r"(?<=\b(?:account|acct|billing|invoice|encounter|visit)\b\.?\s*(?:id|no\.?|number|#)\s*[:#]?\s*)"
                r"[A-Z0-9][A-Z0-9-]{4,19}\b", 0.75),
    )
    CONTEXT = ("account", "acct", "billing")
