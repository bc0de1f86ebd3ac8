"""Readable feature names: the codes features are built from become the text a clinician reads."""

from __future__ import annotations

import pytest

from analytics.names import display_name, display_names


@pytest.mark.parametrize(("feature", "expected"), [
    ("obs_2571_8_last", "Triglyceride [Mass/volume] in Serum or Plasma — last value"),
    ("obs_4548_4_mean", "Hemoglobin A1c/Hemoglobin.total in Blood — mean over the look-back window"),
    ("obs_39156_5_trend", "Body mass index (BMI) [Ratio] — trend (change per year)"),
    ("dx_e11_9", "Diagnosis: Type 2 diabetes mellitus without complications"),
    ("rx_861007", "Medication: Metformin hydrochloride 500 MG Oral Tablet"),
    ("age_band_lower", "Age band (lower bound, years)"),
    ("sex_female", "Sex: female"),
    ("trestbps", "Resting blood pressure (mm Hg)"),
])
def test_when_a_feature_comes_from_a_listed_code_then_its_display_text_is_shown(feature: str, expected: str) -> None:
    assert display_name(feature) == expected


def test_when_an_icd10cm_code_is_not_in_the_shipped_list_then_the_tabular_list_names_it() -> None:
    assert display_name("dx_j18_9") == "Diagnosis: Pneumonia, unspecified organism"


@pytest.mark.parametrize(("feature", "expected"), [
    ("obs_99999_9_last", "LOINC 99999-9 — last value"),
    ("dx_zz9_99", "Diagnosis: ICD-10-CM ZZ9.99"),
    ("rx_123", "Medication: RxNorm 123"),
    ("some_new_column", "some new column"),
])
def test_when_nothing_describes_a_code_then_its_system_and_code_are_shown(feature: str, expected: str) -> None:
    assert display_name(feature) == expected


def test_when_names_are_asked_for_a_list_then_each_feature_is_a_key() -> None:
    names = display_names(["obs_2345_7_last", "dx_i10"])
    assert names == {"obs_2345_7_last": "Glucose [Mass/volume] in Serum or Plasma — last value",
                     "dx_i10": "Diagnosis: Essential (primary) hypertension"}
