"""Code systems as sources name them, and offline validation per system: a code is judged by its own system only.

Beside hand-picked cases, every coding of a validated system in the third-party files under tests/fixtures
(official FHIR R4 examples, Synthea bundles, vendors' C-CDA documents) is checked: all are valid but the few listed
below, each a real defect of its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from _chunk_verdicts import conformed_verdicts
from lxml import etree

from ingestion.codes import SYSTEMS, invalid_codes, is_valid, map_systems, short_name
from ingestion.contract import load_contract
from pipeline.errors import ValidationError

FIXTURES = Path(__file__).parents[1] / "fixtures"
VALIDATED = ("icd10cm", "snomed", "loinc", "rxnorm", "ndc", "cvx", "cpt", "hcpcs")
# The codes of those systems in the fixtures that are not valid, and why.
DEFECTS = {
    ("ndc", "0264751010"): "10 digits without hyphens: which of 4-4-2, 5-3-2 or 5-4-1 is unsaid",
    ("ndc", "2501-813-16"): "4-3-2 is 9 digits, not an NDC form",
    ("snomed", "415818005"): "the Verhoeff check digit is wrong",
    ("loinc", "3139-2"): "the mod-10 check digit is wrong (Cerner's body surface area)",
}


@pytest.mark.parametrize(("written", "short"), [
    ("http://loinc.org", "loinc"), ("LN", "loinc"), ("2.16.840.1.113883.6.1", "loinc"),
    ("urn:oid:2.16.840.1.113883.6.1", "loinc"), ("http://snomed.info/sct", "snomed"), ("SCT", "snomed"),
    ("2.16.840.1.113883.6.96", "snomed"), ("http://hl7.org/fhir/sid/icd-10-cm", "icd10cm"), ("I10", "icd10cm"),
    ("2.16.840.1.113883.6.90", "icd10cm"), ("http://hl7.org/fhir/sid/icd-9-cm", "icd9cm"), ("I9CDX", "icd9cm"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "rxnorm"), ("RXNORM", "rxnorm"),
    ("2.16.840.1.113883.6.88", "rxnorm"), ("http://hl7.org/fhir/sid/ndc", "ndc"), ("NDC", "ndc"),
    ("http://hl7.org/fhir/sid/cvx", "cvx"), ("CVX", "cvx"), ("2.16.840.1.113883.12.292", "cvx"),
    ("http://www.ama-assn.org/go/cpt", "cpt"), ("C4", "cpt"), ("HCPCS", "hcpcs"),
    ("http://unitsofmeasure.org", "ucum"), ("2.16.840.1.113883.6.8", "ucum"), ("loinc", "loinc"),
    ("99zzz", "99zzz"), ("L", "L"), ("http://acme.org/lab-codes", "http://acme.org/lab-codes"),
    ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10"),   # WHO ICD-10 is not ICD-10-CM
])
def test_when_a_system_is_named_as_a_source_names_it_then_it_maps_to_its_short_name(written: str,
                                                                                      short: str) -> None:
    assert short_name(written) == short


@pytest.mark.parametrize(("system", "code", "valid"), [
    ("icd10cm", "E11.9", True), ("icd10cm", "E119", True), ("icd10cm", "E11", True), ("icd10cm", "Z00.00", True),
    ("icd10cm", "E11.9X", False), ("icd10cm", "XYZ.99", False), ("icd10cm", "E08-E13", False),
    ("loinc", "8480-6", True), ("loinc", "8480-5", False), ("loinc", "84806", False),
    ("loinc", "LA6724-4", True),                                        # an answer code (Apgar score)
    ("snomed", "44054006", True), ("snomed", "73211009", True), ("snomed", "44054007", False),
    ("snomed", "012345", False), ("snomed", "12345", False),
    ("snomed", "71341001:272741003=7771000", True), ("snomed", "71341001:272741003=7771001", False),
    ("ndc", "0002-3227-30", True), ("ndc", "50090-347-01", True), ("ndc", "00002322730", True),
    ("ndc", "50090-0001", True), ("ndc", "0264751010", False), ("ndc", "1234-56", False),
    ("rxnorm", "860975", True), ("rxnorm", "123456789", False), ("rxnorm", "RX1", False),
    ("cvx", "140", True), ("cvx", "08", True), ("cvx", "1400", False),
    ("cpt", "99213", True), ("cpt", "0001F", True), ("cpt", "0042T", True), ("cpt", "9921", False),
    ("hcpcs", "J1100", True), ("hcpcs", "j1100", False),
    ("icd9cm", "250.00", True), ("ucum", "mm[Hg]", True), ("99zzz", "GLU-FAST", True),
    ("99zzz", " ", False), ("99zzz", "A\x07B", False), ("99zzz", "x" * 65, False),
])
def test_when_a_code_is_checked_then_only_its_own_systems_rules_apply(system: str, code: str, valid: bool) -> None:
    assert is_valid(code, system) is valid
    assert bool(invalid_codes(pa.array([code]), system)[0]) is not valid
    assert bool(invalid_codes(pa.array([code]), pa.array([system]))[0]) is not valid


def test_when_a_column_mixes_systems_then_each_row_is_judged_by_its_own() -> None:
    codes = pa.array(["44054006", "E11.9", "E11.9X", "8480-6", "LOCAL-1", None, "44054007", "ABC"])
    systems = pa.array(["snomed", "icd10cm", "icd10cm", "loinc", "99zzz", "snomed", "snomed", None])
    assert invalid_codes(codes, systems).tolist() == [False, False, True, False, False, False, True, False]


def test_when_systems_arrive_as_found_then_they_are_mapped_once_per_distinct_value() -> None:
    found = pa.array(["http://snomed.info/sct", None, "loinc", "I10", "99zzz", "http://snomed.info/sct"])
    assert map_systems(found).to_pylist() == ["snomed", None, "loinc", "icd10cm", "99zzz", "snomed"]
    short = pa.array(list(SYSTEMS))
    assert map_systems(short) is short                     # the fast path: nothing to map


def _codings_in_fixtures() -> list[tuple[str, str, str]]:
    found = []

    def walk(node, name):
        if isinstance(node, dict):
            if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
                found.append((short_name(node["system"]), node["code"], name))
            for value in node.values():
                walk(value, name)
        elif isinstance(node, list):
            for value in node:
                walk(value, name)

    for path in sorted((FIXTURES / "fhir").glob("*/*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")), path.name)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for path in sorted((FIXTURES / "ccda").glob("*.xml")):
        for element in etree.parse(str(path), parser).iter():
            if isinstance(element.tag, str) and element.get("code") and element.get("codeSystem"):
                found.append((short_name(element.get("codeSystem")), element.get("code"), path.name))
    return [(system, code, name) for system, code, name in found if system in VALIDATED]


def test_when_the_third_party_fixtures_codes_are_checked_then_all_are_valid_but_the_known_defects() -> None:
    codings = _codings_in_fixtures()
    assert len(codings) > 1500 and {s for s, _, _ in codings} >= {"snomed", "loinc", "rxnorm", "icd10cm", "cvx"}
    invalid = {(system, code) for system, code, _ in codings if not is_valid(code, system)}
    assert invalid == set(DEFECTS)


def test_when_conditions_come_in_snomed_icd10_and_local_codes_then_only_malformed_ones_are_rejected() -> None:
    base = {"patient_id": "p1", "description": "Diabetes"}
    rows = [
        {**base, "condition_id": "c1", "code": "44054006", "code_system": "http://snomed.info/sct"},   # Synthea
        {**base, "condition_id": "c2", "code": "E119", "code_system": "I10", "icd10_code": "E119"},   # HL7 v2
        {**base, "condition_id": "c3", "code": "DM2", "code_system": "99zzz"},                        # local
        {**base, "condition_id": "c4", "code": "44054007", "code_system": "2.16.840.1.113883.6.96"},  # bad check
        {**base, "condition_id": "c5", "code": "E11.9X", "code_system": "icd10cm", "icd10_code": "E11.9X"},
        {**base, "condition_id": "c6", "code": "250.00", "code_system": "http://hl7.org/fhir/sid/icd-9-cm"},
    ]
    data, verdicts = conformed_verdicts("conditions", rows)
    assert [r["code_system"] for r in data] == ["snomed", "icd10cm", "99zzz", "snomed", "icd10cm", "icd9cm"]
    # The malformed ICD-10-CM code is judged once, by icd10_code's own rule, not again through code.
    assert verdicts == {3: {"code:code_system"}, 4: {"icd10_code:code_system"}}


def test_when_a_medication_has_only_an_rxnorm_code_then_no_ndc_is_needed() -> None:
    rows = [{"medication_id": "m1", "patient_id": "p1", "kind": "request", "code": "860975",
             "code_system": "http://www.nlm.nih.gov/research/umls/rxnorm", "rxnorm_code": "860975"},
            {"medication_id": "m2", "patient_id": "p1", "kind": "statement", "code": "RX-860975",
             "code_system": "RXNORM", "rxnorm_code": "RX-860975"}]
    _, verdicts = conformed_verdicts("medications", rows)
    assert verdicts == {1: {"rxnorm_code:code_system"}}


def test_when_a_contract_pairs_codes_wrongly_then_it_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("table: t\ncolumns:\n  code: {type: string, code_system: loinc}\n  sys: {type: string}\n"
                    "codes:\n  - {code: code, system: sys}\n")
    with pytest.raises(ValidationError, match="fixed code_system"):
        load_contract(path)
    path.write_text("table: t\ncolumns:\n  code: {type: string}\ncodes:\n  - {code: code, system: nowhere}\n")
    with pytest.raises(ValidationError, match="does not declare"):
        load_contract(path)


@pytest.mark.parametrize(("written", "expected", "factor"), [
    ("mm[Hg]", "mm[Hg]", 1.0), ("mmHg", "mm[Hg]", 1.0), ("[in_i]", "cm", 2.54), ("in", "cm", 2.54),
    ("[lb_av]", "kg", 0.45359237), ("g", "kg", 0.001), ("mmol/L", "mg/dL", None), ("cm", "kg", None)])
def test_when_a_value_is_in_another_unit_then_it_converts_only_within_its_quantity(written: str, expected: str,
                                                                                    factor: float | None) -> None:
    from math import isnan

    from ingestion.codes import unit_factor

    found = unit_factor(written, expected)
    assert isnan(found) if factor is None else found == pytest.approx(factor)
