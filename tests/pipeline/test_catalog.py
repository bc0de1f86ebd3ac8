"""The column catalog: contracts, de-identification and policies agree with it, and disagreement fails at load."""

from __future__ import annotations

import ast
import copy
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError as PydanticValidationError

import access
from access.policy import load_policy
from ingestion.contract import CONFORMED_TABLES, builtin_contract, load_contract
from pipeline.catalog import ColumnClass, MaskOp, RawZone, load_catalog
from pipeline.errors import SettingsError, ValidationError
from pipeline.settings import load_settings
from storage_security.deid.masking import load_masking_config

CATALOG = load_catalog()
POLICIES = sorted((Path(access.__file__).parent / "policies").glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "ingestion", "storage_security", "analytics", "access", "dags")


def _raw_yaml() -> dict:
    return yaml.safe_load(resources.files("pipeline").joinpath("catalog/raw.yaml").read_text("utf-8"))


# every consumer agrees ----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", CONFORMED_TABLES)
def test_when_a_shipped_contract_is_loaded_then_its_columns_types_and_phi_are_the_catalogs(table):
    contract = builtin_contract(table)
    catalogued = CATALOG.source(table)
    assert catalogued is not None
    assert list(contract.columns) == list(catalogued.columns)
    assert {n: c.type for n, c in contract.columns.items()} == {n: c.type for n, c in catalogued.columns.items()}
    assert set(contract.phi_columns) == {n for n, c in catalogued.columns.items() if c.phi}


@pytest.mark.parametrize("table", CONFORMED_TABLES)
def test_when_a_shipped_contract_is_read_then_it_no_longer_declares_phi(table):
    text = resources.files("ingestion").joinpath(f"contracts/{table}.yaml").read_text("utf-8")
    assert all("phi" not in column for column in yaml.safe_load(text)["columns"].values())


def test_when_the_masking_config_is_built_then_each_rule_is_the_catalogs_class_and_mask():
    config = load_masking_config(load_settings().deidentify)
    assert set(config["tables"]) == set(CONFORMED_TABLES)
    for table, spec in config["tables"].items():
        rules = {**config["provenance"], **spec["columns"]}
        assert set(rules) == set(CATALOG.raw_columns(table))
        for name, rule in rules.items():
            entry = CATALOG.raw_columns(table)[name]
            assert (ColumnClass(rule["class"]), MaskOp(rule["op"])) == (entry.klass, entry.mask.op)
        published = {rule.get("as", name): ColumnClass(rule["published_class"])
                     for name, rule in rules.items() if rule["op"] != "drop"}
        assert published == {name: column.klass for name, column in CATALOG.published(table).items()}
        assert spec["quasi_identifiers"] == list(CATALOG.source(table).quasi_identifiers)
        assert spec["sensitive"] == list(CATALOG.source(table).sensitive)
    assert config["generalize"] == CATALOG.ladders()


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_when_a_shipped_policy_is_loaded_then_it_classes_every_catalogued_column_as_the_catalog(path):
    policy = load_policy(path)
    expected = {("raw", t, c): col.klass for t in CATALOG.raw.tables for c, col in CATALOG.raw_columns(t).items()}
    expected |= {("deidentified", t, c): col.klass for t in CATALOG.raw.tables
                 for c, col in CATALOG.published(t).items()}
    expected |= {(zone, t, c): col.klass for zone, tables in CATALOG.zones.items()
                 for t, entry in tables.items() for c, col in entry.columns.items()}
    assert {key: policy.column_class(*key) for key in expected} == expected
    assert "column_classes" not in yaml.safe_load(path.read_text())


