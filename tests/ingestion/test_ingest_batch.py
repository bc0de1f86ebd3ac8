"""The synthetic population in every format: invariant, defects caught, PHI sealed, idempotent re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingestion.batch import LEDGER_TABLE, ingest
from pipeline.lake import Lake
from storage_security.protected import ProtectedLake

CASES = [
    ("tabular", "patients.csv", "patients"),
    ("tabular", "encounters.parquet", "encounters"),
    ("tabular", "observations.jsonl", "observations"),
    ("tabular", "conditions.csv", "conditions"),
    ("tabular", "medications.parquet", "medications"),
    ("tabular", "outcomes.csv", "outcomes"),
    ("notes", "notes.jsonl", None),
    ("fhir", "fhir", None),
    ("hl7", "hl7", None),
]


def _hashes(plake, table: str) -> list[str]:
    return sorted(plake.lake.read_arrow("raw", table, columns=["_record_hash"]).column(0).to_pylist())


def _content(plake, table: str) -> list[str]:
    """A raw table's rows, decrypted, without what differs between two lakes (record hashes, pseudonyms and batch
    ids are keyed per lake) or between two runs (the load time)."""
    data = plake.read("raw", table, decrypt=True)
    data = data.drop_columns([c for c in ("_record_hash", "patient_pseudonym", "_ingested_at", "_batch_id")
                              if c in data.column_names])
    return sorted(repr(sorted(row.items())) for row in data.to_pylist())


@pytest.mark.parametrize(("source", "name", "table"), CASES, ids=[c[1] for c in CASES])
def test_when_population_is_ingested_then_rows_in_equal_accepted_plus_quarantined(
        population: Path, ing_settings, plake, source: str, name: str, table: str | None) -> None:
    report = ingest(ing_settings, source=source, path=population / name, table=table, plake=plake, docs=False)
    assert report.tables
    for counts in report.tables.values():
        assert counts.rows_in == counts.accepted + counts.quarantined
    conformed = {t: c for t, c in report.tables.items() if t not in ("bundles", "messages")}
    for t, counts in conformed.items():
        stored = plake.lake.read_arrow("raw", t).num_rows if counts.accepted else 0
        assert stored == counts.accepted - counts.duplicates
    quarantined = sum(c.quarantined for c in report.tables.values())
    if quarantined:
        quarantine = plake.lake.read_arrow("quarantine", "records")
        assert quarantine.num_rows == quarantined
        assert set(quarantine.column("batch_id").to_pylist()) == {report.batch_id}
    else:
        assert not plake.lake.exists("quarantine", "records")


@pytest.mark.parametrize("name", ["observations.csv", "encounters.jsonl", "conditions.parquet",
                                  "medications.csv"])
def test_when_tabular_defects_are_injected_then_each_is_quarantined_or_counted_as_duplicate(
        population: Path, defects: list[dict], ing_settings, plake, name: str) -> None:
    table = name.split(".")[0]
    report = ingest(ing_settings, source="tabular", path=population / name, table=table, plake=plake, docs=False)
    expected = [d for d in defects if d["format"] == "tabular" and d["table"] == table]
    assert expected, "the population should carry defects for this table"
    key = {"observations": "observation_id", "encounters": "encounter_id"}.get(table)
    quarantined = plake.read("quarantine", "records", decrypt=True).to_pylist()
    payload_keys = {json.loads(q["payload"]).get(f"{table[:-1]}_id") or json.loads(q["payload"]).get(key)
                    for q in quarantined}
    faults = [d for d in expected if d["kind"] != "duplicate"]
    missing = [d for d in faults if d["record"] not in payload_keys]
    assert missing == []
    assert report.tables[table].duplicates >= sum(1 for d in expected if d["kind"] == "duplicate")


def test_when_a_row_breaks_rules_then_the_quarantine_names_position_field_and_rule(
        population: Path, ing_settings, plake) -> None:
    ingest(ing_settings, source="tabular", path=population / "observations.csv", table="observations", plake=plake,
           docs=False)
    rows = plake.read("quarantine", "records", decrypt=True).to_pylist()
    by_rule = {rule: row for row in rows for rule in row["rules"]}
    assert any(rule.startswith("value:range[") for rule in by_rule)
    ranged = next(row for rule, row in by_rule.items() if rule.startswith("value:range["))
    assert ranged["position"].startswith("line ")
    assert "value is outside" in ranged["reason"] and ranged["record_key"] in ranged["reason"]
    assert ranged["patient_pseudonym"].startswith("ps1_")


def test_when_the_same_table_arrives_as_csv_parquet_and_jsonl_then_each_batch_lands_the_same_record_hashes(
        population: Path, ing_settings, plake) -> None:
    first = ingest(ing_settings, source="tabular", path=population / "patients.csv", table="patients", plake=plake,
                   docs=False)
    hashes = _hashes(plake, "patients")
    assert len(set(hashes)) == len(hashes)
    for copies, name in enumerate(("patients.parquet", "patients.jsonl"), start=2):
        again = ingest(ing_settings, source="tabular", path=population / name, table="patients", plake=plake,
                       docs=False)
        assert again.batch_id != first.batch_id
        # raw is append-only per batch: each format's batch brings the very same records once more
        assert _hashes(plake, "patients") == sorted(hashes * copies)


def test_when_a_finished_batch_is_run_again_then_the_ledger_replays_it_and_nothing_is_added(
        population: Path, ing_settings, plake) -> None:
    first = ingest(ing_settings, source="fhir", path=population / "fhir", plake=plake, docs=False)
    versions = {t: plake.lake.version("raw", t) for t in plake.lake.tables("raw")}
    again = ingest(ing_settings, source="fhir", path=population / "fhir", plake=plake, docs=False)
    assert again.replayed and again.batch_id == first.batch_id
    assert again.to_dict()["tables"] == first.to_dict()["tables"]
    assert {t: plake.lake.version("raw", t) for t in plake.lake.tables("raw")} == versions


def test_when_a_batch_reruns_without_its_ledger_row_then_committed_chunks_are_not_added_again(
        population: Path, ing_settings, plake) -> None:
    ingest(ing_settings, source="hl7", path=population / "hl7", plake=plake, docs=False)
    before = {t: _hashes(plake, t) for t in plake.lake.tables("raw")}
    quarantined = plake.lake.read_arrow("quarantine", "records").num_rows
    plake.lake.delete("quarantine", LEDGER_TABLE, where="batch_id IS NOT NULL")  # as if it crashed at the end
    again = ingest(ing_settings, source="hl7", path=population / "hl7", plake=plake, docs=False)
    assert not again.replayed
    assert {t: _hashes(plake, t) for t in plake.lake.tables("raw")} == before
    assert plake.lake.read_arrow("quarantine", "records").num_rows == quarantined


def test_when_raw_is_read_back_decrypted_then_values_equal_the_source_and_phi_was_sealed(
        population: Path, ing_settings, plake) -> None:
    ingest(ing_settings, source="tabular", path=population / "patients.parquet", table="patients", plake=plake,
           docs=False)
    sealed = plake.lake.read_arrow("raw", "patients")
    assert sealed.schema.field("ssn").type == "binary" and sealed.schema.field("facility_id").type == "string"
    raw = {r["patient_id"]: r for r in plake.read("raw", "patients", decrypt=True).to_pylist()}
    source = {r["patient_id"]: r for r in pq.read_table(population / "patients.parquet").to_pylist()}
    assert raw
    for pid, row in raw.items():
        for column in ("mrn", "ssn", "first_name", "email", "birth_date", "consent_research"):
            assert row[column] == source[pid][column]
        assert row["patient_pseudonym"] == plake.pseudonymizer("patient").pseudonym(pid)
        assert row["_source"] == "tabular" and len(row["_record_hash"]) == 64


def test_when_fhir_is_ingested_then_immunizations_land_in_their_own_table(
        population: Path, ing_settings, plake) -> None:
    report = ingest(ing_settings, source="fhir", path=population / "fhir", plake=plake, docs=False)
    immunizations = plake.read("raw", "immunizations", decrypt=True).to_pylist()
    assert immunizations and report.tables["immunizations"].quarantined == 0
    assert {r["code"] for r in immunizations} == {"141"}
    assert not plake.lake.exists("raw", "resources")  # the generator writes no resource without a table


def test_when_a_batch_finishes_then_gx_results_are_stored_with_it_and_an_audit_event_is_recorded(
        population: Path, ing_settings, plake) -> None:
    report = ingest(ing_settings, source="tabular", path=population / "encounters.csv", table="encounters",
                    plake=plake)
    ledger = plake.lake.read_arrow("quarantine", LEDGER_TABLE).to_pylist()
    stored = json.loads(next(r["validation"] for r in ledger if r["batch_id"] == report.batch_id))
    assert stored["encounters"]["discharge_time:order"]["expectation"] == \
        "expect_column_pair_values_a_to_be_greater_than_b"
    assert stored["encounters"]["encounter_type:enum"]["element_count"] > 0
    assert report.data_docs and Path(report.data_docs).is_file()
    events = [e for e in plake.audit.events() if e.event.details.get("batch_id") == report.batch_id]
    assert any(e.event.action == "write" and e.event.details.get("tables") for e in events)


def test_when_duplicates_span_chunks_then_copies_are_counted_and_key_conflicts_quarantined(
        tmp_path: Path, ing_settings, plake) -> None:
    small = ing_settings.model_copy(update={"ingestion": ing_settings.ingestion.model_copy(update={"chunk_rows": 100})})
    rows = [f'"PAT{i:04d}","2025-01-01",false,false' for i in range(250)]
    rows.append(rows[3])  # an exact copy, two chunks later
    rows.append('"PAT0004","2025-01-01",true,')  # the same key with different content
    path = tmp_path / "outcomes.csv"
    path.write_text('"patient_id","index_date","prevalent_t2d","t2d_within_1y"\n' + "\n".join(rows) + "\n")
    report = ingest(small, source="tabular", path=path, table="outcomes", plake=plake, docs=False)
    counts = report.tables["outcomes"]
    assert (counts.rows_in, counts.accepted, counts.duplicates, counts.quarantined) == (252, 251, 1, 1)
    assert dict(counts.by_rule) == {"patient_id:unique": 1}
    assert plake.lake.read_arrow("raw", "outcomes").num_rows == 250
    (row,) = plake.read("quarantine", "records", decrypt=True).to_pylist()
    assert row["position"] == "line 253" and "already loaded in this batch" in row["reason"]
    leftovers = ing_settings.home / "tmp" / "ingest"
    assert not leftovers.exists() or list(leftovers.iterdir()) == []  # the seen-keys file is gone


def test_when_rows_differ_only_in_where_a_value_ends_or_is_null_then_their_record_hashes_differ() -> None:
    import pyarrow as pa

    from ingestion.checking import HashKey, record_hashes

    key = HashKey(b"k" * 32)
    rows = pa.table({"a": ["ab", "a", None, "", "1:a", None],
                     "b": ["c", "bc", "", None, None, "1:a"],
                     "n": [1.5, 1.5, None, None, 2.0, 2.0]})
    hashes = record_hashes("t", rows, key)
    assert len(set(hashes)) == rows.num_rows
    assert record_hashes("t", rows.slice(0, 1), key) == hashes[:1]          # a row's hash is its own, not its chunk's
    assert record_hashes("u", rows.slice(0, 1), key) != hashes[:1]          # and its table's


def test_when_the_record_hash_is_computed_then_it_is_keyed_and_an_unkeyed_sha256_of_the_row_does_not_find_it(
        tmp_path: Path, keyring) -> None:
    import hashlib
    import pickle

    import pyarrow as pa

    from ingestion.checking import HashKey, record_hash_key, record_hashes
    from pipeline.settings import load_settings

    rows = pa.table({"patient_id": ["P1"], "label": ["1"]})
    one, other = HashKey(b"a" * 32, "v1"), HashKey(b"b" * 32, "v1")
    assert record_hashes("t", rows, one) != record_hashes("t", rows, other)
    unkeyed = hashlib.sha256(b'"t"\0' + b"2:P11:1").hexdigest()    # what an attacker could enumerate before
    assert unkeyed not in record_hashes("t", rows, one)
    assert "a" * 8 not in repr(one) and "redacted" in repr(one)
    assert pickle.loads(pickle.dumps(one)) == one  # noqa: S301 - it travels to a spawned worker's initializer

    settings = load_settings(home=str(tmp_path / "home"), lake_root=str(tmp_path / "lake"))
    plake = ProtectedLake(Lake(settings), keyring, principal="svc:ingest")
    again = ProtectedLake(Lake(settings), keyring, principal="svc:ingest")
    assert record_hash_key(plake).secret == record_hash_key(again).secret   # the lake's key, the same every run
    assert len(record_hash_key(plake).secret) == 32


def test_when_chunks_are_checked_in_worker_processes_then_the_batch_equals_an_inline_one(
        population: Path, ing_settings, keyring, tmp_path: Path) -> None:
    def run(workers: int, lake_dir: str):
        ingestion = ing_settings.ingestion.model_copy(update={"chunk_rows": 400, "workers": workers})
        chosen = ing_settings.model_copy(update={"ingestion": ingestion, "lake_root": str(tmp_path / lake_dir)})
        plake = ProtectedLake(Lake(chosen), keyring, principal="svc:ingest")
        report = ingest(chosen, source="tabular", path=population / "observations.csv", table="observations",
                        plake=plake, docs=False)
        quarantine = sorted((q["position"], tuple(q["rules"]), q["reason"], q["payload"])
                            for q in plake.read("quarantine", "records", decrypt=True).to_pylist())
        return report, _content(plake, "observations"), quarantine

    inline, inline_hashes, inline_quarantine = run(0, "inline")
    pooled, pooled_hashes, pooled_quarantine = run(1, "pooled")
    assert inline.batch_id != pooled.batch_id  # batch ids are keyed per lake, like record hashes
    assert pooled.to_dict()["tables"] == inline.to_dict()["tables"]
    assert pooled.validation == inline.validation
    assert pooled_hashes == inline_hashes and pooled_quarantine == inline_quarantine
    assert inline.tables["observations"].rows_in > 4 * 400  # several chunks, so the pool really ran
