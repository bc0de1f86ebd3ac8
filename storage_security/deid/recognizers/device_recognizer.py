"""Device identifiers and serial numbers: UDIs, and serials named by "serial", "device", "S/N"."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer


class DeviceIdRecognizer(HealthcarePatternRecognizer):
    """A GS1 UDI is recognisable alone; other serials need their label or context."""

    ENTITY = "DEVICE_ID"
    PATTERNS = (
        Pattern("UDI (GS1)", r"\(01\)\d{14}(?:\(\d{2}\)[A-Z0-9]{1,20})*", 0.8),
        Pattern("Serial (labelled)",
                r"(?<=\b(?:serial|s/n|sn|device id|device|udi|imei|model)\b\s*(?:no\.?|number|#)?\s*[:#]?\s*)"
                r"[A-Z0-9]{2,10}(?:-[A-Z0-9]{2,10}){0,4}\b", 0.7),
        Pattern("Serial (shape)", r"\b[A-Z]{2,5}-\d{3,6}-\d{3,8}\b", 0.3),
    )
    CONTEXT = ("serial", "device", "pacemaker", "pump", "implant", "glucometer", "monitor", "udi")
