"""One patient, one identity: a patient id arriving with another name, sex or birth date is held, never merged.

Every accepted ``patients`` row carries ``_identity``, a keyed fingerprint of who the row says the patient is:
per field (``first_name``, ``last_name``, ``sex``, ``birth_date``) the first 8 bytes of
``HMAC-SHA256(k, field || 0 || patient_id || 0 || normalised value)``, hex, written ``v1:<fn>.<ln>.<sex>.<birth>``
with an empty part for a missing field. ``k`` is derived from the lake's provider-wrapped ``patient`` pseudonym
key (label ``identity-fingerprint``, see :meth:`~storage_security.crypto.pseudonyms.Pseudonymizer.derive_key`), so
only a holder of that key can compute or test a fingerprint, and the patient id inside the MAC means two patients
with the same birth date or name share nothing. The column is a direct identifier in the column catalog and is
dropped on publication.

A batch reads the fingerprints once (``raw/patients``: ``patient_pseudonym`` and ``_identity`` only; nothing is
decrypted) and keeps them in memory by pseudonym, about 200 bytes a patient. Each incoming patients row is compared
field by field with what is known of its pseudonym (earlier batches, and earlier rows of this batch): a field
present on both sides with different fingerprints is a conflict, and the row is quarantined under
``identity:conflict`` with a reason naming the fields (never their values). A field missing on either side is
not a conflict; a row that agrees fills in the fields that were missing, so a later row is compared with all of
them.

Normalisation before the MAC, so the same person written two ways agrees: names are NFKD-decomposed with
combining marks removed (``José`` = ``Jose``), lower-cased, every run of characters other than letters and
digits turned into one space and trimmed (``O'Brien`` = ``o brien``, ``Mary-Jane`` = ``MARY JANE``); ``sex`` is the
conformed F/M/O with ``U`` (unknown) treated as missing; ``birth_date`` is the conformed ``YYYY-MM-DD`` (a partial
date was completed with 01 by the conform step, so ``1980`` and ``1980-06-14`` do conflict: review shows which is
right).

Records of a conflicting patient in the same batch (encounters, observations…) are quarantined under the same
rule: the source sent them with the conflicting identity, so loading them under the existing pseudonym would
attach one person's clinical data to another, the silent merge this check exists to stop. They are held when
they come in the same chunk as the conflicting patients row or after it (the loader checks a chunk's patients
first, and the FHIR reader reads a Bulk Data export's ``Patient`` files before the others). Records sent in
another batch (a tabular extract per table) or, in a source that sends them before the patient, in an earlier
chunk, load under the existing pseudonym; the quarantined patients row is where review starts.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["IDENTITY_COLUMN", "IDENTITY_FIELDS", "RULE", "IdentityCheck", "conflict_reason", "fingerprints",
           "held_record_reason", "identity_key"]

IDENTITY_COLUMN = "_identity"
IDENTITY_FIELDS = ("first_name", "last_name", "sex", "birth_date")
RULE = "identity:conflict"
_SCHEME = "v1"
_NAMES = ("first_name", "last_name")
_DIGEST_BYTES = 8


def identity_key(plake: Any) -> bytes:
    """The fingerprint key of a lake: derived from its ``patient`` pseudonym key, at no extra provider request."""
    return plake.pseudonymizer("patient").derive_key("identity-fingerprint")


def _normalised(field: str, values: pa.Array) -> pa.Array:
    """The comparable text of one identity field; null where the value is missing (vectorised)."""
    text = values if values.type == pa.string() else pc.cast(values, pa.string())
    if field in _NAMES:
        text = pc.utf8_normalize(text, "NFKD")
        text = pc.replace_substring_regex(text, r"\p{M}+", "")
        text = pc.utf8_lower(text)
        text = pc.replace_substring_regex(text, r"[^\p{L}\p{N}]+", " ")
        text = pc.utf8_trim_whitespace(text)
    elif field == "sex":
        text = pc.utf8_upper(pc.utf8_trim_whitespace(text))
        text = pc.if_else(pc.equal(text, "U"), pa.scalar(None, pa.string()), text)
    else:
        text = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def fingerprints(data: pa.Table, patient_column: str, key: bytes) -> pa.Array:
    """The ``_identity`` fingerprint of every row of a patients table (string; see the module docstring).

    The message of each field is built column-wise in Arrow and MACed by the security core's keyed digest
    (one native call a field where it was built); the fingerprint is joined in Arrow.
    """
    from storage_security.crypto.pseudonyms import keyed_hex  # the keyed digest the security core computes

    count = data.num_rows
    if not count:
        return pa.array([], pa.string())
    patients = data.column(patient_column).combine_chunks()
    patients = patients if patients.type == pa.string() else pc.cast(patients, pa.string())
    empty = pa.scalar("", pa.string())
    parts: list[pa.Array] = []
    for field in IDENTITY_FIELDS:
        if field not in data.column_names:
            parts.append(pa.array([""] * count, pa.string()))
            continue
        values = _normalised(field, data.column(field).combine_chunks())
        messages = pc.binary_join_element_wise(pc.fill_null(patients, ""), values, "\0")
        digests = keyed_hex(key, field.encode() + b"\0", pc.fill_null(messages, ""))
        parts.append(pc.if_else(messages.is_valid(), pc.utf8_slice_codeunits(digests, 0, 2 * _DIGEST_BYTES), empty))
    return pc.binary_join_element_wise(pa.array([f"{_SCHEME}:"] * count, pa.string()),
                                       pc.binary_join_element_wise(*parts, "."), "")


def _split(fingerprint: str | None) -> list[str] | None:
    if not fingerprint or not fingerprint.startswith(f"{_SCHEME}:"):
        return None  # an unknown scheme is treated as no identity known, never as a conflict
    fields = fingerprint[len(_SCHEME) + 1:].split(".")
    return fields if len(fields) == len(IDENTITY_FIELDS) else None


class IdentityCheck:
    """The identities known to a batch, by pseudonym, and the patient ids that conflicted in it.

    Args:
        known: ``{patient_pseudonym: _identity}`` of the patients already in ``raw``.
        key: the fingerprint key (:func:`identity_key`).
    """

    def __init__(self, known: dict[str, str], key: bytes) -> None:
        self._known = known
        self._key = key
        self.conflicted: set[str] = set()  # source patient ids held in this batch (in memory only)

    def __repr__(self) -> str:
        return f"IdentityCheck(known={len(self._known)}, conflicted={len(self.conflicted)}, key=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("IdentityCheck holds key material and cannot be pickled")

    @classmethod
    def from_lake(cls, plake: Any) -> IdentityCheck:
        """The check of one batch: the known fingerprints read once from ``raw/patients`` (two plaintext columns)."""
        key = identity_key(plake)
        if not plake.exists("raw", "patients") or IDENTITY_COLUMN not in plake.schema("raw", "patients").names:
            return cls({}, key)
        rows = plake.read("raw", "patients", columns=["patient_pseudonym", IDENTITY_COLUMN], purpose="ingest")
        # One row per distinct (pseudonym, identity): a patient re-sent in every batch is read as one.
        pairs = rows.group_by(["patient_pseudonym", IDENTITY_COLUMN]).aggregate([])
        pairs = pairs.filter(pc.and_(pc.is_valid(pairs.column("patient_pseudonym")),
                                     pc.is_valid(pairs.column(IDENTITY_COLUMN))))
        pseudonyms = pairs.column("patient_pseudonym").to_pylist()
        prints = pairs.column(IDENTITY_COLUMN).to_pylist()
        if len(set(pseudonyms)) == len(pseudonyms):  # the common case: one identity per patient, nothing to merge
            return cls(dict(zip(pseudonyms, prints, strict=True)), key)
        check = cls({}, key)
        for pseudonym, fingerprint in zip(pseudonyms, prints, strict=True):
            check._merge(pseudonym, fingerprint)
        return check

    def _merge(self, pseudonym: str, fingerprint: str) -> tuple[str, ...]:
        """Compare one identity with what is known of ``pseudonym``; record it when it agrees.

        Returns the fields present on both sides that differ (empty: no conflict).
        """
        before = self._known.get(pseudonym)
        if before is None or before == fingerprint:
            if before is None and _split(fingerprint) is not None:
                self._known[pseudonym] = fingerprint
            return ()
        old, new = _split(before), _split(fingerprint)
        if old is None or new is None:
            if old is None and new is not None:
                self._known[pseudonym] = fingerprint
            return ()
        differing = tuple(name for name, a, b in zip(IDENTITY_FIELDS, old, new, strict=True) if a and b and a != b)
        if not differing:
            merged = [a or b for a, b in zip(old, new, strict=True)]
            self._known[pseudonym] = f"{_SCHEME}:" + ".".join(merged)
        return differing

    def screen_patients(self, data: pa.Table, patient_column: str,
                        pseudonyms: pa.Array) -> tuple[pa.Array, dict[int, tuple[str, ...]]]:
        """Fingerprint a chunk's accepted-so-far patients rows and compare each with its known identity, in order.

        Returns:
            The ``_identity`` of every row, and ``{row: differing fields}`` for the rows that conflict.
        """
        prints = fingerprints(data, patient_column, self._key)
        held: dict[int, tuple[str, ...]] = {}
        ids = pc.cast(data.column(patient_column), pa.string()).to_pylist()
        # One dictionary step per row (no Arrow kernel compares field lists); the common case, the same identity
        # again, is one string comparison.
        for row, (pseudonym, fingerprint) in enumerate(zip(pseudonyms.to_pylist(), prints.to_pylist(),
                                                           strict=True)):
            if pseudonym is None:
                continue
            differing = self._merge(pseudonym, fingerprint)
            if differing:
                held[row] = differing
                self.conflicted.add(ids[row])
        return prints, held

    def screen_records(self, patients: pa.Array) -> list[int]:
        """The rows (of a child table's accepted-so-far rows) whose patient id conflicted earlier in this batch."""
        if not self.conflicted or not len(patients):
            return []
        hit = pc.fill_null(pc.is_in(patients, pa.array(sorted(self.conflicted), pa.string())), False)
        return [int(i) for i in pc.indices_nonzero(hit).to_pylist()]


def conflict_reason(fields: tuple[str, ...]) -> str:
    """The quarantine reason of a conflicting patients row: the fields by name, never their values."""
    return (f"patient_id was already loaded with a different {', '.join(fields)}: another person's record under "
            "the same id, held for review and not merged")


def held_record_reason() -> str:
    """The quarantine reason of a record of a patient whose patients row conflicted in the same batch."""
    return ("its patient's record in this batch has an identity conflict (same patient_id, different identity); "
            "held for review with it and not loaded under the existing pseudonym")
