"""How HL7 v2 arrives on the wire: line ends, MLLP frames, batch envelopes, custom delimiters, escapes, versions,
the message types beyond ADT/ORU, and a broken message among good ones — read by ``read_hl7``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestion.sources.hl7v2 import read_hl7

VENDOR = Path(__file__).parents[2] / "fixtures" / "hl7v2"
ADT = ["MSH|^~\\&|EPIC|EAST|MEDGUARD|MEDGUARD|20240101120000||ADT^A01^ADT_A01|A1|P|2.5.1",
       "EVN|A01|20240101120000",
       "PID|1||00001234^^^EAST^MR~PAT1^^^MEDGUARD^PI||Doe^Jane||19700102|F|||1 Main St^^Town^OR^97201^USA"
       "||^PRN^PH^^1^503^5550101~^NET^Internet^jane@example.com||||||123-45-6789|||2135-2^Hispanic or Latino^CDCREC",
       "PV1|1|E|ER^^^EAST||||1234567890^Welby^Marcus^^^^^^NPI||||||||||||V100" + "|" * 25 + "20240101120000|"
       "20240101130000",
       "AL1|1|DA|7980^Penicillin G^RXNORM|SV|Hives~Wheezing|20100301",
       "DG1|1||J45.909^Unspecified asthma, uncomplicated^I10|||F",
       "ZPD|1|custom site data"]
ORU = ["MSH|^~\\&|LAB|EAST|MEDGUARD|MEDGUARD|20240102080000||ORU^R01|R1|P|2.8",
       "PID|1||PAT2^^^MEDGUARD^PI||Roe^Rick||19600505|M",
       "OBR|1|P9|F9|24323-8^Comprehensive metabolic panel^LN|||20240102073000",
       "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL^^UCUM|70-99|N|||F|||20240102074500",
       "OBX|2|SN|2160-0^Creatinine^LN||<^0.5|mg/dL|0.6-1.3|L|||F",
       "OBX|3|SN|5196-1^HBsAg titer^LN||^1^:^128||||||F",
       "OBX|4|SN|2093-3^Cholesterol^LN||^190|mg/dL",
       "OBX|5|TX|11502-2^Report^LN||Line one\\.br\\Line two~Line three||||||F",
       "OBX|6|CWE|882-1^ABO+Rh^LN||A+^A Rh positive^LN||||||F",
       "OBX|7|ST|8251-1^Comment^LN||Pain 5\\S\\10 \\T\\ rising \\F\\ see \\E\\ note \\X41\\"]


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read(path: Path, *, max_bytes: int = 1 << 20, chunk_rows: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {"rejected": [], "units": {}, "positions": {}}
    for chunk in read_hl7(path, chunk_rows=chunk_rows, max_record_bytes=max_bytes):
        for table, rows in chunk.tables.items():
            out.setdefault(table, []).extend(rows.rows)
            out["positions"].setdefault(table, []).extend(rows.positions)
        out["rejected"] += chunk.rejected
        for unit, count in chunk.units.items():
            out["units"][unit] = out["units"].get(unit, 0) + count
    return out


def _message(segments: list[str], end: str = "\r") -> bytes:
    return (end.join(segments) + end).encode()


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_when_segments_end_with_cr_lf_or_crlf_then_two_messages_read_the_same(tmp_path: Path, end: str) -> None:
    data = _message(ADT, end) + (b"\n" if end == "\r" else b"") + _message(ORU, end)
    read = _read(_file(tmp_path, "m.hl7", data))
    assert read["units"] == {"messages": 2} and read["rejected"] == []
    assert [p["patient_id"] for p in read["patients"]] == ["PAT1", "PAT2"]
    assert len(read["observations"]) == 7
    second_line = 2 if end == "\r" else len(ADT) + 1
    assert read["positions"]["observations"][0].startswith(f"message 2 (m.hl7 line {second_line}) segment 4")


def test_when_messages_are_mllp_framed_then_each_frame_is_one_message(tmp_path: Path) -> None:
    data = b"\x0b" + _message(ADT) + b"\x1c\r" + b"\x0b" + _message(ORU) + b"\x1c\r"
    read = _read(_file(tmp_path, "stream.hl7", data))
    assert read["units"] == {"messages": 2} and read["rejected"] == []
    assert [p["patient_id"] for p in read["patients"]] == ["PAT1", "PAT2"]


def test_when_a_batch_file_has_fhs_bhs_envelopes_then_its_messages_load_and_the_envelope_is_skipped(
        tmp_path: Path) -> None:
    data = (b"FHS|^~\\&|LAB|EAST|||20240102||||F77\r\nBHS|^~\\&|LAB|EAST|||20240102||||B88\r\n") \
        + _message(ADT, "\r\n") + _message(ORU, "\r\n") + b"BTS|2\r\nFTS|1\r\n"
    read = _read(_file(tmp_path, "batch.hl7", data))
    assert read["units"] == {"messages": 2} and read["rejected"] == []
    (kept,) = read["resources"]  # the ADT carries a Z-segment: kept whole, with its batch's control id
    assert kept["bundle_id"] == "B88" and '"ZPD"' in kept["resource_json"]


def test_when_msh2_names_other_encoding_characters_then_fields_split_on_them(tmp_path: Path) -> None:
    custom = [s.replace("|", "#").replace("^", "$").replace("~", "*") for s in ADT]
    read = _read(_file(tmp_path, "custom.hl7", _message(custom)))
    assert read["rejected"] == []
    (patient,) = read["patients"]
    assert (patient["patient_id"], patient["mrn"], patient["last_name"], patient["email"]) == (
        "PAT1", "00001234", "Doe", "jane@example.com")
    assert read["allergies"][0]["reaction"] == "Hives; Wheezing"


def test_when_values_carry_escapes_then_they_are_decoded_after_splitting(tmp_path: Path) -> None:
    read = _read(_file(tmp_path, "oru.hl7", _message(ORU)))
    rows = {r["code"]: r for r in read["observations"]}
    assert rows["8251-1"]["value_text"] == "Pain 5^10 & rising | see \\ note A"
    assert rows["11502-2"]["value_text"] == "Line one\nLine two\nLine three"


def test_when_results_have_nm_sn_cwe_and_text_values_then_value_and_value_text_follow_the_spec(
        tmp_path: Path) -> None:
    read = _read(_file(tmp_path, "oru.hl7", _message(ORU)))
    rows = {r["code"]: r for r in read["observations"]}
    glucose = rows["2345-7"]
    assert (glucose["value"], glucose["value_text"], glucose["unit"], glucose["reference_range"],
            glucose["interpretation"], glucose["effective_time"], glucose["loinc_code"]) == (
        98.0, None, "mg/dL", "70-99", "N", "20240102074500", "2345-7")
    assert (rows["2160-0"]["value"], rows["2160-0"]["value_text"]) == (None, "<0.5")
    assert (rows["5196-1"]["value"], rows["5196-1"]["value_text"]) == (None, "1:128")
    assert (rows["2093-3"]["value"], rows["2093-3"]["value_text"]) == (190.0, "190")
    assert rows["882-1"]["value_text"] == "A Rh positive"
    assert rows["2160-0"]["effective_time"] == "20240102073000"  # no OBX-14: the OBR's observation time
    assert {r["observation_id"] for r in rows.values()} == {f"F9:1:{n}" for n in range(1, 8)}
    (report,) = read["diagnostic_reports"]
    assert (report["report_id"], report["code"], report["code_system"], report["effective_time"]) == (
        "F9:1", "24323-8", "LN", "20240102073000")


def test_when_an_adt_carries_allergies_and_diagnoses_then_they_land_in_their_tables(tmp_path: Path) -> None:
    read = _read(_file(tmp_path, "adt.hl7", _message(ADT)))
    (patient,) = read["patients"]
    assert (patient["sex"], patient["birth_date"], patient["phone"], patient["ethnicity"], patient["zip"]) == (
        "F", "19700102", "+1 503-555-0101", "Hispanic or Latino", "97201")
    (visit,) = read["encounters"]
    assert (visit["encounter_id"], visit["encounter_type"], visit["provider_npi"], visit["facility_id"],
            visit["admit_time"], visit["discharge_time"]) == ("V100", "EMER", "1234567890", "EAST",
                                                              "20240101120000", "20240101130000")
    (allergy,) = read["allergies"]
    assert (allergy["code"], allergy["code_system"], allergy["category"], allergy["criticality"],
            allergy["onset_date"]) == ("7980", "RXNORM", "medication", "high", "20100301")
    (condition,) = read["conditions"]
    assert (condition["code"], condition["code_system"], condition["icd10_code"], condition["encounter_id"]) == (
        "J45.909", "I10", "J45.909", "V100")


def test_when_a_vxu_is_read_then_each_rxa_is_an_immunization_with_its_cvx_code(tmp_path: Path) -> None:
    vxu = ["MSH|^~\\&|IIS|EAST|||20240301||VXU^V04^VXU_V04|V1|P|2.5.1",
           "PID|1||PAT3^^^EAST^MR||Kid^Amy||20200101|F",
           "ORC|RE||IZ-783274^EAST",
           "RXA|0|1|20240301093000||08^Hep B, adolescent or pediatric^CVX|0.5|mL^^UCUM||00^new immunization record"
           "^NIP001|||||||||||CP|A",
           "ORC|RE||IZ-783275^EAST",
           "RXA|0|1|20240301||998^No vaccine administered^CVX|999||||||||||||||RE",
           "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|V02^VFC eligible - Medicaid^HL70064"]
    read = _read(_file(tmp_path, "vxu.hl7", _message(vxu)))
    assert read["rejected"] == []
    given, refused = read["immunizations"]
    assert (given["immunization_id"], given["code"], given["code_system"], given["status"],
            given["occurrence_time"], given["patient_id"]) == ("IZ-783274", "08", "CVX", "completed",
                                                               "20240301093000", "PAT3")
    assert (refused["code"], refused["status"]) == ("998", "not-done")
    assert read["observations"][0]["value_text"] == "VFC eligible - Medicaid"


def test_when_an_orm_carries_rxo_then_it_is_a_medication_order(tmp_path: Path) -> None:
    orm = ["MSH|^~\\&|CPOE|EAST|||20240301||ORM^O01|O1|P|2.4",
           "PID|1||PAT4^^^EAST^PI||Lee^Ann||19500505|F",
           "PV1|1|I|W1^^^EAST||||||||||||||||V9",
           "ORC|NW|PLC-55|FIL-55||||^^^20240301",
           "RXO|197361^Amlodipine 5 MG Oral Tablet^RXNORM|5||mg",
           "RXR|PO^Oral"]
    read = _read(_file(tmp_path, "orm.hl7", _message(orm)))
    assert read["rejected"] == [] and "procedures" not in read
    (order,) = read["medications"]
    assert (order["medication_id"], order["kind"], order["code"], order["code_system"], order["rxnorm_code"],
            order["dosage"], order["status"], order["start_date"], order["encounter_id"]) == (
        "PLC-55", "order", "197361", "RXNORM", "197361", "5 mg", "active", "20240301", "V9")
    assert '"RXR"' in read["resources"][0]["resource_json"]


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
def test_when_msh12_names_any_version_from_23_to_28_then_the_message_loads(tmp_path: Path, version: str) -> None:
    message = [ADT[0].replace("|2.5.1", f"|{version}"), *ADT[1:]]
    read = _read(_file(tmp_path, "v.hl7", _message(message)))
    assert read["rejected"] == [] and read["patients"][0]["patient_id"] == "PAT1"


def test_when_msh12_is_not_a_v2_version_then_the_message_is_quarantined(tmp_path: Path) -> None:
    read = _read(_file(tmp_path, "v.hl7", _message([ADT[0].replace("|2.5.1", "|3.0"), *ADT[1:]])))
    (bad,) = read["rejected"]
    assert bad.rule == "hl7:version" and bad.table == "messages"


def test_when_one_message_of_a_file_is_broken_then_it_alone_is_quarantined_with_its_position(
        tmp_path: Path) -> None:
    broken = [ADT[0].replace("A1", "A2"), ADT[1], ADT[2], "PV1#garbled#segment", ADT[3]]
    data = _message(ADT, "\r\n") + _message(broken, "\r\n") + _message(ORU, "\r\n")
    read = _read(_file(tmp_path, "feed.hl7", data))
    assert read["units"] == {"messages": 3}
    (bad,) = read["rejected"]
    first_line = len(ADT) + 1
    assert bad.rule == "hl7:garbled" and bad.position == f"message 2 (feed.hl7 line {first_line})"
    assert f"segment 4 (line {first_line + 3})" in bad.reason
    assert "Doe" not in bad.reason and "garbled#segment" not in bad.reason
    assert [p["patient_id"] for p in read["patients"]] == ["PAT1", "PAT2"]


@pytest.mark.parametrize(("segments", "rule"), [
    ([ADT[0], ADT[2], ADT[1], ADT[3]], "hl7:segment_order"),          # EVN after PID
    ([ADT[0], ADT[1], ADT[3], ADT[2]], "hl7:segment_order"),          # PV1 before PID
    ([ADT[0].replace("ADT^A01^ADT_A01", "MFN^M01"), *ADT[1:]], "hl7:type"),
    ([ADT[0].replace("ADT^A01^ADT_A01", "ADT^A11"), *ADT[1:]], "hl7:type"),
    ([ADT[0], ADT[1], ADT[3].replace("PV1", "AL1")], "hl7:segment_order"),
    ([ADT[0], ADT[1]], "hl7:structure"),                               # an ADT with no PID
    (["MSH|^^\\&|X|Y|||2024||ADT^A01|A1|P|2.5", *ADT[1:]], "hl7:encoding_characters"),
], ids=["evn_after_pid", "pv1_before_pid", "unsupported_type", "unsupported_trigger", "al1_before_pid", "no_pid",
        "repeated_delimiter"])
def test_when_a_message_breaks_the_structure_then_it_is_quarantined_with_the_rule(
        tmp_path: Path, segments: list[str], rule: str) -> None:
    read = _read(_file(tmp_path, "m.hl7", _message(ADT) + b"\n" + _message(segments) + b"\n"))
    (bad,) = read["rejected"]
    assert bad.rule == rule and bad.position == "message 2 (m.hl7 line 2)"
    assert len(read["patients"]) == 1


def test_when_segments_come_before_any_msh_then_they_are_one_quarantined_record(tmp_path: Path) -> None:
    data = _message(ADT[1:3], "\n") + _message(ADT, "\n")
    read = _read(_file(tmp_path, "m.hl7", data))
    assert read["units"] == {"messages": 2}
    (bad,) = read["rejected"]
    assert bad.rule == "hl7:structure" and bad.position == "message 1 (m.hl7 line 1)"
    assert read["patients"][0]["patient_id"] == "PAT1"


def test_when_a_message_is_over_the_size_limit_then_it_is_quarantined_truncated_and_the_next_loads(
        tmp_path: Path) -> None:
    huge = [*ORU[:3]] + [f"OBX|{n}|ST|8251-1^Comment^LN||{'x' * 900}" for n in range(1, 2000)]
    data = _message(huge, "\n") + _message(ADT, "\n")
    read = _read(_file(tmp_path, "big.hl7", data), max_bytes=64 * 1024)
    (bad,) = read["rejected"]
    assert bad.rule == "record:size" and bad.payload_truncated and len(bad.payload) <= 64 * 1024 + 100
    assert [p["patient_id"] for p in read["patients"]] == ["PAT1"]


def test_when_a_file_has_no_separator_at_all_then_memory_stays_bounded(tmp_path: Path) -> None:
    path = _file(tmp_path, "blob.hl7", b"MSH|^~\\&|" + b"A" * (8 << 20))
    read = _read(path, max_bytes=1 << 20)
    (bad,) = read["rejected"]
    assert bad.rule == "record:size" and len(bad.payload) <= 64 * 1024 + 16


def test_when_msh18_says_latin1_then_the_message_is_decoded_as_latin1(tmp_path: Path) -> None:
    msh = ADT[0] + "||||||8859/1"
    data = _message([msh, ADT[1], ADT[2].replace("Doe^Jane", "Muñoz^José"), ADT[3]]).replace(
        "ñ".encode(), b"\xf1").replace("é".encode(), b"\xe9")
    read = _read(_file(tmp_path, "latin.hl7", data))
    assert read["rejected"] == [] and read["patients"][0]["last_name"] == "Muñoz"


def test_when_bytes_are_not_utf8_and_msh18_is_silent_then_the_message_is_quarantined(tmp_path: Path) -> None:
    data = _message(ADT) + b"\n" + _message([ADT[0], ADT[1], ADT[2].replace("Doe", "D\xf6e"), ADT[3]]).replace(
        "ö".encode(), b"\xf6") + b"\n"
    read = _read(_file(tmp_path, "m.hl7", data))
    (bad,) = read["rejected"]
    assert bad.rule == "record:encoding" and "segment 3" in bad.reason and len(read["patients"]) == 1


def test_when_the_chunks_are_small_then_the_same_records_come_out(tmp_path: Path) -> None:
    data = b"".join(_message(ADT, "\r\n") + _message(ORU, "\r\n") for _ in range(30))
    path = _file(tmp_path, "many.hl7", data)
    whole, small = _read(path), _read(path, chunk_rows=100)
    assert whole["positions"] == small["positions"] and whole["units"] == small["units"] == {"messages": 60}


def test_when_a_folder_is_read_then_hl7_files_load_and_a_symlink_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for source in VENDOR.glob("*.hl7"):
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "link.hl7").symlink_to(VENDOR / "simple-hl7_adt.hl7")
    read = _read(folder)
    assert read["units"] == {"messages": 7, "files": 1}
    assert [r.rule for r in read["rejected"] if r.table == "files"] == ["file:symlink"]
    assert len(read["patients"]) == 7


def test_when_an_adt_carries_in1_then_its_policy_number_is_the_member_id_not_the_account_number(
        tmp_path: Path) -> None:
    pid = ADT[2].replace("||||||123-45-6789", "|||||ACCT-9|123-45-6789")
    in1 = "IN1|1|PPO^Gold plan|H123||Acme Health" + "|" * 31 + "W987654321"
    read = _read(_file(tmp_path, "adt.hl7", _message([ADT[0], ADT[1], pid, ADT[3], in1])))
    assert read["rejected"] == [] and read["patients"][0]["insurance_member_id"] == "W987654321"
    without = _read(_file(tmp_path, "adt2.hl7", _message([ADT[0], ADT[1], pid, ADT[3]])))
    assert without["patients"][0]["insurance_member_id"] == "ACCT-9"  # no IN1: PID-18, as our feeds write it


def test_when_msh2_has_the_v27_truncation_character_then_the_message_still_splits(tmp_path: Path) -> None:
    message = [ADT[0].replace("MSH|^~\\&|", "MSH|^~\\&#|").replace("|2.5.1", "|2.7"), *ADT[1:]]
    read = _read(_file(tmp_path, "v27.hl7", _message(message)))
    assert read["rejected"] == [] and read["patients"][0]["last_name"] == "Doe"


def test_when_a_message_is_rejected_then_its_patient_is_named_so_a_shred_reaches_the_quarantine(
        tmp_path: Path) -> None:
    broken = [ADT[0], ADT[2], ADT[1], ADT[3]]  # EVN after PID
    read = _read(_file(tmp_path, "m.hl7", _message(broken)))
    (bad,) = read["rejected"]
    assert bad.rule == "hl7:segment_order" and bad.patient_id == "PAT1" and "PAT1" not in bad.reason


def test_when_a_header_is_damaged_in_a_crlf_file_then_only_that_message_is_quarantined(tmp_path: Path) -> None:
    damaged = [ADT[0].replace("MSH|", "MSX|"), *ADT[1:]]
    data = _message(ADT, "\r\n") + _message(damaged, "\r\n") + _message(ORU, "\r\n")
    read = _read(_file(tmp_path, "feed.hl7", data))
    assert read["units"] == {"messages": 3}
    (bad,) = read["rejected"]
    assert bad.rule == "hl7:structure" and bad.position == f"message 2 (feed.hl7 line {len(ADT) + 1})"
    assert [p["patient_id"] for p in read["patients"]] == ["PAT1", "PAT2"]


def test_when_a_result_repeats_a_patient_with_fewer_fields_then_the_row_is_completed_not_changed(
        tmp_path: Path) -> None:
    sparse_pid = "PID|1||PAT1^^^MEDGUARD^PI||Doe^Jane||19700102|F"
    moved_pid = sparse_pid + "|||9 Other Rd^^Elsewhere^WA^98101"
    oru = [ORU[0], sparse_pid, "PV1|1|E|||||||||||||||||V100", *ORU[2:4]]
    data = b"".join(_message(m, "\r\n") for m in (ADT, oru, [ORU[0].replace("|R1|", "|R3|"), moved_pid, *ORU[2:4]]))
    read = _read(_file(tmp_path, "feed.hl7", data))
    first, repeat, moved = read["patients"]
    assert repeat == first  # the sparse PID of the result, completed from the ADT: a duplicate, not a conflict
    assert read["encounters"][1] == read["encounters"][0]
    assert (moved["address"], moved["city"], moved["phone"]) == ("9 Other Rd", "Elsewhere", None)  # as sent


def test_when_a_file_is_utf16_then_it_is_refused_once_naming_the_encoding_and_a_utf8_bom_is_ignored(
        tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.hl7").write_bytes(b"\xef\xbb\xbf" + _message(ADT))
    (folder / "b.hl7").write_bytes(_message(ORU).decode().encode("utf-16"))
    read = _read(folder)
    assert read["units"] == {"messages": 2} and read["patients"][0]["patient_id"] == "PAT1"
    (bad,) = read["rejected"]
    assert bad.rule == "record:encoding" and "UTF-16" in bad.reason and bad.position == "message 2 (b.hl7 line 1)"


def test_when_a_result_is_an_encapsulated_pdf_then_the_message_is_kept_whole(tmp_path: Path) -> None:
    pdf = "OBX|1|ED|11502-2^Laboratory report^LN||^application^pdf^Base64^JVBERi0xLjQK||||||F"
    read = _read(_file(tmp_path, "pdf.hl7", _message([*ORU[:3], pdf])))
    (row,) = read["observations"]
    assert row["value"] is None and row["value_text"] is None
    (kept,) = read["resources"]
    assert "JVBERi0xLjQK" in kept["resource_json"] and "OBX-5 (ED/RP)" in kept["resource_json"]


def test_when_a_field_has_a_hundred_thousand_repetitions_then_it_is_read_in_bounded_time(tmp_path: Path) -> None:
    import time

    many = ADT[2].replace("00001234^^^EAST^MR~", "00001234^^^EAST^MR~" + "X^^^^XX~" * 100_000)
    started = time.perf_counter()
    read = _read(_file(tmp_path, "wide.hl7", _message([ADT[0], ADT[1], many, ADT[3]])), max_bytes=4 << 20)
    assert time.perf_counter() - started < 10
    assert read["patients"][0]["patient_id"] == "PAT1"


def test_when_a_message_has_a_hundred_thousand_segments_then_it_is_read_in_bounded_time(tmp_path: Path) -> None:
    import time

    notes = [f"NTE|{n}|L|note" for n in range(100_000)]
    started = time.perf_counter()
    read = _read(_file(tmp_path, "long.hl7", _message([*ORU[:4], *notes, ORU[4]])), max_bytes=4 << 20)
    assert time.perf_counter() - started < 20
    assert read["rejected"] == [] and len(read["observations"]) == 2 and len(read["resources"]) == 1


def test_when_mapping_fails_midway_then_the_message_leaves_no_rows_and_is_quarantined_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestion.sources import hl7v2

    def broken(self: Any, segment: Any, where: str) -> None:
        raise RuntimeError("a mapping bug")

    monkeypatch.setattr(hl7v2._Mapper, "al1", broken)  # after PID and PV1 have added their rows
    read = _read(_file(tmp_path, "m.hl7", _message(ORU, "\n") + _message(ADT, "\n")))
    (bad,) = read["rejected"]
    assert bad.rule == "hl7:map" and bad.patient_id == "PAT1" and "RuntimeError" in bad.reason
    assert [p["patient_id"] for p in read["patients"]] == ["PAT2"] and "encounters" not in read
    assert len(read["observations"]) == 7
