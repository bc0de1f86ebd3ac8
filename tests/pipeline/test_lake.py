"""Tests for pipeline/lake.py and its delta-rs engine: writes, reads, time travel, history, vacuum, names,
Spark <-> delta-rs round trips on the run's one Spark session, and concurrent writers in spawned processes.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from pipeline._arrow import plain_table, to_arrow
from pipeline.errors import SettingsError, StorageError
from pipeline.lake import SYSTEM_ZONE, CommitInfo, Lake, LakeAccess, MergeResult, Zone

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("score", pa.float64()),
        ("name", pa.string()),
        ("flag", pa.bool_()),
        ("born", pa.date32()),
        ("seen", pa.timestamp("us", tz="UTC")),
        ("ssn_enc", pa.binary()),  # encrypted cells are binary
    ]
)
SPARK_DDL = "id BIGINT, score DOUBLE, name STRING, flag BOOLEAN, born DATE, seen TIMESTAMP, ssn_enc BINARY"


def _patients(ids: range | list[int], *, name: str = "Zoë") -> pa.Table:
    """Rows with every column type and, across ids 1..6, a null and a value in every column but id."""
    rows = [
        {
            "id": i,
            "score": None if i % 3 == 0 else i * 1.25 - 3,
            "name": None if i % 4 == 0 else f"{name}-{i}",
            "flag": None if i % 5 == 0 else i % 2 == 0,
            "born": None if i % 3 == 1 else date(1931, 2, 28) + timedelta(days=4099 * i),
            "seen": None if i % 4 == 1 else datetime(2024, 2, 29, tzinfo=UTC) + timedelta(days=i, microseconds=7 * i),
            "ssn_enc": None if i % 5 == 2 else bytes([i % 256, 0, 255]) * (i % 4 + 1),
        }
        for i in ids
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def _ids(table: pa.Table) -> list[int]:
    return sorted(table["id"].to_pylist())


def _data_files(lake: Lake, table: str) -> set[str]:
    return {p.name for p in Path(lake.uri(Zone.RAW, table)).glob("*.parquet")}


# append and read ---------------------------------------------------------------------------------------

_INPUTS = {
    "arrow": lambda t: t,
    "record_batch": lambda t: t.combine_chunks().to_batches()[0],
    "record_batch_reader": lambda t: pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=2)),
    "pandas": lambda t: t.to_pandas(),
    "list_of_dicts": lambda t: t.to_pylist(),
}


@pytest.mark.parametrize("kind", list(_INPUTS))
def test_when_data_is_appended_then_it_reads_back_equal_with_every_type_and_null(lake: Lake, kind: str) -> None:
    expected = _patients(range(1, 7))

    version = lake.append(Zone.RAW, "patients", _INPUTS[kind](expected))

    assert version == 0
    assert lake.exists(Zone.RAW, "patients")
    result = lake.read_arrow(Zone.RAW, "patients")
    assert result.schema.equals(SCHEMA)
    assert _sorted(result).equals(_sorted(expected))


def test_when_a_table_is_read_as_pandas_then_values_and_nulls_match(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    frame = lake.read_pandas("raw", "patients").sort_values("id", ignore_index=True)

    assert list(frame.columns) == SCHEMA.names
    assert frame["id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["name"].isna().tolist() == [False, False, False, True, False, False]
    assert frame.loc[0, "seen"] is pd.NaT
    assert frame.loc[1, "seen"] == pd.Timestamp("2024-03-02 00:00:00.000014", tz="UTC")


def test_when_appending_again_then_rows_accumulate_and_versions_count_up(lake: Lake) -> None:
    assert lake.append("raw", "patients", _patients([1, 2])) == 0
    assert lake.append("raw", "patients", _patients([3])) == 1

    assert _ids(lake.read_arrow("raw", "patients")) == [1, 2, 3]
    assert lake.version("raw", "patients") == 1


def test_when_an_append_carries_a_transaction_id_then_a_version_already_committed_is_not_written_again(
        lake: Lake) -> None:
    assert lake.transaction_version("raw", "patients", "batch-1") is None  # no table yet
    lake.append("raw", "patients", _patients([1, 2]), txn=("batch-1", 0))
    lake.append("raw", "patients", _patients([3]), txn=("batch-1", 1))
    assert lake.transaction_version("raw", "patients", "batch-1") == 1
    assert lake.transaction_version("raw", "patients", "batch-2") is None

    version = lake.version("raw", "patients")
    assert lake.append("raw", "patients", _patients([1, 2]), txn=("batch-1", 0)) == version  # a resumed run
    assert lake.append("raw", "patients", _patients([3]), txn=("batch-1", 1)) == version
    assert lake.version("raw", "patients") == version
    lake.append("raw", "patients", _patients([4]), txn=("batch-2", 0))  # another writer's ids are its own
    assert _ids(lake.read_arrow("raw", "patients")) == [1, 2, 3, 4]


def test_when_the_spark_engine_is_asked_for_a_transaction_version_then_it_reads_the_tables_log(lake: Lake) -> None:
    from pipeline._delta_spark import DeltaSparkEngine

    engine = DeltaSparkEngine(spark=None)  # type: ignore[arg-type]  # reading the log needs no session
    lake.append("raw", "patients", _patients([1, 2]), txn=("batch-1", 0))
    lake.append("raw", "patients", _patients([3]), txn=("batch-1", 1))
    uri = lake.uri("raw", "patients")

    assert engine.transaction_version(uri, "batch-1") == 1
    assert engine.transaction_version(uri, "batch-2") is None
    assert engine.transaction_version(lake.uri("raw", "absent"), "batch-1") is None  # unknown is safe: None


def test_when_another_run_commits_the_same_txn_after_this_one_read_the_table_then_its_rows_are_there_once(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    lake.append("raw", "patients", _patients([1]))
    engine = type(lake._engine)
    real_table = engine._table

    def read_then_lose_the_race(self, uri: str, version: int | None = None):
        snapshot = real_table(self, uri, version)
        monkeypatch.setattr(engine, "_table", real_table)
        Lake(lake.settings).append("raw", "patients", _patients([2]), txn=("batch-1", 0))  # the other run
        return snapshot

    monkeypatch.setattr(engine, "_table", read_then_lose_the_race)
    version = lake.append("raw", "patients", _patients([2]), txn=("batch-1", 0))

    assert _ids(lake.read_arrow("raw", "patients")) == [1, 2]
    assert version == lake.version("raw", "patients")


def test_when_two_runs_of_the_same_txn_race_to_create_a_table_then_its_rows_are_there_once(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = type(lake._engine)
    real_exists = engine.exists

    def not_yet_then_created_by_the_other(self, uri: str) -> bool:
        monkeypatch.setattr(engine, "exists", real_exists)
        Lake(lake.settings).append("raw", "patients", _patients([1, 2]), txn=("batch-1", 0))  # the other run
        return False

    monkeypatch.setattr(engine, "exists", not_yet_then_created_by_the_other)
    lake.append("raw", "patients", _patients([1, 2]), txn=("batch-1", 0))

    assert _ids(lake.read_arrow("raw", "patients")) == [1, 2]
    assert lake.transaction_version("raw", "patients", "batch-1") == 0


def test_when_columns_and_where_are_given_then_only_those_are_read(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    result = lake.read_arrow("raw", "patients", columns=["name", "id"], where="id > 3 AND name IS NOT NULL")

    assert result.column_names == ["name", "id"]
    assert _ids(result) == [5, 6]


def test_when_an_empty_table_is_written_then_it_reads_back_empty_with_its_schema(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([]))

    result = lake.read_arrow("raw", "patients")

    assert result.num_rows == 0
    assert result.schema.equals(SCHEMA)


def test_when_appended_data_has_another_schema_then_storage_error(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1]))

    with pytest.raises(StorageError, match="raw/patients"):
        lake.append("raw", "patients", pa.table({"id": [2], "unexpected": ["x"]}))

    assert lake.version("raw", "patients") == 0


def test_when_evolve_schema_is_set_then_new_columns_are_added_and_old_rows_read_null(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2]))
    extra = _patients([3]).append_column("ward", pa.array(["icu"]))

    lake.append("raw", "patients", extra, evolve_schema=True)

    result = _sorted(lake.read_arrow("raw", "patients"))
    assert result.column_names == [*SCHEMA.names, "ward"]
    assert result["ward"].to_pylist() == [None, None, "icu"]


def test_when_data_is_of_an_unsupported_type_then_type_error(lake: Lake) -> None:
    with pytest.raises(TypeError, match="cannot write str"):
        lake.append("raw", "patients", "id,name\n1,x\n")

    assert not lake.exists("raw", "patients")
    assert lake.tables("raw") == []


# overwrite ---------------------------------------------------------------------------------------------


def test_when_overwritten_then_only_new_rows_remain_and_the_old_version_stays_readable(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    version = lake.overwrite("raw", "patients", _patients([10, 11]))

    assert version == 1
    assert _ids(lake.read_arrow("raw", "patients")) == [10, 11]
    assert _ids(lake.read_arrow("raw", "patients", version=0)) == [1, 2, 3, 4, 5, 6]


def test_when_overwritten_where_then_only_matching_rows_are_replaced(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    lake.overwrite("raw", "patients", _patients([4, 5], name="new"), where="id >= 4")

    result = _sorted(lake.read_arrow("raw", "patients"))
    assert _ids(result) == [1, 2, 3, 4, 5]
    assert result["name"].to_pylist() == ["Zoë-1", "Zoë-2", "Zoë-3", None, "new-5"]


def test_when_overwrite_data_falls_outside_where_then_storage_error_and_nothing_changes(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    with pytest.raises(StorageError, match=r"write \(overwrite\)"):
        lake.overwrite("raw", "patients", _patients([1, 9]), where="id >= 4")

    assert lake.version("raw", "patients") == 0
    assert _ids(lake.read_arrow("raw", "patients")) == [1, 2, 3, 4, 5, 6]


# merge -------------------------------------------------------------------------------------------------


def test_when_merged_then_matching_keys_are_updated_and_the_rest_inserted(lake: Lake) -> None:
    lake.append("deidentified", "patients", _patients(range(1, 5)))

    result = lake.merge("deidentified", "patients", _patients(range(3, 7), name="upd"), keys=["id"])

    assert result == MergeResult(inserted=2, updated=2, version=1)
    assert result.version == lake.version("deidentified", "patients")
    table = _sorted(lake.read_arrow("deidentified", "patients"))
    assert table["name"].to_pylist() == ["Zoë-1", "Zoë-2", "upd-3", None, "upd-5", "upd-6"]
    assert table.slice(2).equals(_patients(range(3, 7), name="upd"))  # updated rows take every new value


def test_when_merging_into_a_missing_table_then_it_is_created_from_the_data(lake: Lake) -> None:
    result = lake.merge("deidentified", "patients", _patients([1, 2, 3]), keys=("id",))

    assert result == MergeResult(inserted=3, updated=0, version=0)
    assert _sorted(lake.read_arrow("deidentified", "patients")).equals(_patients([1, 2, 3]))


def test_when_merging_on_a_compound_key_then_both_columns_must_match(lake: Lake) -> None:
    lake.append("deidentified", "visits",
                [{"patient": 1, "visit": 1, "note": "a"}, {"patient": 1, "visit": 2, "note": "b"}])

    result = lake.merge(
        "deidentified", "visits",
        [{"patient": 1, "visit": 2, "note": "B"}, {"patient": 2, "visit": 2, "note": "c"}],
        keys=["patient", "visit"],
    )

    assert (result.inserted, result.updated) == (1, 1)
    rows = lake.read_arrow("deidentified", "visits").sort_by([("patient", "ascending"), ("visit", "ascending")])
    assert rows.to_pylist() == [
        {"patient": 1, "visit": 1, "note": "a"},
        {"patient": 1, "visit": 2, "note": "B"},
        {"patient": 2, "visit": 2, "note": "c"},
    ]


@pytest.mark.parametrize("table_exists", [True, False], ids=["existing", "missing"])
def test_when_merge_data_repeats_a_key_then_storage_error_and_nothing_is_written(
    lake: Lake, table_exists: bool
) -> None:
    if table_exists:
        lake.append("deidentified", "patients", _patients([1]))

    with pytest.raises(StorageError, match="1 key\\(s\\) appear more than once"):
        lake.merge("deidentified", "patients", _patients([1, 2, 2]), keys=["id"])

    if table_exists:
        assert lake.version("deidentified", "patients") == 0
        assert _ids(lake.read_arrow("deidentified", "patients")) == [1]
    else:
        assert not lake.exists("deidentified", "patients")


@pytest.mark.parametrize(("keys", "message"), [([], "at least one key"), (["mrn"], r"\['mrn'\] are not columns")])
def test_when_merge_keys_are_unusable_then_value_error(lake: Lake, keys: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lake.merge("deidentified", "patients", _patients([1]), keys=keys)


# delete ------------------------------------------------------------------------------------------------


def test_when_deleting_with_a_predicate_then_only_matching_rows_go(lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))

    deleted = lake.delete("raw", "patients", where="id <= 2 OR name IS NULL")

    assert deleted == 3
    assert _ids(lake.read_arrow("raw", "patients")) == [3, 5, 6]
    assert _ids(lake.read_arrow("raw", "patients", version=0)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("where", ["", "   "])
def test_when_delete_has_no_predicate_then_value_error(lake: Lake, where: str) -> None:
    lake.append("raw", "patients", _patients([1]))

    with pytest.raises(ValueError, match="needs a predicate"):
        lake.delete("raw", "patients", where=where)


def test_when_delete_predicate_names_an_unknown_column_then_storage_error(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1]))

    with pytest.raises(StorageError, match="nosuch"):
        lake.delete("raw", "patients", where="nosuch = 1")


# time travel, history ----------------------------------------------------------------------------------


def test_when_reading_version_zero_after_later_writes_then_the_first_snapshot_comes_back(lake: Lake) -> None:
    first = _patients([1, 2, 3])
    lake.append("raw", "patients", first)
    lake.append("raw", "patients", _patients([4]))
    lake.delete("raw", "patients", where="id = 1")
    lake.overwrite("raw", "patients", _patients([9]))

    assert _sorted(lake.read_arrow("raw", "patients", version=0)).equals(_sorted(first))
    assert _ids(lake.read_arrow("raw", "patients", version=2)) == [2, 3, 4]
    assert _ids(lake.read_arrow("raw", "patients")) == [9]


def test_when_a_version_does_not_exist_then_storage_error(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1]))

    with pytest.raises(StorageError, match="version 5"):
        lake.read_arrow("raw", "patients", version=5)


def test_when_history_is_read_then_commits_come_newest_first_with_who_and_why(lake: Lake) -> None:
    lake.append(
        "raw", "patients", _patients([1, 2]),
        commit=CommitInfo(principal="svc:ingest", purpose="treatment", dag_run="ingest__2024-01-01",
                          batch_id="b-17", extra={"source": "ehr"}),
    )
    lake.delete("raw", "patients", where="id = 1", commit=CommitInfo(principal="user:alice", purpose="erasure"))
    lake.overwrite("raw", "patients", _patients([3]))

    history = lake.history("raw", "patients")

    assert [entry["version"] for entry in history] == [2, 1, 0]
    assert [entry["medguard.operation"] for entry in history] == ["overwrite", "delete", "append"]
    newest, middle, oldest = history
    assert newest["medguard.principal"].startswith("os:")
    assert newest["medguard.purpose"] == "unspecified"
    assert (middle["medguard.principal"], middle["medguard.purpose"]) == ("user:alice", "erasure")
    assert middle["operation"] == "DELETE"
    assert "medguard.dag_run" not in middle
    assert oldest["medguard.principal"] == "svc:ingest"
    assert oldest["medguard.purpose"] == "treatment"
    assert oldest["medguard.dag_run"] == "ingest__2024-01-01"
    assert oldest["medguard.batch_id"] == "b-17"
    assert oldest["medguard.source"] == "ehr"
    assert [entry["version"] for entry in lake.history("raw", "patients", limit=1)] == [2]


def test_when_merge_commits_then_history_records_it_as_a_merge(lake: Lake) -> None:
    lake.append("deidentified", "patients", _patients([1]))
    lake.merge("deidentified", "patients", _patients([1, 2]), keys=["id"],
               commit=CommitInfo(principal="svc:conform", purpose="operations"))

    newest = lake.history("deidentified", "patients")[0]

    assert newest["operation"] == "MERGE"
    assert (newest["medguard.operation"], newest["medguard.principal"]) == ("merge", "svc:conform")


# vacuum ------------------------------------------------------------------------------------------------


def test_when_vacuum_is_a_dry_run_then_it_lists_unreferenced_files_and_deletes_nothing(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2]))
    first_files = _data_files(lake, "patients")
    lake.overwrite("raw", "patients", _patients([3]))
    before = _data_files(lake, "patients")

    listed = lake.vacuum("raw", "patients", retention_hours=0)

    assert {Path(f).name for f in listed} == first_files
    assert _data_files(lake, "patients") == before
    assert lake.history("raw", "patients")[0]["version"] == 1  # a dry run commits nothing
    assert _ids(lake.read_arrow("raw", "patients", version=0)) == [1, 2]


def test_when_vacuum_uses_the_default_retention_then_recent_files_are_kept(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2]))
    lake.overwrite("raw", "patients", _patients([3]))

    assert lake.vacuum("raw", "patients") == []
    assert lake.vacuum("raw", "patients", dry_run=False) == []
    assert _ids(lake.read_arrow("raw", "patients", version=0)) == [1, 2]


def test_when_vacuumed_with_zero_retention_then_old_files_go_and_the_current_version_reads(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2]))
    first_files = _data_files(lake, "patients")
    lake.overwrite("raw", "patients", _patients([3, 4]))

    removed = lake.vacuum("raw", "patients", retention_hours=0, dry_run=False)

    assert {Path(f).name for f in removed} == first_files
    assert _data_files(lake, "patients").isdisjoint(first_files)
    assert _sorted(lake.read_arrow("raw", "patients")).equals(_patients([3, 4]))
    with pytest.raises(StorageError):  # time travel ends at the vacuum's retention
        lake.read_arrow("raw", "patients", version=0)


def test_when_a_write_fails_to_commit_then_only_a_full_vacuum_removes_its_data_file(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1]))
    committed = _data_files(lake, "patients")
    # Every next log entry is taken (by a directory): the write's data file lands, its commit fails — as after a
    # crash, a full disk or an object-store error between the two.
    slots = [Path(lake.uri("raw", "patients"), "_delta_log", f"{v:020d}.json") for v in range(1, 40)]
    for slot in slots:
        slot.mkdir()
    with pytest.raises(StorageError):
        lake.append("raw", "patients", _patients([2]))
    for slot in slots:
        slot.rmdir()
    orphans = _data_files(lake, "patients") - committed
    assert len(orphans) == 1

    assert lake.vacuum("raw", "patients", retention_hours=0, dry_run=False) == []  # the log never named it
    assert _data_files(lake, "patients") - committed == orphans
    removed = lake.vacuum("raw", "patients", retention_hours=0, dry_run=False, full=True)

    assert {Path(f).name for f in removed} == orphans and _data_files(lake, "patients") == committed
    assert _ids(lake.read_arrow("raw", "patients")) == [1]


def test_when_vacuum_retention_is_negative_then_value_error(lake: Lake) -> None:
    with pytest.raises(ValueError, match="retention_hours"):
        lake.vacuum("raw", "patients", retention_hours=-1)


# names, zones, missing tables --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "Raw", "a.b", "", "1st", "a-b", "a/b", "x" * 64, "patients "])
def test_when_a_table_name_is_not_lower_snake_case_then_value_error_and_nothing_is_written(
    lake: Lake, name: str
) -> None:
    with pytest.raises(ValueError, match="lower_snake_case"):
        lake.uri("raw", name)
    with pytest.raises(ValueError, match="lower_snake_case"):
        lake.append("raw", name, _patients([1]))
    with pytest.raises(ValueError, match="lower_snake_case"):
        lake.read_arrow("raw", name)

    assert not Path(lake.root).exists()


@pytest.mark.parametrize("zone", ["bronze", "RAW", "../raw"])
def test_when_a_zone_is_unknown_then_value_error(lake: Lake, zone: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Zone"):
        lake.uri(zone, "patients")


def test_when_names_are_valid_then_the_table_lives_at_root_zone_table(lake: Lake, tmp_path: Path) -> None:
    assert lake.uri(Zone.DEIDENTIFIED, "patients_v2") == f"{tmp_path / 'lake'}/deidentified/patients_v2"
    assert lake.uri("audit", "x" * 63).endswith("/audit/" + "x" * 63)


@pytest.mark.parametrize(
    "read",
    [
        lambda lake: lake.read_arrow("raw", "absent"),
        lambda lake: lake.read_pandas("raw", "absent"),
        lambda lake: lake.read_arrow("raw", "absent", version=0),
        lambda lake: lake.version("raw", "absent"),
        lambda lake: lake.history("raw", "absent"),
        lambda lake: lake.delete("raw", "absent", where="id = 1"),
        lambda lake: lake.vacuum("raw", "absent"),
    ],
    ids=["read_arrow", "read_pandas", "time_travel", "version", "history", "delete", "vacuum"],
)
def test_when_a_table_is_missing_then_storage_error_names_it(lake: Lake, read) -> None:
    with pytest.raises(StorageError, match=r"no Delta table at .*/raw/absent"):
        read(lake)

    assert not lake.exists("raw", "absent")


def test_when_tables_are_listed_then_only_delta_tables_of_that_zone_come_back_sorted(lake: Lake) -> None:
    lake.append("raw", "visits", _patients([1]))
    lake.append("raw", "admissions", _patients([1]))
    lake.append("deidentified", "patients", _patients([1]))
    Path(lake.uri("raw", "not_a_table")).mkdir(parents=True)

    assert lake.tables(Zone.RAW) == ["admissions", "visits"]
    assert lake.tables("deidentified") == ["patients"]
    assert lake.tables(Zone.AUDIT) == []


def test_when_nothing_was_ever_written_then_every_zone_lists_no_tables(lake: Lake) -> None:
    assert not Path(lake.root).exists()

    assert [lake.tables(zone) for zone in Zone] == [[] for _ in Zone]
    assert lake.tables(SYSTEM_ZONE) == []


def test_when_a_schema_is_asked_then_it_comes_from_the_log_with_every_type(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2]))
    lake.append("raw", "patients", pa.table({"id": [3], "extra": ["x"]}), evolve_schema=True)

    assert lake.schema("raw", "patients").equals(SCHEMA.append(pa.field("extra", pa.string())))
    with pytest.raises(StorageError, match="no Delta table"):
        lake.schema("raw", "absent")


def test_when_the_system_zone_is_used_then_every_method_works_and_zone_listings_never_show_it(lake: Lake) -> None:
    seen: list[LakeAccess] = []
    lake = lake.with_access_hook(seen.append)

    assert lake.append(SYSTEM_ZONE, "deks", _patients([1, 2])) == 0
    assert lake.merge(SYSTEM_ZONE, "deks", _patients([2, 3], name="upd"), keys=["id"]).version == 1
    assert lake.delete(SYSTEM_ZONE, "deks", where="id = 1", commit=CommitInfo(purpose="shred")) == 1
    assert lake.exists(SYSTEM_ZONE, "deks")
    assert lake.version(SYSTEM_ZONE, "deks") == 2
    assert lake.schema(SYSTEM_ZONE, "deks").equals(SCHEMA)
    assert _ids(lake.read_arrow(SYSTEM_ZONE, "deks", columns=["id"])) == [2, 3]
    assert _ids(lake.read_arrow(SYSTEM_ZONE, "deks", version=0)) == [1, 2]
    assert [h["medguard.operation"] for h in lake.history(SYSTEM_ZONE, "deks")] == ["delete", "merge", "append"]
    assert lake.vacuum(SYSTEM_ZONE, "deks", retention_hours=0, dry_run=False)  # files the merge replaced
    assert _ids(lake.read_arrow(SYSTEM_ZONE, "deks")) == [2, 3]
    assert lake.tables(SYSTEM_ZONE) == ["deks"]
    assert lake.uri(SYSTEM_ZONE, "deks").endswith("/_keys/deks")

    assert all(lake.tables(zone) == [] for zone in Zone)
    assert seen == []  # key metadata is audited by the key code, not as table access


def test_when_the_lake_is_built_with_default_settings_then_it_uses_delta_rs_under_the_run_home(
    run_home: Path,
) -> None:
    lake = Lake()

    assert lake.engine == "delta-rs"
    assert lake.root == str(run_home.resolve() / "lake")
    assert "delta-rs" in repr(lake)


def test_when_the_root_is_delta_rs_memory_store_then_settings_error_at_construction(settings) -> None:
    with pytest.raises(SettingsError, match="nothing written there could be read again"):
        Lake(settings.model_copy(update={"lake_root": "memory:///lake"}))


def test_when_the_root_is_a_file_uri_then_tables_are_written_under_it_and_nowhere_else(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lake = Lake(settings.model_copy(update={"lake_root": f"file://{tmp_path / 'lake'}"}))

    lake.append(Zone.RAW, "notes", pa.table({"note_id": ["n1"]}))

    assert lake.tables(Zone.RAW) == ["notes"] and lake.read_arrow(Zone.RAW, "notes").num_rows == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]  # no "file:" folder in the working directory


def test_when_a_table_takes_many_small_commits_then_a_checkpoint_every_ten_bounds_what_an_open_reads(
        lake: Lake) -> None:
    # An open reads each commit since the last checkpoint: on an object store, one request per commit.
    for i in range(12):
        lake.append(Zone.AUDIT, "events", pa.table({"seq": [i]}))

    log = Path(lake.uri(Zone.AUDIT, "events")) / "_delta_log"
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == [f"{9:020d}.checkpoint.parquet"]
    assert lake.read_arrow(Zone.AUDIT, "events").num_rows == 12 and lake.version(Zone.AUDIT, "events") == 11


def test_when_commit_info_has_no_dag_run_then_its_metadata_omits_it() -> None:
    info = CommitInfo(principal="svc:x", purpose="research", extra={"ticket": "SEC-1"})

    assert info.metadata("append") == {
        "medguard.principal": "svc:x",
        "medguard.purpose": "research",
        "medguard.ticket": "SEC-1",
        "medguard.operation": "append",
    }


# access hook -------------------------------------------------------------------------------------------


def test_when_a_hook_is_given_then_each_read_and_write_of_a_zone_is_reported_once(lake: Lake) -> None:
    seen: list[LakeAccess] = []
    lake = lake.with_access_hook(seen.append)
    who = CommitInfo(principal="svc:test", purpose="research", batch_id="b1")

    lake.append("raw", "patients", _patients([1, 2, 3]), commit=who, txn=("b1", 0))
    lake.append("raw", "patients", pa.RecordBatchReader.from_batches(SCHEMA, _patients([4, 5]).to_batches()))
    lake.merge("raw", "patients", _patients([5, 6]), keys=["id"], commit=who)
    lake.overwrite("raw", "patients", _patients([1, 2]), where="id < 3")
    lake.delete("raw", "patients", where="id = 6")
    lake.read_arrow("raw", "patients", columns=["id", "name"], where="id > 1")
    lake.read_pandas("raw", "patients", version=0)
    lake.vacuum("raw", "patients")  # a dry run deletes nothing and is not reported
    lake.exists("raw", "patients"), lake.schema("raw", "patients"), lake.history("raw", "patients")

    assert [(a.action, a.operation, a.zone, a.table, a.rows) for a in seen] == [
        ("write", "append", "raw", "patients", 3),
        ("write", "append", "raw", "patients", 2),  # a stream, counted as it was written
        ("write", "merge", "raw", "patients", 2),
        ("write", "overwrite", "raw", "patients", 2),
        ("delete", "delete", "raw", "patients", 1),
        ("read", "read", "raw", "patients", 4),
        ("read", "read", "raw", "patients", 3),
    ]
    append, _, merge, overwrite, delete, read, old = seen
    assert append.commit == who and append.version == 0 and append.details == {"txn": ["b1", 0]}
    assert append.columns == tuple(SCHEMA.names)
    assert merge.details == {"keys": ["id"], "inserted": 1, "updated": 1} and merge.version == 2
    assert overwrite.details == {"filtered": True}
    assert delete.columns == () and delete.commit is not None and delete.commit.purpose == "unspecified"
    assert read.columns == ("id", "name") and read.version is None and read.commit is None
    assert old.version == 0 and old.columns == tuple(SCHEMA.names)


def test_when_the_audit_zone_is_read_or_written_then_the_hook_is_not_called(lake: Lake) -> None:
    # The hook writes the audit zone: reporting those writes would report themselves for ever.
    seen: list[LakeAccess] = []
    lake = lake.with_access_hook(seen.append)

    lake.append(Zone.AUDIT, "events", _patients([1]))
    lake.read_arrow(Zone.AUDIT, "events")

    assert seen == []


def test_when_the_hook_fails_on_a_read_then_the_caller_gets_its_error_and_no_rows(lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1]))

    def refuse(access: LakeAccess) -> None:
        raise RuntimeError(f"audit log unavailable for {access.zone}.{access.table}")

    with pytest.raises(RuntimeError, match=r"unavailable for raw\.patients"):
        lake.with_access_hook(refuse).read_arrow("raw", "patients")
    assert lake.read_arrow("raw", "patients").num_rows == 1  # the hook belongs to the copy, not to this lake


def test_when_a_lake_is_built_with_a_hook_then_it_reports_like_a_copy_with_one(tmp_path: Path, settings) -> None:
    seen: list[LakeAccess] = []
    lake = Lake(settings.model_copy(update={"lake_root": str(tmp_path / "lake")}), on_access=seen.append)

    lake.append("predictions", "scores", _patients([1]))

    assert [(a.zone, a.table, a.rows) for a in seen] == [("predictions", "scores", 1)]


# _arrow conversions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "plain"),
    [
        (pa.string_view(), pa.string()),
        (pa.large_string(), pa.string()),
        (pa.binary_view(), pa.binary()),
        (pa.large_binary(), pa.binary()),
        (pa.large_list(pa.large_string()), pa.list_(pa.string())),
        (pa.struct([("a", pa.string_view())]), pa.struct([("a", pa.string())])),
        (pa.timestamp("us", tz="UTC"), pa.timestamp("us", tz="UTC")),
    ],
)
def test_when_a_table_has_view_or_large_types_then_plain_table_casts_them(view, plain) -> None:
    table = pa.table({"c": pa.array([None], type=pa.null()).cast(view)})

    assert plain_table(table).schema.field("c").type == plain


def test_when_to_arrow_gets_a_reader_then_it_passes_through_unread() -> None:
    reader = pa.RecordBatchReader.from_batches(SCHEMA, _patients([1]).to_batches())

    assert to_arrow(reader) is reader


# Spark <-> delta-rs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "ids"), [(None, range(1, 10)), (0, range(1, 7))], ids=["latest", "v0"])
def test_when_lake_writes_arrow_then_spark_reads_the_same_rows_and_types(
    spark, lake: Lake, version: int | None, ids: range
) -> None:
    lake.append("raw", "patients", _patients(range(1, 7)))
    lake.append("raw", "patients", _patients(range(7, 10)))

    frame = lake.read_spark("raw", "patients", version=version)

    assert frame.count() == len(ids)
    result = _sorted(frame.toArrow())
    assert result.schema.equals(SCHEMA)
    assert result.equals(_patients(ids))


def test_when_spark_reads_through_a_hooked_lake_then_the_read_is_reported_without_a_row_count(
        spark, lake: Lake) -> None:
    lake.append("raw", "patients", _patients(range(1, 4)))
    seen: list[LakeAccess] = []

    frame = lake.with_access_hook(seen.append).read_spark("raw", "patients", version=0)

    assert frame.count() == 3
    assert [(a.action, a.zone, a.table, a.rows, a.version) for a in seen] == [("read", "raw", "patients", None, 0)]
    assert seen[0].columns == tuple(SCHEMA.names) and seen[0].details == {"as": "spark"}


def test_when_spark_reads_an_empty_table_then_it_has_the_schema_and_no_rows(spark, lake: Lake) -> None:
    lake.append("raw", "patients", _patients([]))

    frame = lake.read_spark("raw", "patients")

    assert frame.count() == 0
    assert frame.toArrow().schema.equals(SCHEMA)


def test_when_a_spark_dataframe_is_appended_then_arrow_reads_it_back_equal(spark, lake: Lake) -> None:
    lake.append("raw", "patients", _patients([1, 2, 3]))
    rows = [tuple(row.values()) for row in _patients([4, 5, 6]).to_pylist()]
    frame = spark.createDataFrame(rows, SPARK_DDL)

    version = lake.append("raw", "patients", frame)

    assert version == 1
    result = lake.read_arrow("raw", "patients")
    assert result.schema.equals(SCHEMA)
    assert _sorted(result).equals(_patients(range(1, 7)))
    assert _sorted(lake.read_spark("raw", "patients").toArrow()).equals(_patients(range(1, 7)))


def test_when_a_spark_dataframe_creates_a_table_then_arrow_reads_it_back_equal(spark, lake: Lake) -> None:
    rows = [tuple(row.values()) for row in _patients(range(1, 7)).to_pylist()]

    lake.append("deidentified", "patients", spark.createDataFrame(rows, SPARK_DDL))

    assert _sorted(lake.read_arrow("deidentified", "patients")).equals(_patients(range(1, 7)))


# concurrent writers ------------------------------------------------------------------------------------

_PROCESSES = 4
_APPENDS_EACH = 8


@pytest.mark.integration
def test_when_processes_race_to_create_and_append_then_every_row_lands_once(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # delta-rs panics after fork: spawn. The children import the worker module through the parent's sys.path.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    workers = importlib.import_module("_lake_workers")
    ctx = multiprocessing.get_context("spawn")
    ids = [[w * 100 + i for i in range(_APPENDS_EACH)] for w in range(_PROCESSES)]

    with ctx.Pool(_PROCESSES, initializer=workers.start_together, initargs=(ctx.Barrier(_PROCESSES),)) as pool:
        jobs = [pool.apply_async(workers.append_ids, (lake.root, chunk)) for chunk in ids]
        reported = [pair for job in jobs for pair in job.get(timeout=120)]

    table = lake.read_arrow("raw", workers.RACE_TABLE)
    expected = sorted(i for chunk in ids for i in chunk)
    commits = _PROCESSES * _APPENDS_EACH
    assert table.num_rows == commits
    assert Counter(table["id"].to_pylist()) == Counter(expected)
    # Each append reports the version its own commit got, so the 32 reports are exactly 0..31.
    assert sorted(version for _, version in reported) == list(range(commits))
    assert lake.version("raw", workers.RACE_TABLE) == commits - 1
    history = lake.history("raw", workers.RACE_TABLE)
    assert len(history) == commits
    assert {entry["medguard.principal"] for entry in history} == {"svc:race-test"}
    # Exactly one writer created the table: no loser of the race re-committed table metadata later.
    log = Path(lake.uri("raw", workers.RACE_TABLE)) / "_delta_log"
    with_metadata = [
        commit.name for commit in sorted(log.glob("*.json"))
        if any("metaData" in json.loads(line) for line in commit.read_text().splitlines())
    ]
    assert with_metadata == ["00000000000000000000.json"]
