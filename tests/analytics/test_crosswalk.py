"""Diagnoses coded in SNOMED CT make the same features as ICD-10-CM ones, through a crosswalk shipped as data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import simple_icd_10_cm as icd
import yaml

from analytics.config import CodeFallback, EventSource, Sources, TrainConfig, load_crosswalk
from analytics.features import FeatureContract, build_features
from ingestion.codes import snomed_check_digit_ok
from pipeline.errors import SettingsError
from pipeline.synthetic.reference import CONDITIONS

FIXTURES = Path(__file__).parents[1] / "fixtures"
CLASSES = {
    "outcomes": {"patient_pseudonym": "quasi_identifier", "index_date": "quasi_identifier",
                 "t2d_within_1y": "sensitive"},
    "patients": {"patient_pseudonym": "quasi_identifier", "sex": "quasi_identifier"},
    "conditions": {"patient_pseudonym": "quasi_identifier", "icd10_code": "sensitive", "code": "sensitive",
                   "code_system": "non_sensitive", "onset_date": "quasi_identifier"},
    "medications": {"patient_pseudonym": "quasi_identifier", "rxnorm_code": "sensitive", "code": "sensitive",
                    "code_system": "non_sensitive", "start_date": "quasi_identifier"},
}


def _classify(table: str) -> dict[str, str]:
    return CLASSES[table]


def _tables(spark, diabetes: dict[str, tuple[str | None, str, str]]):
    """Twenty patients; ``diabetes`` gives some a condition as (icd10_code, code, code_system)."""
    ids = [f"ps{i:02d}" for i in range(20)]
    outcomes = pd.DataFrame({"patient_pseudonym": ids, "index_date": "2025-01-01",
                             "t2d_within_1y": [i % 2 == 0 for i in range(20)]})
    patients = pd.DataFrame({"patient_pseudonym": ids, "sex": ["F" if i % 3 else "M" for i in range(20)]})
    conditions = pd.DataFrame([{"patient_pseudonym": p, "icd10_code": icd10, "code": code, "code_system": system,
                                "onset_date": "2024-03-01"} for p, (icd10, code, system) in diabetes.items()])
    # Metformin prescribed: RxNorm in rxnorm_code for half, only as code/code_system for the other half.
    medications = pd.DataFrame([{"patient_pseudonym": p, "rxnorm_code": "861007" if i % 2 else None,
                                 "code": "861007", "code_system": "rxnorm", "start_date": "2024-04-01"}
                                for i, p in enumerate(ids[:12])])
    frames = {"outcomes": outcomes, "patients": patients, "conditions": conditions, "medications": medications}
    return {name: spark.createDataFrame(frame) for name, frame in frames.items()}


def _config() -> TrainConfig:
    return TrainConfig(sources=Sources(events=tuple(e for e in Sources().events if e.table != "observations")))


def test_when_type_2_diabetes_is_coded_in_snomed_then_it_makes_the_same_feature_as_e11_9(spark):
    diabetes = {f"ps{i:02d}": ("E11.9", "E11.9", "icd10cm") for i in range(0, 6)}
    diabetes.update({f"ps{i:02d}": (None, "44054006", "snomed") for i in range(6, 12)})  # SNOMED CT only
    tables = _tables(spark, diabetes)
    sdf, contract = build_features(tables, "outcomes", _config(), _classify, label="t2d_within_1y")
    frame = sdf.toPandas().set_index("patient_pseudonym")
    assert "dx_e11_9" in contract.features and not any("44054006" in f for f in contract.features)
    assert frame.loc[[f"ps{i:02d}" for i in range(12)], "dx_e11_9"].eq(1.0).all()
    assert frame.loc[[f"ps{i:02d}" for i in range(12, 20)], "dx_e11_9"].eq(0.0).all()
    # A prescription with no rxnorm_code but coded RxNorm in code/code_system counts as the same drug.
    assert frame.loc[[f"ps{i:02d}" for i in range(12)], "rx_861007"].eq(1.0).all()
    assert contract.code_maps["dx"]["map"]["snomed|44054006"] == "E11.9"


def test_when_scoring_then_the_contract_maps_codes_as_training_did(spark):
    diabetes = {f"ps{i:02d}": (None, "44054006", "snomed") for i in range(8)}
    tables = _tables(spark, diabetes)
    _, trained = build_features(tables, "outcomes", _config(), _classify, label="t2d_within_1y")
    stored = FeatureContract.from_dict(json.loads(json.dumps(trained.to_dict())))
    # Scoring with a config whose crosswalk list is empty still maps as the model was trained.
    bare_dx = EventSource(table="conditions", code="icd10_code", time="onset_date", prefix="dx")
    events = tuple(bare_dx if e.prefix == "dx" else e for e in _config().sources.events)
    bare = TrainConfig(sources=Sources(events=events))
    sdf, _ = build_features(tables, "outcomes", bare, _classify, contract=stored)
    assert sdf.toPandas().set_index("patient_pseudonym").loc["ps03", "dx_e11_9"] == 1.0


def test_when_a_snomed_code_is_not_in_the_crosswalk_then_no_feature_is_guessed(spark):
    diabetes = {f"ps{i:02d}": (None, "999999999", "snomed") for i in range(10)}
    diabetes.update({f"ps{i:02d}": ("I10", "I10", "icd10cm") for i in range(10, 16)})
    _, contract = build_features(_tables(spark, diabetes), "outcomes", _config(), _classify, label="t2d_within_1y")
    assert contract.event_codes["dx"] == ["I10"]


# the crosswalk file itself ---------------------------------------------------------------------------------


def test_when_the_shipped_crosswalk_is_read_then_every_line_is_a_real_snomed_id_to_a_billable_icd10cm_code():
    walk = load_crosswalk("snomed_to_icd10cm.yaml")
    assert (walk.source_system, walk.target_system) == ("snomed", "icd10cm")
    for code, entry in walk.entries.items():
        assert code.isdigit() and snomed_check_digit_ok(code), f"{code} is not a SNOMED CT id (Verhoeff check digit)"
        assert icd.is_valid_item(entry.to) and icd.is_leaf(entry.to), f"{code} -> {entry.to}"
        assert entry.source and entry.name


def test_when_the_synthea_fixture_and_the_generator_are_compared_then_the_crosswalk_covers_their_diagnoses():
    walk = load_crosswalk("snomed_to_icd10cm.yaml")
    snomed = {c["code"] for bundle in (FIXTURES / "fhir" / "synthea").glob("*.json")
              for e in json.loads(bundle.read_text("utf-8"))["entry"] if e["resource"]["resourceType"] == "Condition"
              for c in e["resource"]["code"]["coding"] if c["system"] == "http://snomed.info/sct"}
    assert len(snomed) == 9 and snomed <= set(walk.entries)  # both bundles' conditions
    # Every diagnosis our generator codes in ICD-10-CM has a SNOMED CT concept that lands on it.
    targets = {entry.to for entry in walk.entries.values()}
    assert {c.code for c in CONDITIONS.values()} - targets == set()


def test_when_a_crosswalk_is_missing_or_maps_to_another_system_then_the_config_is_refused(tmp_path):
    with pytest.raises(SettingsError, match=r"no_such\.yaml"):
        CodeFallback(target="icd10cm", crosswalks=("no_such.yaml",))
    other = tmp_path / "to_loinc.yaml"
    other.write_text(yaml.safe_dump({"source_system": "snomed", "target_system": "loinc",
                                     "entries": {"44054006": {"to": "1-8", "name": "x", "source": "test"}}}))
    with pytest.raises(ValueError, match="maps to loinc, not icd10cm"):
        CodeFallback(target="icd10cm", crosswalks=(str(other),))
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"source_system": "snomed", "target_system": "icd10cm",
                                     "entries": {44054006: {"to": "E11.65", "name": "local", "source": "site"}}}))
    # An earlier crosswalk wins a code two of them map (a site's own list before the shipped one).
    pairs = CodeFallback(target="icd10cm", crosswalks=(str(local), "snomed_to_icd10cm.yaml")).pairs()
    assert pairs["snomed|44054006"] == "E11.65" and pairs["snomed|38341003"] == "I10"
