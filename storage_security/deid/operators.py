"""Masking operators: redact, partial mask, keyed pseudonym, per-patient date shift, generalisation, surrogates.

Each operator is a presidio-anonymizer ``Operator`` (``validate(params)`` then ``operate(text, params)``; the
engine always validates first), so the same operators mask entities in notes and, through
:mod:`storage_security.deid.masking`, whole columns of structured tables. Keys never pass through params in the clear:
keyed operators get a :class:`MaskingKeys`, whose HMACs come from the core's
:class:`~storage_security.crypto.pseudonyms.Pseudonymizer`
(key held by the key provider; key version in every pseudonym).

- ``medguard_redact``: ``[LABEL]`` (text) / null (column).
- ``medguard_partial_mask``: all but the last 4 letters/digits become ``*`` (separators kept).
- ``medguard_pseudonym``: ``ps1_<key version>_<hex>`` under the pseudonym key ``params["key"]``.
- ``medguard_date_shift``: the date moved by the patient's keyed offset (±1..365 days, never 0), written back in
  the format it came in; the same patient always gets the same offset, so intervals are preserved.
- ``medguard_generalize``: age → 5-year band (``90+`` above 89), ZIP → 3 digits (``000`` for HIPAA's
  low-population prefixes), date → year.
- ``medguard_surrogate``: a realistic stand-in of the same kind (a keyed fake name for a name, a shifted date for
  a date, a fake street, city, phone, e-mail); identifiers with no safe stand-in are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from presidio_anonymizer.operators import Operator, OperatorType

# HIPAA Safe Harbor: 3-digit ZIP prefixes whose area held 20,000 people or fewer (2000 Census) become 000.
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831",
                             "878", "879", "884", "890", "893"})
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%m/%d/%Y", "%m-%d-%Y", "%B %d, %Y",
                 "%b %d, %Y", "%d %b %Y", "%d %B %Y", "%b. %d, %Y", "%B %d %Y", "%m/%d/%y", "%B %Y", "%b %Y")
_MAX_SHIFT_DAYS = 365

__all__ = [
    "OPERATORS",
    "RESTRICTED_ZIP3",
    "DateShiftOperator",
    "GeneralizeOperator",
    "MaskingKeys",
    "PartialMaskOperator",
    "PseudonymOperator",
    "RedactOperator",
    "SurrogateOperator",
    "age_band",
    "parse_date",
    "shift_text_date",
    "zip3",
]


class MaskingKeys:
    """Keyed, deterministic derivations for the operators, all from the core's pseudonymizers.

    Args:
        pseudonymizer: ``name -> Pseudonymizer`` (``ProtectedLake.pseudonymizer``); names used: ``date-shift``,
            ``surrogate`` and whatever pseudonym keys the masking config names.
        forbidden_names: lower-case name tokens a surrogate must never be (the real names of the release), so a
            stand-in can never coincide with a real patient's name.
    """

    def __init__(self, pseudonymizer: Callable[[str], Any], *, forbidden_names: Iterable[str] = ()) -> None:
        self._pseudonymizer = pseudonymizer
        self.forbidden_names = {n.lower() for n in forbidden_names if n}
        self._shift_cache: dict[str, int] = {}

    def __repr__(self) -> str:
        return "MaskingKeys(<keys held by the key provider>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("MaskingKeys holds key material and cannot be pickled")

    def pseudonym(self, key: str, value: Any) -> str | None:
        return self._pseudonymizer(key).pseudonym(value)

    def pseudonymize(self, key: str, values: Any) -> Any:
        return self._pseudonymizer(key).pseudonymize(values)

    def digest(self, key: str, value: str) -> int:
        """A keyed integer for ``value`` (the pseudonym's HMAC digits)."""
        text = self.pseudonym(key, value)
        assert text is not None
        return int(text.rsplit("_", 1)[1], 16)

    def shift_days(self, patient: str) -> int:
        """The patient's date offset in days: keyed, never 0, within ±365."""
        if patient not in self._shift_cache:
            value = self.digest("date-shift", patient) % (2 * _MAX_SHIFT_DAYS)
            days = value - _MAX_SHIFT_DAYS
            self._shift_cache[patient] = days + 1 if days >= 0 else days
        return self._shift_cache[patient]

    def shift_days_many(self, patients: Any) -> list[int | None]:
        pseudonyms = self.pseudonymize("date-shift", patients).to_pylist()
        out: list[int | None] = []
        for text in pseudonyms:
            if text is None:
                out.append(None)
                continue
            days = int(text.rsplit("_", 1)[1], 16) % (2 * _MAX_SHIFT_DAYS) - _MAX_SHIFT_DAYS
            out.append(days + 1 if days >= 0 else days)
        return out

    @cached_property
    def _names(self) -> tuple[list[str], list[str]]:
        from faker.providers.person.en_US import Provider as Person

        first = sorted(set(Person.first_names_female) | set(Person.first_names_male))
        last = sorted(set(Person.last_names))
        return ([n for n in first if n.lower() not in self.forbidden_names],
                [n for n in last if n.lower() not in self.forbidden_names])

    def surrogate_name(self, original: str) -> str:
        """A fake name with as many words as ``original``; the same name always gets the same stand-in."""
        first, last = self._names
        words = original.split()
        n = self.digest("surrogate", original.strip().lower())
        if len(words) <= 1:
            pool = last if original[:1].isupper() and n % 2 else first
            return pool[n % len(pool)]
        names = [first[n % len(first)]]
        for i in range(1, len(words)):
            names.append(last[(n >> (8 * i)) % len(last)])
        return " ".join(names)


def parse_date(text: str) -> tuple[datetime, str] | None:
    """``text`` as a datetime and the format it was written in, or None."""
    cleaned = text.strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt), fmt
        except ValueError:
            continue
    return None


