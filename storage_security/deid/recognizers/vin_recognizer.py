"""Vehicle identification numbers: 17 characters without I, O, Q, with the North American check digit."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_VALUES = {**{str(d): d for d in range(10)}, **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
           **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
           **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


class VinRecognizer(HealthcarePatternRecognizer):
    """Position 9 is the check digit (mod 11, 10 written X)."""

    ENTITY = "VIN"
    PATTERNS = (Pattern("VIN", r"\b[A-HJ-NPR-Z0-9]{17}\b", 0.3),)
    CONTEXT = ("vin", "vehicle", "car", "truck", "plate")

    def validate_result(self, pattern_text: str) -> bool:
        vin = pattern_text.upper()
        total = sum(_VALUES[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
        check = "X" if total % 11 == 10 else str(total % 11)
        return vin[8] == check
