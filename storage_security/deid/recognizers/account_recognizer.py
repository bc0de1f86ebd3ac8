"""Account, billing, encounter and claim numbers named by their label ("account #", "billing account X")."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import LABELLED_VALUE, HealthcarePatternRecognizer, after_label

_LABELS = (r"account|acct|acc|billing(?:\s+account)?|invoice|encounter|visit|claim|FIN|statement|"
           r"card|bank\s+account|routing")


class AccountNumberRecognizer(HealthcarePatternRecognizer):
    """Account numbers have no common format; only the labelled form is trusted."""

    ENTITY = "ACCOUNT_NUMBER"
    PATTERNS = (Pattern("Account (labelled)", after_label(_LABELS) + LABELLED_VALUE, 0.75),)
    CONTEXT = ("account", "acct", "billing")
