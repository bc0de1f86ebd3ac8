"""Health-plan beneficiary / insurance member ids: letters then 8–12 digits, confirmed by plan context."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class HealthPlanIdRecognizer(HealthcarePatternRecognizer):
    """Member ids have no public checksum, so the labelled form scores high and the bare form needs context."""

    ENTITY = "HEALTH_PLAN_ID"
    PATTERNS = (
        Pattern("Member id (labelled)",
                r"(?<=\b(?:member|subscriber|policy|beneficiary|plan|insurance)\b\s*(?:id|no\.?|number|#)\s*[:#]?\s*)"
                r"[A-Z0-9]{0,4}\d{6,12}[A-Z0-9]{0,3}\b", 0.85),
        Pattern("Member id (weak)", r"\b[A-Z]{1,3}\d{8,12}\b", 0.3),
    )
    CONTEXT = ("member", "insurance", "subscriber", "policy", "beneficiary", "plan", "medicaid", "medicare")
