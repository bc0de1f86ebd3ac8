"""The shared shape of medguard's healthcare recognizers: a Presidio ``PatternRecognizer`` built from class data.

Each recognizer file declares ``ENTITY``, ``PATTERNS`` and ``CONTEXT`` (and ``validate_result`` where the
identifier has a checksum), exactly as Presidio's own ``us_npi_recognizer.py`` does. ``CASE_SENSITIVE``
recognizers (names, cities) match without Presidio's default IGNORECASE, so "Dr. smith" style noise and lower-case
words are not taken for names.
"""

from __future__ import annotations

from typing import Any, ClassVar

import regex
from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult


class HealthcarePatternRecognizer(PatternRecognizer):
    """A pattern recognizer whose patterns, context words and entity are class attributes."""

    ENTITY: ClassVar[str]
    PATTERNS: ClassVar[tuple[Pattern, ...]]
    CONTEXT: ClassVar[tuple[str, ...]] = ()
    CASE_SENSITIVE: ClassVar[bool] = False

    def __init__(self, supported_language: str = "en") -> None:
        flags = regex.DOTALL | regex.MULTILINE | (0 if self.CASE_SENSITIVE else regex.IGNORECASE)
        # Patterns are copied: Presidio caches the compiled regex on the Pattern object itself.
        patterns = [Pattern(p.name, p.regex, p.score) for p in self.PATTERNS]
        super().__init__(supported_entity=self.ENTITY, name=type(self).__name__, patterns=patterns,
                         context=list(self.CONTEXT), supported_language=supported_language,
                         global_regex_flags=flags)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        """Match with this recognizer's own flags: the engine passes IGNORECASE to every recognizer."""
        return super().analyze(text, entities, nlp_artifacts, self.global_regex_flags)


def digits(text: str) -> str:
    """The digits of ``text``, separators dropped."""
    return "".join(ch for ch in text if ch.isdigit())


def luhn_ok(number: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def after_label(labels: str) -> str:
    """A look-behind for a value written after one of ``labels`` in the wordings notes use.

    "member ID is X", "Member #: X", "MRN X", "billing account no. X", "license number was X": the label, an
    optional id/no./number/#, an optional "is"/"was"/":"/"=", then the value. A context window of a few words is
    what real de-identification systems use for identifiers with no format of their own.
    """
    return (rf"(?<=\b(?:{labels})\b\.?(?:\s*(?:id|identifier|no\.?|num(?:ber)?|#|code))?"
            rf"\s*(?:(?:is|was|of|reads)\s+|[:#=]\s*|-\s+)?(?:#\s*)?)")


# A value after a label: letters, digits and inner separators (a space only between digits, as cards are written),
# with at least one digit somewhere.
LABELLED_VALUE = r"(?=[A-Z-]{0,12}\d)[A-Z0-9](?:[A-Z0-9]|[-./](?=[A-Z0-9])|(?<=\d) (?=\d)){3,30}\b"