def shift_text_date(text: str, days: int) -> str | None:
    """The date in ``text`` moved by ``days``, in the same format; None when it is not a full date."""
    parsed = parse_date(text)
    if parsed is None or "%d" not in parsed[1]:
        return None
    moved = parsed[0] + timedelta(days=days)
    out = moved.strftime(parsed[1])
    # strftime pads days with 0; keep the original's style when it did not.
    return out


def age_band(birth: date | None, reference: date, width: int = 5) -> str | None:
    """The age at ``reference`` as a ``width``-year band ("40-44"); 90 and over is "90+"."""
    if birth is None:
        return None
    age = reference.year - birth.year - ((reference.month, reference.day) < (birth.month, birth.day))
    if age >= 90:
        return "90+"
    low = max(0, age) // width * width
    return f"{low}-{min(low + width - 1, 89)}"


def zip3(value: str | None) -> str | None:
    """The first three digits of a ZIP, or ``000`` for a restricted (low-population) prefix."""
    if value is None:
        return None
    digits = re.sub(r"\D", "", str(value))
    if len(digits) in (3, 4):
        digits = digits.zfill(5)  # a leading zero lost on the way through a spreadsheet or an integer column
    if len(digits) not in (5, 9):
        return None
    digits = digits[:3]
    return "000" if digits in RESTRICTED_ZIP3 else digits


def _need(params: dict[str, Any] | None, *names: str) -> dict[str, Any]:
    params = params or {}
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"masking operator needs params {missing}")
    return params


class _MedguardOperator(Operator):
    NAME = ""

    def operator_name(self) -> str:
        return self.NAME

    def operator_type(self) -> OperatorType:
        return OperatorType.Anonymize


class RedactOperator(_MedguardOperator):
    """Replace the text with ``[ENTITY]`` (or ``params["placeholder"]``)."""

    NAME = "medguard_redact"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        _need(params, "entity_type")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        return params.get("placeholder") or f"[{params.get('entity_type', 'PHI')}]"


class PartialMaskOperator(_MedguardOperator):
    """Mask every letter and digit but the last ``keep`` (default 4); separators stay, so formats stay readable."""

    NAME = "medguard_partial_mask"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        keep = (params or {}).get("keep", 4)
        if not isinstance(keep, int) or keep < 0:
            raise ValueError("partial mask 'keep' must be a non-negative integer")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        keep = (params or {}).get("keep", 4)
        positions = [i for i, ch in enumerate(text) if ch.isalnum()]
        hide = set(positions[:max(0, len(positions) - keep)])
        return "".join("*" if i in hide else ch for i, ch in enumerate(text))


