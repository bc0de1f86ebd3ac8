"""Bad and hostile C-CDA input: each is one quarantined ``documents`` record with a reason, in bounded time and
memory, and never a traceback, an expanded entity or a file read from outside the input folder."""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import pytest

from ingestion.sources.ccda import DOCUMENTS, ParseRefused, parse_document, read_ccda

GOOD = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="1.2.3" extension="DOC-1"/>
  <recordTarget><patientRole>
    <id root="1.2.3.4" extension="P-77"/>
    <addr nullFlavor="UNK"/>
    <telecom nullFlavor="NI"/>
    <patient>
      <name><given>{given}</given><family>Quinn</family></name>
      <administrativeGenderCode code="UN" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime nullFlavor="UNK"/>
      <raceCode nullFlavor="ASKU"/>
    </patient>
  </patientRole></recordTarget>
  <component><structuredBody><component><section>
    <templateId root="2.16.840.1.113883.10.20.22.2.4.1" extension="2015-08-01"/>
    <code code="8716-3" codeSystem="2.16.840.1.113883.6.1"/>
    <entry><organizer classCode="CLUSTER" moodCode="EVN">
      <id root="org-1"/>
      <component><observation classCode="OBS" moodCode="EVN">
        <id nullFlavor="NI"/>
        <code code="8867-4" codeSystem="2.16.840.1.113883.6.1"/>
        <effectiveTime nullFlavor="UNK"/>
        <value xsi:type="PQ" nullFlavor="NI"/>
        <interpretationCode nullFlavor="NI"/>
      </observation></component>
      <component><observation classCode="OBS" moodCode="EVN">
        <id root="obs-2"/>
        <code nullFlavor="UNK"><originalText>Pulse oximetry</originalText></code>
        <value xsi:type="PQ" value="97" unit="%"/>
      </observation></component>
    </organizer></entry>
  </section></component></structuredBody></component>
