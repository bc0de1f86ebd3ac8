"""Places written alone, with no address around them: "moved here from Kostrzyn", "the town of Ely", "Elm bridge".

Found by what de-identification systems use where a place has no format: the words around it (a verb of living,
moving or travelling and a preposition, "city of", "I am in", a feature word after it such as "bridge" or
"Street"), and a gazetteer (Faker's city lists in Latin script, less the locales the styled evaluation notes draw
places from, like the name gazetteer) for a known city after any place preposition. A candidate whose first word
is a safe word (clinical and common English words, weekdays, months) or a country is dropped: countries are not
PHI under Safe Harbor, and "moved to Cardiology" is a ward, not a town.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

import regex
from presidio_analyzer import Pattern, RecognizerResult

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer
from storage_security.deid.recognizers.gazetteer_name_recognizer import _HELD_OUT, SAFE_WORDS, common_words

# A place: one to four capitalised words (any script, a lower-case letter in the first), place particles between.
_WORD = r"\p{Lu}\p{Ll}[\p{L}'’-]*"
_PARTICLE = r"(?:nad|pod|de|la|le|del|do|da|dos|am|an|im|sur|upon|on|ob|der|di|en|y|of|the)"
_PLACE = rf"(?P<place>{_WORD}(?:[ -](?:{_PARTICLE}[ -])?(?:{_WORD}|\p{{Lu}}\b)){{0,3}})(?![\p{{L}}\d])"
_MOVE = (r"lives?|living|lived|resides?|residing|moved?|moving|relocated|arrived|arriving|came|comes|coming|"
         r"returned|returning|originally|hails?|emigrated|immigrated|born|raised|grew up|stays?|staying|based|"
         r"located|travel{1,2}(?:ed|ing)?|flew|flying|drove|driving|visit(?:ed|ing)?|vacation(?:ed|ing)?|trip|"
         r"commutes?|works?|worked|working|studie[sd]|studying|stationed|deployed")
_CUES = regex.compile(
    rf"(?:\b(?i:{_MOVE})\b[^.\n!?;]{{0,30}}?\b(?i:from|in|to|at|near|outside|around|into)"
    rf"|\b(?i:city|town|village|municipality|suburb|hometown|home town|home city|county|district|province|parish)"
    rf"(?: of)?"
    rf"|\b(?i:I am|I'm|we are|we're|currently|back home|here|out|stuck|back) in"
    rf"|\b(?i:from|in|at|near|to|of)(?= (?P<known>{_WORD})))"
    rf"[ ]+{_PLACE}")
# A feature word after a name makes it a place: "Claremont bridge", "Elm Street" (no number), "Lake Road".
_FEATURE = regex.compile(
    rf"(?<![\p{{L}}'’])(?P<place>{_WORD}(?:[ ]{_WORD}){{0,2}})[ ](?=(?i:bridge|river|lake|harbou?r|square|plaza|"
    rf"street|st\.|avenue|ave\.|road|rd\.|boulevard|blvd|lane|drive|way|crescent|terrace|highway|station|"
    rf"airport|county|township|parish|valley|heights|village)\b)")


@cache
def known_cities() -> frozenset[str]:
    """Faker's city names in Latin script, less the held-out locales, the safe words and common English words."""
    import faker.providers.address as address

    cities: set[str] = set()
    for module in pkgutil.iter_modules(address.__path__):
        if module.name.startswith(_HELD_OUT):
            continue
        provider = getattr(importlib.import_module(f"{address.__name__}.{module.name}"), "Provider", None)
        for attr in ("cities", "city_names", "towns"):
            value = vars(provider).get(attr) if provider is not None else None
            if isinstance(value, (list, tuple, dict)):
                cities.update(c for c in value if isinstance(c, str) and all(ord(ch) < 0x250 for ch in c))
    common = common_words()
    return frozenset(c for c in cities if len(c) > 3 and c not in SAFE_WORDS and c not in common
                     and c not in _NOT_PLACES)


# Gazetteer cities that are also clinical or everyday words in notes ("result of Gram stain", "migraine with Aura").
_NOT_PLACES = frozenset(("Gram", "Aura", "Split", "Metro", "Humble", "Nokia", "Vulcan", "Lumina", "Divina", "Nova",
                         "Martin", "George", "Modelu", "Sund", "Brad"))


@cache
def countries() -> frozenset[str]:
    """Country names (Faker's English list): not PHI under Safe Harbor, so never reported here."""
    from faker.providers.address.en_US import Provider

    return frozenset(Provider.countries) | {"USA", "America", "United States", "UK", "England", "Scotland", "Wales"}


class PlaceRecognizer(HealthcarePatternRecognizer):
    """A place after a verb of living, moving or travelling, after "city of" / "I am in", or before "bridge"."""

    ENTITY = "LOCATION"
    CASE_SENSITIVE = True
    PATTERNS = (Pattern("Place in context", r"(?!)", 0.6),)  # matching is in analyze: cues, then filters
    CONTEXT = ("lives", "city", "town", "moved", "from")

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language)
        self._cities = known_cities()
        self._countries = countries()
        self._common = common_words()

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        found: list[tuple[int, int]] = []
        for match in _CUES.finditer(text):
            known = match.group("known")
            if known is not None:
                # After a bare preposition only a gazetteer city counts ("in Frederiksberg", not "in March").
                if known not in self._cities:
                    continue
                found.append((match.start("known"), match.end("known")))
                continue
            found.append(self._trimmed(text, match.start("place"), match.end("place")))
        for match in _FEATURE.finditer(text):
            found.append(self._trimmed(text, match.start("place"), match.end("place")))
        out = []
        for start, end in sorted(set(found)):
            value = text[start:end]
            first = value.split(" ", 1)[0].rstrip(".,")
            if end <= start or first in SAFE_WORDS or first in self._common or value in self._countries:
                continue
            out.append(RecognizerResult(self.ENTITY, start, end, 0.6, analysis_explanation=None,
                                        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                              RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out

    def _trimmed(self, text: str, start: int, end: int) -> tuple[int, int]:
        """Drop trailing safe or common words the span ran into ("Ely Hospital" keeps its own recognizer)."""
        words = text[start:end].split(" ")
        while len(words) > 1 and (words[-1] in SAFE_WORDS or words[-1] in self._common
                                  or words[-1].lower() in _PARTICLE_WORDS):
            words.pop()
        return start, start + len(" ".join(words).rstrip("'’-"))


_PARTICLE_WORDS = frozenset(_PARTICLE.strip("(?:)").split("|"))
