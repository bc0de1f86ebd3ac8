"""The Spark path: PHI detection on executors (mapInArrow, one engine per executor) matches the local path."""

from __future__ import annotations

import pytest
from _deid_raw import generated, load_raw, shared_detector

from pipeline.lake import Lake
from storage_security.deid.deidentify import Deidentifier
from storage_security.deid.evaluation import load_labelled_notes
from storage_security.deid.masking import load_masking_config
from storage_security.deid.spark import detect_notes
from storage_security.protected import ProtectedLake


@pytest.fixture(scope="module")
def notes():
    return load_labelled_notes(generated(60, 11) / "notes.jsonl", limit=12)


def test_when_notes_are_scanned_on_spark_then_spans_equal_the_local_scan(spark, settings, notes):
    texts = [n.text for n in notes] + [None]
    on_spark = detect_notes(settings, texts)
    local = shared_detector().detect_batch([n.text for n in notes])
    assert [[(s.start, s.end, s.entity_type) for s in found] for found in on_spark[:-1]] == \
        [[(s.start, s.end, s.entity_type) for s in found] for found in local]
    assert on_spark[-1] == []


def test_when_a_notes_table_is_large_then_publication_goes_through_spark(spark, settings, lake: Lake, keyring):
    plake = ProtectedLake(lake, keyring, principal="svc:deidentify")
    raw = load_raw(plake, generated(60, 11), ("notes",))["notes"]
    config = {**load_masking_config(settings.deidentify), "spark_min_rows": 10}
    report = Deidentifier(plake, settings, config=config, detector=shared_detector()).publish("notes")
    out = lake.read_pandas("deidentified", "notes")
    assert report["notes_detection"] == "spark" and report["rows_out"] == len(out) == len(raw)
    assert not any(mrn in text for text in out["text"] for mrn in ("MRN: 0", "MRN# 0"))
