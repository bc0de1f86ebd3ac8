"""The conform step's normalisers: dates, times, phones, states and SSNs as real sources write them, in one form.

The cases are values as they appear in the third-party files under tests/fixtures and ../shared/data (FHIR R4
examples and Synthea bundles, vendor HL7 v2 messages, C-CDA documents); the file each comes from is named.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from _chunk_verdicts import conformed_verdicts

from ingestion.batch import ingest
from ingestion.normalize import normalize_column, to_date, to_datetime, to_phone, to_ssn, to_us_state


@pytest.mark.parametrize(("written", "date", "moment"), [
    ("2012", "2012-01-01", "2012-01-01T00:00:00Z"),                               # FHIR partial date
    ("2012-03", "2012-03-01", "2012-03-01T00:00:00Z"),
    ("1974-12-25", "1974-12-25", "1974-12-25T00:00:00Z"),                         # Patient-example.json
    ("2013-04-02T09:30:10+01:00", "2013-04-02", "2013-04-02T08:30:10Z"),          # Observation examples
    ("2015-02-07T13:28:17.239+02:00", "2015-02-07", "2015-02-07T11:28:17Z"),      # fraction and offset
    ("2014-05-16T03:46:50-04:00", "2014-05-16", "2014-05-16T07:46:50Z"),          # Synthea
    ("2013-05-15T19:32:52Z", "2013-05-15", "2013-05-15T19:32:52Z"),               # already canonical datetime
    ("2013-04-02T09:30", "2013-04-02", "2013-04-02T09:30:00Z"),                   # no seconds, no offset: UTC
    ("2013-04-02 09:30:10", "2013-04-02", "2013-04-02T09:30:10Z"),                # a CSV's space
    ("19480203", "1948-02-03", "1948-02-03T00:00:00Z"),                           # HL7 PID-7 (vendor ADT)
    ("20120806093000-0500", "2012-08-06", "2012-08-06T14:30:00Z"),                # C-CDA effectiveTime
    ("20130730174133.615-0400", "2013-07-30", "2013-07-30T21:41:33Z"),            # C-CDA with fraction
    ("201308", "2013-08-01", "2013-08-01T00:00:00Z"),                             # HL7 TS to the month
    ("202401011200", "2024-01-01", "2024-01-01T12:00:00Z"),                       # HL7 TS to the minute
])
def test_when_a_date_is_written_in_a_known_form_then_it_becomes_canonical(written: str, date: str,
                                                                          moment: str) -> None:
    assert to_date(written) == date
    assert to_datetime(written) == moment


@pytest.mark.parametrize("written", ["2023-02-30", "19800230", "31/12/2023", "2024-3-1T10:00:00Z", "yesterday",
                                     "2013-04-02T25:00:00Z", "2013-04-02T09:30:10+15:00", ""])
def test_when_a_date_names_no_real_moment_then_it_has_no_canonical_form(written: str) -> None:
    assert to_date(written) is None and to_datetime(written) is None


@pytest.mark.parametrize(("written", "e164"), [
    ("555-352-6871", "+15553526871"),                 # Synthea
    ("(216)123-4567", "+12161234567"),                # vendor HL7 PID-13
    ("tel:+1-(555) 123-4567", "+15551234567"),        # C-CDA telecom
    ("tel: (555) 987-6543", "+15559876543"),          # C-CDA telecom
    ("1-800-555-1212", "+18005551212"),
    ("+33 (237) 998327", "+33237998327"),             # Patient example (France)
    ("4135342500", "+14135342500"),                   # Organization example
    ("(03) 3410 5613", None),                         # Australian local number: which country is unsaid
    ("555 123456", None),                             # too short for NANP
    ("555-555-1234 x22", None),                       # an extension has no E.164 form
    ("0123456789", None),                             # area codes never start with 0 or 1
])
def test_when_a_phone_is_unambiguous_then_it_becomes_e164_else_it_has_no_normal_form(written: str,
                                                                                     e164: str | None) -> None:
    assert to_phone(written) == e164


@pytest.mark.parametrize(("written", "code"), [
    ("MA", "MA"), ("ma", "MA"), ("Massachusetts", "MA"), ("new york", "NY"), ("N.Y.", "NY"),
    ("District of Columbia", "DC"), ("Puerto Rico", "PR"), ("Ontario", None), ("Bavaria", None), ("ZZ", None)])
def test_when_a_state_is_a_us_code_or_name_then_it_becomes_its_usps_code(written: str, code: str | None) -> None:
    assert to_us_state(written) == code


@pytest.mark.parametrize(("written", "ssn"), [
    ("123456789", "123-45-6789"), ("999 53 4495", "999-53-4495"), ("999-53-4495", "999-53-4495"),
    ("12345678", None), ("SSN# HERE", None)])                    # the last one is a vendor HL7 PID-19
def test_when_an_ssn_has_nine_digits_then_it_is_written_ddd_dd_dddd(written: str, ssn: str | None) -> None:
    assert to_ssn(written) == ssn


def test_when_every_value_is_already_canonical_then_the_column_comes_back_untouched() -> None:
    values = pa.array(["2024-01-01T10:00:00Z", None, "2023-12-31T23:59:59Z"])
    assert normalize_column(values, "datetime") is values


def test_when_a_column_mixes_forms_then_each_distinct_value_is_normalised_and_unreadable_ones_kept() -> None:
    values = pa.array(["2024-01-01T10:00:00Z", "20240101120000-0500", None, "soon", "20240101120000-0500"])
    assert normalize_column(values, "datetime").to_pylist() == [
        "2024-01-01T10:00:00Z", "2024-01-01T17:00:00Z", None, "soon", "2024-01-01T17:00:00Z"]


def test_when_patients_arrive_as_a_vendor_writes_them_then_conform_normalises_and_the_rules_judge_the_rest() -> None:
    rows = [
        {"patient_id": "p1", "birth_date": "19480203", "phone": "(216)123-4567", "state": "Ohio",
         "ssn": "123456789", "zip": "44123"},
        {"patient_id": "p2", "birth_date": "1971", "phone": "(03) 3410 5613", "state": "Victoria",
         "ssn": "SSN# HERE", "zip": "3000"},
    ]
    data, verdicts = conformed_verdicts("patients", rows)
    assert [(r["birth_date"], r["phone"], r["state"], r["ssn"]) for r in data] == [
        ("1948-02-03", "+12161234567", "OH", "123-45-6789"),
        ("1971-01-01", "(03) 3410 5613", "Victoria", "SSN# HERE")]   # kept as written where there is no normal form
    assert verdicts == {1: {"ssn:pattern"}}                          # only the SSN's own rule rejects


def test_when_encounter_times_carry_offsets_then_they_are_compared_in_utc() -> None:
    rows = [{"encounter_id": "e1", "patient_id": "p1", "admit_time": "20240101230000-0500",
             "discharge_time": "2024-01-02T05:00:00+01:00"}]           # 04:00Z then 04:00Z: not earlier
    data, verdicts = conformed_verdicts("encounters", rows)
    assert (data[0]["admit_time"], data[0]["discharge_time"]) == ("2024-01-02T04:00:00Z", "2024-01-02T04:00:00Z")
    assert verdicts == {}


def test_when_a_default_facility_is_set_then_records_without_one_take_it_and_phones_stay_sealed(
        tmp_path: Path, ing_settings, plake) -> None:
    path = tmp_path / "patients.jsonl"
    path.write_text('{"patient_id": "p1", "phone": "555-352-6871", "facility_id": null}\n'
                    '{"patient_id": "p2", "phone": "+33 (237) 998327", "facility_id": "CLINIC-7"}\n')
    settings = ing_settings.model_copy(update={"ingestion": ing_settings.ingestion.model_copy(
        update={"default_facility": "HOSP-1"})})
    report = ingest(settings, source="tabular", path=path, table="patients", plake=plake, docs=False)
    assert report.tables["patients"].accepted == 2
    rows = {r["patient_id"]: r for r in plake.read("raw", "patients", decrypt=True).to_pylist()}
    assert {p: (r["facility_id"], r["phone"]) for p, r in rows.items()} == {
        "p1": ("HOSP-1", "+15553526871"), "p2": ("CLINIC-7", "+33237998327")}
    sealed = plake.lake.read_arrow("raw", "patients")
    assert sealed.schema.field("phone").type == pa.binary() and sealed.schema.field("state").type == pa.string()
    assert b"5553526871" not in b"".join(v for v in sealed.column("phone").to_pylist() if v)
