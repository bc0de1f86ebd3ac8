"""Places written alone and names in e-mail and chat sentences: found, and clinical or common words left alone.

The sentences are written for these tests (not taken from any evaluation set); the names and towns are chosen so
that most are in no gazetteer, which is the case the context cues exist for.
"""

from __future__ import annotations

import pytest
from _deid_raw import shared_detector

from storage_security.deid.recognizers.gazetteer_name_recognizer import GazetteerNameRecognizer
from storage_security.deid.recognizers.place_recognizer import PlaceRecognizer


def _found(recognizer, text: str, entity: str) -> list[str]:
    return [text[r.start:r.end] for r in recognizer.analyze(text, [entity])]


@pytest.fixture(scope="module")
def places():
    return PlaceRecognizer()


@pytest.mark.parametrize(("text", "place"), [
    ("She moved back here from Lillehammer last spring.", "Lillehammer"),
    ("The family has lived for years in Port Talbot with two dogs.", "Port Talbot"),
    ("Grew up in the town of Ely, then worked offshore.", "Ely"),
    ("I'm in Tromsø until Friday, can we move the call?", "Tromsø"),
    ("Last admitted while travelling to Vila Real de Santo António.", "Vila Real de Santo António"),
    ("Follow-up was done in Odense by the local team.", "Odense"),  # a gazetteer town after a bare "in"
    ("Walks daily along Hawthorn Street to the shop.", "Hawthorn"),
    ("Fell off the Kettleby bridge in the dark.", "Kettleby"),
])
def test_when_a_place_is_written_alone_then_the_place_recognizer_finds_it(places, text, place):
    assert place in _found(places, text, "LOCATION")


@pytest.mark.parametrize("text", [
    "Transferred to Cardiology for telemetry, then moved to Rehab on day 3.",
    "Result of Gram stain pending; returned to Emergency overnight.",
    "She has lived in Denmark since 1990 and travels to Norway often.",  # countries are not Safe Harbor PHI
    "Started in March on insulin; came in with chest pain.",
    "He lives with his daughter and moved in May.",
])
def test_when_a_ward_a_month_or_a_country_follows_a_place_cue_then_no_place_is_reported(places, text):
    assert _found(places, text, "LOCATION") == []


@pytest.fixture(scope="module")
def gazetteer():
    return GazetteerNameRecognizer()


def test_when_a_known_surname_follows_an_unknown_first_name_then_both_are_one_name(gazetteer):
    text = "Ottoline Morrison's referral arrived; Will Continue to monitor."
    assert _found(gazetteer, text, "PERSON") == ["Ottoline Morrison"]


def test_when_a_surname_follows_a_clinical_or_title_word_then_the_pair_is_not_a_name(gazetteer):
    text = "Cardiology Morrison rounds; Dr Morrison agreed. Will Smith? Continue Jones protocol."
    assert "Cardiology Morrison" not in _found(gazetteer, text, "PERSON")
    assert "Dr Morrison" not in _found(gazetteer, text, "PERSON")
    assert "Continue Jones" not in _found(gazetteer, text, "PERSON")


@pytest.mark.parametrize(("text", "name"), [
    ("Thanks for the update.\n\nBest regards,\nTorvald Eikeland", "Torvald Eikeland"),
    ("Kjellfrid Aasen wrote:\n> can you resend the results?", "Kjellfrid Aasen"),
    ("After the birth they named her Solveig, after her grandmother.", "Solveig"),
    ("Her roommate Brynhild Vikse drove her in.", "Brynhild Vikse"),
    ("The statin was prescribed by Ingvild Rasmussen-Aune in 2019.", "Ingvild Rasmussen-Aune"),
    ("Good morning Audun, the lab called back.", "Audun"),
])
def test_when_a_name_is_in_an_email_or_chat_sentence_then_medguard_covers_it(text, name):
    spans = shared_detector().detect(text)
    start = text.index(name)
    assert any(s.entity_type == "PERSON" and s.start <= start and start + len(name) <= s.end for s in spans), spans


def test_when_a_note_says_patient_before_an_age_then_patient_is_not_a_name():
    text = "Patient is a 61-year-old retired welder."
    assert not [s for s in shared_detector().detect(text) if s.entity_type == "PERSON"]


@pytest.mark.parametrize(("entity", "text", "value"), [
    ("PHONE_NUMBER", "Reach the daughter on 31-72-05-64 after six.", "31-72-05-64"),
    ("PHONE_NUMBER", "Cabinet: 04.93.21.87.60 (mornings only).", "04.93.21.87.60"),
    ("ZIP_CODE", "Moved to a flat in Harrogate HG1 4QT in June.", "HG1 4QT"),
    ("ZIP_CODE", "Postcode: 3512 JK, Utrecht.", "3512 JK"),
    ("STREET_ADDRESS", "Post goes to Lindenallee 27 in the old town.", "Lindenallee 27"),
    ("STREET_ADDRESS", "Her practice is at Storgata 118 these days.", "Storgata 118"),
    ("STREET_ADDRESS", "Drop-off point: Tamarind 40 Street, next to the school.", "Tamarind 40 Street"),
])
def test_when_a_phone_postcode_or_street_is_written_the_european_way_then_it_is_found(entity, text, value):
    spans = shared_detector().detect(text)
    start = text.index(value)
    assert any(s.entity_type == entity and s.start <= start and start + len(value) <= s.end for s in spans), spans


@pytest.mark.parametrize(("entity", "text"), [
    ("PHONE_NUMBER", "Server at 10.20.30.40 logged the upload."),   # four dotted pairs: an IP address
    ("PHONE_NUMBER", "Visits on 12-10-20 and 14-10-20 were missed."),
    ("ZIP_CODE", "Vitamin D 5000 IU daily; staged T2 N0 M0."),
    ("STREET_ADDRESS", "She is at Baseline 2 weeks after the dose; patient is on Lasix 40 mg."),
    ("STREET_ADDRESS", "He is at Room 12 on the ward."),
])
def test_when_a_clinical_value_looks_like_a_phone_postcode_or_street_then_it_is_not_one(entity, text):
    assert not [s for s in shared_detector().detect(text) if s.entity_type == entity]
