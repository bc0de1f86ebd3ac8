"""Names found by a gazetteer: a known given name, with the capitalised word after it when that is no common word.

The given names are Faker's person data (installed, MIT): the lists of 40 locales written in Latin script, about
15,000 names from national name registers (SSA for en_US). The locales medguard's styled evaluation notes draw
from (German, Spanish, French, Italian, Polish, Dutch, Portuguese, Swedish, en_GB, en_IN) are left out, so that
set still measures names the gazetteer does not hold. A capitalised word after a given name is taken for a surname
unless it is in :data:`SAFE_WORDS`, a safe-word list of clinical and common English words (the i2b2 systems' stop
list idea), so "Grace Hospital" or "Will Continue" are not names; a given name alone counts when a verb, a
possessive or a dialogue colon follows it ("Hana spent", "Uwe:"). Faker's last names (same locales, less
Faker's ~1,000 common English words) are taken after a capitalised word that is no safe, common, title or given
name word ("Ottoline Morrison"): a surname list alone would mask "Black" and "Young".
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

import regex
from presidio_analyzer import Pattern, RecognizerResult

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_HELD_OUT = ("de", "es", "fr", "it", "pl", "nl", "pt", "sv", "en_GB", "en_IN")

SAFE_WORDS = frozenset((
    "Hospital", "Clinic", "Center", "Centre", "Medical", "Health", "Memorial", "General", "Regional", "University",
    "Institute", "Street", "Avenue", "Road", "Drive", "Lane", "Court", "County", "Patient", "Pt", "Continue",
    "Start", "Stop", "Discharge", "Admission", "History", "Exam", "Plan", "Assessment", "Diagnosis", "Impression",
    "Findings", "Report", "Note", "Notes", "Follow", "Return", "Call", "Please", "Thank", "Thanks", "Dear", "Today",
    "Yesterday", "Tomorrow", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December", "Pain", "Blood", "Heart", "Chest", "Lung", "Lungs", "Abdomen", "Skin", "Labs", "Lab", "Vitals",
    "Allergies", "Medications", "Meds", "Social", "Family", "Past", "Surgical", "Review", "Systems", "Physical",
    "Signed", "Electronically", "Dictated", "MD", "RN", "NP", "DO", "Is", "Was", "Has", "Had", "And", "Or", "The",
    "Of", "In", "On", "At", "To", "For", "With", "From", "By", "He", "She", "They", "We", "I", "It", "This", "That",
    "No", "Yes", "Not", "Will", "Can", "Should", "Would", "Could", "Did", "Does", "Syndrome", "Disease", "Cancer",
    "Type", "Insulin", "Metformin", "Unit", "Floor", "Room", "Ward", "Service", "Team", "Care", "Mark", "Bill",
    "Sue", "Art", "Guy", "Rich", "Rose", "Hope", "Faith", "Grace", "Joy", "Iris", "Dawn", "Summer", "Amber",
    "Ivy", "Frank", "Sandy", "Young", "Long", "Brown", "Green", "White", "Black", "Gray", "Grey", "Bell", "Stone",
    "Chase", "Lucky", "Major", "Page", "Price", "Cash", "Case", "Drew", "Jack", "Pat", "Penny", "Ray", "Max",
    "Angel", "Crystal", "Destiny", "Eve", "Holly", "Liberty", "Lily", "Patience", "Ruby", "Sky", "Star", "Will",
    "Don", "Ben", "Carol", "Christian", "Colt", "Dale", "Dean", "Earl", "Gene", "Glen", "Lance", "Levi", "Miles",
    "Nick", "Rob", "Rod", "Roman", "Russell", "Sterling", "Warren", "Wade", "Val", "Tom", "Ted", "Tim", "Jo",
    "Al", "Ali", "Ana", "An", "As", "Ha", "Hi", "Ma", "Pa", "So", "Li", "Le", "La", "Do", "Mo", "Hang", "Long",
    "Med", "Ed", "Er", "Or", "Ob", "Gyn", "Ct", "Mri", "Ekg", "Bp", "Hr", "Icu", "Cabg", "Copd", "Chf",
    "Oral", "Tablet", "Tablets", "Capsule", "Solution", "Injection", "Extended", "Release", "Inhaler", "Dose",
    "Cream", "Patch", "Drops", "Suspension", "Daily", "Twice", "Nightly", "Morning", "Evening", "Night",
    # wards and services ("moved to Cardiology", "transferred to Rehab"): places in a hospital, not PHI
    "Cardiology", "Oncology", "Radiology", "Neurology", "Surgery", "Pediatrics", "Paediatrics", "Rehab",
    "Rehabilitation", "Hospice", "Psychiatry", "Dermatology", "Orthopedics", "Orthopaedics", "Urology",
    "Nephrology", "Gastroenterology", "Endocrinology", "Pulmonology", "Hematology", "Haematology", "Obstetrics",
    "Gynecology", "Emergency", "Triage", "Recovery", "Telemetry", "Medicine", "Intensive", "Critical", "Labor",
    "Delivery", "Outpatient", "Inpatient", "Pharmacy", "Pathology", "Laboratory", "Imaging", "Anesthesia",
))
_TOKEN = regex.compile(r"(?<![\p{L}\d])\p{Lu}(?:['’]\p{Lu})?[\p{Ll}\p{Lu}]*\p{Ll}(?:['’-]\p{Lu}?\p{Ll}+)*(?![\p{L}\d])")
_GAP = regex.compile(r"(?:\p{Lu}\.\s)?(?:(?:da|de|van|von|del|di|le|al|bin) )?")
_ALONE = regex.compile(r"\s+(?:is|was|has|had|said|says|spent|shouted|lives|lived|called|told|asked|went|"
                       r"will|would|can|could|reports|denies|states|so|and|to)\b|['’]s\b|\s*[:,]")


@cache
def common_words() -> frozenset[str]:
    """About 1,000 common English words, capitalised (Faker's en_US lorem list): never a name or place alone."""
    from faker.providers.lorem.en_US import Provider

    return frozenset(w.capitalize() for w in Provider.word_list)


def _person_lists(attrs: tuple[str, ...]) -> frozenset[str]:
    """The Latin-script entries of Faker's person ``attrs`` across its locales, less the held-out locales."""
    import faker.providers.person as person

    names: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        if module.name.startswith(_HELD_OUT):
            continue
        provider = getattr(importlib.import_module(f"{person.__name__}.{module.name}"), "Provider", None)
        found: list[str] = []
        for attr in attrs:
            value = vars(provider).get(attr) if provider is not None else None
            if value is not None and not isinstance(value, property):
                found += list(value)
        latin = [n for n in found if n.isalpha() and all(ord(c) < 0x250 for c in n)]
        if latin and len(latin) > 0.8 * len(found):
            names.update(latin)
    return frozenset(n for n in names if len(n) > 2 and n not in SAFE_WORDS)


@cache
def surnames() -> frozenset[str]:
    """Faker's Latin-script last names (about 10,000), less the held-out locales and common English words."""
    return _person_lists(("last_names",)) - common_words()


@cache
def given_names() -> frozenset[str]:
    """Faker's Latin-script given names, less the held-out locales and the safe words."""
    return _person_lists(("first_names", "first_names_male", "first_names_female"))


class GazetteerNameRecognizer(HealthcarePatternRecognizer):
    """A known given name and the capitalised non-safe word after it ("Julio Verdugo"); alone before a verb."""

    ENTITY = "PERSON"
    CASE_SENSITIVE = True
    PATTERNS = (Pattern("Given name (gazetteer)", r"(?!)", 0.6),)  # matching is the set lookup in analyze
    CONTEXT = ("patient", "name", "dr", "mr", "ms")

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language)
        self._names = given_names()
        self._surnames = surnames()
        self._common = common_words()

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        out = []
        for match in _TOKEN.finditer(text):
            word, start, end = match.group(), match.start(), match.end()
            if word[-2:] in ("'s", "’s"):  # a possessive: "Dirk's address" is Dirk's
                word, end = word[:-2], end - 2
            if word not in self._names:
                if word in self._surnames:
                    out += self._with_surname(text, start, end)
                continue
            gap = _GAP.match(text, end + 1) if text[end:end + 1] == " " else None
            after = _TOKEN.match(text, gap.end()) if gap is not None else None
            if after is not None and after.group() not in SAFE_WORDS:
                end = after.end()
            elif not _ALONE.match(text, end):
                continue
            out.append(RecognizerResult(self.ENTITY, start, end, 0.6, analysis_explanation=None,
                                        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                              RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out

    def _with_surname(self, text: str, start: int, end: int) -> list[RecognizerResult]:
        """A known surname after a capitalised word that is no safe, common or title word ("Carys Morrison")."""
        lo = max(0, start - 60)
        before = _BEFORE.search(text[lo:start])
        if before is None or not _TOKEN.fullmatch(before.group(1)):
            return []
        word = before.group(1)
        if word in SAFE_WORDS or word in self._common or word in _TITLE_WORDS or word in self._names:
            return []  # a given name before it is the given-name rule's match
        return [RecognizerResult(self.ENTITY, lo + before.start(1), end, 0.55, analysis_explanation=None,
                                 recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                       RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id})]


_BEFORE = regex.compile(r"(?:^|\s)(\S+) $")
_TITLE_WORDS = frozenset(("Dr", "Mr", "Mrs", "Ms", "Miss", "Mx", "Prof", "Sir", "Dame", "Lord", "Lady", "Rev", "Saint",
                          "St", "Fr", "Sr", "Jr", "Captain", "Nurse", "Doctor", "Professor", "Uncle", "Aunt"))
