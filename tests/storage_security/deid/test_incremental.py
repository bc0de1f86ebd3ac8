"""Incremental publication: only raw batches not yet published are decrypted and masked, with a full run's result;
a run with nothing new decrypts nothing and writes nothing; ``--full`` rebuilds."""

from __future__ import annotations

import pandas as pd
import pytest
from _deid_raw import generated, land, read_frames, shared_detector

from pipeline.lake import Lake
from storage_security.audit.log import AuditAction
from storage_security.deid.deidentify import Deidentifier
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake

TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes", "notes")


def _decrypts(plake: ProtectedLake, after: int, action: AuditAction = AuditAction.DECRYPT) -> list:
    return [r.event for r in plake.audit.events() if r.seq > after and r.event.action == action]


def _rows(lake: Lake, table: str, version: int | None = None) -> pd.DataFrame:
    frame = lake.read_pandas("deidentified", table, version=version)
    return frame.astype(str).sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, settings):
    root = tmp_path_factory.mktemp("incr")
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings.model_copy(update={"lake_root": str(root / "lake")}))
    plake = ProtectedLake(lake, ring, principal="svc:deidentify")
    frames = read_frames(generated(120, 23), TABLES)
    ids = sorted(frames["patients"]["patient_id"])
    first = set(ids[: len(ids) // 2])
    for table, frame in frames.items():
        land(plake, table, frame[frame["patient_id"].isin(first)], "b-1")
    deid = Deidentifier(plake, settings, detector=shared_detector())
    one = deid.publish_all()
    for table, frame in frames.items():
        later = frame[~frame["patient_id"].isin(first)]
        # The second extract re-sends one record of the first: it is published once.
        land(plake, table, pd.concat([later, frame[frame["patient_id"].isin(first)].head(1)]), "b-2")
    two = deid.publish_all()
    incremental = {t: lake.version("deidentified", t) for t in TABLES}
    mark = max(r.seq for r in plake.audit.events())
    three = deid.publish_all()
    after_three = {t: lake.version("deidentified", t) for t in TABLES}
    decrypted_by_three = _decrypts(plake, mark)
    read_by_three = _decrypts(plake, mark, AuditAction.READ)
    full = deid.publish_all(full=True)
    return {"lake": lake, "plake": plake, "one": one, "two": two, "three": three, "full": full,
            "incremental": incremental, "after_three": after_three, "decrypted_by_three": decrypted_by_three,
            "read_by_three": read_by_three,
            "frames": frames, "deid": deid, "first": first}


@pytest.mark.integration
def test_when_the_release_gate_reshaped_the_tables_then_the_second_batch_rebuilds_them(runs):
    # At 60 + 60 patients the release gate suppresses patients across every table: the published rows are no
    # longer the masked ones, so a new batch cannot simply be added to them.
    assert all("release" in runs["one"][t] for t in TABLES)
    assert {r.get("publication") for r in runs["two"].values()} == {"full"}


@pytest.mark.integration
def test_when_a_second_batch_arrives_then_only_it_is_decrypted_and_the_result_is_a_full_runs(tmp_path, settings):
    tables = ("notes", "observations")  # published alone, these pass the release gate as masked
    ring = LocalKeyring.init(tmp_path / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings.model_copy(update={"lake_root": str(tmp_path / "lake")}))
    plake = ProtectedLake(lake, ring, principal="svc:deidentify")
    frames = read_frames(generated(120, 23), TABLES)
    first = set(sorted(frames["patients"]["patient_id"])[:60])
    for table in ("patients", *tables):
        land(plake, table, frames[table][frames[table]["patient_id"].isin(first)], "b-1")
    deid = Deidentifier(plake, settings, detector=shared_detector())
    deid.publish_all(list(tables))
    for table in ("patients", *tables):
        land(plake, table, frames[table][~frames[table]["patient_id"].isin(first)], "b-2")
    two = deid.publish_all(list(tables))
    incremental = {t: lake.version("deidentified", t) for t in tables}
    full = deid.publish_all(list(tables), full=True)
    for table in tables:
        later = int((~frames[table]["patient_id"].isin(first)).sum())
        assert two[table]["publication"] == "incremental" and full[table]["publication"] == "full"
        # The new batch, plus any earlier notes whose surrogate a new patient's real name now is.
        assert later <= two[table]["rows_decrypted"] < full[table]["rows_decrypted"] == len(frames[table])
        pd.testing.assert_frame_equal(_rows(lake, table, incremental[table]), _rows(lake, table))


@pytest.mark.integration
@pytest.mark.parametrize("table", TABLES)
def test_when_published_incrementally_then_the_tables_equal_a_full_run(runs, table):
    lake = runs["lake"]
    assert "refused" not in runs["two"][table], runs["two"][table]
    full_version = lake.version("deidentified", table)
    pd.testing.assert_frame_equal(_rows(lake, table, runs["incremental"][table]), _rows(lake, table, full_version))


@pytest.mark.integration
def test_when_no_new_batch_came_then_nothing_is_decrypted_and_no_table_changes(runs):
    assert runs["decrypted_by_three"] == []
    # Nothing is read either, published tables included: what is new is known from the Delta logs alone, and the
    # release gate already passed the zone as it stands.
    assert [(e.zone, e.table_name) for e in runs["read_by_three"]] == []
    assert runs["after_three"] == runs["incremental"]
    assert {r.get("publication") for r in runs["three"].values()} == {"unchanged"}


@pytest.mark.integration
def test_when_full_is_asked_then_every_table_is_rebuilt(runs):
    assert {r.get("publication") for r in runs["full"].values()} == {"full"}
    assert all(runs["full"][t]["rows_decrypted"] >= runs["full"][t]["rows_in"] for t in TABLES)


@pytest.mark.integration
def test_when_a_patient_is_shredded_after_publication_then_their_rows_leave_on_the_next_run(runs):
    plake, lake, deid = runs["plake"], runs["lake"], runs["deid"]
    victim = lake.read_pandas("deidentified", "encounters")["patient_pseudonym"].value_counts().index[0]
    plake.shred(victim, reason="erasure ER-9")
    reports = deid.publish_all()
    for table in TABLES:
        out = lake.read_pandas("deidentified", table)
        if "patient_pseudonym" in out.columns:
            assert victim not in set(out["patient_pseudonym"]), table
        assert reports[table].get("publication") == "full", table
