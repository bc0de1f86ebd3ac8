"""The release gate end to end: publish a generated population and the FHIR, Synthea and C-CDA fixtures, then join
every pair of published tables on the pseudonym as an attacker would and count the classes.

Quasi-identifiers per table are the catalog's risk-gate lists; an event table adds the count of a patient's rows
(exact where the table lists quasi-identifiers, in bands where it lists none: observations, notes).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from _deid_raw import generated, load_raw, shared_detector
from test_risk_release import smallest_joined_class

from pipeline.catalog import load_catalog
from pipeline.lake import Lake
from storage_security.deid.deidentify import Deidentifier
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes")

pytestmark = pytest.mark.integration


def _plake(root: Path, settings) -> tuple[Lake, ProtectedLake, LocalKeyring]:
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings.model_copy(update={"lake_root": str(root / "lake")}))
    return lake, ProtectedLake(lake, ring, principal="svc:deidentify"), ring


def _pairs_hold(lake: Lake, k: int) -> list[tuple[str, str, int, int]]:
    qis = {name: list(spec.quasi_identifiers) for name, spec in load_catalog().raw.tables.items()}
    names = [t for t in lake.tables("deidentified")
             if "patient_pseudonym" in lake.schema("deidentified", t).names]
    frames = {t: lake.read_pandas("deidentified", t) for t in names}
    found = []
    for a, b in itertools.combinations(sorted(names), 2):
        smallest, patients = smallest_joined_class(frames[a], frames[b], qis.get(a, []), qis.get(b, []))
        found.append((a, b, smallest, patients))
    return found


@pytest.fixture(scope="module")
def generated_release(tmp_path_factory, settings):
    lake, plake, _ = _plake(tmp_path_factory.mktemp("release"), settings)
    load_raw(plake, generated(300, 11), TABLES)
    deid = Deidentifier(plake, settings, detector=shared_detector())
    reports = deid.publish_all()
    return lake, deid, reports


def test_when_a_generated_population_is_published_then_every_pair_joined_has_k_patients_per_class(
        generated_release, settings):
    lake, _, _ = generated_release
    k = settings.deidentify.k_anonymity
    pairs = _pairs_hold(lake, k)
    assert len(pairs) == 15
    assert [p for p in pairs if p[2] < k] == []
    # the release is still useful: measured 180 of 300 patients published (counts of encounters, conditions and
    # medications, and observation counts in bands, single out the others at this size; 1,000 patients: 83 % kept)
    assert lake.read_pandas("deidentified", "patients").shape[0] >= 150


def test_when_the_issue_attack_is_replayed_on_the_release_then_nobody_is_unique(generated_release, settings):
    lake, _, _ = generated_release
    patients = lake.read_pandas("deidentified", "patients").set_index("patient_pseudonym")
    visits = lake.read_pandas("deidentified", "encounters").groupby("patient_pseudonym").agg(
        facilities=("facility_id", lambda v: "|".join(sorted(set(map(str, v))))), count=("facility_id", "size"))
    joined = patients[["age_band"]].join(visits, how="inner")
    classes = joined.groupby(["age_band", "facilities", "count"]).size()
    assert classes.min() >= settings.deidentify.k_anonymity


def test_when_the_gate_runs_again_on_a_safe_release_then_no_table_gets_a_new_version(generated_release):
    lake, deid, _ = generated_release
    before = {t: lake.version("deidentified", t) for t in lake.tables("deidentified")}
    result = deid.gate_release()
    assert result == {"gated": "unchanged", "rewritten": {}}  # the zone as the last gate left it: not read again
    deid._gate_record().unlink()  # without the note, the gate reads the zone and finds it safe as it is
    result = deid.gate_release()
    assert result["rewritten"] == {} and result["k"] >= deid.settings.deidentify.k_anonymity
    assert {t: lake.version("deidentified", t) for t in lake.tables("deidentified")} == before


def test_when_fhir_synthea_and_ccda_fixtures_are_published_then_no_joined_class_under_k_survives(
        tmp_path, settings):
    """13 patients of different vendors (2 Synthea bundles, 11 C-CDA documents): each is unique by their numbers of
    encounters, conditions and medications, which no ladder can widen, so the release gate withholds them all
    (measured: also at k = 2) rather than publish a joinable unique patient; tables without the pseudonym stay."""
    from ingestion.batch import ingest

    lake, plake, ring = _plake(tmp_path, settings)
    ing = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    fhir = tmp_path / "fhir"
    shutil.copytree(FIXTURES / "fhir" / "synthea", fhir)
    ingester = ProtectedLake(lake, ring, principal="svc:ingest")
    ingest(ing, source="fhir", path=fhir, plake=ingester, docs=False)
    ingest(ing, source="ccda", path=FIXTURES / "ccda", plake=ingester, docs=False)
    reports = Deidentifier(plake, settings, detector=shared_detector()).publish_all()
    k = settings.deidentify.k_anonymity
    pairs = _pairs_hold(lake, k)
    assert len(pairs) >= 10  # patients, encounters, observations, conditions… were all published and joined
    assert [p for p in pairs if p[2] < k] == []
    release = next(r["release"] for r in reports.values() if "release" in r)
    assert release["patients"] >= 12 and release["suppressed_patients"] == release["patients"]
