"""The vendor HL7 v2 messages end to end through ``ingest``: what lands in raw (decrypted), what is quarantined and
why, and ``rows in = accepted + quarantined`` for every table — as a data engineer would check a first feed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ingestion.batch import ingest

VENDOR = Path(__file__).parents[2] / "fixtures" / "hl7v2"
MLLP_BATCH = (b"FHS|^~\\&|LAB|EAST|||20240102||||F1\rBHS|^~\\&|LAB|EAST|||20240102||||B1\r"
              b"\x0bMSH|^~\\&|LAB|EAST|MEDGUARD|MEDGUARD|20240102080000||ORU^R01|R1|P|2.8\r"
              b"PID|1||PAT2^^^EAST^PI||Roe^Rick||19600505|M\r"
              b"OBR|1|P9|F9|24323-8^Comprehensive metabolic panel^LN|||20240102073000\r"
              b"OBX|1|NM|2345-7^Glucose^LN||98|mg/dL^^UCUM|70-99|N|||F|||20240102074500\r\x1c\r"
              b"\x0bMSH|^~\\&|LAB|EAST|MEDGUARD|MEDGUARD|20240102080000||ORU^R01|R2|P|2.8\r"
              b"PID|1||PAT3^^^EAST^PI||Poe^Ann||19610606|F\r"
              b"OBX#broken\r\x1c\r"
              b"\x0bMSH|^~\\&|IIS|EAST|||20240301||VXU^V04^VXU_V04|V1|P|2.5.1\r"
              b"PID|1||PAT4^^^EAST^MR||Kid^Amy||20200101|F\r"
              b"ORC|RE||IZ-1^EAST\r"
              b"RXA|0|1|20240301093000||08^Hep B, adolescent or pediatric^CVX|0.5|mL^^UCUM||||||||||||||CP|A\r\x1c\r"
              b"BTS|3\rFTS|1\r")


def _counts(report: Any) -> dict[str, tuple[int, int, int]]:
    for counts in report.tables.values():
        assert counts.rows_in == counts.accepted + counts.quarantined
    return {t: (c.rows_in, c.accepted, c.quarantined) for t, c in report.tables.items()}


def _raw(plake: Any, table: str) -> list[dict[str, Any]]:
    return plake.read("raw", table, decrypt=True).to_pylist() if plake.lake.exists("raw", table) else []


def _rejects(plake: Any) -> list[dict[str, Any]]:
    if not plake.lake.exists("quarantine", "records"):
        return []
    return plake.read("quarantine", "records", decrypt=True).to_pylist()


def test_when_the_seven_vendor_messages_are_ingested_then_each_lands_and_every_reject_has_a_true_reason(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    folder = tmp_path / "feed"
    shutil.copytree(VENDOR, folder, ignore=shutil.ignore_patterns("*.md", ".gitattributes"))
    report = ingest(ing_settings, source="hl7", path=folder, plake=plake, docs=False)
    counts = _counts(report)
    assert counts["messages"] == (7, 7, 0)
    patients = {p["patient_id"]: p for p in _raw(plake, "patients")}
    # The v2.2 culture report's PID-19 reads "SSN# HERE": that patient row fails ssn:pattern (its results load).
    assert set(patients) == {"MRN12345", "001677980", "454721", "12001", "1234", "94000000000"}
    assert counts["patients"] == (7, 6, 1)
    assert patients["MRN12345"]["ssn"] == "123-45-6789"
    assert patients["MRN12345"]["birth_date"] == "1971-01-01" and patients["MRN12345"]["state"] == "WI"
    assert patients["454721"]["sex"] == "M" and patients["1234"]["race"] == "White"
    encounters = {e["encounter_id"]: e for e in _raw(plake, "encounters")}
    assert set(encounters) == {"HL7MSG00001", "2688684", "2"}
    assert encounters["HL7MSG00001"]["encounter_type"] == "IMP"
    assert encounters["2688684"]["admit_time"] == "1999-12-27T14:08:00Z"
    observations = _raw(plake, "observations")
    ldl = next(o for o in observations if o["code"] == "JLDL")
    assert (ldl["value"], ldl["unit"], ldl["reference_range"], ldl["interpretation"]) == (134.0, "mg/dL", "0-100",
                                                                                          "H")
    assert ldl["effective_time"] == "2008-05-11T10:35:00Z"
    age = next(o for o in observations if o["code"] == "21612-7")
    assert (age["value"], age["unit"], age["loinc_code"], age["code_system"]) == (5.0, "mo", "21612-7", "loinc")
    assert ldl["code_system"] == "L"  # a local code with no system: HL7 0396 'L', an unknown system kept as given
    assert {o["code"] for o in observations} >= {"JHDL", "JTRIG", "JVLDL", "JCHO", "008342", "997231", "997232",
                                                  "8339-4", "30974-0"}
    reports = {r["report_id"]: r for r in _raw(plake, "diagnostic_reports")}
    assert reports["185L29839X64489JLPF:1"]["description"] == "Lipid Panel - C"
    assert reports["20809880170:2"]["status"] == "final"
    (order,) = _raw(plake, "procedures")
    assert (order["code"], order["description"], order["status"]) == ("003038", "Urinalysis", "preparation")
    kept = {r["resource_id"]: json.loads(r["resource_json"]) for r in _raw(plake, "resources")}
    assert kept["HL7MSG00001"]["unmapped"] == ["NK1"] and kept["3629"]["unmapped"] == ["NTE"]
    # What is quarantined is what the files get wrong, each named by its message and segment.
    rejects = _rejects(plake)
    by_rule: dict[str, int] = {}
    for row in rejects:
        for rule in row["rules"]:
            by_rule[rule] = by_rule.get(rule, 0) + 1
        assert row["position"].startswith("message ") and " segment " in row["position"]
        assert "Doe" not in row["reason"] and "APPLESEED" not in row["reason"]
    glucose = next(r for r in rejects if "nodehl7_bicp_ORUR01.hl7" in unlabel(r["position"], folder))
    assert glucose["rules"] == ["value:type"]  # OBX-4 left out: the unit sits in OBX-5
    assert by_rule["hl7:value_type"] == 1       # "OBX|1|CE30955-9&…": no separator after the value type
    assert by_rule["code:required"] == 4 + 5    # four OBX with their code in OBX-4, five VAERS OBR with no code
    assert counts["observations"][2] == len([r for r in rejects if r["table_name"] == "observations"])


def test_when_an_mllp_batch_has_one_broken_message_then_the_others_load_and_it_is_quarantined(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    path = tmp_path / "stream.hl7"
    path.write_bytes(MLLP_BATCH)
    report = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    counts = _counts(report)
    assert counts["messages"] == (3, 2, 1)
    (bad,) = _rejects(plake)
    assert bad["rules"] == ["hl7:garbled"] and unlabel(bad["position"], path) == "message 2 (stream.hl7 line 1)"
    assert "segment 3" in bad["reason"] and "Poe" not in bad["reason"]
    assert sorted(p["patient_id"] for p in _raw(plake, "patients")) == ["PAT2", "PAT4"]
    (glucose,) = _raw(plake, "observations")
    assert (glucose["value"], glucose["loinc_code"], glucose["effective_time"]) == (98.0, "2345-7",
                                                                                   "2024-01-02T07:45:00Z")
    (shot,) = _raw(plake, "immunizations")
    assert (shot["immunization_id"], shot["code"], shot["code_system"], shot["status"], shot["occurrence_time"]) == (
        "IZ-1", "08", "cvx", "completed", "2024-03-01T09:30:00Z")


def test_when_the_same_feed_is_ingested_twice_then_nothing_is_added_twice(tmp_path: Path, ing_settings,
                                                                        plake) -> None:
    path = tmp_path / "stream.hl7"
    path.write_bytes(MLLP_BATCH)
    first = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    again = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    assert again.replayed and again.to_dict()["tables"] == first.to_dict()["tables"]
    assert len(_raw(plake, "patients")) == 2


def test_when_an_adt_and_an_order_carry_allergies_diagnoses_and_a_drug_then_they_land_with_their_systems(
        tmp_path: Path, ing_settings, plake) -> None:
    path = tmp_path / "adt.hl7"
    path.write_bytes(
        b"MSH|^~\\&|EPIC|EAST|||20240101120000||ADT^A01^ADT_A01|A1|P|2.5.1\r"
        b"EVN|A01|20240101120000\r"
        b"PID|1||PAT9^^^EAST^MR||Doe^Jane||19700102|F|||1 Main St^^Town^Oregon^97201||^PRN^PH^^1^503^5550101\r"
        b"PV1|1|I|W1^^^EAST||||||||||||||||V9\r"
        b"AL1|1|DA|7980^Penicillin G^RXNORM|SV|Hives\r"
        b"DG1|1||J45.909^Unspecified asthma, uncomplicated^I10\r"
        b"ZPD|1|site field\r\n"
        b"MSH|^~\\&|CPOE|EAST|||20240101130000||ORM^O01|O1|P|2.4\r"
        b"PID|1||PAT9^^^EAST^MR\r"
        b"ORC|NW|PLC-1\r"
        b"RXO|197361^Amlodipine 5 MG Oral Tablet^RXNORM|5||mg\r\n")
    report = ingest(ing_settings, source="hl7", path=path, plake=plake, docs=False)
    counts = _counts(report)
    assert _rejects(plake) == [] and counts["patients"] == (2, 2, 0)  # the order's sparse PID: a duplicate
    (patient,) = _raw(plake, "patients")
    assert (patient["state"], patient["phone"], patient["birth_date"]) == ("OR", "+15035550101", "1970-01-02")
    (allergy,) = _raw(plake, "allergies")
    assert (allergy["code"], allergy["code_system"], allergy["criticality"]) == ("7980", "rxnorm", "high")
    (condition,) = _raw(plake, "conditions")
    assert (condition["code_system"], condition["icd10_code"], condition["encounter_id"]) == ("icd10cm", "J45.909",
                                                                                             "V9")
    (drug,) = _raw(plake, "medications")
    assert (drug["kind"], drug["code_system"], drug["rxnorm_code"], drug["status"]) == ("order", "rxnorm", "197361",
                                                                                       "active")
    assert json.loads(_raw(plake, "resources")[0]["resource_json"])["unmapped"] == ["ZPD"]
