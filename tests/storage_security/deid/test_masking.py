"""mask_table runs each column's configured operator (the registry's), keeping intervals, types and nulls;
NoteMasker gives each entity type its note operator."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow as pa
import pytest

from storage_security.deid.masking import NoteMasker, load_masking_config, mask_table
from storage_security.deid.operators import COLUMN_OPERATORS, NOTE_OPERATORS, GeneralizeOperator, PseudonymOperator

REFERENCE = date(2025, 1, 1)


def test_when_the_catalog_or_settings_offer_an_op_then_an_operator_runs_it():
    from typing import get_args

    from pipeline.catalog import MaskOp
    from pipeline.settings import NoteOp

    # keep, drop and notes are not operators: the column is published as it is, left out, or masked as notes.
    assert {op.value for op in MaskOp} - {"keep", "drop", "notes"} == set(COLUMN_OPERATORS)
    assert set(get_args(NoteOp)) == set(NOTE_OPERATORS)


def test_when_the_shipped_config_names_an_op_then_an_operator_runs_it():
    config = load_masking_config()
    rules = [*config["provenance"].values(), *(r for t in config["tables"].values() for r in t["columns"].values())]
    assert {rule["op"] for rule in rules} - {"keep", "drop", "notes"} <= set(COLUMN_OPERATORS)
    assert set(config["note_entities"].values()) <= set(NOTE_OPERATORS)


def test_when_dates_are_shifted_per_patient_then_every_interval_is_preserved(keys):
    frame = pd.DataFrame({
        "patient_pseudonym": ["p1", "p1", "p1", "p2", "p2"],
        "admit_time": ["2023-03-22T09:31:41Z", "2024-11-18T11:26:45Z", "2024-02-29T00:00:00Z",
                       "2020-01-01T08:00:00Z", "2020-03-01T08:00:00Z"],
        "onset_date": ["2022-07-19", "2024-01-01", "2024-02-29", "2019-12-31", "2020-02-29"],
    })
    rules = {c: {"class": "quasi_identifier", "op": "date_shift"} for c in ("admit_time", "onset_date")}
    rules["patient_pseudonym"] = {"class": "non_sensitive", "op": "keep"}
    out = mask_table(frame, rules, keys, reference_date=REFERENCE)
    for column in ("admit_time", "onset_date"):
        # times of day are coarsened to their hour: intervals are kept to the hour
        before, after = pd.to_datetime(frame[column]).dt.floor("h"), pd.to_datetime(out[column])
        assert (after != before).all()
        for patient in ("p1", "p2"):
            rows = frame["patient_pseudonym"] == patient
            assert (before[rows].diff().dropna() == after[rows].diff().dropna()).all()
            shift = (after[rows] - before[rows]).dt.days.unique()
            assert len(shift) == 1 and 1 <= abs(shift[0]) <= 365 and shift[0] == keys.shift_days(patient)
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
    out = mask_table(frame, rules, keys, reference_date=REFERENCE)
    assert isinstance(out["birth"][0], date) and (out["birth"][1] - out["birth"][0]).days == 59
    assert str(out["seen"].dtype) == str(frame["seen"].dtype)
    assert (out["seen"][1] - out["seen"][0]) == pd.Timedelta(days=2) and out["seen"][0] != frame["seen"][0]


def test_when_a_table_is_masked_then_each_op_gives_its_operators_values_and_types(keys):
    frame = pd.DataFrame({
        "patient_pseudonym": ["p1", "p2", "p3"],
        "patient_id": ["A1", "A2", "A3"],
        "encounter_id": ["E1", None, "E1"],
        "ssn": ["887-57-6670", "123-45-6789", None],
        "phone": ["503-555-0101", None, "503-555-0199"],
        "birth_date": [date(1980, 1, 2), date(1930, 5, 5), None],
        "onset": ["2024-11-02", None, "1999-12-31T10:00:00Z"],
        "zip": ["60659", "03601", None],
        "score": [1.5, 2.5, None],
    }, index=[10, 11, 12])
    rules = {"patient_pseudonym": {"op": "keep"}, "patient_id": {"op": "drop"},
             "encounter_id": {"op": "pseudonym", "key": "encounter"}, "ssn": {"op": "redact"},
             "phone": {"op": "partial_mask"}, "birth_date": {"op": "age_band", "as": "age_band"},
             "onset": {"op": "year", "as": "onset_year"}, "zip": {"op": "zip3", "as": "zip3"}}
    out = mask_table(frame, rules, keys, reference_date=REFERENCE)
    assert list(out.columns) == ["patient_pseudonym", "encounter_id", "ssn", "phone", "age_band", "onset_year", "zip3"]
    encounter = PseudonymOperator().operate("E1", {"keys": keys, "key": "encounter"})
    assert out["encounter_id"].tolist() == [encounter, None, encounter]
    assert out["ssn"].tolist() == [None, None, None]
    assert out["phone"].tolist() == ["***-***-0101", None, "***-***-0199"]
    assert out["age_band"].tolist() == ["40-44", "90+", None]
    assert out["onset_year"].dtype == "Int64" and out["onset_year"].tolist() == [2024, pd.NA, 1999]
    assert out["zip3"].tolist() == ["606", "000", None]
    assert all(out[c].dtype == object for c in ("encounter_id", "ssn", "phone", "age_band", "zip3"))


@pytest.mark.parametrize(("op", "params", "text"), [
    ("zip3", {}, "60659"), ("year", {}, "2024-11-02"), ("age_band", {}, "1980-01-02"),
])
def test_when_a_column_and_a_mention_use_one_operator_then_they_agree(keys, op, params, text):
    spec = COLUMN_OPERATORS[op]
    params = {**spec.params, "reference_date": REFERENCE}
    out = mask_table(pd.DataFrame({"c": [text]}), {"c": {"op": op}}, keys, reference_date=REFERENCE)
    assert str(out["c"][0]) == GeneralizeOperator().operate(text, params)


@pytest.mark.parametrize(("rules", "message"), [
    ({"onset": {"op": "date_shift"}}, "patient pseudonym column"),
    ({"onset": {"op": "shuffle"}}, "no masking op"),
    ({"onset": {"op": "pseudonym"}}, "pseudonym 'key'"),
])
def test_when_a_rule_cannot_run_then_mask_table_refuses(keys, rules, message):
    with pytest.raises(ValueError, match=message):
        mask_table(pd.DataFrame({"onset": ["2024-11-02"]}), rules, keys, reference_date=REFERENCE)


def test_when_a_note_op_is_unknown_then_the_note_masker_refuses_at_construction(keys):
    with pytest.raises(ValueError, match="note ops must be one of"):
        NoteMasker(None, keys, {"US_SSN": "shuffle"})


def test_when_notes_are_masked_from_given_spans_then_each_entity_gets_its_configured_operator(keys):
    from storage_security.deid.detection import PhiSpan

    text = "Pt Evan Clark SSN 887-57-6670 seen 03/14/2023"
    spans = [[PhiSpan(3, 13, "PERSON", 0.9), PhiSpan(18, 29, "US_SSN", 1.0), PhiSpan(35, 45, "DATE_TIME", 0.9)]]
    masker = NoteMasker(None, keys, {"default": "surrogate", "US_SSN": "partial_mask"})
    out = masker.mask([text, None], [3, None], spans=[*spans, []])
    assert out[1] is None
    assert "Evan" not in out[0] and "***-**-6670" in out[0] and "03/17/2023" in out[0]


def test_when_a_column_holds_only_nulls_then_its_masked_form_is_null(keys):
    frame = pd.DataFrame({"zip": pd.Series([None, None], dtype=object)})
    out = mask_table(frame, {"zip": {"op": "zip3"}}, keys, reference_date=REFERENCE)
    assert out["zip"].tolist() == [None, None] and isinstance(out, pd.DataFrame)
    assert pa.Array.from_pandas(out["zip"]).null_count == 2
