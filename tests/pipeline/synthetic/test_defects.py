"""Defect injection: every fault is real, findable where the manifest says, and recorded."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pipeline.synthetic import generate
from pipeline.synthetic.defects import KEYS
from pipeline.synthetic.reference import MEASURES

pytestmark = pytest.mark.integration  # every test generates a population with defects

_MEASURE = {m.loinc: m for m in MEASURES.values()}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("defects") / "faulty"
    generate(out, patients=150, seed=4, defect_rate=0.1)
    return out


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "defects.jsonl").read_text().splitlines()]


def test_when_defect_rate_zero_then_no_defects_are_written(tmp_path: Path) -> None:
    summary = generate(tmp_path / "p", patients=30, seed=4, formats=["csv", "hl7", "notes"])
    assert summary.defects == {}
    assert (tmp_path / "p" / "defects.jsonl").read_text() == ""


def test_when_defects_injected_then_all_kinds_appear_and_counts_match_manifest(faulty: Path) -> None:
    entries = _manifest(faulty)
    summary = json.loads((faulty / "manifest.json").read_text())
    assert dict(Counter(e["kind"] for e in entries)) == summary["defects"]
    assert {"missing_value", "out_of_range", "malformed_code", "bad_date", "duplicate"} <= set(summary["defects"])
    assert {e["format"] for e in entries} == {"tabular", "fhir", "hl7", "notes"}


@pytest.mark.parametrize("table", sorted(KEYS))
def test_when_tabular_defects_injected_then_each_is_visible_in_the_extract(faulty: Path, table: str) -> None:
    frame = pd.read_csv(faulty / f"{table}.csv", dtype=str, keep_default_na=False)
    for entry in (e for e in _manifest(faulty) if e["format"] == "tabular" and e["table"] == table):
        rows = frame[frame[KEYS[table]] == entry["record"]]
        if entry["kind"] == "duplicate":
            assert len(rows) == 2
            assert (rows.iloc[0] == rows.iloc[1]).all()
            continue
        value = rows.iloc[0][entry["field"]] if len(rows) else ""
        if entry["kind"] == "missing_value":
            assert value == "" or entry["field"] == KEYS[table]
        elif entry["kind"] == "bad_date" and entry["field"] == "discharge_time":
            assert value < rows.iloc[0]["admit_time"]
        elif entry["kind"] == "bad_date":
            with pytest.raises(ValueError):
                datetime.fromisoformat(value.rstrip("Z"))
        elif entry["kind"] == "out_of_range":
            measure = _MEASURE[rows.iloc[0]["loinc_code"]]
            assert not measure.low <= float(value) <= measure.high
        elif entry["kind"] == "malformed_code":
            assert value.endswith(".0") if entry["field"] == "zip" else \
                value in {"123-45-678", "XYZ", "2345-X", "E11.9X", "XYZ.99", "1234-56"}


def test_when_fhir_defects_injected_then_broken_bundles_fail_to_parse_and_others_parse(faulty: Path) -> None:
    lines = [line for f in sorted((faulty / "fhir").glob("*.ndjson")) for line in f.read_text().splitlines()]
    unparseable = {e["line"] for e in _manifest(faulty)
                   if e["format"] == "fhir" and e["kind"] in ("truncated", "bad_date")}
    assert unparseable
    for number, line in enumerate(lines):
        if number in unparseable:
            with pytest.raises(ValueError):
                Bundle.model_validate_json(line)
        else:
            Bundle.model_validate_json(line)


def test_when_hl7_defects_injected_then_garbled_messages_fail_strict_parsing(faulty: Path) -> None:
    messages = [m for f in sorted((faulty / "hl7").glob("*.hl7")) for m in f.read_bytes().decode().split("\n") if m]
    garbled = [e["message"] for e in _manifest(faulty) if e["format"] == "hl7" and e["kind"] == "garbled"]
    assert garbled
    for index in garbled:
        with pytest.raises(Exception):  # noqa: B017 - hl7apy raises several unrelated exception types
            parse_message(messages[index], validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
