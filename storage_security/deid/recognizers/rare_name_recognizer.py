"""Names no list holds: a capitalised word that is rare in English and no clinical word, where people are written.

What Philter, the MIT ``deid`` package and NLM Scrubber do for unknown tokens: a word is a name candidate when it
is capitalised (``Yulan``, not ``YULAN``, which is a header or an abbreviation), at least four letters long, rare in
general English — its wordfreq zipf frequency is below :data:`RARE_ZIPF`, i.e. fewer than one use per million
words — and none of the vocabularies that are rare in English but common in notes: the safe words and Faker's
common words the gazetteers use, :file:`clinical_words.txt` (coded clinical displays from FHIR, Synthea and C-CDA
samples, eponyms, drugs by generic and brand name, shorthand), the word shapes of drugs and clinical terms
(USAN stems such as ``-pril``, ``-statin``, ``-mab``; ``-itis``, ``-ectomy``, ``-emia``) and country names.

Context then decides:

* not a name where the words around mark a drug or an eponym: a dose or route after it ("Keppra 500 mg",
  "Zosyn IV"), a verb of prescribing before it ("started Xyzal"), a medication or allergy list on its line, or a
  disease, sign, test or score word after it ("Hirschsprung disease", "Tinel's sign");
* a name inside a sentence: English capitalises a word there only when it is a proper noun ("Why is Yulan so…");
* a name at the start of a sentence or line only with a cue: another name-like word beside it ("Anouk Morin"), a
  possessive or a verb after it ("Tadanori is", "Schiavone and"); otherwise it is a capitalised first word;
* a place rather than a person after "in", "at" or "near" ("the clubs in Blanquillo").

``RARE_ZIPF`` is 3.0: clinical notes' ordinary words ("Patient", "Blood", "Plan") score 4–6; names a gazetteer
misses score below 3 ("Morin" 2.65, "Schiavone" 1.98, most foreign names 0, i.e. absent), as do drugs and
clinical terms (2–3), which the clinical vocabulary and the word shapes take out. A higher bar adds surnames that
are also English words, which only context can tell from the word.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import regex
from presidio_analyzer import Pattern, RecognizerResult

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer
from storage_security.deid.recognizers.gazetteer_name_recognizer import _TITLE_WORDS, SAFE_WORDS, common_words

RARE_ZIPF = 3.0
"""A word whose English zipf frequency is below this is rare (3.0: once per million words)."""
_PLAIN_ZIPF = 4.0  # a part of a hyphenated word this common is plain English ("Follow-up", "Well-known")

# Capitalised, then lower case (an inner capital as in "McKay", "DeLuca", "O'Neil"), hyphenated parts allowed; not
# inside an e-mail address, a URL or a word with digits.
_CANDIDATE = regex.compile(r"(?<![\p{L}\d'’@/._-])\p{Lu}(?:['’]\p{Lu})?\p{Ll}+(?:\p{Lu}\p{Ll}+)?"
                           r"(?:['’-]\p{Lu}?\p{Ll}+)*(?![\p{L}\d@]|[._/-][\p{L}\d])")
# Word shapes of drugs (USAN stems) and clinical terms: rare in English, never names.
_CLINICAL_SHAPE = regex.compile(
    r"(?:itis|osis|oses|iasis|emia|aemia|ectomy|otomy|ostomy|plasty|scopy|scopic|graphy|gram|grams|pathy|algia|"
    r"noma|coma|ioma|toma|rcoma|phoma|eloma|uloma|myoma|megaly|penia|cytosis|uria|pnea|pnoea|cardia|plegia|"
    r"trophy|lysis|ase|ases|ism|ismus|ial|eal|ous|ics|phagia|phasia|plasia|kinesia|esthesia|opia|oxia|axia|"
    r"thymia|somnia|rrhea|rrhoea|rrhage|rrhagia|ectasis|ptosis|genic|genesis|oid|oids|ulin|globin|ium|"
    r"olol|alol|pril|prilat|sartan|dipine|statin|formin|gliptin|gliflozin|glutide|prazole|tidine|setron|oxacin|"
    r"cycline|mycin|micin|cillin|penem|azole|ivir|navir|buvir|ciclovir|tegravir|previr|mab|tinib|parin|xaban|"
    r"gatran|semide|thiazide|triptan|azepam|azolam|barbital|caine|profen|oxetine|triptyline|apine|idone|peridol|"
    r"afil|lukast|terol|sone|olone|onide|tropium|dronate|tadine|pramine|fenac|coxib|zosin|codone|morphone|phine|"
    r"oxone|platin|rubicin|taxel|fungin|glinide|gliptin|dazole|vudine|lamide|tretin)$")
# English derivational endings that names do not take ("Federated", "Cautionary", "Salesmanship").
_ENGLISH_SHAPE = regex.compile(r"(?:ated|ized|ised|ness|ment|ments|able|ible|ful|less|ship|wards?|ary|ical|ally|"
                               r"ingly|ist|ists|ity|ities|tion|tions|sion|sions|esque)$")
# A dose or route after the word: a drug ("Keppra 500 mg", "Zosyn IV", "Lasix drip").
_DRUG_AFTER = regex.compile(
    r"\s*(?:\(\s*)?(?:\d+(?:[.,]\d+)?\s*(?:mg|mcg|µg|g|gm|ml|mL|units?|u|U|%|meq|mEq|mmol|tabs?|caps?|puffs?|"
    r"drops?|sprays?)\b|(?:PO|IV|IM|SC|SQ|SL|PR|BID|TID|QID|QD|QHS|QAM|QPM|PRN|prn|po|iv|bid|tid|qd|qhs|daily|"
    r"nightly|tablets?|capsules?|drip|gtt|infusion|inhaler|injection|patch|cream|ointment|gel|XR|ER|SR|XL|CR|DR|"
    r"ODT|HCT|HCTZ)\b)")
# An eponym: a disease, sign, test, score or device word after the name ("Hirschsprung disease", "Tinel's sign").
_EPONYM_AFTER = regex.compile(
    r"(?:['’]s?)?[ -](?i:disease|syndrome|sign|signs|test|score|scale|criteria|maneuver|manoeuvre|reflex|palsy|"
    r"phenomenon|classification|stage|staging|grade|fracture|ulcer|procedure|operation|repair|catheter|tube|drain|"
    r"lymphoma|sarcoma|tumou?r|esophagus|oesophagus|node|nodes|law|equation|formula|method|technique|index|virus|"
    r"bacillus|cells?|body|bodies|ring|position|needle|stockings|hose|muscular|dystrophy|encephalopathy|anomaly|"
    r"triad|lesion|spots?|pouch|diverticulum|hernia|stain|glands?|duct|disorder|ataxia|chorea|aphasia|area|"
    r"block|angle|line|bag|mask|collar|splint|boot|walker|view|valve|shunt|pump|device|protocol|regimen|"
    r"diet|unit|units|level|levels|dose|tablet|tablets)\b")
# A verb of prescribing before the word: a drug ("started Xyzal", "allergic to Keflex", "on Eliquis").
_DRUG_BEFORE = regex.compile(
    r"\b(?i:on|start|started|starting|continue|continued|continuing|resume|resumed|restart|restarted|hold|held|"
    r"holding|stop|stopped|discontinue|discontinued|d/c|dc'?d|given|gave|give|received|receiving|increase|"
    r"increased|decrease|decreased|taper|tapered|titrate|titrated|switched to|changed to|prescribe|prescribed|"
    r"takes|taking|took|allergic to|allergy to|allergies to|intolerant of|intolerance to|dose of|course of|"
    r"trial of|refill|refilled|bolus|loaded with|wean|weaned|weaning|uptitrate|uptitrated)"
    r"\s+(?:(?:his|her|their|the|a|home|po|iv|oral|scheduled|prn)\s+)?$")
_MEDICATION_LINE = regex.compile(r"(?i:\bmed(?:ication)?s|\ballerg(?:y|ies)|\brx|\bdrugs?|\bprescriptions?)"
                                 r"\b[^\n:]{0,20}:[^\n]*$")
# A verb or possessive after a word at the start of a sentence: its subject ("Tadanori is", "Schiavone and").
_SUBJECT_CUE = regex.compile(
    r"(?:['’]s\b|\s+(?:is|was|were|are|has|had|have|will|would|can|could|did|does|said|says|and|&|told|asked|"
    r"wrote|writes|thinks|thought|went|came|called|calls|lives|lived|loves|loved|likes|liked|wants|wanted|needs|"
    r"knows|knew|gets|got|made|makes|took|gave|seems|became|"
    # any past tense, less the participles of clinical fragments ("Crepitus noted", "Effusion resolved")
    r"(?!(?:noted|observed|appreciated|palpated|identified|visuali[sz]ed|resolved|improved|increased|decreased|"
    r"documented|elevated|reduced|controlled|confirmed|suspected|associated|related|treated|started|stopped|"
    r"continued|discontinued|recommended|ordered|planned|placed|removed|inserted|drained|repaired|performed|"
    r"excised|biopsied|cultured|ruled|unchanged)\b)\p{Ll}{3,}ed)\b)")
_PLACE_BEFORE = regex.compile(r"\b(?:in|at|near|outside)\s+$")
_LETTERS = regex.compile(r"\p{L}+")


@cache
def _frequent(zipf: float) -> frozenset[str]:
    """English words at or above ``zipf`` in wordfreq (one set lookup a token, not a frequency call)."""
    import wordfreq

    floor = 10 ** (zipf - 9)
    return frozenset(w for w, f in wordfreq.get_frequency_dict("en").items() if f >= floor)


def english_words() -> frozenset[str]:
    """Lower-case words that are plain English (wordfreq zipf 3.5 or more): never a town on a line of its own."""
    return _frequent(3.5)


@cache
def clinical_words() -> frozenset[str]:
    """The clinical vocabulary of :file:`clinical_words.txt`, lower case."""
    text = resources.files(__package__).joinpath("clinical_words.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() if (w := line.split("#", 1)[0].strip().lower()))


@cache
def _countries() -> frozenset[str]:
    """Country names' words and the demonyms formed from them ("Slovenian", "Greenlander"): not PHI."""
    from storage_security.deid.recognizers.place_recognizer import countries

    words = {w.lower() for c in countries() for w in c.split() if len(w) > 3}
    stems = {w.rstrip("aeiouy") for w in words} | words
    return frozenset(words | {s + e for s in stems for e in _DEMONYM_ENDINGS})


