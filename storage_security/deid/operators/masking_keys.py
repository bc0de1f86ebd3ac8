"""The keyed derivations the operators use (pseudonyms, date offsets, surrogate names), held away from params."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage_security.deid.operators._dates import MAX_SHIFT_DAYS


class MaskingKeys:
    """Keyed, deterministic derivations for the operators, all from the core's pseudonymizers.

    Keys never pass through operator params in the clear: keyed operators get this object, whose HMACs come from
    the core's :class:`~storage_security.crypto.pseudonyms.Pseudonymizer` (key held by the key provider; key
    version in every pseudonym).

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
        """The pseudonym of one value under the pseudonym key ``key``."""
        return self._pseudonymizer(key).pseudonym(value)

    def pseudonymize(self, key: str, values: pa.Array | Sequence[Any]) -> pa.Array:
        """The pseudonyms of a column under the pseudonym key ``key`` (nulls stay null)."""
        return self._pseudonymizer(key).pseudonymize(values)

    def digest(self, key: str, value: str) -> int:
        """A keyed integer for ``value`` (the pseudonym's HMAC digits)."""
        text = self.pseudonym(key, value)
        assert text is not None
        return int(text.rsplit("_", 1)[1], 16)

    def shift_days(self, patient: str) -> int:
        """The patient's date offset in days: keyed, never 0, within ±365."""
        if patient not in self._shift_cache:
            self._shift_cache[patient] = _offset(self.digest("date-shift", patient))
        return self._shift_cache[patient]

    def shift_days_many(self, patients: pa.Array | Sequence[Any]) -> pa.Array:
        """Each row's patient offset (int64; null for a null patient): one HMAC per distinct patient, joined back."""
        array = patients if isinstance(patients, pa.Array) else pa.array(list(patients))
        distinct = pc.unique(array).drop_null()
        # Hex digits to an integer: no Arrow kernel parses hex, so once per distinct patient in Python.
        offsets = [_offset(int(text.rsplit("_", 1)[1], 16))
                   for text in self.pseudonymize("date-shift", distinct).to_pylist()]
        return pc.take(pa.array(offsets, pa.int64()), pc.index_in(array, value_set=distinct))

    @cached_property
    def name_pools(self) -> tuple[list[str], list[str]]:
        """First and last names a surrogate may use (Faker's en_US lists, less the forbidden names)."""
        from faker.providers.person.en_US import Provider as Person

        first = sorted(set(Person.first_names_female) | set(Person.first_names_male))
        last = sorted(set(Person.last_names))
        return ([n for n in first if n.lower() not in self.forbidden_names],
                [n for n in last if n.lower() not in self.forbidden_names])

    def surrogate_name(self, original: str) -> str:
        """A fake name with as many words as ``original``; the same name always gets the same stand-in."""
        first, last = self.name_pools
        words = original.split()
        n = self.digest("surrogate", original.strip().lower())
        if len(words) <= 1:
            pool = last if original[:1].isupper() and n % 2 else first
            return pool[n % len(pool)]
        names = [first[n % len(first)]]
        for i in range(1, len(words)):
            names.append(last[(n >> (8 * i)) % len(last)])
        return " ".join(names)


def _offset(digest: int) -> int:
    """A keyed integer as a date offset: within ±365 days, never 0."""
    days = digest % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS
    return days + 1 if days >= 0 else days
