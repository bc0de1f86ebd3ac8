"""Contracts as data: shipped contracts load, bad ones are refused with the field named; inference and codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.codes import loinc_check_digit_ok
from ingestion.contract import CONFORMED_TABLES, builtin_contract, load_contract
from ingestion.infer import classify_phi, infer_contract
from pipeline.errors import ValidationError


@pytest.mark.parametrize("table", CONFORMED_TABLES)
def test_when_a_shipped_contract_is_loaded_then_it_declares_its_key_and_phi(table: str) -> None:
    contract = builtin_contract(table)
    assert contract.table == table and contract.key in contract.columns
    assert contract.phi_columns, "every conformed table holds some PHI"
    assert "facility_id" not in contract.phi_columns


@pytest.mark.parametrize(("text", "message"), [
    ("table: t\ncolumns: {a: {type: text}}\n", "columns.a.type"),
    ("table: t\nkey: b\ncolumns: {a: {type: string}}\n", "does not declare: ['b']"),
    ("table: T-1\ncolumns: {a: {}}\n", "lower_snake_case"),
    ("table: t\ncolumns: {_record_hash: {}}\n", "reserved"),
    ("table: t\ncolumns: {__limit_low_0: {}}\n", "reserved"),
    ("table: t\ncolumns: {a: {pattern: '('}}\n", "not a valid regular expression"),
    ("table: t\ncolumns: {a: {type: string}}\nranges: [{column: a, by: a, limits: {x: [1, 2]}}]\n",
     "must be float or integer"),
    ("[1, 2]\n", "must be a mapping"),
    ("table: t\ncolumns: {a: {type: string, colour: red}}\n", "colour"),
])
def test_when_a_contract_is_invalid_then_loading_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError, match="contract") as caught:
        load_contract(path)
    assert message in str(caught.value)


def test_when_a_contract_is_written_as_yaml_then_it_loads_back_equal(tmp_path: Path) -> None:
    contract = builtin_contract("observations")
    path = tmp_path / "o.yaml"
    path.write_text(contract.to_yaml())
    assert load_contract(path) == contract


@pytest.mark.parametrize(("code", "valid"), [
    ("8480-6", True), ("2345-7", True), ("4548-4", True), ("13457-7", True), ("39156-5", True),
    ("8480-5", False), ("2345-X", False), ("123456-7", False), ("", False),
])
def test_when_a_loinc_code_is_checked_then_the_mod10_check_digit_decides(code: str, valid: bool) -> None:
    assert loinc_check_digit_ok(code) is valid


@pytest.mark.parametrize(("name", "values", "why"), [
    ("last_name", ["Doe"], "name"), ("SSN", ["x"], "name"), ("home_phone", ["x"], "name"),
    ("contact", ["123-45-6789", "987-65-4321"], "ssn"), ("reach", ["a@example.com", "b@example.org"], "email"),
    ("score", ["3.5", "4.0"], None), ("facility_id", ["FAC-A"], None),
])
def test_when_a_column_is_classified_then_phi_is_found_by_name_or_value_pattern(name, values, why) -> None:
    assert classify_phi(name, values) == why


def test_when_a_contract_is_inferred_then_types_ranges_enums_and_phi_follow_the_data(tmp_path: Path) -> None:
    lines = ["visit_id,person_id,email,ward,temp,visits,visited_on,mrn"]
    lines += [f"V{i},P{i},p{i}@example.com,{'AB'[i % 2]},{36.5 + i / 100},{i},2024-01-{1 + i % 28:02d},00{i:05d}"
              for i in range(60)]
    path = tmp_path / "visits.csv"
    path.write_text("\n".join(lines) + "\n")
    contract = infer_contract(path, table="visits")
    types = {n: c.type for n, c in contract.columns.items()}
    assert types == {"visit_id": "string", "person_id": "string", "email": "string", "ward": "string",
                     "temp": "float", "visits": "integer", "visited_on": "date", "mrn": "string"}
    assert set(contract.phi_columns) == {"person_id", "email", "mrn"}
    assert contract.columns["ward"].enum == ("A", "B")
    assert (contract.columns["visits"].min, contract.columns["visits"].max) == (0, 59)
    assert contract.key == "visit_id" and contract.patient_column == "person_id"
