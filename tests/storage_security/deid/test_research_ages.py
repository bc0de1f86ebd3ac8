"""Safe Harbor's oldest category: no published table carries an exact age above 89.

Catalog tables publish birth dates only as 5-year bands with 90 and over pooled as ``90+``; a flat research table's
own age column is published as it is, so de-identification pools its ages of 90 and over into one value (90, "90 or
older"). Witnesses: the public heart-failure table (tests/fixtures/tabular, ages up to 95), the UCI heart-disease
table with ages of 93 and 101 written in, and a generated population with patients born long enough ago.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from _deid_raw import generated, land, read_frames, shared_detector
from test_risk_release_published import _plake

from storage_security.deid.deidentify import Deidentifier
from storage_security.protected import ProtectedLake

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tabular"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def research_release(tmp_path_factory, settings):
    from ingestion.batch import ingest

    root = tmp_path_factory.mktemp("ages")
    lake, plake, ring = _plake(root, settings)
    ing = settings.model_copy(update={"home": root / "home", "lake_root": str(root / "lake")})
    extracts = root / "extracts"
    extracts.mkdir()
    heart = pd.read_csv(FIXTURES / "heart_disease_uci.csv")
    heart.loc[0, "age"], heart.loc[1, "age"] = 93, 101  # the table's oldest is 77: two very old patients written in
    heart.to_csv(extracts / "heart_disease_uci.csv", index=False)
    ingester = ProtectedLake(lake, ring, principal="svc:ingest")
    raw_ages = {"heart_disease_uci": heart["age"].tolist()}
    ingest(ing, source="tabular", path=extracts / "heart_disease_uci.csv", plake=ingester, docs=False)
    failure = FIXTURES / "heart_failure_clinical_records_dataset.csv"
    raw_ages["heart_failure_clinical_records_dataset"] = pd.read_csv(failure)["age"].tolist()
    ingest(ing, source="tabular", path=failure, plake=ingester, docs=False)
    reports = Deidentifier(plake, settings, detector=shared_detector()).publish_all()
    return lake, reports, raw_ages


@pytest.mark.parametrize("table", ["heart_disease_uci", "heart_failure_clinical_records_dataset"])
def test_when_a_research_table_has_ages_over_89_then_they_are_published_as_one_category(research_release, table):
    lake, reports, raw_ages = research_release
    published = lake.read_pandas("deidentified", table)["age"]
    raw = pd.Series(raw_ages[table])
    old = int((raw >= 90).sum())
    assert old >= 2  # the witness has ages of 90 and over (93 and 101 written in; 90, 94 and 95 in the original)
    assert published.max() <= 90
    # every age under 90 is published as it was, every older one as 90 ("90 or older"); in the table linked to
    # patients (an id column) the age is a quasi-identifier, so the rows of ages fewer than k patients share are
    # suppressed (93 and 101 pooled into 90: two patients)
    expected, got = Counter(min(int(a), 90) for a in raw), Counter(published.astype(int))
    assert not got - expected
    assert sum((expected - got).values()) == reports[table]["suppressed"]
    assert reports[table]["ages_pooled"] == {"age": old}


def test_when_generated_patients_are_over_89_then_no_band_or_age_column_says_how_old(tmp_path, settings):
    lake, plake, _ = _plake(tmp_path, settings)
    patients = read_frames(generated(60, 11), ("patients",))["patients"]
    patients.loc[:2, "birth_date"] = ["1921-03-04", "1930-06-30", "1934-12-31"]  # 103, 94 and 90 in 2025
    ages = [101, 93, 90] + [40 + i % 40 for i in range(len(patients) - 3)]
    patients["age"] = ages  # an uncatalogued age column, as an extract may carry one
    land(plake, "patients", patients, "b-ages")
    # k = 1: the bands as masking writes them (at k = 5 the gate withholds every band of 60 patients)
    loose = settings.model_copy(update={"deidentify": settings.deidentify.model_copy(update={"k_anonymity": 1})})
    report = Deidentifier(plake, loose, detector=shared_detector(), release_gate=False).publish("patients")
    out = lake.read_pandas("deidentified", "patients")
    for band in out["age_band"].dropna():
        found = re.fullmatch(r"(\d+)-(\d+)", band)
        assert band in ("90+", "*") or (found and int(found.group(2)) <= 89), band
    at = settings.deidentify.reference_date
    born = pd.to_datetime(patients["birth_date"]).dt.date
    oldest = sum(at.year - b.year - ((at.month, at.day) < (b.month, b.day)) >= 90 for b in born)
    assert oldest >= 3 and (out["age_band"] == "90+").sum() == oldest  # every one of them in the pooled band
    # the extract's own age column is published (the scan finds no PHI in numbers), its oldest ages pooled
    assert out["age"].max() == 90 and report["ages_pooled"] == {"age": 3}
    assert (out["age"] == 90).sum() == 3