</ClinicalDocument>
"""


def document(given: str = "Ada") -> bytes:
    return GOOD.format(given=given).encode("utf-8")


def read(path: Path, max_record_bytes: int = 4 * 2**20):
    rows: dict[str, list[dict]] = {}
    rejected = []
    units: dict[str, int] = {}
    for chunk in read_ccda(path, chunk_rows=1000, max_record_bytes=max_record_bytes):
        for table, table_rows in chunk.tables.items():
            rows.setdefault(table, []).extend(table_rows.rows)
        rejected.extend(chunk.rejected)
        for unit, count in chunk.units.items():
            units[unit] = units.get(unit, 0) + count
    return rows, rejected, units


BOMB = (b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [\n <!ENTITY lol0 "lol">\n'
        + b"".join(b' <!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
        + b']>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title><recordTarget><patientRole>'
          b'<id extension="P-1" root="1.2"/></patientRole></recordTarget></ClinicalDocument>\n')
XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
       b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title><recordTarget><patientRole>'
       b'<id extension="P-1" root="1.2"/></patientRole></recordTarget></ClinicalDocument>\n')
PARAMETER_XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY % x SYSTEM "file:///etc/passwd"> %x;]>\n'
                 b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>\n')
EXTERNAL_DTD = (b'<?xml version="1.0"?>\n<!DOCTYPE d SYSTEM "file:///etc/passwd">\n'
                b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>')


@pytest.mark.parametrize(("data", "rule"), [
    (BOMB, "record:entities"), (XXE, "record:entities"), (PARAMETER_XXE, "record:entities"),
    (EXTERNAL_DTD, "record:entities"),
    (document()[:-40], "record:parse"),
    (b"<a>" * 20_000 + b"</a>" * 20_000, "record:parse"),
    ('<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><title>José Núñez</title>'
     '</ClinicalDocument>'.encode("latin-1"), "record:encoding"),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x "y">]><ClinicalDocument '
     'xmlns="urn:hl7-org:v3"/>'.encode("utf-16"), "record:entities"),
], ids=["billion-laughs", "xxe", "parameter-entity-xxe", "external-dtd", "truncated", "nested-20000-deep",
        "latin1-declared-utf8", "utf16-entities"])
def test_when_a_document_is_hostile_or_broken_then_parsing_refuses_it_with_a_rule(data: bytes, rule: str) -> None:
    with pytest.raises(ParseRefused) as refused:
        parse_document(data)
    assert refused.value.rule == rule
    assert "José" not in refused.value.reason and "root:" not in refused.value.reason


def test_when_a_document_carries_a_plain_doctype_or_mentions_entities_in_text_then_it_is_read() -> None:
    root = parse_document(b'<?xml version="1.0"?><!DOCTYPE ClinicalDocument><ClinicalDocument '
                          b'xmlns="urn:hl7-org:v3"/>')
    assert root.tag == "{urn:hl7-org:v3}ClinicalDocument"
    root = parse_document(b'<ClinicalDocument xmlns="urn:hl7-org:v3"><!-- no <!ENTITY here --><title>'
                          b'<![CDATA[<!ENTITY x "y">]]></title></ClinicalDocument>')
    assert root.findtext("{urn:hl7-org:v3}title") == '<!ENTITY x "y">'


def test_when_a_billion_laughs_bomb_is_ingested_then_it_is_one_quarantined_document_in_bounded_time(
        tmp_path: Path) -> None:
    (tmp_path / "bomb.xml").write_bytes(BOMB)
    (tmp_path / "good.xml").write_bytes(document())
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    rows, rejected, units = read(tmp_path)
    assert time.monotonic() - started < 5
    # Expanded, the bomb is 10^9 "lol"s (3 GB); the peak may not grow by even a tenth of that.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 300 * 1024
    assert units[DOCUMENTS] == 2
    assert [(r.table, r.position, r.rule) for r in rejected] == [(DOCUMENTS, "bomb.xml", "record:entities")]
    assert len(rejected[0].payload) == len(BOMB)  # the document as sent, never its expansion
    assert [p["patient_id"] for p in rows["patients"]] == ["P-77"]  # the good document still loads


def test_when_a_document_tries_to_read_etc_passwd_then_nothing_of_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "xxe.xml").write_bytes(XXE)
    (tmp_path / "pxxe.xml").write_bytes(PARAMETER_XXE)
    rows, rejected, _ = read(tmp_path)
    assert sorted((r.position, r.rule) for r in rejected) == [("pxxe.xml", "record:entities"),
                                                              ("xxe.xml", "record:entities")]
    assert rows == {}
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    assert all(passwd not in r.payload and passwd not in r.reason for r in rejected)


def test_when_a_file_is_in_the_wrong_encoding_then_it_is_quarantined_naming_no_phi(tmp_path: Path) -> None:
    (tmp_path / "latin1.xml").write_bytes(document(given="José").decode().encode("latin-1"))
    rows, rejected, _ = read(tmp_path)
    assert rows == {}
    (refused,) = rejected
    assert (refused.table, refused.rule) == (DOCUMENTS, "record:encoding")
    assert "wrong encoding" in refused.reason and "Jos" not in refused.reason
    assert "Jos\\xe9" in refused.payload  # the bytes kept for the engineer, undecodable ones escaped


def test_when_a_file_declares_its_real_encoding_then_it_is_read(tmp_path: Path) -> None:
    text = document(given="José").decode().replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    (tmp_path / "latin1.xml").write_bytes(text.encode("latin-1"))
    rows, rejected, _ = read(tmp_path)
    assert rejected == []
    assert rows["patients"][0]["first_name"] == "José"


@pytest.mark.parametrize(("data", "rule", "words"), [
    (b'<?xml version="1.0"?><html><body>not a CDA</body></html>', "ccda:document", "not an HL7 CDA"),
    (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2"/></ClinicalDocument>', "ccda:patient",
     "no recordTarget"),
    (b'<ClinicalDocument><recordTarget/></ClinicalDocument>', "ccda:document", "not an HL7 CDA"),  # no namespace
    (b"", "record:parse", "not well-formed"),
])
def test_when_a_file_is_xml_but_not_a_patient_document_then_it_is_quarantined_whole(
        tmp_path: Path, data: bytes, rule: str, words: str) -> None:
    (tmp_path / "odd.xml").write_bytes(data)
    rows, rejected, units = read(tmp_path)
    assert rows == {} and units[DOCUMENTS] == 1
    assert [(r.table, r.rule) for r in rejected] == [(DOCUMENTS, rule)]
    assert words in rejected[0].reason


def test_when_a_document_is_over_the_record_limit_then_only_its_first_bytes_are_kept(tmp_path: Path) -> None:
    (tmp_path / "big.xml").write_bytes(document() + b"<!--" + b"x" * 200_000 + b"-->")
    rows, rejected, _ = read(tmp_path, max_record_bytes=100_000)
    assert rows == {}
    (refused,) = rejected
    assert (refused.rule, refused.payload_truncated) == ("record:size", True)
    assert len(refused.payload) <= 64 * 1024


def test_when_a_folder_holds_a_symlink_then_it_is_refused_and_its_target_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.xml"
    outside.write_bytes(document(given="Secret"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.xml").write_bytes(document())
    os.symlink(outside, folder / "link.xml")
    rows, rejected, units = read(folder)
    assert [(r.table, r.position, r.rule) for r in rejected] == [("files", "link.xml", "file:symlink")]
    assert units == {"files": 1, DOCUMENTS: 1}
    assert [p["first_name"] for p in rows["patients"]] == ["Ada"]


def test_when_values_are_nullflavored_then_they_are_missing_not_errors(tmp_path: Path) -> None:
    (tmp_path / "nulls.xml").write_bytes(document())
    rows, rejected, _ = read(tmp_path)
    assert rejected == []
    patient = rows["patients"][0]
    assert (patient["patient_id"], patient["sex"], patient["birth_date"], patient["race"]) == ("P-77", "U", None, None)
    assert (patient["address"], patient["phone"]) == (None, None)
    pulse, oximetry = rows["observations"]
    assert (pulse["code"], pulse["value"], pulse["effective_time"], pulse["interpretation"]) == (
        "8867-4", None, None, None)
    assert pulse["observation_id"].startswith("hmac:")  # id nullFlavor NI: keyed by a keyed digest of its content
    # A code with nullFlavor is missing: the row goes on to the contract, which quarantines it as code:required.
    assert (oximetry["code"], oximetry["display"], oximetry["value"], oximetry["unit"]) == (
        None, "Pulse oximetry", 97.0, "%")


def test_when_a_measurement_is_not_a_finite_number_then_it_is_kept_as_text(tmp_path: Path) -> None:
    (tmp_path / "nan.xml").write_bytes(document().replace(b'value="97"', b'value="1e400"'))
    rows, _, _ = read(tmp_path)
    oximetry = rows["observations"][1]
    assert (oximetry["value"], oximetry["value_text"], oximetry["unit"]) == (None, "1e400", "%")


def test_when_vendor_documents_are_mangled_at_random_then_the_reader_never_raises(tmp_path: Path) -> None:
    from lxml import etree

    chance = random.Random(16)
    samples = sorted((Path(__file__).parents[2] / "fixtures" / "ccda").glob("*.xml"))
    for number in range(60):
        root = etree.fromstring(chance.choice(samples).read_bytes(), etree.XMLParser(remove_comments=True))
        elements = list(root.iter(tag=etree.Element))
        for _ in range(chance.randint(1, 40)):  # drop attributes and elements, null them, garble values
            element = chance.choice(elements)
            attributes = list(element.attrib)
            move = chance.random()
            if move < 0.3 and attributes:
                del element.attrib[chance.choice(attributes)]
            elif move < 0.5 and element.getparent() is not None:
                element.getparent().remove(element)
            elif move < 0.7:
                element.set("nullFlavor", "UNK")
            elif attributes:
                element.set(chance.choice(attributes), chance.choice(["", " ", "x^y", "99213", "NaN", "#x", "-"]))
        (tmp_path / f"m{number}.xml").write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    rows, rejected, units = read(tmp_path)
    assert units[DOCUMENTS] == 60
    assert {r.rule for r in rejected} <= {"ccda:negated", "ccda:patient", "ccda:document", "record:parse"}
    assert "ccda:entry" not in {r.rule for r in rejected}  # no entry broke the mapping
    assert len(rows["patients"]) == 60 - sum(r.table == DOCUMENTS for r in rejected)


def test_when_documents_add_up_to_the_chunk_byte_budget_then_the_chunk_closes_early(tmp_path: Path) -> None:
    for number in range(5):
        (tmp_path / f"d{number}.xml").write_bytes(document(given=f"P{number}"))
    size = len(document(given="P0"))
    chunks = list(read_ccda(tmp_path, chunk_rows=50_000, max_record_bytes=2**20, chunk_bytes=2 * size))
    # Rows alone would make one chunk; two documents' bytes fill each one instead.
    assert [c.units[DOCUMENTS] for c in chunks] == [2, 2, 1]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert sum(len(c.tables["patients"]) for c in chunks) == 5
