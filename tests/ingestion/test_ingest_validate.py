"""Row verdicts of one chunk: type conformance, then the contract's rules through Great Expectations."""

from __future__ import annotations

import pytest
from _chunk_verdicts import conformed_verdicts

from ingestion.contract import builtin_contract
from ingestion.sources._base import TableRows
from ingestion.validate import ChunkValidator, conform

GOOD_OBS = {"observation_id": "o1", "patient_id": "p1", "encounter_id": "e1", "category": "vital-signs",
            "code": "8480-6", "code_system": "loinc", "loinc_code": "8480-6", "display": "Systolic", "value": 120.0,
            "unit": "mm[Hg]", "effective_time": "2024-03-01T10:00:00Z"}


def _verdicts(table: str, rows: list[dict]) -> dict[int, set[str]]:
    return conformed_verdicts(table, rows)[1]


def _obs(**changes) -> dict:
    return {**GOOD_OBS, **changes}


def test_when_a_chunk_mixes_good_and_bad_observations_then_each_bad_row_names_exactly_its_rules() -> None:
    rows = [
        _obs(),                                                    # 0 good
        _obs(value=300.0),                                         # 1 systolic above 260
        _obs(loinc_code="8867-4", value=10, unit="/min"),          # 2 heart rate below 25 (an int is a float)
        _obs(loinc_code="2160-0", value="0.9"),                    # 3 creatinine as text: fine
        _obs(value="high"),                                        # 4 not a number
        _obs(value=float("inf")),                                  # 5 infinite
        _obs(effective_time="2023-02-30T10:00:00Z"),               # 6 no such day
        _obs(effective_time="2024-3-1T10:00:00Z"),                 # 7 wrong shape
        _obs(category="imaging", loinc_code="1234-5"),             # 8 bad LOINC check digit
        _obs(value=None, value_text="negative"),                   # 9 a coded or text result: no number
        _obs(code=None, code_system=None),                         # 10 no code at all
        _obs(code="271649006", code_system="snomed", loinc_code=None, value=999.0),  # 11 another system: no limits
        _obs(category="unknown-category", encounter_id=None),      # 12 enum; an encounter is optional
        _obs(loinc_code="8302-2", value=66.9, unit="[in_i]"),      # 13 a height in inches: 170 cm, plausible
        _obs(loinc_code="8302-2", value=120.0, unit="[in_i]"),     # 14 ten feet tall
        _obs(loinc_code="2345-7", value=5.4, unit="mmol/L"),       # 15 glucose in another quantity: not compared
        _obs(loinc_code="29463-7", value=3.2, unit="kg"),          # 16 a newborn's weight
    ]
    verdicts = _verdicts("observations", rows)
    assert verdicts == {
        1: {"value:range[8480-6]"},
        2: {"value:range[8867-4]"},
        4: {"value:type"},
        5: {"value:type"},
        6: {"effective_time:format"},
        7: {"effective_time:format"},
        8: {"loinc_code:code_system"},
        10: {"code:required", "code_system:required"},
        12: {"category:enum"},
        14: {"value:range[8302-2]"},
    }


def test_when_a_value_breaks_its_code_range_then_the_message_names_the_code_limits_and_value() -> None:
    contract = builtin_contract("observations")
    chunk = TableRows()
    chunk.add(_obs(value=300.0), "line 1")
    frame, _ = conform(chunk, contract)
    result = ChunkValidator(contract).validate(frame)
    (rule, message), = result.violations[0]
    assert rule == "value:range[8480-6]"
    assert message == "value is outside [40, 260] for loinc_code 8480-6 (value '300.0')"


@pytest.mark.parametrize(("birth_date", "broken"), [
    ("1980-02-29", set()),                       # a leap day
    ("1981-02-29", {"birth_date:format"}),       # not a leap year
    ("1980-13-01", {"birth_date:format"}),
    ("01/02/1980", {"birth_date:format"}),
    (19800101, {"birth_date:type"}),             # a number is no date
])
def test_when_a_birth_date_is_checked_then_only_real_calendar_days_pass(birth_date, broken: set[str]) -> None:
    row = {"patient_id": "p1", "mrn": "1234567", "first_name": "Ann", "last_name": "Lee", "sex": "F",
           "birth_date": birth_date}
    verdicts = _verdicts("patients", [row])
    assert verdicts.get(0, set()) - {"birth_date:required"} == broken


def test_when_a_large_chunk_repeats_its_values_then_checks_on_distinct_values_give_the_same_verdicts() -> None:
    # Past 4,096 rows, patterns, dates and normalisation run once per distinct value when values repeat (a visit's
    # id and time on each of its results); the verdicts must be those of the row-by-row evaluation.
    visits = [f"e{i}" for i in range(9)] + ["bad\tvisit"]
    times = ["2024-03-01T10:00:00Z", "2023-02-30T10:00:00Z", "20240301100000-0500", None]
    rows = [_obs(observation_id=f"o{i}", encounter_id=visits[i % 10], effective_time=times[i % 4])
            for i in range(6000)]
    verdicts = _verdicts("observations", rows)
    expected = {i: ({"encounter_id:pattern"} if i % 10 == 9 else set())
                | ({"effective_time:format"} if i % 4 == 1 else set()) for i in range(6000)}
    assert verdicts == {i: rules for i, rules in expected.items() if rules}
