"""Health-plan beneficiary / insurance member ids: named by a plan label, or letters then 8–12 digits in context."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import LABELLED_VALUE, HealthcarePatternRecognizer, after_label

_LABELS = (r"member|subscriber|policy|beneficiary|plan|insurance|insurer|group|medicaid|medicare|"
           r"health\s+plan|coverage|payer|payor")


class HealthPlanIdRecognizer(HealthcarePatternRecognizer):
    """Member ids have no public checksum, so the labelled form scores high and the bare form needs context."""

    ENTITY = "HEALTH_PLAN_ID"
    PATTERNS = (
        Pattern("Member id (labelled)", after_label(_LABELS) + LABELLED_VALUE, 0.85),
        Pattern("Member id (weak)", r"\b[A-Z]{1,3}\d{8,12}\b", 0.3),
    )
    CONTEXT = ("member", "insurance", "subscriber", "policy", "beneficiary", "plan", "medicaid", "medicare")
