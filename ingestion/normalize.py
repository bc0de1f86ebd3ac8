"""The conform step's normalisers: one value form per column, whatever form the source wrote it in.

Readers pass values as found; :func:`normalize_column` turns them into the contract's canonical form before the
rules run, vectorised over an Arrow column. Values already canonical take a fast path (one RE2 match over the
column, no Python per value); only the others are parsed, in Python, once per distinct value, and joined back
(``pc.index_in`` / ``take``). A value with no unambiguous normal form is kept as written: the column's own rules
(its pattern, the date format) then decide whether it is accepted. Normalising never changes where a value is
stored: a PHI column's normal form is sealed in raw like the value it replaces.

Canonical forms:

* ``date``: ``YYYY-MM-DD``. Accepted: ISO dates and partial dates (``2012``, ``2012-03``: the missing month and day
  are 01), ISO date-times (their date as written, no time-zone shift: a birth date is a calendar day), and HL7 v2 /
  CDA ``TS`` (``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``).
* ``datetime``: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC. Accepted: ISO date-times with or without seconds and fraction, with
  ``Z``, an offset (``+01:00``, ``+0100``) or none (taken as UTC), ``T`` or a space between date and time; ISO dates
  and partial dates (midnight UTC of their first day); HL7 / CDA ``TS`` (its offset applied). Fractions of a
  second are dropped.
* ``phone``: E.164 (``+14155550123``) for a NANP number written with 10 digits (area code 2-9) or 11 starting
  with 1, or any number written with a leading ``+`` (8 to 15 digits); punctuation, spaces and a ``tel:`` prefix
  are ignored. Anything else (a local number of another country, an extension, letters) is kept as written.
* ``us_state``: the USPS two-letter code, from a code in any case or with dots (``ny``, ``D.C.``) or a state,
  district, territory or military "state" name (``New York``, ``new york``, ``District of Columbia``); anything else
  is kept as written.
* ``ssn``: ``ddd-dd-dddd`` from nine digits written with or without hyphens or spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CANONICAL", "normalize_column", "to_date", "to_datetime", "to_phone", "to_ssn", "to_us_state"]

# RE2 patterns of the canonical forms: a value matching one takes the fast path, untouched.
CANONICAL = {
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "datetime": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
    "phone": r"^\+[1-9]\d{7,14}$",
    "us_state": r"^(A[AEKLPRSZ]|C[AOT]|D[CE]|FL|G[AU]|HI|I[ADLN]|K[SY]|LA|M[ADEINOPST]|N[CDEHJMVY]|O[HKR]|P[AR]|"
                r"RI|S[CD]|T[NX]|UT|V[AIT]|W[AIVY])$",
    "ssn": r"^\d{3}-\d{2}-\d{4}$",
}

_ISO = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?"
                  r"\s*(Z|[+-]\d{2}:?\d{2})?)?)?)?")
_TS = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")


def _parts(text: str) -> tuple[datetime, bool, timezone | None] | None:
    """The local date-time a value names, whether it carries a time, and its offset; None when unreadable."""
    text = text.strip()
    found = _ISO.fullmatch(text) or _TS.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, offset = found.groups()
    try:
        moment = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                          int(second or 0))
        zone = None
        if offset and offset != "Z":
            digits = offset[1:].replace(":", "")
            delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            if delta > timedelta(hours=14) or int(digits[2:]) >= 60:
                return None
            zone = timezone(-delta if offset[0] == "-" else delta)
    except ValueError:  # no such day or time (2023-02-30, 25:00)
        return None
    return moment, hour is not None, zone


def to_date(text: str) -> str | None:
    """``YYYY-MM-DD`` of an ISO or HL7 / CDA date or date-time (its date as written); None when unreadable."""
    found = _parts(text)
    return None if found is None else found[0].strftime("%Y-%m-%d")


def to_datetime(text: str) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC) of an ISO or HL7 / CDA date or date-time; None when unreadable."""
    found = _parts(text)
    if found is None:
        return None
    moment, _, zone = found
    if zone is not None:
        try:
            moment = moment.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # year 1 or 9999 shifted out of range
            return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if 1 <= moment.year <= 9999 else None


