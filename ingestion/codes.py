"""Code systems: what a source calls a system mapped to one short name, and which codes are well formed in it.

Sources name a code system in their own way: a FHIR system URI (``http://loinc.org``), a CDA ``codeSystem`` OID
(``2.16.840.1.113883.6.1``, also written ``urn:oid:…``), an HL7 v2 coding-system name (``LN``, ``I10``, ``SCT``,
``RXNORM``, ``CVX``). :func:`short_name` maps the known ones to ``icd10cm icd9cm snomed loinc rxnorm ndc cvx cpt
hcpcs ucum``; any other system (a local ``99zzz``, WHO ICD-10, a vendor URI) is kept as given, trimmed.

Validation is offline and per system (:func:`is_valid`):

=========  =====================================================================================
icd10cm    a code of the ICD-10-CM tabular list (``simple_icd_10_cm``), with or without the dot
           (``E11.9``, ``E119``); chapters and blocks (``E08-E13``) are not codes
loinc      ``NNNNN-C`` with the right mod-10 check digit; answer, part and group codes (``LA6724-4``) by shape
snomed     an SCTID: 6 to 18 digits, no leading zero, the right Verhoeff check digit; or a post-coordinated
           expression (``71341001:272741003=7771000``) whose every SCTID is one
ndc        10 digits hyphenated 4-4-2, 5-3-2 or 5-4-1 (or the 5-4-2 11-digit form), 11 digits, or a product
           code (labeler-product: 4-4, 5-3, 5-4); 10 digits without hyphens are ambiguous, so not an NDC
rxnorm     an RxCUI: 1 to 8 digits
cvx        1 to 3 digits
cpt        ``\\d{4}[0-9A-Z]`` (Category I, II and III codes)
hcpcs      ``[A-Z]\\d{4}`` (Level II)
others     non-blank, no control characters, at most 64 characters (icd9cm, ucum, local systems…)
=========  =====================================================================================

:func:`invalid_codes` checks a column at once: per system found (one system for a column of a fixed system, the
row's own system otherwise), shapes as RE2 matches over the column and check digits once per distinct code.
A code is only ever judged by its own system's rules: a record is never rejected for using another valid system.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DESCRIPTIONS", "SYSTEMS", "describe", "icd10cm_valid", "invalid_codes", "is_valid", "loinc_check_digit_ok",
           "map_systems", "short_name", "snomed_check_digit_ok", "unit_factor"]

SYSTEMS = ("icd10cm", "icd9cm", "snomed", "loinc", "rxnorm", "ndc", "cvx", "cpt", "hcpcs", "ucum")
DESCRIPTIONS = {"icd10cm": "ICD-10-CM", "icd9cm": "ICD-9-CM", "snomed": "SNOMED CT (Verhoeff check digit)",
                "loinc": "LOINC (check digit)", "rxnorm": "RxNorm (1-8 digits)", "ndc": "NDC (10/11-digit)",
                "cvx": "CVX (1-3 digits)", "cpt": "CPT", "hcpcs": "HCPCS Level II", "ucum": "UCUM"}
_OTHER = "code of its system (non-blank, no control characters, at most 64 characters)"

# Every name a source may give a system, lower-cased, without a urn:oid: prefix or a trailing slash.
_NAMES = {
    "icd10cm": ("http://hl7.org/fhir/sid/icd-10-cm", "2.16.840.1.113883.6.90", "icd10cm", "icd-10-cm", "icd10-cm",
                "i10c", "i10", "icd10"),
    "icd9cm": ("http://hl7.org/fhir/sid/icd-9-cm", "2.16.840.1.113883.6.103", "2.16.840.1.113883.6.2", "icd9cm",
               "icd-9-cm", "i9c", "i9", "i9cdx", "icd9"),
    "snomed": ("http://snomed.info/sct", "2.16.840.1.113883.6.96", "sct", "snm", "snomed", "snomedct", "snomed-ct",
               "snomed ct", "snomed-ct us edition"),
    "loinc": ("http://loinc.org", "2.16.840.1.113883.6.1", "ln", "loinc"),
    "rxnorm": ("http://www.nlm.nih.gov/research/umls/rxnorm", "2.16.840.1.113883.6.88", "rxnorm"),
    "ndc": ("http://hl7.org/fhir/sid/ndc", "2.16.840.1.113883.6.69", "ndc"),
    # 2.16.840.1.113883.6.59: the older CVX OID some C-CDA senders still write (NIST's sample).
    "cvx": ("http://hl7.org/fhir/sid/cvx", "2.16.840.1.113883.12.292", "2.16.840.1.113883.6.59", "cvx"),
    "cpt": ("http://www.ama-assn.org/go/cpt", "2.16.840.1.113883.6.12", "c4", "cpt", "cpt4", "cpt-4"),
    "hcpcs": ("http://www.cms.gov/medicare/coding/hcpcsreleasecodesets", "2.16.840.1.113883.6.285",
              "2.16.840.1.113883.6.14", "hcpcs", "hcpcs level ii", "hcpcs-l2"),
    "ucum": ("http://unitsofmeasure.org", "2.16.840.1.113883.6.8", "ucum"),
}
_SHORT = {name: short for short, names in _NAMES.items() for name in names} | {s: s for s in SYSTEMS}
_MAX_SYSTEM = 200


def short_name(system: str) -> str:
    """The short name of a known system (``http://loinc.org``, ``LN``, ``2.16.840.1.113883.6.1`` → ``loinc``);
    any other system as given, trimmed."""
    text = system.strip()
    key = text.lower()
    key = key[len("urn:oid:"):] if key.startswith("urn:oid:") else key
    return _SHORT.get(key.rstrip("/"), text)


def map_systems(values: pa.Array) -> pa.Array:
    """A column of systems as found, with the known ones as short names (vectorised: short names pass untouched,
    the rest are mapped once per distinct value)."""
    if len(values) == values.null_count:
        return values
    known = pa.array(SYSTEMS, pa.string())
    other = pc.and_(values.is_valid(), pc.invert(pc.is_in(values, value_set=known)))  # present, not a short name
    if not pc.any(other).as_py():
        return values
    distinct = pc.unique(values.filter(other))
    # A system's many spellings have no kernel: once per distinct value in Python.
    mapped = pa.array([short_name(v) for v in distinct.to_pylist()], pa.string())
    return pc.if_else(other, pc.take(mapped, pc.index_in(values, value_set=distinct)), values)


_LOINC = r"^\d{1,5}-\d$"
_SHAPES = {  # RE2 shapes; the check digits of loinc and snomed are checked after the shape
    "loinc": _LOINC,
    "snomed": r"^[1-9]\d{5,17}$",
    "ndc": r"^(?:\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2}|\d{11}|\d{4}-\d{4}|\d{5}-\d{3,4})$",
    "rxnorm": r"^\d{1,8}$",
    "cvx": r"^\d{1,3}$",
    "cpt": r"^\d{4}[0-9A-Z]$",
    "hcpcs": r"^[A-Z]\d{4}$",
}
_ANY = r"^[^\x00-\x1f\x7f]{1,64}$"


def loinc_check_digit_ok(code: str) -> bool:
    """True when a LOINC code ``NNNNN-C`` carries the right mod-10 check digit."""
    if not isinstance(code, str) or not re.fullmatch(_LOINC, code):
        return False
    body, check = code.split("-")
    digits = body[::-1]
    doubled = str(int(digits[0::2][::-1] or "0") * 2)
    total = sum(int(d) for d in doubled + digits[1::2])
    return (10 - total % 10) % 10 == int(check)


_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


_LOINC_PARTS = re.compile(r"L[APGL]\d{1,8}-\d")


def _loinc_valid(code: str) -> bool:
    # Answer (LA), part (LP), group (LG) and answer-list (LL) codes follow their own numbering: shape only.
    return loinc_check_digit_ok(code) or _LOINC_PARTS.fullmatch(code) is not None


def snomed_check_digit_ok(code: str) -> bool:
    """True when an SCTID (6-18 digits, no leading zero) carries the right Verhoeff check digit (its last)."""
    if not isinstance(code, str) or not re.fullmatch(_SHAPES["snomed"], code):
        return False
    check = 0
    for position, digit in enumerate(reversed(code)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


@cache
def icd10cm_valid(code: str) -> bool:
    """True when ``code`` is an ICD-10-CM category or code (with or without the dot), not a chapter or block."""
    import simple_icd_10_cm as icd

    try:
        return bool(icd.is_valid_item(code)) and not icd.is_chapter_or_block(code)
    except Exception:  # the package raises on some malformed inputs
        return False


_EXPRESSION = re.compile(r"[0-9:=+,{}() ]+")


def _snomed_valid(code: str) -> bool:
    """An SCTID, or a post-coordinated expression (``71341001:272741003=7771000``) whose every SCTID is one."""
    if snomed_check_digit_ok(code):
        return True
    bare = re.sub(r"\|[^|]*\|", " ", code)  # the expression's optional terms: |Fracture of bone|
    ids = re.findall(r"\d+", bare)
    return bool(ids) and _EXPRESSION.fullmatch(bare) is not None and ":" in bare \
        and all(snomed_check_digit_ok(i) for i in ids)


_DIGITS = {"loinc": _loinc_valid, "snomed": _snomed_valid, "icd10cm": icd10cm_valid}


def is_valid(code: str, system: str) -> bool:
    """Whether ``code`` is well formed in ``system`` (a short name, or any other system's name)."""
    if system in _DIGITS:
        return _DIGITS[system](code)
    return re.fullmatch(_SHAPES.get(system, _ANY), code) is not None and (system in _SHAPES or bool(code.strip()))


def describe(system: str) -> str:
    """How a rule message names what a code of ``system`` must be."""
    return f"{DESCRIPTIONS[system]} code" if system in DESCRIPTIONS else _OTHER


# Units as sources write them, to UCUM, and the factor from a unit to another of the same quantity (what the
# plausible ranges of vitals and labs need: a height in inches, a weight in pounds).
_UNIT_SPELLINGS = {"mmhg": "mm[Hg]", "mm hg": "mm[Hg]", "mm[hg]": "mm[Hg]", "bpm": "/min", "beats/min": "/min",
                   "{beats}/min": "/min", "/min": "/min", "kg": "kg", "kgs": "kg", "g": "g", "lb": "[lb_av]",
                   "lbs": "[lb_av]", "[lb_av]": "[lb_av]", "oz": "[oz_av]", "[oz_av]": "[oz_av]", "cm": "cm",
                   "m": "m", "mm": "mm", "in": "[in_i]", "[in_i]": "[in_i]", "kg/m2": "kg/m2", "kg/m^2": "kg/m2",
                   "mg/dl": "mg/dL", "mmol/l": "mmol/L", "%": "%"}
_TO_BASE = {"kg": ("mass", 1.0), "g": ("mass", 0.001), "[lb_av]": ("mass", 0.45359237),
            "[oz_av]": ("mass", 0.028349523125), "cm": ("length", 1.0), "m": ("length", 100.0),
            "mm": ("length", 0.1), "[in_i]": ("length", 2.54)}


def unit_factor(written: str, expected: str) -> float:
    """What a value in ``written`` is multiplied by to be in ``expected`` (UCUM): 1 for the same unit however it
    is spelled, the factor between two units of one quantity, NaN when they do not convert (not comparable)."""
    unit = _UNIT_SPELLINGS.get(written.strip().lower(), written.strip())
    if unit == expected:
        return 1.0
    have, want = _TO_BASE.get(unit), _TO_BASE.get(expected)
    if have is None or want is None or have[0] != want[0]:
        return float("nan")
    return have[1] / want[1]


def _valid_among(codes: pa.Array, rows: np.ndarray, system: str) -> np.ndarray:
    """Which of the ``rows`` (a mask) hold a valid code of ``system``."""
    if system in _DIGITS:
        # Check digits have no kernel: once per distinct code of these rows.
        distinct = pc.unique(codes.filter(pa.array(rows)))
        good = distinct.filter(pa.array([_DIGITS[system](v) for v in distinct.to_pylist()], pa.bool_()))
        return _flags(pc.is_in(codes, value_set=good))
    shaped = _flags(pc.match_substring_regex(codes, _SHAPES.get(system, _ANY)))
    if system in _SHAPES:
        return shaped
    return shaped & _flags(pc.match_substring_regex(codes, r"\S"))


def invalid_codes(codes: pa.Array | pa.ChunkedArray, systems: str | pa.Array | pa.ChunkedArray,
                  skip: np.ndarray | None = None) -> np.ndarray:
    """Per row, whether it holds a code that is not valid in its system.

    Args:
        codes: the codes (null: nothing to check).
        systems: one system for the whole column, or each row's system (null: checked as "any other system").
        skip: rows not to judge here (a code another rule checks).
    """
    codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
    present = _flags(codes.is_valid())
    if skip is not None:
        present &= ~skip
    bad = np.zeros(len(codes), dtype=bool)
    if not present.any():
        return bad
    if isinstance(systems, str):
        groups = [(systems, present)]
    else:
        systems = systems.combine_chunks() if isinstance(systems, pa.ChunkedArray) else systems
        named = _flags(systems.is_valid())
        groups = [(str(name), present & _flags(pc.equal(systems, name)))
                  for name in pc.unique(systems.filter(pa.array(present & named))).to_pylist()]
        groups.append(("", present & ~named))  # a code with no system: the rules of any other system
    for system, rows in groups:
        if rows.any():
            bad |= rows & ~_valid_among(codes, rows, system)
    return bad


def _flags(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)
