"""The vectorised checks of a chunk, one rule kind at a time, and the batch's in-memory deduplication.

Every rule kind a contract can state is exercised with a row that breaks it (quarantined, the rule named) and a
row that passes (accepted), through :func:`ingestion.checking.check_table`, the pure function the loader, its
spawned workers and Spark's executors run; records arrive as dicts (CSV, JSON, FHIR, HL7) or as an Arrow batch
(Parquet), and both give the same verdicts.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from ingestion import batch as batch_module
from ingestion.batch import _Dedup
from ingestion.checking import HashKey, check_table
from ingestion.contract import Contract
from ingestion.sources._base import TableRows

KEY = HashKey(b"k" * 32, "test")
CONTRACT = Contract.model_validate({
    "table": "rulebook",
    "key": "rid",
    "patient_column": "pid",
    "columns": {
        "rid": {"type": "string", "required": True, "pattern": "^r[0-9]+$"},
        "pid": {"type": "string", "required": True},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "name": {"type": "string", "min_length": 2, "max_length": 5},
        "score": {"type": "float", "min": 0, "max": 10},
        "count": {"type": "integer"},
        "flag": {"type": "boolean"},
        "day": {"type": "date"},
        "start": {"type": "datetime"},
        "end": {"type": "datetime"},
        "code": {"type": "string"},
        "value": {"type": "float"},
        "loinc": {"type": "string", "code_system": "loinc"},
        "icd": {"type": "string", "code_system": "icd10cm"},
        "ndc": {"type": "string", "code_system": "ndc"},
        "doc": {"type": "json"},
    },
    "ranges": [{"column": "value", "by": "code", "limits": {"X1": [1, 2]}}],
    "order": [{"before": "start", "after": "end"}],
})
GOOD = {"rid": "r1", "pid": "p1", "kind": "a", "name": "Ann", "score": 5.0, "count": 3, "flag": True,
        "day": "2024-02-29", "start": "2024-03-01T10:00:00Z", "end": "2024-03-01T11:00:00Z", "code": "X1",
        "value": 1.5, "loinc": "8480-6", "icd": "E11.9", "ndc": "12345-678-90", "doc": '{"a": 1}'}
BROKEN = [
    ({"rid": None}, "rid:required"),
    ({"rid": "x1"}, "rid:pattern"),
    ({"kind": "c"}, "kind:enum"),
    ({"name": "A"}, "name:length"),
    ({"name": "Annabel"}, "name:length"),
    ({"score": 11.0}, "score:range"),
    ({"score": -1.0}, "score:range"),
    ({"score": "many"}, "score:type"),
    ({"count": 2.5}, "count:type"),
    ({"flag": "perhaps"}, "flag:type"),
    ({"day": "2023-02-29"}, "day:format"),
    ({"day": "2024-2-1"}, "day:format"),
    ({"start": "2024-03-01T25:00:00Z", "end": None}, "start:format"),
    ({"value": 3.0}, "value:range[X1]"),
    ({"value": 0.5}, "value:range[X1]"),
    ({"end": "2024-03-01T09:00:00Z"}, "end:order"),
    ({"loinc": "8480-5"}, "loinc:code_system"),
    ({"loinc": "84806"}, "loinc:format"),
    ({"icd": "Q99.999"}, "icd:code_system"),
    ({"ndc": "123-45"}, "ndc:code_system"),
    ({"doc": "{not json"}, "doc:type"),
]


def _dict_rows(rows: list[dict]) -> TableRows:
    table = TableRows()
    for number, row in enumerate(rows, start=1):
        table.add(row, f"line {number}")
    return table


def _rules(checked, index: int) -> set[str]:
    return {rule for rule, _ in checked.result.violations.get(index, [])}


@pytest.mark.parametrize(("change", "rule"), BROKEN, ids=[rule + "-" + str(i) for i, (_, rule) in enumerate(BROKEN)])
def test_when_a_row_breaks_one_rule_then_it_alone_is_quarantined_naming_that_rule(change: dict, rule: str) -> None:
    rows = [dict(GOOD), {**GOOD, "rid": "r2", **change}]
    checked = check_table(CONTRACT, _dict_rows(rows), KEY)
    assert _rules(checked, 0) == set()                      # the good row passes every rule
    assert rule in _rules(checked, 1)                       # the broken one names the rule it broke
    assert checked.candidates == [0] and checked.typed.num_rows == 1
    assert len(checked.candidates) + len(checked.result.violations) == len(rows)   # in = accepted + quarantined
    outcome = {o.rule: o for o in checked.result.outcomes}
    assert all(o.element_count == 2 for o in outcome.values())


def test_when_records_arrive_as_an_arrow_batch_then_the_verdicts_equal_those_of_dict_records() -> None:
    rows = [dict(GOOD)] + [{**GOOD, "rid": f"r{i + 2}", **change} for i, (change, _) in enumerate(BROKEN)
                           if not any(isinstance(v, str) and k in ("score", "count", "flag") for k, v in change.items())
                           and "count" not in change]
    from_dicts = check_table(CONTRACT, _dict_rows(rows), KEY)
    schema = pa.schema([(name, col.arrow_type) for name, col in CONTRACT.columns.items()])
    from_arrow = check_table(CONTRACT, TableRows(arrow=pa.Table.from_pylist(rows, schema=schema)), KEY)
    assert from_arrow.result.violations.keys() == from_dicts.result.violations.keys()
    for index in from_dicts.result.violations:
        assert _rules(from_arrow, index) == _rules(from_dicts, index)
    assert from_arrow.hashes == from_dicts.hashes and from_arrow.typed.equals(from_dicts.typed)


def test_when_an_arrow_column_has_another_numeric_type_then_it_is_cast_and_fractions_and_infinities_are_type_errors(
) -> None:
    data = pa.table({**{k: pa.array([GOOD[k]] * 4) for k in GOOD if k not in ("rid", "count", "score")},
                     "rid": ["r1", "r2", "r3", "r4"],
                     "count": pa.array([1.0, 2.5, None, float("inf")], pa.float64()),
                     "score": pa.array([1, 2, 3, 4], pa.int32())})
    checked = check_table(CONTRACT, TableRows(arrow=data, first_row=10), KEY)
    assert {i: _rules(checked, i) for i in checked.result.violations} == {1: {"count:type"}, 3: {"count:type"}}
    assert checked.typed.column("count").to_pylist() == [1, None]
    assert checked.typed.column("score").type == pa.float64()


def test_when_a_pattern_needs_python_regex_then_it_is_checked_once_per_distinct_value() -> None:
    contract = Contract.model_validate({"table": "lookbehind", "columns": {
        "v": {"type": "string", "pattern": r"^(?!x)\w+$"}}})
    checked = check_table(contract, _dict_rows([{"v": "abc"}, {"v": "xyz"}, {"v": None}]), KEY)
    assert {i: _rules(checked, i) for i in checked.result.violations} == {1: {"v:pattern"}}


def _reference(keys: list[str], contents: list[str]) -> list[int]:
    seen: dict[str, str] = {}
    out = []
    for key, content in zip(keys, contents, strict=True):
        if key not in seen:
            seen[key] = content
            out.append(_Dedup.NEW)
        else:
            out.append(_Dedup.DUPLICATE if seen[key] == content else _Dedup.CONFLICT)
    return out


@pytest.mark.parametrize("merged_rows", [8_000_000, 50])
def test_when_keys_repeat_within_and_across_chunks_then_the_verdicts_equal_a_first_wins_dictionary(
        merged_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "_MERGED_RUN_ROWS", merged_rows)  # 50: runs of 300 keys stay apart
    rng = random.Random(7)
    keys = [f"k{rng.randrange(300)}" for _ in range(3_000)]
    contents = [f"{k}-{rng.randrange(2)}" for k in keys]
    hashes = [f"{abs(hash(c)) % 16**16:016x}" + "0" * 48 for c in contents]
    dedup = _Dedup()
    got: list[int] = []
    start = 0
    for size in (1, 7, 500, 13, 1_000, 1_479):
        got += dedup.verdicts("t", pa.array(keys[start:start + size]), pa.array(hashes[start:start + size])).tolist()
        start += size
    assert start == len(keys)
    assert got == _reference(keys, contents)
    # Without a key column, the record hash is the identity: repeats are duplicates, never conflicts.
    unkeyed = _Dedup().verdicts("u", None, pa.array(hashes))
    assert set(np.unique(unkeyed).tolist()) <= {_Dedup.NEW, _Dedup.DUPLICATE}
    assert int((unkeyed == _Dedup.NEW).sum()) == len(set(hashes))
    # A row whose key is missing is identified by its content: its copy is a duplicate, another row is new.
    missing = _Dedup().verdicts("m", pa.array([None, None, None, "k1"]), pa.array([hashes[0], hashes[0], hashes[1],
                                                                                   hashes[0]]))
    assert missing.tolist() == [_Dedup.NEW, _Dedup.DUPLICATE, _Dedup.NEW if hashes[1] != hashes[0] else
                                _Dedup.DUPLICATE, _Dedup.NEW]


def test_when_a_parquet_column_is_dictionary_encoded_then_it_is_checked_as_its_values() -> None:
    data = pa.table({**{k: pa.array([GOOD[k]] * 2) for k in GOOD if k not in ("rid", "kind")},
                     "rid": ["r1", "r2"], "kind": pa.array(["a", "z"]).dictionary_encode()})
    checked = check_table(CONTRACT, TableRows(arrow=data), KEY)
    assert {i: _rules(checked, i) for i in checked.result.violations} == {1: {"kind:enum"}}
    assert checked.typed.column("kind").type == pa.string()


def test_when_values_are_unicode_nulls_numbers_and_times_then_record_hashes_equal_the_documented_hmac() -> None:
    """The record hash is HMAC-SHA256 over the table name and each value framed as ``<code points>:<text>`` (a
    null as NUL): computed here value by value in Python, it must equal the vectorised one byte for byte, so a
    lake's existing ``_record_hash`` values stay valid whatever computes them."""
    import datetime as dt
    import hashlib
    import hmac
    import json

    import pyarrow.compute as pc

    from ingestion.checking import record_hash_array, record_hashes

    texts = ["e\u0301", "👍🏽", "a\x00b", "", None, "日本語", "x" * 5000, "\u200d", "12:3"]
    data = pa.table({
        "text": pa.array(texts),
        "number": pa.array([1.5, None, 0.1, -2.0, 1e20, 3.0, float("nan"), 0.0, 7.25]),
        "count": pa.array([1, 2, None, 4, 5, 6, 7, 8, 9], pa.int64()),
        "when": pa.array([dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)] * 8 + [None],
                         pa.timestamp("us", tz="UTC")),
        "flag": pa.array([True, False, None, True, True, False, True, False, True]),
    })
    key = HashKey(b"k" * 32)
    expected = []
    for row in range(data.num_rows):
        message = b""
        for column in data.itercolumns():
            value = pc.cast(column, pa.string())[row].as_py() if column.type != pa.string() else column[row].as_py()
            message += b"\0" if value is None else f"{len(value)}:{value}".encode()
        expected.append(hmac.new(key.secret, json.dumps("t").encode() + b"\0" + message, hashlib.sha256).hexdigest())
    assert record_hashes("t", data, key) == expected
    assert record_hash_array("t", data.slice(3, 4), key).to_pylist() == expected[3:7]
