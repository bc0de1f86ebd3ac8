"""The generator: determinism, layout, realism of the population, and the label's risk model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.synthetic import CHUNK_PATIENTS, SCHEMAS, generate
from pipeline.synthetic.population import npi_with_check_digit


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pop") / "extract"
    generate(out, patients=400, seed=11, defect_rate=0.0)
    return out


@pytest.mark.integration
def test_when_same_seed_then_outputs_are_byte_identical(tmp_path: Path) -> None:
    # Two chunks, every format, with defects: the strongest determinism check we can afford in a unit test.
    patients = CHUNK_PATIENTS + 30
    generate(tmp_path / "a", patients=patients, seed=5, formats=["csv", "parquet", "jsonl", "notes", "hl7"],
             defect_rate=0.05)
    generate(tmp_path / "b", patients=patients, seed=5, formats=["csv", "parquet", "jsonl", "notes", "hl7"],
             defect_rate=0.05)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {k: v for k, v in b.items() if k != "manifest.json"}
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest_a.pop("out_dir"), manifest_b.pop("out_dir")
    assert manifest_a == manifest_b


def test_when_fhir_generated_twice_then_bundles_are_identical(tmp_path: Path) -> None:
    generate(tmp_path / "a", patients=20, seed=9, formats=["fhir"])
    generate(tmp_path / "b", patients=20, seed=9, formats=["fhir"])
    assert _digests(tmp_path / "a" / "fhir") == _digests(tmp_path / "b" / "fhir")


def test_when_seed_differs_then_population_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", patients=50, seed=1, formats=["csv"])
    generate(tmp_path / "b", patients=50, seed=2, formats=["csv"])
    assert (tmp_path / "a" / "patients.csv").read_bytes() != (tmp_path / "b" / "patients.csv").read_bytes()


def test_when_generated_then_every_format_file_exists_with_its_schema(population: Path) -> None:
    for table, schema in SCHEMAS.items():
        assert pq.read_schema(population / f"{table}.parquet").equals(schema, check_metadata=False)
        csv = pacsv.read_csv(population / f"{table}.csv")
        assert csv.column_names == schema.names
        first = json.loads((population / f"{table}.jsonl").open().readline())
        assert list(first) == schema.names
    assert (population / "notes.jsonl").is_file()
    assert list((population / "fhir").glob("*.ndjson"))
    assert list((population / "hl7").glob("*.hl7"))
    manifest = json.loads((population / "manifest.json").read_text())
    assert manifest["patients"] == 400
    assert sorted(manifest["files"]) == sorted(
        str(p.relative_to(population)) for p in population.rglob("*") if p.is_file())


def test_when_generated_then_identifiers_are_unique_and_well_formed(population: Path) -> None:
    patients = pd.read_parquet(population / "patients.parquet")
    assert len(patients) == 400
    for column in ("patient_id", "mrn", "ssn", "insurance_member_id"):
        assert patients[column].is_unique, column
    assert patients["ssn"].str.fullmatch(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}").all()
    assert patients["zip"].str.fullmatch(r"\d{5}").all()
    assert patients["phone"].str.fullmatch(r"\d{3}-\d{3}-\d{4}").all()
    assert patients["email"].str.contains("@").all()
    assert set(patients["sex"]) == {"F", "M"}
    ages = (pd.Timestamp("2025-01-01") - pd.to_datetime(patients["birth_date"])).dt.days / 365.25
    assert ages.between(18, 102).all()
    encounters = pd.read_parquet(population / "encounters.parquet")
    assert encounters["encounter_id"].is_unique
    assert set(encounters["patient_id"]) <= set(patients["patient_id"])
    assert (pd.to_datetime(encounters["discharge_time"]) > pd.to_datetime(encounters["admit_time"])).all()
    observations = pd.read_parquet(population / "observations.parquet")
    assert observations["observation_id"].is_unique
    assert set(observations["encounter_id"]) <= set(encounters["encounter_id"])


def _luhn_valid(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_when_npi_built_then_luhn_check_digit_matches_cms() -> None:
    # 1234567893 is the worked example in the CMS NPI check-digit specification.
    assert npi_with_check_digit("123456789") == "1234567893"


def test_when_generated_then_every_provider_npi_passes_the_luhn_check(population: Path) -> None:
    encounters = pd.read_parquet(population / "encounters.parquet")
    assert all(_luhn_valid("80840" + npi) for npi in encounters["provider_npi"].unique())


def test_when_generated_then_codes_exist_in_their_code_systems(population: Path) -> None:
    import simple_icd_10_cm as icd

    conditions = pd.read_parquet(population / "conditions.parquet")
    assert all(icd.is_valid_item(code) for code in conditions["icd10_code"].unique())
    observations = pd.read_parquet(population / "observations.parquet")
    assert observations["loinc_code"].str.fullmatch(r"\d{1,5}-\d").all()
    medications = pd.read_parquet(population / "medications.parquet")
    assert medications["ndc_code"].str.fullmatch(r"\d{5}-\d{4}-\d{2}").all()


def test_when_label_is_modelled_then_it_follows_the_documented_risk_factors(tmp_path: Path) -> None:
    generate(tmp_path / "p", patients=4000, seed=3, formats=["parquet"])
    outcomes = pd.read_parquet(tmp_path / "p" / "outcomes.parquet")
    obs = pd.read_parquet(tmp_path / "p" / "observations.parquet")
    hba1c = obs[obs["loinc_code"] == "4548-4"].groupby("patient_id")["value"].mean()
    frame = outcomes.set_index("patient_id").join(hba1c.rename("hba1c"))
    labelled = frame[frame["t2d_within_1y"].notna()]
    positive_rate = labelled["t2d_within_1y"].mean()
    assert 0.03 < positive_rate < 0.3
    high = labelled[labelled["hba1c"] >= 6.0]["t2d_within_1y"].mean()
    low = labelled[labelled["hba1c"] < 5.4]["t2d_within_1y"].mean()
    assert high > 3 * low
    # Prevalent diabetics carry no incident label and have the diagnosis in their conditions.
    assert frame.loc[frame["prevalent_t2d"], "t2d_within_1y"].isna().all()
    conditions = pd.read_parquet(tmp_path / "p" / "conditions.parquet")
    diabetics = set(conditions[conditions["icd10_code"].str.startswith("E11")]["patient_id"])
    assert diabetics == set(frame.index[frame["prevalent_t2d"]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": 0, "seed": 1}, "patients must be at least 1"),
        ({"patients": 5, "seed": -1}, "seed must be"),
        ({"patients": 5, "seed": 1, "defect_rate": 0.9}, "defect_rate"),
        ({"patients": 5, "seed": 1, "formats": ["xml"]}, "unknown format"),
    ],
)
def test_when_arguments_invalid_then_value_error_names_them(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x", **kwargs)


def test_when_out_dir_holds_foreign_files_then_generation_refuses(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match="refusing"):
        generate(tmp_path, patients=2, seed=1, formats=["csv"])
    assert (tmp_path / "keep.txt").read_text() == "not ours"


def test_when_regenerated_then_previous_population_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "pop"
    generate(out, patients=5, seed=1, formats=["csv", "hl7"])
    generate(out, patients=5, seed=1, formats=["parquet"])
    assert not (out / "patients.csv").exists() and not (out / "hl7").exists()
    assert (out / "patients.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pop"]  # no temporary directory left behind