_PHONE_TEXT = re.compile(r"\+?[\d\s().\-/]{7,40}")


def to_phone(text: str) -> str | None:
    """E.164 of a NANP number or of a number written with ``+``; None when the number is ambiguous."""
    text = text.strip()
    if text[:4].lower() == "tel:":
        text = text[4:].strip()
    if not _PHONE_TEXT.fullmatch(text):
        return None
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        return "+" + digits if 8 <= len(digits) <= 15 and digits[0] != "0" else None
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return "+1" + digits if len(digits) == 10 and digits[0] in "23456789" else None


_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California", "CO": "Colorado",
    "CT": "Connecticut", "DE": "Delaware", "FL": "Florida", "GA": "Georgia", "HI": "Hawaii", "ID": "Idaho",
    "IL": "Illinois", "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana",
    "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota",
    "MS": "Mississippi", "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire",
    "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania", "RI": "Rhode Island",
    "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee", "TX": "Texas", "UT": "Utah", "VT": "Vermont",
    "VA": "Virginia", "WA": "Washington", "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "DC": "District of Columbia", "AS": "American Samoa", "GU": "Guam", "MP": "Northern Mariana Islands",
    "PR": "Puerto Rico", "VI": "U.S. Virgin Islands", "AA": "Armed Forces Americas", "AE": "Armed Forces Europe",
    "AP": "Armed Forces Pacific",
}
_STATE_NAMES = {re.sub(r"[^a-z]", "", name.lower()): code for code, name in _STATES.items()} | {
    "washingtondc": "DC", "virginislands": "VI", "usvirginislands": "VI", "commonwealthofpuertorico": "PR"}


def to_us_state(text: str) -> str | None:
    """The USPS code of a state code (any case) or name; None when it names no US state or territory."""
    letters = re.sub(r"[^a-z]", "", text.lower())
    if len(letters) == 2 and letters.upper() in _STATES:  # ny, N.Y., D.C.
        return letters.upper()
    return _STATE_NAMES.get(letters)


def to_ssn(text: str) -> str | None:
    """``ddd-dd-dddd`` of nine digits written with or without hyphens or spaces; None otherwise."""
    digits = re.sub(r"[\s-]", "", text)
    return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}" if len(digits) == 9 and digits.isascii() \
        and digits.isdigit() else None


_CONVERT: dict[str, Callable[[str], str | None]] = {
    "date": to_date, "datetime": to_datetime, "phone": to_phone, "us_state": to_us_state, "ssn": to_ssn}


def normalize_column(values: pa.Array, form: str) -> pa.Array:
    """``values`` (Arrow text) in the canonical ``form`` (a key of :data:`CANONICAL`), unreadable ones as written.

    The fast path: one vectorised match of the canonical pattern (over the distinct values when they repeat, as a
    visit's time does on each of its results); when every value matches (or is null), the column comes back as it
    is.
    """
    if len(values) == values.null_count:
        return values
    if len(values) >= 4096 and 4 * len(pc.unique(values.slice(0, 2048))) <= 2048:
        encoded = pc.dictionary_encode(values)  # one hash pass: the distinct values and where each row's is
        normal = _normalized(encoded.dictionary, form)
        return values if normal is encoded.dictionary else pc.take(normal, encoded.indices)
    return _normalized(values, form)


def _normalized(values: pa.Array, form: str) -> pa.Array:
    if len(values) == values.null_count:
        return values
    canonical = pc.match_substring_regex(values, CANONICAL[form])
    other = pc.invert(pc.fill_null(canonical, True))  # present and not canonical
    if not pc.any(other).as_py():
        return values
    distinct = pc.unique(values.filter(other))
    # No Arrow kernel reads these forms (partial dates, HL7 TS, offsets, phone punctuation): Python, once per
    # distinct value.
    convert = _CONVERT[form]
    written = distinct.to_pylist()
    normal = pa.array([convert(value) or value for value in written], pa.string())
    return pc.if_else(other, pc.take(normal, pc.index_in(values, value_set=distinct)), values)
