"""Masking operators one by one (validate, then operate, as presidio-anonymizer does), and date-shift intervals."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from pipeline.lake import Lake
from storage_security.deid.masking import mask_table
from storage_security.deid.operators import (
    DateShiftOperator,
    GeneralizeOperator,
    MaskingKeys,
    PartialMaskOperator,
    PseudonymOperator,
    RedactOperator,
    SurrogateOperator,
    age_band,
    zip3,
)
from storage_security.protected import ProtectedLake


@pytest.fixture
def keys(lake: Lake, keyring) -> MaskingKeys:
    plake = ProtectedLake(lake, keyring, principal="test")
    return MaskingKeys(plake.pseudonymizer, forbidden_names={"evan", "clark"})


CASES = [
    (RedactOperator, "887-57-6670", {"entity_type": "US_SSN"}, "[US_SSN]"),
    (RedactOperator, "x", {"entity_type": "X", "placeholder": "<gone>"}, "<gone>"),
    (PartialMaskOperator, "887-57-6670", {}, "***-**-6670"),
    (PartialMaskOperator, "H108470662", {"keep": 2}, "********62"),
    (PartialMaskOperator, "abc", {}, "abc"),
    (DateShiftOperator, "03/14/2023", {"days": 10}, "03/24/2023"),
    (DateShiftOperator, "2024-12-30", {"days": 5}, "2025-01-04"),
    (DateShiftOperator, "November 02, 2024", {"days": -2}, "October 31, 2024"),
    (DateShiftOperator, "02 Oct 1941", {"days": 1}, "03 Oct 1941"),
    (DateShiftOperator, "last spring", {"days": 1}, "[DATE]"),
    (GeneralizeOperator, "93", {"kind": "age"}, "90+"),
    (GeneralizeOperator, "47", {"kind": "age"}, "45-49"),
    (GeneralizeOperator, "47", {"kind": "age", "width": 10}, "40-49"),
    (GeneralizeOperator, "10059-1234", {"kind": "zip"}, "100"),
    (GeneralizeOperator, "03601", {"kind": "zip"}, "000"),   # a HIPAA low-population prefix
    (GeneralizeOperator, "November 02, 2024", {"kind": "date"}, "2024"),
]


@pytest.mark.parametrize(("operator", "text", "params", "expected"), CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_when_an_operator_masks_a_value_then_the_result_is_exact(operator, text, params, expected):
    op = operator()
    op.validate(params)
    assert op.operate(text, params) == expected


@pytest.mark.parametrize(("operator", "params"), [
    (DateShiftOperator, {"days": 0}), (DateShiftOperator, {}), (GeneralizeOperator, {"kind": "height"}),
    (PartialMaskOperator, {"keep": -1}), (PseudonymOperator, {"key": "patient"}),
    (SurrogateOperator, {"keys": object(), "days": 3, "entity_type": "PERSON"}),
])
def test_when_params_are_invalid_then_validate_refuses(operator, params):
    with pytest.raises(ValueError):
        operator().validate(params)


def test_when_a_value_is_pseudonymized_then_it_is_keyed_deterministic_and_versioned(keys):
    op, params = PseudonymOperator(), {"keys": keys, "key": "encounter"}
    op.validate(params)
    first, again, other = (op.operate(v, params) for v in ("ENC1", "ENC1", "ENC2"))
    assert first == again != other
    assert first.startswith("ps1_") and len(first.split("_")[1]) == 8   # the key version rides along
    assert keys.pseudonym("patient", "ENC1") != first                 # another key, another pseudonym


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
        assert out == "04/13/2023"


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


@pytest.mark.parametrize(("birth", "band"), [
    (date(1980, 1, 2), "40-44"), (date(1980, 1, 1), "45-49"), (date(1934, 12, 31), "90+"), (date(2024, 6, 1), "0-4"),
])
def test_when_age_is_banded_then_five_year_bands_and_90_plus(birth, band):
    assert age_band(birth, date(2025, 1, 1)) == band


def test_when_zip_is_generalized_then_restricted_prefixes_become_000():
    assert [zip3(z) for z in ("60659", "82301", "8930", "12", None)] == ["606", "000", "089", None, None]


def test_when_dates_are_shifted_per_patient_then_every_interval_is_preserved(keys):
    frame = pd.DataFrame({
        "patient_pseudonym": ["p1", "p1", "p1", "p2", "p2"],
        "admit_time": ["2023-03-22T09:31:41Z", "2024-11-18T11:26:45Z", "2024-02-29T00:00:00Z",
                       "2020-01-01T08:00:00Z", "2020-03-01T08:00:00Z"],
        "onset_date": ["2022-07-19", "2024-01-01", "2024-02-29", "2019-12-31", "2020-02-29"],
    })
    rules = {c: {"class": "quasi_identifier", "op": "date_shift"} for c in ("admit_time", "onset_date")}
    rules["patient_pseudonym"] = {"class": "non_sensitive", "op": "keep"}
    out = mask_table(frame, rules, keys, reference_date=date(2025, 1, 1))
    for column in ("admit_time", "onset_date"):
        before, after = pd.to_datetime(frame[column]), pd.to_datetime(out[column])
        assert (after != before).all()
        for patient in ("p1", "p2"):
            rows = frame["patient_pseudonym"] == patient
            assert (before[rows].diff().dropna() == after[rows].diff().dropna()).all()
            shift = (after[rows] - before[rows]).dt.days.unique()
            assert len(shift) == 1 and 1 <= abs(shift[0]) <= 365
    assert out["admit_time"][0].endswith("Z") and len(out["onset_date"][0]) == 10


def test_when_typed_date_columns_are_shifted_then_types_and_intervals_survive(keys):
    frame = pd.DataFrame({
        "patient_pseudonym": ["p1", "p1"],
        "birth": [date(1950, 1, 1), date(1950, 3, 1)],
        "seen": pd.to_datetime(["2024-01-01T10:00:00Z", "2024-01-03T10:00:00Z"], utc=True),
    })
    rules = {"patient_pseudonym": {"class": "non_sensitive", "op": "keep"},
             "birth": {"class": "quasi_identifier", "op": "date_shift"},
             "seen": {"class": "quasi_identifier", "op": "date_shift"}}
    out = mask_table(frame, rules, keys, reference_date=date(2025, 1, 1))
    assert isinstance(out["birth"][0], date) and (out["birth"][1] - out["birth"][0]).days == 59
    assert str(out["seen"].dtype) == str(frame["seen"].dtype)
    assert (out["seen"][1] - out["seen"][0]) == pd.Timedelta(days=2) and out["seen"][0] != frame["seen"][0]
