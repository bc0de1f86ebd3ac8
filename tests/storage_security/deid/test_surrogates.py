"""Surrogate names in notes: one stand-in per person across a patient's notes, never a real patient's name, at any
population size."""

from __future__ import annotations

import random
import re

import pytest

from storage_security.deid.masking import NoteMasker
from storage_security.deid.operators import MaskingKeys
from storage_security.deid.operators.masking_keys import POOL_SIZE, _made_up
from storage_security.protected import ProtectedLake


@pytest.fixture
def pseudonymizer(lake, keyring):
    return ProtectedLake(lake, keyring, principal="test").pseudonymizer


def _population(size: int, seed: int = 5) -> list[tuple[str, str]]:
    """``size`` patients whose names cover all of Faker's en_US names (the generator's source) and, beyond them,
    the first made-up names of the surrogate pools: a population that has used up every pooled name."""
    from faker.providers.person.en_US import Provider as Person

    rng = random.Random(seed)
    first = sorted(set(Person.first_names_female) | set(Person.first_names_male))
    last = sorted(set(Person.last_names)) + [_made_up(i, salt) for i in range(2 * POOL_SIZE) for salt in (0, 1)]
    people = list(zip(first, last, strict=False)) + list(zip(last[::-1], first, strict=False))
    people += [(rng.choice(first), rng.choice(last)) for _ in range(size - len(people))]
    return people[:size]


@pytest.mark.integration
def test_when_100000_patients_have_names_then_no_surrogate_is_a_real_patients_name(pseudonymizer):
    people = _population(100_000)
    real_words = {w.lower() for person in people for w in person}
    real_full = {f"{a} {b}".lower() for a, b in people}
    keys = MaskingKeys(pseudonymizer, forbidden_names=real_words)
    out = [keys.surrogate_name(f"{a} {b}", scope=f"p{i}") for i, (a, b) in enumerate(people)]
    words = {w.lower() for name in out for w in name.split()}
    assert not words & real_words
    assert not {name.lower() for name in out} & real_full
    assert len(set(out)) > 50_000  # the made-up names go on: stand-ins do not collapse onto a few


def test_when_a_name_is_written_in_full_then_alone_then_it_gets_one_surrogate(pseudonymizer):
    keys = MaskingKeys(pseudonymizer, forbidden_names={"ariana", "rosario"})
    full = keys.surrogate_name("Ariana Rosario", scope="p1")
    first, last = full.split()
    assert keys.surrogate_name("Ariana", scope="p1") == first
    assert keys.surrogate_name("ROSARIO, Ariana", scope="p1") == f"{last.upper()}, {first}"
    assert keys.surrogate_name("Ms. Rosario", scope="p1") == f"Ms. {last}"
    assert keys.surrogate_name("Ariana Rosario", scope="p2") != full  # another patient: another stand-in


@pytest.mark.integration
def test_when_a_note_names_a_person_twice_then_both_mentions_get_one_surrogate(pseudonymizer):
    from _deid_raw import shared_detector

    keys = MaskingKeys(pseudonymizer, forbidden_names={"ariana", "rosario"})
    masker = NoteMasker(shared_detector(), keys)
    notes = ["Name: Ariana Rosario\nMRN: 4471920\nAriana is a 46-year-old woman seen for chest pain.",
             "Follow-up: Ariana reports less pain. Seen with Dr. Ramirez."]
    out = masker.mask(notes, [12, 12], scopes=["p1", "p1"])
    assert "Ariana" not in out[0] + out[1] and "Rosario" not in out[0]
    stand_in = re.search(r"Name: (\w+) (\w+)", out[0])
    assert stand_in, out[0]
    first = stand_in.group(1)
    assert re.search(rf"\n{first} is a", out[0]), out[0]
    assert out[1].startswith(f"Follow-up: {first} reports"), out[1]
