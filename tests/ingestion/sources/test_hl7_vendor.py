"""The seven vendor HL7 v2 messages of tests/fixtures/hl7v2 (nodehl7, simple-hl7: MIT) read into the tables.

Each test says what a data engineer would check in the rows the reader hands to the conform step: values as
found (HL7 TS strings, coding-system names), the patient each row belongs to, and the true reason for each row
the file itself gets wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingestion.sources.hl7v2 import read_hl7

VENDOR = Path(__file__).parents[2] / "fixtures" / "hl7v2"


def _read(name: str) -> tuple[dict[str, list[dict[str, Any]]], list[Any], dict[str, int]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    rejected: list[Any] = []
    units: dict[str, int] = {}
    for chunk in read_hl7(VENDOR / name, chunk_rows=1000, max_record_bytes=1 << 20):
        for table, rows in chunk.tables.items():
            tables.setdefault(table, []).extend(rows.rows)
        rejected += chunk.rejected
        for unit, count in chunk.units.items():
            units[unit] = units.get(unit, 0) + count
    return tables, rejected, units


def test_when_the_epic_adt_a01_is_read_then_patient_and_inpatient_visit_land_as_found() -> None:
    tables, rejected, units = _read("nodehl7_ADTA01.hl7")
    assert units == {"messages": 1} and rejected == []
    (patient,) = tables["patients"]
    assert {k: patient[k] for k in (
        "patient_id", "first_name", "last_name", "sex", "birth_date", "ssn", "city", "state", "zip", "phone",
        "facility_id")} == {
        "patient_id": "MRN12345", "first_name": "JOHN", "last_name": "APPLESEED", "sex": "M",
        "birth_date": "19710101", "ssn": "123456789", "city": "MADISON", "state": "WI", "zip": "53005-1020",
        "phone": "(414)379-1212", "facility_id": "DH"}
    (visit,) = tables["encounters"]
    # No PV1-19 visit number in this message: the control id names the visit (documented fallback).
    assert visit["encounter_type"] == "IMP" and visit["encounter_id"] == "HL7MSG00001"
    assert visit["patient_id"] == "MRN12345" and visit["provider_npi"] is None  # PV1-7 is a local id, not an NPI
    (kept,) = tables["resources"]  # NK1 is not mapped: the whole message is kept, sealed
    body = json.loads(kept["resource_json"])
    assert kept["resource_type"] == "ADT" and body["type"] == "ADT^A01" and body["version"] == "2.3.1"
    assert body["unmapped"] == ["NK1"] and len(body["segments"]) == 5


def test_when_the_adt_a04_without_evn_is_read_then_the_outpatient_visit_lands() -> None:
    tables, rejected, _ = _read("simple-hl7_adt.hl7")
    assert rejected == []
    (patient,) = tables["patients"]
    assert (patient["patient_id"], patient["last_name"], patient["birth_date"], patient["state"],
            patient["phone"]) == ("454721", "DOE", "19480203", "OH", "(216)123-4567")
    (visit,) = tables["encounters"]
    assert (visit["encounter_id"], visit["encounter_type"], visit["admit_time"]) == ("2688684", "AMB",
                                                                                    "199912271408")


def test_when_the_lipid_panel_with_cr_only_segments_is_read_then_values_units_ranges_and_flags_land() -> None:
    tables, rejected, _ = _read("simple-hl7_oru.hl7")
    assert rejected == []
    rows = {r["code"]: r for r in tables["observations"]}
    assert set(rows) == {"JHDL", "JTRIG", "JVLDL", "JLDL", "JCHO"}
    ldl = rows["JLDL"]
    assert (ldl["value"], ldl["unit"], ldl["reference_range"], ldl["interpretation"]) == (134.0, "mg/dL",
                                                                                          "0-100", "H")
    assert ldl["code_system"] == "L"  # a local code with no coding system: HL7 table 0396 'L' (documented)
    assert ldl["effective_time"] == "20080511103500" and ldl["category"] == "laboratory"
    assert rows["JHDL"]["reference_range"] == ">40" and rows["JHDL"]["interpretation"] is None  # "" is null
    assert {r["patient_id"] for r in rows.values()} == {"94000000000"}
    assert len({r["observation_id"] for r in rows.values()}) == 5
    (panel,) = tables["diagnostic_reports"]  # the OBR: the panel the five results belong to
    assert (panel["report_id"], panel["code"], panel["code_system"], panel["description"]) == (
        "185L29839X64489JLPF:1", "JLPF", "L", "Lipid Panel - C")
    assert all(r["observation_id"].startswith(panel["report_id"] + ":") for r in rows.values())


def test_when_the_v22_culture_report_is_read_then_coded_and_text_results_land_and_notes_are_kept() -> None:
    tables, rejected, _ = _read("nodehl7_birp_ORUR01.hl7")
    assert rejected == []
    rows = tables["observations"]
    assert [(r["code"], r["value_text"]) for r in rows] == [("008342", "FINALREPORT"), ("997231", "M415"),
                                                            ("997232", "MR105")]
    assert all(r["effective_time"] == "19980729160500" for r in rows)  # OBX-14 written with a leading space
    reports = tables["diagnostic_reports"]
    assert [(r["code"], r["status"], r["effective_time"]) for r in reports] == [
        ("008342", "final", "19980727175800"), ("997602", "final", "19980727175800")]
    assert len({r["observation_id"] for r in rows}) == 3  # two orders share a filler number: still distinct
    (kept,) = tables["resources"]
    assert json.loads(kept["resource_json"])["unmapped"] == ["NTE"]


def test_when_the_cerner_result_has_a_shifted_obx_then_its_value_is_not_a_number_for_the_contract() -> None:
    # OBX|1|NM|GLU^Glucose Lvl|59|mg/dL|... : the sender left out OBX-4, so OBX-5 holds the unit. The reader
    # passes it as found; the contract's value:type check quarantines the row, the patient still lands.
    tables, rejected, _ = _read("nodehl7_bicp_ORUR01.hl7")
    assert rejected == [] and tables["patients"][0]["patient_id"] == "001677980"
    (glucose,) = tables["observations"]
    assert glucose["code"] == "GLU" and glucose["value"] == "mg/dL"


def test_when_the_order_without_rxo_is_read_then_it_lands_as_a_procedure_to_be_done() -> None:
    tables, rejected, _ = _read("simple-hl7_orm.hl7")
    assert rejected == [] and "medications" not in tables
    (order,) = tables["procedures"]
    assert (order["code"], order["description"], order["status"], order["patient_id"]) == (
        "003038", "Urinalysis", "preparation", "12001")
    assert tables["encounters"][0]["encounter_type"] == "AMB"


def test_when_the_vaers_report_is_read_then_its_loinc_results_land_and_its_broken_obx_is_rejected() -> None:
    tables, rejected, _ = _read("simple-hl7_oru-imm.hl7")
    (patient,) = tables["patients"]
    assert (patient["patient_id"], patient["mrn"], patient["race"], patient["address"]) == (
        "1234", "00725", "White", "123 Peachtree St, APT 3B")
    rows = tables["observations"]
    by_code = {r["code"]: r for r in rows if r["code"]}
    age = by_code["21612-7"]
    assert (age["value"], age["unit"], age["loinc_code"], age["code_system"]) == (5.0, "mo", "21612-7", "LN")
    assert by_code["30949-2"]["value_text"] == "required hospitalization"  # CE value: its display text
    assert by_code["8339-4"]["value"] == 82.0 and by_code["8339-4"]["unit"] == "oz"
    # Segment 18 reads "OBX|1|CE30955-9&30956-7^...": its value type is not an HL7 data type.
    (bad,) = rejected
    assert bad.table == "observations" and bad.rule == "hl7:value_type" and "segment 18 (OBX)" in bad.position
    assert "Doe" not in bad.reason
    # Four OBX put their code in OBX-4 (OBX-3 empty): no code, the contract's code:required rejects them.
    assert sum(1 for r in rows if r["code"] is None) == 4
    assert len(rows) == 46 and len({r["observation_id"] for r in rows}) == 46  # 47 OBX, one rejected


@pytest.mark.parametrize("name", sorted(p.name for p in VENDOR.glob("*.hl7")))
def test_when_any_vendor_message_is_read_then_every_row_has_the_patient_and_no_message_is_lost(name: str) -> None:
    tables, _, units = _read(name)
    assert units == {"messages": 1}
    (patient,) = tables["patients"]
    for table, rows in tables.items():
        assert all(r["patient_id"] == patient["patient_id"] for r in rows), table
