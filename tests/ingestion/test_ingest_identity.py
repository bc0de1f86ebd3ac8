"""One patient, one identity: a known patient id with another name, sex or birth date is quarantined, not merged."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from pathlib import Path

import pyarrow as pa
import pytest

from ingestion.batch import ingest
from ingestion.contract import builtin_contract
from ingestion.identity import IDENTITY_COLUMN, IdentityCheck, fingerprints

FIXTURES = Path(__file__).parents[1] / "fixtures"
SYNTHEA = FIXTURES / "fhir" / "synthea" / "Luna60_McCullough561_6662f0ca-b617-4e02-8f55-7275e9f49aa0.json"
LUNA = "356a0ab8-5592-4ec5-8c3a-9a4d0857b793"  # the bundle's Patient.id (its identifiers say 6662f0ca-…)


def _patients(path: Path, rows: list[dict]) -> Path:
    """A patients extract with every column of the shipped contract (the ones a row does not give left empty)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(builtin_contract("patients").columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({"mrn": "12345678", "facility_id": "FAC-A", **row})
    return path


def _ann(**change) -> dict:
    return {"patient_id": "P-1", "first_name": "Ann", "last_name": "Lee", "sex": "F", "birth_date": "1980-01-02",
            **change}


def _bob(**change) -> dict:
    return {"patient_id": "P-2", "first_name": "Bob", "last_name": "Ray", "sex": "M", "birth_date": "1975-06-30",
            **change}


def _quarantined(plake, rule: str = "identity:conflict") -> list[dict]:
    if not plake.lake.exists("quarantine", "records"):
        return []
    rows = plake.read("quarantine", "records", decrypt=True).to_pylist()
    return [r for r in rows if rule in r["rules"]]


def _ingest_csv(settings, plake, path: Path):
    return ingest(settings, source="tabular", path=path, table="patients", plake=plake, docs=False)


def test_when_a_second_extract_reuses_an_id_for_another_person_then_the_row_is_quarantined_naming_the_fields(
        tmp_path, ing_settings, plake):
    _ingest_csv(ing_settings, plake, _patients(tmp_path / "a.csv", [_ann(), _bob()]))
    second = _ingest_csv(ing_settings, plake, _patients(tmp_path / "b.csv", [
        _ann(first_name="Maria", last_name="Gomez"),  # another person under P-1
        _bob(),                                        # the same Bob again
        {"patient_id": "P-3", "first_name": "Cy", "last_name": "Uno", "sex": "M", "birth_date": "2001-02-03"},
    ]))
    counts = second.tables["patients"]
    assert (counts.rows_in, counts.accepted, counts.quarantined) == (3, 2, 1)
    assert counts.by_rule == {"identity:conflict": 1}
    held, = _quarantined(plake)
    assert held["rules"] == ["identity:conflict"]
    assert "first_name, last_name" in held["reason"] and "not merged" in held["reason"]
    assert not any(value in held["reason"] for value in ("Maria", "Gomez", "Ann", "Lee", "P-1"))
    assert json.loads(held["payload"])["first_name"] == "Maria"  # the record is kept, sealed, for review
    stored = plake.read("raw", "patients", decrypt=True, columns=["patient_id", "first_name"]).to_pylist()
    assert sorted((r["patient_id"], r["first_name"]) for r in stored) == [
        ("P-1", "Ann"), ("P-2", "Bob"), ("P-2", "Bob"), ("P-3", "Cy")]


@pytest.mark.parametrize(("change", "fields"), [
    ({"sex": "M"}, "sex"),
    ({"birth_date": "1980-02-01"}, "birth_date"),
    ({"last_name": "Leigh", "birth_date": "1981-01-02"}, "last_name, birth_date"),
])
def test_when_one_batch_carries_an_id_twice_with_different_identities_then_the_second_is_an_identity_conflict(
        tmp_path, ing_settings, plake, change, fields):
    report = _ingest_csv(ing_settings, plake, _patients(tmp_path / "p.csv", [_ann(), _bob(), _ann(**change)]))
    assert report.tables["patients"].by_rule == {"identity:conflict": 1}
    held, = _quarantined(plake)
    assert held["reason"].endswith(f"a different {fields}: another person's record under the same id, held for "
                                   "review and not merged")


def test_when_the_same_patient_is_resent_written_differently_then_there_is_no_conflict(tmp_path, ing_settings, plake):
    _ingest_csv(ing_settings, plake, _patients(tmp_path / "a.csv", [_ann(first_name="José", last_name="O'Brien-Lee"),
                                                                   _bob()]))
    again = _ingest_csv(ing_settings, plake, _patients(tmp_path / "b.csv", [
        _ann(first_name="  JOSE ", last_name="o brien lee", mrn="87654321"),  # case, accents, punctuation
        _bob(sex="U", birth_date=""),  # unknown sex and a missing birth date are not conflicts
    ]))
    assert again.tables["patients"].quarantined == 0 and not _quarantined(plake)
    # A field missing before is learnt from the row that brings it, and checked from then on.
    _ingest_csv(ing_settings, plake, _patients(tmp_path / "c.csv", [_ann(first_name="Jose", last_name="")]))
    late = _ingest_csv(ing_settings, plake, _patients(tmp_path / "d.csv", [_bob(birth_date="1975-07-01")]))
    assert late.tables["patients"].by_rule == {"identity:conflict": 1}


def _synthea_ndjson(path: Path, **patient_change) -> Path:
    """The Synthea bundle on one line (the framing every FHIR reader here takes), its Patient changed as asked."""
    bundle = json.loads(SYNTHEA.read_text("utf-8"))
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"].update(patient_change)
    path.mkdir(parents=True, exist_ok=True)
    (path / "bundle.ndjson").write_text(json.dumps(bundle) + "\n", "utf-8")
    return path


def test_when_fhir_and_csv_carry_the_same_patient_then_they_agree_and_nothing_is_held(tmp_path, ing_settings, plake):
    fhir = ingest(ing_settings, source="fhir", path=_synthea_ndjson(tmp_path / "fhir"), plake=plake, docs=False)
    assert fhir.tables["patients"].accepted == 1
    # The id the FHIR reader keys the patient by (which of Patient.id and its identifiers is the reader's choice).
    luna, = plake.read("raw", "patients", decrypt=["patient_id"], columns=["patient_id"]).column(0).to_pylist()
    assert luna in (LUNA, "6662f0ca-b617-4e02-8f55-7275e9f49aa0")
    csv_again = _ingest_csv(ing_settings, plake, _patients(tmp_path / "p.csv", [
        {"patient_id": luna, "first_name": "LUNA60", "last_name": "McCullough561", "sex": "F",
         "birth_date": "2008-11-06"}]))
    assert csv_again.tables["patients"].quarantined == 0 and not _quarantined(plake)
    identities = plake.read("raw", "patients", columns=[IDENTITY_COLUMN]).column(0).to_pylist()
    assert len(identities) == 2 and len(set(identities)) == 1  # the same fingerprints from both formats


def test_when_a_fhir_bundle_brings_a_known_id_with_another_birth_date_then_its_records_are_held_with_it(
        tmp_path, ing_settings, plake):
    ingest(ing_settings, source="fhir", path=_synthea_ndjson(tmp_path / "first"), plake=plake, docs=False)
    stored = {t: plake.lake.read_arrow("raw", t, columns=["patient_pseudonym"]).column(0)
              for t in plake.lake.tables("raw")}
    other = ingest(ing_settings, source="fhir", path=_synthea_ndjson(tmp_path / "other", birthDate="1950-03-04"),
                   plake=plake, docs=False)
    assert other.tables["patients"].by_rule == {"identity:conflict": 1}
    patient, = (r for r in _quarantined(plake) if r["table_name"] == "patients")
    assert "a different birth_date:" in patient["reason"]
    # Every record the first bundle loaded is held the second time, none is added under the known pseudonym.
    children = {t: rows.null_count for t, rows in stored.items() if t != "patients"}  # rows of no patient
    assert sum(len(stored[t]) - none for t, none in children.items()) > 0
    for table, none in children.items():
        assert other.tables[table].accepted == none, table  # the Organization, the Practitioner
        assert other.tables[table].by_rule.get("identity:conflict", 0) == len(stored[table]) - none, table
        assert plake.lake.read_arrow("raw", table).num_rows == len(stored[table]) + none


def test_when_fingerprints_are_made_then_they_are_keyed_and_bound_to_the_patient():
    data = pa.table({"patient_id": ["A", "B", "A"], "first_name": ["Ann", "Ann", "Ann"],
                     "last_name": [None, None, None], "sex": ["F", "F", "U"], "birth_date": ["2000-01-01"] * 3})
    one, other = fingerprints(data, "patient_id", b"k" * 32), fingerprints(data, "patient_id", b"j" * 32)
    a, b, a_unknown_sex = one.to_pylist()
    assert a.startswith("v1:") and a != b  # the same name and birth date of two patients share nothing
    assert a.split(".")[1] == "" and a_unknown_sex.split(".")[2] == ""  # missing and unknown stay empty
    assert one.to_pylist() != other.to_pylist()
    assert "Ann" not in a and "2000" not in a


def test_when_fingerprints_are_made_then_each_part_is_the_documented_hmac_of_the_normalised_field():
    data = pa.table({"patient_id": ["P-1", "P-2"], "first_name": ["José", None], "last_name": ["O'Brien", "Li"],
                     "sex": [" f ", "M"], "birth_date": ["1980-06-14", "2001-02-03"]})
    key = b"k" * 32

    def part(field: str, patient: str, value: str | None) -> str:
        if value is None:
            return ""
        return hmac.new(key, f"{field}\0{patient}\0{value}".encode(), hashlib.sha256).digest()[:8].hex()
    expected = [f"v1:{part('first_name', 'P-1', 'jose')}.{part('last_name', 'P-1', 'o brien')}."
                f"{part('sex', 'P-1', 'F')}.{part('birth_date', 'P-1', '1980-06-14')}",
                f"v1:.{part('last_name', 'P-2', 'li')}.{part('sex', 'P-2', 'M')}."
                f"{part('birth_date', 'P-2', '2001-02-03')}"]
    assert fingerprints(data, "patient_id", key).to_pylist() == expected


def test_when_an_identity_check_is_pickled_then_it_refuses():
    import pickle

    check = IdentityCheck({}, b"k" * 32)
    with pytest.raises(TypeError):
        pickle.dumps(check)
    assert "k" * 32 not in repr(check)


def test_when_two_generated_populations_share_a_lake_then_no_patient_id_is_shared(tmp_path, ing_settings, plake):
    from pipeline.synthetic import generate

    for seed in (3, 4):
        generate(tmp_path / f"pop{seed}", patients=20, seed=seed, formats=["csv"])
        report = _ingest_csv(ing_settings, plake, tmp_path / f"pop{seed}" / "patients.csv")
        assert report.tables["patients"].accepted == 20 and not report.tables["patients"].by_rule
    ids = plake.read("raw", "patients", decrypt=["patient_id"], columns=["patient_id"]).column(0).to_pylist()
    assert len(set(ids)) == 40 and {i.split("-")[0] for i in ids} == {"PAT3", "PAT4"}


def test_when_raw_patients_predates_the_identity_column_then_the_next_load_adds_it_and_checks_from_then_on(
        tmp_path, ing_settings, plake):
    # A patients contract with no patient column writes no _identity, as every load before this check did.
    unkeyed = builtin_contract("patients").model_copy(update={"patient_column": None})
    ingest(ing_settings, source="tabular", path=_patients(tmp_path / "old.csv", [_ann()]), table="patients",
           contract=unkeyed, plake=plake, docs=False)
    assert IDENTITY_COLUMN not in plake.lake.schema("raw", "patients").names
    _ingest_csv(ing_settings, plake, _patients(tmp_path / "a.csv", [_bob()]))
    assert plake.read("raw", "patients", columns=[IDENTITY_COLUMN]).column(0).null_count == 1  # the old row
    late = _ingest_csv(ing_settings, plake, _patients(tmp_path / "b.csv", [_bob(first_name="Robert")]))
    assert late.tables["patients"].by_rule == {"identity:conflict": 1}


def _bulk(path: Path, **patient_change) -> Path:
    """The Synthea bundle as a FHIR Bulk Data export: one ``<Type>.ndjson`` per resource type, references
    written ``Patient/<id>``, its Patient changed as asked."""
    bundle = json.loads(SYNTHEA.read_text("utf-8"))
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    files: dict[str, list[str]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] not in ("Patient", "Encounter", "Condition"):
            continue
        if resource["resourceType"] == "Patient":
            resource.update(patient_change)
        text = json.dumps(resource)
        for url, ref in urls.items():
            text = text.replace(f'"{url}"', f'"{ref}"')
        files.setdefault(resource["resourceType"], []).append(text)
    path.mkdir(parents=True)
    for kind, lines in files.items():
        (path / f"{kind}.ndjson").write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_when_a_bulk_export_in_small_chunks_brings_a_conflicting_patient_then_its_later_records_are_held(
        tmp_path, ing_settings, plake):
    small = ing_settings.model_copy(update={"ingestion": ing_settings.ingestion.model_copy(update={"chunk_rows": 4})})
    first = ingest(small, source="fhir", path=_bulk(tmp_path / "first"), plake=plake, docs=False)
    assert first.tables["patients"].accepted == 1 and first.tables["encounters"].accepted > 4  # several chunks
    other = ingest(small, source="fhir", path=_bulk(tmp_path / "other", gender="male"), plake=plake, docs=False)
    assert other.tables["patients"].by_rule == {"identity:conflict": 1}
    for table in ("encounters", "conditions"):
        counts = other.tables[table]
        assert counts.accepted == 0 and counts.by_rule.get("identity:conflict") == first.tables[table].accepted
