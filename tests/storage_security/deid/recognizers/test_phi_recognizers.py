"""Each healthcare recognizer: what it must find, what it must leave alone (checksums included)."""

from __future__ import annotations

import pytest
from _deid_raw import shared_detector

from storage_security.deid.recognizers import enabled_recognizers, recognizer_config
from storage_security.deid.recognizers._base import luhn_ok
from storage_security.deid.recognizers.dea_recognizer import DeaRecognizer
from storage_security.deid.recognizers.npi_recognizer import NpiRecognizer
from storage_security.deid.recognizers.vin_recognizer import VinRecognizer

FOUND = [
    ("MEDICAL_RECORD_NUMBER", "Pt seen today. MRN: 00733103 on file.", "00733103"),
    ("MEDICAL_RECORD_NUMBER", "Medical record number 12345678 verified", "12345678"),
    ("HEALTH_PLAN_ID", "insurance member ID H108470662.", "H108470662"),
    ("US_SSN", "SSN 887-57-6670 verified", "887-57-6670"),
    ("NPI", "signed by Dr. Kerry Mullen (NPI 1234567893)", "1234567893"),
    ("DEA_NUMBER", "prescriber DEA AB1234563 on the script", "AB1234563"),
    ("VIN", "drives a car, VIN 1HGCM82633A004352", "1HGCM82633A004352"),
    ("DEVICE_ID", "Home glucometer (serial GLM-4321-56789) reviewed", "GLM-4321-56789"),
    ("DEVICE_ID", "pacemaker UDI (01)00844588003288(21)A1234", "(01)00844588003288(21)A1234"),
    ("ACCOUNT_NUMBER", "Billing account #: AC-8837261 closed", "AC-8837261"),
    ("LICENSE_NUMBER", "Driver license number D1234567 on file", "D1234567"),
    ("LICENSE_NUMBER", "RN Lic. 0098231 (Illinois)", "0098231"),
    ("DEVICE_ID", "S/N: PX-2231-A9 replaced", "PX-2231-A9"),
    ("FAX_NUMBER", "Send records to fax: (312) 555-0199 today", "(312) 555-0199"),
    ("PHONE_NUMBER", "Can be reached at 212-338-2379 or by mail", "212-338-2379"),
    ("ZIP_CODE", "Lives at 5 Oak Street, New York, NY 10059.", "10059"),
    ("STREET_ADDRESS", "Lives at 5509 Vasquez Bypass, New York, NY 10059.", "5509 Vasquez Bypass"),
    ("STREET_ADDRESS", "Mail to 12 N Main St, Apt 4B please", "12 N Main St, Apt 4B"),
    ("LOCATION", "Lives at 5 Oak Street, Springfield, IL 62701.", "Springfield"),
    ("DATE_TIME", "Patient admitted on 03/14/2023 with chest pain", "03/14/2023"),
    ("DATE_TIME", "DOB: 02 Oct 1941", "02 Oct 1941"),
    ("DATE_TIME", "Last seen on November 02, 2024.", "November 02, 2024"),
    ("DATE_TIME", "discharged 2024-11-18 in stable condition", "2024-11-18"),
    ("AGE", "HPI: she is a 93-year-old woman", "93"),
    ("AGE", "Aged 101, lives alone", "101"),
    ("PERSON", "Pt: Evan Clark  MRN: 1", "Evan Clark"),
    ("PERSON", "Accompanied by daughter Maria Lopez.", "Maria Lopez"),
    ("PERSON", "Electronically signed by Dr. Ethan Nicholson (NPI", "Ethan Nicholson"),
    ("EMAIL_ADDRESS", "write to evan.clark10@example.org today", "evan.clark10@example.org"),
    ("IP_ADDRESS", "Portal message received from 73.12.200.5.", "73.12.200.5"),
    ("URL", "Photos shared via https://portal.example.org/share/123.", "https://portal.example.org/share/123"),
]

NOT_FOUND = [
    ("NPI", "order number 1234567890 placed"),          # fails the NPI Luhn check
    ("DEA_NUMBER", "code AB1234567 in the list"),      # fails the DEA check digit
    ("VIN", "lot 1HGCM82633A004353 recalled"),         # wrong VIN check digit
    ("US_SSN", "SSN 000-12-3456 is void"),             # area 000 is never issued
    ("AGE", "HPI: he is a 57-year-old man"),           # ages under 90 are not PHI
    ("STREET_ADDRESS", "Continue Metformin 500 mg daily."),
    ("DEVICE_ID", "Pt: Todd Snyder  MRN# 03179401"),          # "Sn" in a surname is not a serial label
    ("DATE_TIME", "BP 139/84, HbA1c 7.2%, glucose 89 mg/dL."),
]


@pytest.fixture(scope="module")
def detector():
    return shared_detector()


@pytest.mark.parametrize(("entity", "text", "value"), FOUND, ids=[f"{e}-{v}" for e, _, v in FOUND])
def test_when_phi_is_in_text_then_a_span_of_its_type_covers_it(detector, entity, text, value):
    start = text.index(value)
    spans = detector.detect(text)
    assert any(s.entity_type == entity and s.start <= start and start + len(value) <= s.end for s in spans), spans


@pytest.mark.parametrize(("entity", "text"), NOT_FOUND, ids=[e for e, _ in NOT_FOUND])
def test_when_a_lookalike_is_not_phi_then_no_span_of_that_type(detector, entity, text):
    assert not [s for s in detector.detect(text) if s.entity_type == entity]


@pytest.mark.parametrize(("recognizer", "value", "valid"), [
    (NpiRecognizer, "1234567893", True), (NpiRecognizer, "1234567890", False),
    (DeaRecognizer, "AB1234563", True), (DeaRecognizer, "AB1234564", False),
    (VinRecognizer, "1HGCM82633A004352", True), (VinRecognizer, "1HGCM82633A004351", False),
])
def test_when_a_checksum_is_checked_then_only_valid_numbers_pass(recognizer, value, valid):
    assert recognizer().validate_result(value) is valid


def test_when_luhn_is_applied_then_known_numbers_pass_and_typos_fail():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_when_a_recognizer_is_disabled_in_yaml_then_it_is_not_built():
    config = recognizer_config()
    config["recognizers"] = [dict(e, enabled=e["class"].startswith("npi")) for e in config["recognizers"]]
    assert [type(r).__name__ for r in enabled_recognizers(config)] == ["NpiRecognizer"]


def test_when_yaml_names_an_unknown_recognizer_then_loading_fails():
    with pytest.raises((ValueError, ModuleNotFoundError)):
        enabled_recognizers({"recognizers": [{"class": "npi_recognizer.Nope"}]})
