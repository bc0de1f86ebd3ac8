"""The keyed derivations the operators use (pseudonyms, date offsets, surrogate names), held away from params."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache, cached_property
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
        # A value of several words ("Mary Ann") forbids each of them: surrogates are drawn word by word.
        self.forbidden_names = {w for n in forbidden_names if n for w in (n.lower(), *n.lower().split())}
        self._shift_cache: dict[str, int] = {}
        self.issued: set[str] = set()  # the surrogate name words handed out (fake names: no PHI)

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
        """The first and last names a surrogate is drawn from: Faker's en_US lists topped up with made-up names to
        :data:`POOL_SIZE` each. The pools do not depend on the release, so a stand-in changes only when it becomes
        a real name (see :meth:`surrogate_token`)."""
        from faker.providers.person.en_US import Provider as Person

        first = sorted(set(Person.first_names_female) | set(Person.first_names_male))
        last = sorted(set(Person.last_names))
        return _pool(first, salt=0), _pool(last, salt=1)

    def surrogate_token(self, token: str, *, scope: str = "") -> str:
        """The stand-in of one name word within ``scope`` (a patient): keyed, never a forbidden (real) name.

        The word alone decides its stand-in (a known first name gets a first name, any other word a last name), so
        "Ariana" alone and the "Ariana" of "Ariana Rosario" get the same one wherever they occur in the patient's
        notes, with no need to have seen the full name first. A draw that is a real name is replaced by a keyed
        made-up name (the next one that is not real either): they go on without end, so no population can exhaust
        the pool, and a stand-in changes only when it becomes a real name.
        """
        first, last = self.name_pools
        word = _normal(token)
        pool = first if word in _first_words() else last
        n = self.digest("surrogate", f"{scope}\x00{word}")
        name = pool[n % len(pool)]
        index = n % (1 << 30)  # spread over the made-up names, so stand-ins do not pile onto a few
        while name.lower() in self.forbidden_names:  # made-up names never run out
            name = _made_up(POOL_SIZE + index, 2)
            index += 1
        self.issued.add(name)
        return name

    def surrogate_name(self, original: str, *, scope: str = "") -> str:
        """A fake name with the shape of ``original`` (titles, initials, punctuation and upper case kept), each
        name word replaced by its :meth:`surrogate_token`.

        ``scope`` is the patient: one person gets one surrogate throughout a note and across the patient's notes.
        """
        parts = re.split(r"([A-Za-z][A-Za-z'\-]*)", original)
        for i in range(1, len(parts), 2):
            word = parts[i]
            if len(word) < 2 or word.lower() in _TITLES:
                continue
            stand_in = self.surrogate_token(word, scope=scope)
            parts[i] = stand_in.upper() if word.isupper() else stand_in
        return "".join(parts)


POOL_SIZE = 8192
"""How many names each surrogate pool holds (Faker's, then made-up ones)."""

_TITLES = frozenset({"dr", "mr", "mrs", "ms", "miss", "mx", "prof", "rn", "md", "do", "np", "pa", "lpn", "phd",
                     "jr", "sr", "ii", "iii"})
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "tr")
_NUCLEI = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rk", "x", "m")


def _normal(word: str) -> str:
    return word.strip().strip(".,").lower()


@cache
def _first_words() -> frozenset[str]:
    from faker.providers.person.en_US import Provider as Person

    return frozenset(n.lower() for n in (*Person.first_names_female, *Person.first_names_male))


def _made_up(index: int, salt: int) -> str:
    """The ``index``-th made-up name: two or three syllables, deterministic, no randomness and no key needed."""
    syllables = []
    n = index * 2 + salt
    for _ in range(2 + index % 2):
        n, onset = divmod(n, len(_ONSETS))
        n, nucleus = divmod(n, len(_NUCLEI))
        n, coda = divmod(n, len(_CODAS))
        syllables.append(_ONSETS[onset] + _NUCLEI[nucleus] + _CODAS[coda])
    return "".join(syllables).capitalize()


def _pool(names: Sequence[str], *, salt: int) -> list[str]:
    """``names`` topped up with made-up names to ``POOL_SIZE``."""
    pool = list(names)
    seen = {n.lower() for n in names}
    index = 0
    while len(pool) < POOL_SIZE:
        name = _made_up(index, salt)
        index += 1
        if name.lower() not in seen:
            seen.add(name.lower())
            pool.append(name)
    return pool


def _offset(digest: int) -> int:
    """A keyed integer as a date offset: within ±365 days, never 0."""
    days = digest % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS
    return days + 1 if days >= 0 else days
