"""Unknown names by their rarity in English, and foreign address blocks read part by part.

The sentences are written for these tests (not taken from any evaluation set). Names are chosen to be in no
gazetteer and rare in English; the clinical sentences carry eponyms, drugs by generic and brand name, shorthand
and capitalised common words, none of which may become a name.
"""

from __future__ import annotations

import pytest
from _deid_raw import shared_detector

from storage_security.deid.recognizers.rare_name_recognizer import RARE_ZIPF, RareNameRecognizer, clinical_words


@pytest.fixture(scope="module")
def rare():
    return RareNameRecognizer()


def _found(recognizer, text: str) -> list[tuple[str, str]]:
    return [(text[r.start:r.end], r.entity_type) for r in recognizer.analyze(text, ["PERSON", "LOCATION"])]


@pytest.mark.parametrize(("text", "name"), [
    ("Why does Ifeoluwa keep missing the infusion slot?", "Ifeoluwa"),      # inside a sentence, no cue at all
    ("Gunnhildur called back after lunch.", "Gunnhildur"),                  # sentence subject, a verb after it
    ("Tamsyn's daughter brought the glucometer.", "Tamsyn"),                # possessive
    ("Brought in by Oyelaran and Oyelaran, both neighbours.", "Oyelaran"),  # conjunction
    ("Referral letter: Zbigniew Przybyszewski, seen 3/2.", "Przybyszewski"),  # two rare words side by side
    ("Follow up with Dr. Nwachukwu next week.", "Nwachukwu"),               # a title's full stop ends no sentence
    ("Wife Siobhan at the bedside, son Cathal on the phone.", "Cathal"),
])
def test_when_a_name_is_a_rare_word_then_it_is_found(rare, text, name):
    assert name in [value for value, _ in _found(rare, text)]


@pytest.mark.parametrize("text", [
    "Hx of Parkinson's disease and Crohn's; Hodgkin lymphoma in remission; s/p Whipple procedure.",
    "Hashimoto thyroiditis on Synthroid. Raynaud phenomenon. Positive Murphy's sign, negative Homans sign.",
    "Continue Keppra 500 mg BID and Eliquis 5 mg daily. Started Xyzal. Holding Lasix given AKI.",
    "Meds: Norco, Flexeril, Zyrtec, Brilinta, Farxiga, Jardiance, Mounjaro.",
    "Allergies: Sulfa, Codeine, Keflex (rash).",
    "Exam: Neuro grossly intact. Abd soft, nontender. Foley removed POD 2. Tolerating diet.",
    "Assessment: Diverticulitis vs colitis. Plan: Zosyn IV, NPO. Echocardiogram showed EF 35%.",
    "Tinel sign positive, Phalen test positive, Babinski downgoing. Braden score 16. Gleason 3+4.",
    "She was started on Rybelsus and Trulicity was stopped. Uses Symbicort and Spiriva.",
    "The Slovenian team reviewed the Federated plan with Cautionary notes.",   # demonym, English word shapes
    "Nontender. Afebrile overnight. Ambulating with PT.",                      # capitalised first words
])
def test_when_clinical_words_eponyms_or_drugs_are_capitalised_then_no_name_is_reported(rare, text):
    assert _found(rare, text) == []


def test_when_an_unknown_word_starts_a_sentence_with_no_cue_then_it_is_left_alone(rare):
    assert _found(rare, "Quetzalrash noted on the left forearm.") == []
    assert _found(rare, "Quetzalcoatl was here.") == [("Quetzalcoatl", "PERSON")]


def test_when_a_rare_word_follows_in_or_at_then_it_is_a_place(rare):
    assert _found(rare, "The family stayed in Brestovac over the summer.") == [("Brestovac", "LOCATION")]


def test_when_words_are_common_english_or_clinical_then_they_are_no_candidates(rare):
    assert RARE_ZIPF == 3.0
    assert not any(rare.candidate(w) for w in ("Morning", "Patient", "Metformin", "Lisinopril", "Crohn",
                                               "Hodgkin", "Parkinson", "Dexcom", "Gastro-esophageal", "Well-known"))
    assert all(rare.candidate(w) for w in ("Yulanda", "Oyelaran", "Przybyszewski", "Raju-Sharmaa"))
    assert {"parkinson", "crohn", "hodgkin", "metformin", "keppra"} <= clinical_words()
    assert all(w == w.lower() and " " not in w for w in clinical_words())


@pytest.mark.parametrize(("text", "values"), [
    ("Please mail it to 8 Rue de Kairouan, Cité 7 Novembre, 52 5050 for the card.",
     ["8 Rue de Kairouan", "Cité 7 Novembre", "52 5050"]),
    ("Send to 96 Wood Lane, BRAEMORE,  AB55 1SF, thanks.", ["96 Wood Lane", "BRAEMORE", "AB55 1SF"]),
    ("Home: Mattenweg 108\nWallisellen  8304\n", ["Mattenweg 108", "Wallisellen  8304"]),
    ("Billing address:\n  Avenida da Liberdade 75\n  Setúbal\n  2900-001\n",
     ["Avenida da Liberdade 75", "Setúbal", "2900-001"]),
    ("Letter to: Ane Hansen\n\nØSTERBYGD\nNorway", ["ØSTERBYGD"]),
    ("We meet at Trg slobode 12, Vukovar on Friday.", ["Trg slobode 12", "Vukovar"]),
    ("Her address: Petőfi út 10., Kiskunhalas, BK 6400", ["Petőfi út 10.", "Kiskunhalas", "BK 6400"]),
])
def test_when_a_foreign_address_is_written_part_by_part_then_every_part_is_covered(text, values):
    spans = shared_detector().detect(text)
    for value in values:
        start = text.index(value)
        assert any(s.start <= start and start + len(value) <= s.end for s in spans), (value, spans)


def test_when_an_address_ends_then_the_country_the_state_and_the_next_line_are_not_taken():
    text = "Home: 12 Oak Street, Springfield, Ohio 45503\nChief Complaint: cough\nSent from Denmark."
    spans = shared_detector().detect(text)
    block = [s for s in spans if s.recognizer == "AddressBlock"]
    assert [text[s.start:s.end] for s in block] == ["Springfield", "45503"]
    for word in ("Chief", "Complaint"):
        start = text.index(word)
        assert not any(s.start <= start < s.end for s in spans), (word, spans)


def test_when_a_drug_follows_via_then_no_street_is_read():
    text = "Given via NG tube 2 mg and Via Foley 2 L out."
    assert not [s for s in shared_detector().detect(text) if s.entity_type == "STREET_ADDRESS"]