_DEMONYM_ENDINGS = ("n", "ns", "an", "ans", "ian", "ians", "ean", "eans", "ese", "ish", "i", "is", "ic", "er", "ers")


def _clinical(word: str, clinical: frozenset[str]) -> bool:
    return word in clinical or bool(_CLINICAL_SHAPE.search(word))


class RareNameRecognizer(HealthcarePatternRecognizer):
    """An unknown capitalised word, rare in English and no clinical word, in a person's (or a place's) position."""

    ENTITY = "PERSON"
    CASE_SENSITIVE = True
    PATTERNS = (Pattern("Rare capitalised word", r"(?!)", 0.5),)  # matching is in analyze: set look-ups, context
    CONTEXT = ("patient", "name", "mr", "ms")
    SUPPORTED = ("PERSON", "LOCATION")

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language)
        self.supported_entities = list(self.SUPPORTED)
        self._frequent = _frequent(RARE_ZIPF)
        self._plain = _frequent(_PLAIN_ZIPF)
        self._clinical = clinical_words()
        self._countries = _countries()
        self._skip = SAFE_WORDS | common_words() | _TITLE_WORDS

    def candidate(self, word: str) -> bool:
        """True when ``word`` (possessive dropped) is rare in English and in no clinical or safe vocabulary."""
        if word in self._skip or len(word) < 4:
            return False
        lower = word.lower().replace("’", "'")
        if (lower in self._frequent or lower in self._countries or _clinical(lower, self._clinical)
                or _ENGLISH_SHAPE.search(lower)):
            return False
        parts = _LETTERS.findall(lower)
        return len(parts) == 1 or not any(p in self._plain or _clinical(p, self._clinical) for p in parts)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        words = []
        for match in _CANDIDATE.finditer(text):
            start, end = match.span()
            if text[end - 2:end] in ("'s", "’s"):
                end -= 2
            words.append((start, end, self.candidate(text[start:end])))
        out = []
        for i, (start, end, rare) in enumerate(words):
            if not rare or self._drug_or_eponym(text, start, end):
                continue
            paired = any(self._beside(text, words, i, j) for j in (i - 1, i + 1))
            if not paired and _starts_sentence(text, start) and not _SUBJECT_CUE.match(text, end):
                continue
            entity = "LOCATION" if _PLACE_BEFORE.search(text, max(0, start - 8), start) else "PERSON"
            out.append(RecognizerResult(entity, start, end, 0.6 if paired else 0.5, analysis_explanation=None,
                                        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                              RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out

    @staticmethod
    def _drug_or_eponym(text: str, start: int, end: int) -> bool:
        if _DRUG_AFTER.match(text, end) or _EPONYM_AFTER.match(text, end):
            return True
        line_start = text.rfind("\n", 0, start) + 1
        return bool(_DRUG_BEFORE.search(text, max(line_start, start - 30), start)
                    or _MEDICATION_LINE.search(text, line_start, start))

    def _beside(self, text: str, words: list[tuple[int, int, bool]], i: int, j: int) -> bool:
        """Word ``j`` stands next to word ``i`` (one space, or an initial between) and is itself name-like."""
        if not 0 <= j < len(words):
            return False
        left, right = sorted((words[i], words[j]))
        if not regex.fullmatch(r" (?:\p{Lu}\. )?", text[left[1]:right[0]]):
            return False
        other = text[words[j][0]:words[j][1]]
        return words[j][2] or (other not in self._skip and other.lower() not in self._plain
                                and not _clinical(other.lower(), self._clinical))


def _starts_sentence(text: str, start: int) -> bool:
    """True when nothing but spaces, quotes, brackets or a bullet stands between ``start`` and a sentence end."""
    i = start
    while i > 0 and text[i - 1] in " \t\"“‘'(*•->[":
        i -= 1
    if i > 0 and text[i - 1] == "." and _TITLE_BEFORE.search(text, max(0, i - 6), i):
        return False  # "Dr. Vuković": a title's full stop ends no sentence
    return i == 0 or text[i - 1] in ".!?:;\n\r"


_TITLE_BEFORE = regex.compile(r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sr|Fr|Rev|St)\.$")