def test_when_the_code_is_searched_then_column_classes_are_declared_in_the_catalog_only():
    # "sensitive" alone is also the name of the risk gate's list of sensitive columns; the other three are not.
    names = set(ColumnClass) - {ColumnClass.SENSITIVE}
    spelled: list[str] = []
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            if file.relative_to(ROOT).as_posix() == "pipeline/catalog.py":
                continue
            for node in ast.walk(ast.parse(file.read_text("utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    spelled.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


# the four disagreements, resolved --------------------------------------------------------------------------


def test_when_city_is_looked_up_then_it_is_a_sealed_direct_identifier_that_is_never_published():
    city = CATALOG.column("patients", "city")
    assert (city.phi, city.klass, city.mask.op) == (True, ColumnClass.DIRECT_IDENTIFIER, MaskOp.DROP)
    assert "city" not in CATALOG.published("patients")


def test_when_the_record_hash_is_looked_up_then_raw_hides_it_and_only_a_keyed_row_id_is_published():
    assert CATALOG.column_class("raw", "patients", "_record_hash") is ColumnClass.DIRECT_IDENTIFIER
    assert CATALOG.column("patients", "_record_hash").mask.op is MaskOp.PSEUDONYM
    assert "_record_hash" not in CATALOG.published("patients")
    assert CATALOG.column_class("deidentified", "patients", "row_id") is ColumnClass.NON_SENSITIVE


def test_when_encounter_type_and_consent_are_looked_up_then_the_risk_gate_counts_only_encounter_type():
    assert CATALOG.column_class("deidentified", "encounters", "encounter_type") is ColumnClass.QUASI_IDENTIFIER
    assert "encounter_type" in CATALOG.source("encounters").quasi_identifiers
    assert CATALOG.column_class("deidentified", "patients", "consent_research") is ColumnClass.NON_SENSITIVE
    assert "consent_research" not in CATALOG.source("patients").quasi_identifiers


# disagreement fails at load, naming both places ---------------------------------------------------------------


@pytest.mark.parametrize(("column", "change", "message"), [
    ("city", {"phi": False}, "phi: false here, but the column catalog pipeline/catalog/raw.yaml "
                             "(tables.patients.columns.city) says phi: true"),
    ("sex", {"phi": True}, "phi: true here, but the column catalog pipeline/catalog/raw.yaml "
                           "(tables.patients.columns.sex) says phi: false"),
    ("consent_research", {"type": "string"}, "type string here, but the column catalog pipeline/catalog/raw.yaml "
                                             "(tables.patients.columns.consent_research) says type boolean"),
])
def test_when_a_contract_disagrees_with_the_catalog_then_loading_names_both_places(tmp_path, column, change,
                                                                                  message):
    data = yaml.safe_load(resources.files("ingestion").joinpath("contracts/patients.yaml").read_text("utf-8"))
    data["columns"][column].update(change)
    path = tmp_path / "patients.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError) as caught:
        load_contract(path)
    assert f"contract {path} is invalid" in str(caught.value) and message in str(caught.value)


def test_when_a_contract_agrees_with_the_catalog_or_names_an_unknown_column_then_its_phi_stands(tmp_path):
    data = yaml.safe_load(resources.files("ingestion").joinpath("contracts/patients.yaml").read_text("utf-8"))
    data["columns"]["city"]["phi"] = True
    data["columns"]["badge_number"] = {"type": "string", "phi": True}
    data["columns"]["shoe_size"] = {"type": "integer"}
    path = tmp_path / "patients.yaml"
    path.write_text(yaml.safe_dump(data))
    contract = load_contract(path)
    assert {"city", "badge_number"} <= set(contract.phi_columns) and "shoe_size" not in contract.phi_columns


def test_when_a_policy_classes_a_column_against_the_catalog_then_loading_names_both_places(tmp_path):
    data = yaml.safe_load(POLICIES[0].read_text())
    data["column_classes"] = {"quasi_identifier": ["city"], "non_sensitive": ["_record_hash"]}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SettingsError) as caught:
        load_policy(path)
    assert f"invalid policy file {path}" in str(caught.value)
    assert "city is quasi_identifier here but direct_identifier for raw.patients in pipeline/catalog/raw.yaml" \
        in str(caught.value)
    assert "_record_hash is non_sensitive here but direct_identifier for raw.patients" in str(caught.value)


# the catalog validates itself ----------------------------------------------------------------------------------


def _broken(edit) -> str:
    data = copy.deepcopy(_raw_yaml())
    edit(data)
    with pytest.raises(PydanticValidationError) as caught:
        RawZone.model_validate(data)
    return str(caught.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["tables"]["patients"]["columns"]["ssn"].update(mask="keep"),
     "tables.patients.columns.ssn: a PHI column may not be published with 'keep'"),
    (lambda d: d["tables"]["encounters"]["columns"]["provider_npi"].update(mask="partial_mask"),
     "a direct-identifier column may not be published with 'partial_mask'"),
    (lambda d: d["tables"]["patients"]["columns"]["sex"].pop("mask"), "tables.patients.columns.sex: a raw column "
                                                                      "needs a mask"),
    (lambda d: d["tables"]["patients"]["quasi_identifiers"].append("consent_research"),
     "'consent_research' is published as non_sensitive, not quasi_identifier"),
    (lambda d: d["tables"]["patients"]["quasi_identifiers"].append("zip"), "'zip' is not a published column"),
    (lambda d: d["ladders"].update(shoe_size=["*"]), "ladders: ['shoe_size'] are not quasi-identifiers"),
    (lambda d: d["tables"]["encounters"]["columns"]["encounter_id"].update(mask={"op": "pseudonym"}),
     "a pseudonym needs a key name"),
    (lambda d: d["tables"]["patients"]["columns"]["sex"].update({"class": "secret"}), "class"),
    (lambda d: d["tables"]["outcomes"]["columns"]["prevalent_t2d"].update(mask={"op": "keep", "as": "index_year"}),
     "are both published as 'index_year'"),
], ids=["phi-kept", "identifier-partially-masked", "no-mask", "qi-not-quasi", "qi-not-published", "stray-ladder",
        "pseudonym-without-key", "unknown-class", "name-clash"])
def test_when_the_catalog_is_inconsistent_then_it_fails_at_load_naming_the_column(edit, message):
    assert message in _broken(edit)
