"""medguard_surrogate: a stable stand-in of the same kind for each mention in a note; no column form."""

from __future__ import annotations

import pyarrow as pa
import pytest
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from storage_security.deid.operators import DateShiftOperator, RedactOperator, SurrogateOperator


@pytest.mark.parametrize(("entity", "text"), [
    ("PERSON", "Evan Clark"), ("DATE_TIME", "03/14/2023"), ("AGE", "93"), ("ZIP_CODE", "10059"),
    ("STREET_ADDRESS", "5509 Vasquez Bypass"), ("LOCATION", "Chicago"), ("PHONE_NUMBER", "212-338-2379"),
    ("EMAIL_ADDRESS", "evan@example.org"), ("IP_ADDRESS", "73.12.200.5"), ("URL", "https://x.example.org/a"),
    ("MEDICAL_RECORD_NUMBER", "00733103"),
])
def test_when_a_surrogate_replaces_phi_then_it_differs_and_is_stable(keys, entity, text):
    op, params = SurrogateOperator(), {"keys": keys, "days": 30, "entity_type": entity}
    op.validate(params)
    out = op.operate(text, params)
    assert out and out != text and op.operate(text, params) == out
    if entity == "PERSON":
        assert len(out.split()) == 2 and not {w.lower() for w in out.split()} & {"evan", "clark"}
    if entity == "DATE_TIME":
        assert out == "04/13/2023" == DateShiftOperator().operate(text, {"days": 30})


def test_when_operators_run_in_presidio_anonymizer_then_each_entity_gets_its_operator(keys):
    engine = AnonymizerEngine()
    for operator in (RedactOperator, SurrogateOperator):
        engine.add_anonymizer(operator)
    text = "Pt: Evan Clark  SSN 887-57-6670 seen 03/14/2023"
    results = [RecognizerResult("PERSON", 4, 14, 0.9), RecognizerResult("US_SSN", 20, 31, 0.9),
               RecognizerResult("DATE_TIME", 37, 47, 0.9)]
    params = {"keys": keys, "days": 1}
    out = engine.anonymize(text, results, {"DEFAULT": OperatorConfig("medguard_surrogate", params),
                                           "US_SSN": OperatorConfig("medguard_redact", {})}).text
    assert "Evan" not in out and "887-57-6670" not in out and "[US_SSN]" in out and "03/15/2023" in out


@pytest.mark.parametrize("params", [
    {"keys": object(), "days": 3, "entity_type": "PERSON"}, {"days": 3, "entity_type": "PERSON"},
    {"keys": "KEYS", "days": 0, "entity_type": "DATE_TIME"}, {"keys": "KEYS", "days": 3},
])
def test_when_params_are_invalid_then_validate_refuses(keys, params):
    params = {name: keys if value == "KEYS" else value for name, value in params.items()}
    with pytest.raises(ValueError):
        SurrogateOperator().validate(params)


def test_when_a_column_form_is_asked_of_the_surrogate_then_it_refuses(keys):
    with pytest.raises(ValueError, match="no column form"):
        SurrogateOperator().operate_column(pa.array(["Evan"]), {"keys": keys, "days": 1, "entity_type": "PERSON"})
