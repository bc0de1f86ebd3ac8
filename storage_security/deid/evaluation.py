"""Scores PHI detection against labelled notes, token by token, as the i2b2 de-identification evaluations do.

A labelled note is ``{"text": …, "spans": [{"start": i, "end": j, "label": L}, …]}`` (the generator's
``notes.jsonl`` is already in this form). Text is cut into tokens (runs of letters and digits). A gold PHI token
is *found* when some detected span covers it whole, whatever the labels: overall scores are label-agnostic, so a
corpus with other label names can be scored. Per label L: recall is the share of L's gold tokens found; precision
is the share of tokens detected *as* L that lie in any gold PHI span (only for labels the detector emits).
F2 weighs recall twice as much as precision: a missed identifier costs more than an over-masked word.

Labels differ between corpora and detectors (``PERSON``, ``DOCTOR``, ``NAME``; ``CREDIT_CARD``, ``ACCOUNT_NUMBER``),
so :func:`hipaa_category` maps both gold and predicted labels onto the HIPAA Safe Harbor identifier kinds before a
side-by-side comparison (:func:`compare`), and :func:`leaks` lists every gold span a detector missed with its
category and a redacted context: the note's PHI replaced by ``[CATEGORY]``, never the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_security.deid.detection import PhiSpan

_TOKEN = re.compile(r"[A-Za-z0-9]+")

__all__ = ["HIPAA_CATEGORIES", "LabelledNote", "Scores", "compare", "detect_both", "evaluate", "hipaa_category",
           "leaks", "load_labelled_notes", "score"]


@dataclass(frozen=True)
class LabelledNote:
    """A note and its gold PHI spans ``(start, end, label)``."""

    text: str
    spans: tuple[tuple[int, int, str], ...]


def load_labelled_notes(path: str | Path, *, limit: int | None = None) -> list[LabelledNote]:
    """Read a JSONL file of labelled notes.

    Raises:
        ValueError: a line that is not a labelled note, naming the line and what is wrong.
    """
    notes = []
    with Path(path).open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
                spans = tuple((int(s["start"]), int(s["end"]), str(s["label"])) for s in record.get("spans") or [])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a labelled note ({exc.__class__.__name__}: {exc})") from exc
            if not isinstance(text, str) or any(not 0 <= s < e <= len(text) for s, e, _ in spans):
                raise ValueError(f"{path}:{number}: a span lies outside the text")
            notes.append(LabelledNote(text, spans))
            if limit is not None and len(notes) >= limit:
                break
    return notes


@dataclass
class _Counts:
    gold: int = 0
    found: int = 0
    predicted: int = 0
    correct: int = 0


@dataclass
class Scores:
    """Token-level scores: ``overall`` and ``per_label`` dicts of precision, recall, f2 and support."""

    overall: dict[str, float]
    per_label: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "per_label": self.per_label, "notes": self.notes}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _f2(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None or precision + recall == 0:
        return None if precision is None or recall is None else 0.0
    return round(5 * precision * recall / (4 * precision + recall), 4)


def score(notes: Sequence[LabelledNote], predictions: Sequence[Sequence[PhiSpan]]) -> Scores:
    """Score predicted spans against the gold spans of each note (same order)."""
    if len(notes) != len(predictions):
        raise ValueError(f"{len(notes)} notes but {len(predictions)} predictions")
    total = _Counts()
    labels: dict[str, _Counts] = {}
    for note, spans in zip(notes, predictions, strict=True):
        for match in _TOKEN.finditer(note.text):
            start, end = match.span()
            gold = next((lab for s, e, lab in note.spans if s <= start and end <= e), None)
            covering = [p for p in spans if p.start <= start and end <= p.end]
            found = bool(covering)
            if gold is not None:
                total.gold += 1
                total.found += found
                counts = labels.setdefault(gold, _Counts())
                counts.gold += 1
                counts.found += found
            if found:
                total.predicted += 1
                total.correct += gold is not None
                for label in {p.entity_type for p in covering}:
                    counts = labels.setdefault(label, _Counts())
                    counts.predicted += 1
                    counts.correct += gold is not None
    overall_p, overall_r = _ratio(total.correct, total.predicted), _ratio(total.found, total.gold)
    overall = {"precision": overall_p, "recall": overall_r, "f2": _f2(overall_p, overall_r),
               "gold_tokens": total.gold, "predicted_tokens": total.predicted}
    per_label = {}
    for label, counts in sorted(labels.items()):
        p, r = _ratio(counts.correct, counts.predicted), _ratio(counts.found, counts.gold)
        per_label[label] = {"precision": p, "recall": r, "f2": _f2(p, r), "support": counts.gold}
    return Scores(overall=overall, per_label=per_label, notes=len(notes))


def evaluate(notes: Iterable[LabelledNote], *, processes: int = 1, kind: str = "medguard") -> Scores:
    """Detect PHI in the notes with the ``kind`` analyzer and score it."""
    from storage_security.deid.detection import detect_many

    notes = list(notes)
    predictions = detect_many([n.text for n in notes], processes=processes, kind=kind)  # type: ignore[arg-type]
    return score(notes, predictions)


# HIPAA Safe Harbor kinds (45 CFR 164.514(b)(2)); AGE is the "ages over 89" element of dates, kept apart because
# detectors find it apart. ``OTHER`` gathers labels that are not PHI (NRP, ORGANIZATION, a country): they count
# against precision only.
HIPAA_CATEGORIES = ("NAME", "LOCATION", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "HEALTH_PLAN",
                    "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE", "URL", "IP", "ID")
_CATEGORY = {
    "NAME": ("PERSON", "NAME", "PATIENT", "DOCTOR", "PROVIDER", "PER"),
    "LOCATION": ("LOCATION", "STREET_ADDRESS", "ADDRESS", "CITY", "ZIP_CODE", "ZIP", "HOSPITAL", "FACILITY",
                 "STREET", "GPE", "LOC", "FAC"),
    "DATE": ("DATE_TIME", "DATE", "TIME"),
    "AGE": ("AGE",),
    "PHONE": ("PHONE_NUMBER", "PHONE"),
    "FAX": ("FAX", "FAX_NUMBER"),
    "EMAIL": ("EMAIL_ADDRESS", "EMAIL"),
    "SSN": ("US_SSN", "SSN"),
    "MRN": ("MEDICAL_RECORD_NUMBER", "MRN", "MEDICALRECORD"),
    "HEALTH_PLAN": ("HEALTH_PLAN_ID", "HEALTHPLAN", "MEMBER_ID"),
    "ACCOUNT": ("ACCOUNT_NUMBER", "ACCOUNT", "CREDIT_CARD", "IBAN_CODE", "US_BANK_NUMBER", "CRYPTO"),
    "LICENSE": ("LICENSE_NUMBER", "LICENSE", "US_DRIVER_LICENSE", "MEDICAL_LICENSE", "DEA_NUMBER"),
    "VEHICLE": ("VEHICLE_ID", "VIN", "VEHICLE"),
    "DEVICE": ("DEVICE_ID", "DEVICE"),
    "URL": ("URL",),
    "IP": ("IP_ADDRESS", "IP"),
    "ID": ("NPI", "USERNAME", "ID", "IDNUM", "US_PASSPORT", "US_ITIN", "BIOID", "UNIQUE_ID"),
}
_BY_LABEL = {label: category for category, labels in _CATEGORY.items() for label in labels}


def hipaa_category(label: str) -> str:
    """The HIPAA identifier kind of a gold or predicted label; ``OTHER`` for labels that are not PHI."""
    return _BY_LABEL.get(label.upper(), "OTHER")


def _by_category(notes: Sequence[LabelledNote], predictions: Sequence[Sequence[PhiSpan]]
                 ) -> tuple[list[LabelledNote], list[list[PhiSpan]]]:
    gold = [LabelledNote(n.text, tuple((s, e, hipaa_category(lab)) for s, e, lab in n.spans)) for n in notes]
    pred = [[PhiSpan(p.start, p.end, hipaa_category(p.entity_type), p.score, p.recognizer) for p in spans]
            for spans in predictions]
    return gold, pred


def compare(notes: Sequence[LabelledNote], runs: dict[str, Sequence[Sequence[PhiSpan]]]) -> dict[str, Any]:
    """Per-HIPAA-category scores of several detectors' predictions on the same notes, side by side.

    Returns:
        ``{"notes": n, "detectors": {name: Scores.to_dict()}, "categories": {category: {name: {precision,
        recall, support}}}}``; a category's precision is ``None`` for a detector that never emits it.
    """
    out: dict[str, Any] = {"notes": len(notes), "detectors": {}, "categories": {}}
    for name, predictions in runs.items():
        scores = score(*_by_category(notes, predictions))
        out["detectors"][name] = scores.to_dict()
        for category, s in scores.per_label.items():
            out["categories"].setdefault(category, {})[name] = {
                "precision": s["precision"], "recall": s["recall"], "support": s["support"]}
    return out


def leaks(notes: Sequence[LabelledNote], predictions: Sequence[Sequence[PhiSpan]], *, window: int = 40
          ) -> list[dict[str, Any]]:
    """Every gold PHI span with a token no prediction covers: ``{note, category, label, context}``.

    The context is ``window`` characters either side with every gold PHI span of the note (the missed one
    included) replaced by ``[CATEGORY]`` and digits outside them by ``#``, so the report names no value.
    """
    out = []
    for index, (note, spans) in enumerate(zip(notes, predictions, strict=True)):
        for start, end, label in note.spans:
            missed = any(not any(p.start <= m.start() + start and m.end() + start <= p.end for p in spans)
                         for m in _TOKEN.finditer(note.text[start:end]))
            if missed:
                out.append({"note": index, "category": hipaa_category(label), "label": label,
                            "context": _redacted(note, start, end, window)})
    return out


def _redacted(note: LabelledNote, start: int, end: int, window: int) -> str:
    lo, hi = max(0, start - window), min(len(note.text), end + window)
    inside = sorted((max(s, lo), min(e, hi), lab) for s, e, lab in note.spans if s < hi and e > lo)
    parts, at = [], lo
    for s, e, lab in inside:
        if s < at:
            continue
        parts.append(re.sub(r"\d", "#", note.text[at:s]))
        parts.append(f"[{hipaa_category(lab)}]" if (s, e) != (start, end) else f"<<[{hipaa_category(lab)}]>>")
        at = e
    parts.append(re.sub(r"\d", "#", note.text[at:hi]))
    return "".join(parts).replace("\n", " ")


def detect_both(notes: Sequence[LabelledNote], *, processes: int = 1) -> dict[str, list[list[PhiSpan]]]:
    """medguard's and vanilla Presidio's predictions on the same notes (same spaCy model, same run)."""
    from storage_security.deid.detection import detect_many

    texts = [n.text for n in notes]
    return {kind: detect_many(texts, processes=processes, kind=kind) for kind in ("medguard", "vanilla")}