class PseudonymOperator(_MedguardOperator):
    """The keyed pseudonym of the text under the pseudonym key ``params["key"]``."""

    NAME = "medguard_pseudonym"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = _need(params, "keys", "key")
        if not isinstance(params["keys"], MaskingKeys):
            raise ValueError("pseudonym 'keys' must be MaskingKeys")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        return params["keys"].pseudonym(params["key"], text) or ""


class DateShiftOperator(_MedguardOperator):
    """Move a date by ``params["days"]`` (the patient's keyed offset); unparseable dates become ``[DATE]``."""

    NAME = "medguard_date_shift"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        days = _need(params, "days")["days"]
        if not isinstance(days, int) or days == 0 or abs(days) > 10 * _MAX_SHIFT_DAYS:
            raise ValueError("date shift 'days' must be a non-zero integer")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        shifted = shift_text_date(text, (params or {})["days"])
        return shifted if shifted is not None else "[DATE]"


class GeneralizeOperator(_MedguardOperator):
    """Coarsen: ``kind`` ``age`` (a number → band, 90+), ``zip`` (→ 3 digits / 000), ``date`` (→ year)."""

    NAME = "medguard_generalize"
    KINDS = ("age", "zip", "date")

    def validate(self, params: dict[str, Any] | None = None) -> None:
        kind = _need(params, "kind")["kind"]
        if kind not in self.KINDS:
            raise ValueError(f"generalize 'kind' must be one of {self.KINDS}")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        kind = params["kind"]
        if kind == "zip":
            return zip3(text) or "[ZIP]"
        if kind == "date":
            parsed = parse_date(text)
            return str(parsed[0].year) if parsed else "[DATE]"
        digits = re.sub(r"\D", "", text)
        if not digits:
            return "[AGE]"
        age = int(digits)
        width = int(params.get("width", 5))
        return "90+" if age >= 90 else f"{age // width * width}-{age // width * width + width - 1}"


class SurrogateOperator(_MedguardOperator):
    """A realistic stand-in of the entity's kind, so masked notes still read as notes.

    params: ``keys`` (MaskingKeys), ``days`` (the patient's date offset), ``entity_type`` (from the engine).
    """

    NAME = "medguard_surrogate"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = _need(params, "keys", "days", "entity_type")
        if not isinstance(params["keys"], MaskingKeys):
            raise ValueError("surrogate 'keys' must be MaskingKeys")

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        keys: MaskingKeys = params["keys"]
        entity = params["entity_type"]
        n = keys.digest("surrogate", f"{entity}\x00{text.strip().lower()}")
        if entity == "PERSON":
            return keys.surrogate_name(text)
        if entity == "DATE_TIME":
            return shift_text_date(text, params["days"]) or "[DATE]"
        if entity == "AGE":
            return "90+"
        if entity == "ZIP_CODE":
            return (zip3(text) or "000") + "00"
        if entity == "STREET_ADDRESS":
            _, last = keys._names
            return f"{100 + n % 9800} {last[(n >> 16) % len(last)]} Street"
        if entity == "LOCATION":
            _, last = keys._names
            return f"{last[(n >> 24) % len(last)]}ville"
        if entity in ("PHONE_NUMBER", "FAX_NUMBER"):
            return f"(555) 010-{n % 10000:04d}"  # 555-01xx numbers are reserved for fiction
        if entity == "EMAIL_ADDRESS":
            return f"patient{n % 100000:05d}@example.invalid"
        if entity == "URL":
            return "https://example.invalid/redacted"
        if entity == "IP_ADDRESS":
            return f"192.0.2.{n % 254 + 1}"  # TEST-NET-1, never routed
        return f"[{entity}]"


OPERATORS: tuple[type[Operator], ...] = (RedactOperator, PartialMaskOperator, PseudonymOperator, DateShiftOperator,
                                         GeneralizeOperator, SurrogateOperator)
