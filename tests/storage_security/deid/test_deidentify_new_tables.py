"""The clinical tables real exports fill (procedures, immunizations, allergies, diagnostic reports) and the new
columns of the older ones are published through the masks the column catalog gives them: ingested through their
shipped contracts, de-identified, read back and checked column by column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _deid_raw import shared_detector

from ingestion.batch import ingest
from pipeline.catalog import load_catalog
from pipeline.lake import Lake
from storage_security.deid.deidentify import Deidentifier
from storage_security.protected import ProtectedLake

PATIENTS = 12
ROWS = {
    "procedures": lambda i: {"procedure_id": f"proc-{i}", "patient_id": f"P{i}", "encounter_id": f"enc-{i}",
                             "code": "80146002", "code_system": "http://snomed.info/sct",
                             "description": "Appendectomy", "status": "completed",
                             "performed_time": "2013-04-05T10:00:00+01:00"},
    "immunizations": lambda i: {"immunization_id": f"imm-{i}", "patient_id": f"P{i}", "code": "140",
                                "code_system": "CVX", "description": "Influenza, seasonal",
                                "status": "completed", "occurrence_time": "20130115"},
    "allergies": lambda i: {"allergy_id": f"alg-{i}", "patient_id": f"P{i}", "code": "227493005",
                            "code_system": "2.16.840.1.113883.6.96", "description": "Cashew nuts",
                            "category": "food", "criticality": "high", "clinical_status": "active",
                            "onset_date": "2004", "reaction": "Hives after lunch with Mrs. Smith"},
    "diagnostic_reports": lambda i: {"report_id": f"rep-{i}", "patient_id": f"P{i}", "code": "58410-2",
                                     "code_system": "http://loinc.org", "description": "CBC panel",
                                     "category": "LAB", "status": "final",
                                     "effective_time": "2011-03-04T08:30:00Z",
                                     "conclusion": f"Patient P{i} (John Doe) seen by Dr. Adams: normal"},
}
# Per table: columns that must not be published, and columns that must come out as they went in.
DROPPED = {"procedures": {"patient_id"}, "immunizations": {"patient_id"},
           "allergies": {"patient_id", "reaction"}, "diagnostic_reports": {"patient_id", "conclusion"}}
KEPT = {"procedures": {"code", "code_system", "description", "status"},
        "immunizations": {"code", "code_system", "description", "status"},
        "allergies": {"code", "code_system", "description", "category", "criticality", "clinical_status"},
        "diagnostic_reports": {"code", "code_system", "description", "category", "status"}}


@pytest.fixture(scope="module")
def published(tmp_path_factory, settings) -> dict:
    from storage_security.keys.keyring import LocalKeyring

    root: Path = tmp_path_factory.mktemp("deid-new")
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    ours = settings.model_copy(update={"lake_root": str(root / "lake")})
    lake = Lake(ours)
    ingesting = ProtectedLake(lake, ring, principal="svc:ingest")
    for table, row in ROWS.items():
        path = root / f"{table}.jsonl"
        path.write_text("".join(json.dumps(row(i)) + "\n" for i in range(PATIENTS)))
        report = ingest(ours, source="tabular", path=path, table=table, plake=ingesting, docs=False)
        assert report.tables[table].accepted == PATIENTS, report.tables[table].by_rule
    deid = Deidentifier(ProtectedLake(lake, ring, principal="svc:deidentify"), ours, detector=shared_detector())
    reports = {table: deid.publish(table) for table in ROWS}
    return {"lake": lake, "reports": reports, "out": {t: lake.read_pandas("deidentified", t) for t in ROWS},
            "raw": {t: ingesting.read("raw", t, decrypt=True).to_pandas() for t in ROWS}}


@pytest.mark.integration
@pytest.mark.parametrize("table", sorted(ROWS))
def test_when_a_new_clinical_table_is_published_then_the_catalogs_masks_apply(published, table: str) -> None:
    out = published["out"][table]
    raw = published["raw"][table]
    assert len(out) == PATIENTS
    assert not DROPPED[table] & set(out.columns)
    for column in KEPT[table]:
        assert sorted(out[column]) == sorted(raw[column]), column
    assert set(out.columns) <= set(load_catalog().published(table))
    key = {"procedures": "procedure_id", "immunizations": "immunization_id", "allergies": "allergy_id",
           "diagnostic_reports": "report_id"}[table]
    assert not set(out[key]) & set(raw[key])          # the source id is published only as a keyed pseudonym
    shifted = {"procedures": "performed_time", "immunizations": "occurrence_time", "allergies": "onset_date",
               "diagnostic_reports": "effective_time"}[table]
    assert shifted in out.columns and not set(out[shifted].astype(str)) & set(raw[shifted].astype(str))


@pytest.mark.integration
def test_when_free_text_is_sealed_then_no_published_column_holds_it(published) -> None:
    texts = [str(v) for v in published["out"]["diagnostic_reports"].to_numpy().ravel()]
    texts += [str(v) for v in published["out"]["allergies"].to_numpy().ravel()]
    assert not [t for t in texts if "John Doe" in t or "Mrs. Smith" in t or "Dr. Adams" in t]
