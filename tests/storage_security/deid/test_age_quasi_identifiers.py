"""Columns the catalog does not know but whose name says age — ``age``, ``birth_year``, ``dob`` — are
quasi-identifiers whenever they are published in a table linked to patients: the risk gate counts them, a birth date
goes out only as an age band, and a birth year that may mean an age of 90 or over is pooled (HIPAA Safe Harbor).

Witness: the public UCI heart-failure table (tests/fixtures/tabular, 299 patients aged 40-95), given a patient id,
the birth year and a birth date its ages imply, and landed with only the id sealed, as an extract whose contract did
not mark the others PHI would be.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from _deid_raw import shared_detector
from test_risk_release_published import _plake

from pipeline.lake import CommitInfo
from storage_security.deid.classification import AGE, BIRTH_DATE, BIRTH_YEAR, name_quasi_identifier
from storage_security.deid.deidentify import Deidentifier
from storage_security.protected import Protection

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tabular"
TABLE = "heart_cohort"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, settings):
    lake, plake, _ = _plake(tmp_path_factory.mktemp("ageqi"), settings)
    at = settings.deidentify.reference_date
    frame = pd.read_csv(FIXTURES / "heart_failure_clinical_records_dataset.csv", thousands=",")
    frame.columns = [c.lower() for c in frame.columns]
    frame["age"] = frame["age"].astype(int)
    frame.insert(0, "patient_id", [f"HF{i:04d}" for i in range(len(frame))])
    frame["birth_year"] = at.year - frame["age"]
    frame["dob"] = [f"{y}-01-01" for y in frame["birth_year"]]  # aged exactly `age` at the reference date
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    hashes = [hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()
              for r in frame.to_dict("records")]
    arrow = (arrow.append_column("patient_pseudonym",
                                 plake.pseudonymizer("patient").pseudonymize(arrow.column("patient_id")))
             .append_column("_batch_id", pa.array(["b-hf"] * len(frame)))
             .append_column("_record_hash", pa.array(hashes)))
    protection = Protection(encrypted=("patient_id",), row_key="_record_hash", patient_key="patient_pseudonym")
    plake.append("raw", TABLE, arrow, protection, commit=CommitInfo(principal="svc:ingest", purpose="ingest"))
    # k = 1 first: the columns as masking writes them, before the gate generalises anything
    loose = settings.model_copy(update={"deidentify": settings.deidentify.model_copy(update={"k_anonymity": 1})})
    masked = Deidentifier(plake, loose, detector=shared_detector()).publish_all([TABLE])[TABLE]
    masked_out = lake.read_pandas("deidentified", TABLE)
    report = Deidentifier(plake, settings, detector=shared_detector()).publish_all([TABLE])[TABLE]
    return {"out": lake.read_pandas("deidentified", TABLE), "report": report, "frame": frame, "at": at,
            "masked": masked_out, "masked_report": masked}


def test_when_columns_are_named_for_age_then_each_kind_is_recognised():
    kinds = {c: name_quasi_identifier(c) for c in ("age", "Age (years)", "patientAge", "age_at_onset", "birth_year",
                                                   "YearOfBirth", "yob", "dob", "DateOfBirth", "birthday",
                                                   "stage", "dosage", "page", "years_smoked", "birthplace")}
    assert kinds == {"age": AGE, "Age (years)": AGE, "patientAge": AGE, "age_at_onset": AGE,
                     "birth_year": BIRTH_YEAR, "YearOfBirth": BIRTH_YEAR, "yob": BIRTH_YEAR, "dob": BIRTH_DATE,
                     "DateOfBirth": BIRTH_DATE, "birthday": BIRTH_DATE, "stage": None, "dosage": None, "page": None,
                     "years_smoked": None, "birthplace": None}


def test_when_a_linked_table_publishes_age_columns_then_the_gate_counts_them_for_k(cohort, settings):
    out, report = cohort["out"], cohort["report"]
    assert "refused" not in report, report
    assert {"age", "birth_year", "dob_age_band"} <= set(report["quasi_identifiers"])
    k = settings.deidentify.k_anonymity
    # An attacker who knows someone's age and birth year finds at least k patients sharing them.
    keys = out[["age", "birth_year", "dob_age_band"]].astype(str)
    classes = out.groupby([keys[c] for c in keys.columns])["patient_pseudonym"].nunique()
    assert classes.min() >= k
    assert report["k"] >= k


def test_when_a_birth_date_column_is_published_then_only_an_age_band_goes_out(cohort):
    out = cohort["masked"]
    assert "dob" not in out.columns
    for band in out["dob_age_band"].dropna():
        found = re.fullmatch(r"(\d+)-(\d+)", band)
        assert band in ("90+", "*") or (found and int(found.group(2)) <= 89), band


def test_when_a_birth_year_implies_an_age_over_89_then_it_is_pooled(cohort):
    out, report, frame, at = cohort["masked"], cohort["masked_report"], cohort["frame"], cohort["at"]
    limit = at.year - 90
    old = int((frame["birth_year"] <= limit).sum())
    assert old == 6  # the table's patients of 90 (three), 94 and 95 (two)
    assert report["birth_years_pooled"] == {"birth_year": old}
    # every birth year after the limit is published as it was, every earlier one as the limit ("in or before")
    assert sorted(out["birth_year"].astype(int)) == sorted(max(int(y), limit) for y in frame["birth_year"])
    bands = out["dob_age_band"]
    assert (bands == "90+").sum() == int((frame["age"] >= 90).sum())
