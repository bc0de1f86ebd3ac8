"""Token-level, label-agnostic scoring (i2b2 style), and detection quality on the generator's labelled notes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _deid_raw import generated, shared_detector

from storage_security.deid.detection import PhiSpan
from storage_security.deid.evaluation import LabelledNote, load_labelled_notes, score

MEDGUARD = str(Path(sys.executable).with_name("medguard"))
TEXT = "Pt: Evan Clark  MRN: 00781374 seen today."
GOLD = LabelledNote(TEXT, ((4, 14, "NAME"), (21, 29, "ID")))


@pytest.mark.parametrize(("predicted", "precision", "recall"), [
    ([PhiSpan(4, 14, "PERSON", 1.0), PhiSpan(21, 29, "MRN", 1.0)], 1.0, 1.0),      # all found, other labels
    ([PhiSpan(4, 9, "PERSON", 1.0)], 1.0, 1 / 3),                                   # "Evan" only
    ([PhiSpan(0, 14, "PERSON", 1.0)], 2 / 3, 2 / 3),                               # "Pt" is not PHI
    ([PhiSpan(5, 14, "PERSON", 1.0)], 1.0, 1 / 3),                                  # must cover a token whole
    ([], None, 0.0),
])
def test_when_spans_are_scored_then_tokens_count_label_agnostically(predicted, precision, recall):
    scores = score([GOLD], [predicted])
    assert scores.overall["recall"] == pytest.approx(recall, abs=1e-4)
    assert scores.overall["precision"] == (None if precision is None else pytest.approx(precision, abs=1e-4))
    assert scores.per_label["NAME"]["support"] == 2 and scores.per_label["ID"]["support"] == 1


def test_when_f2_is_computed_then_recall_weighs_more_than_precision():
    scores = score([GOLD], [[PhiSpan(0, 14, "PERSON", 1.0)]])
    p, r = scores.overall["precision"], scores.overall["recall"]
    assert scores.overall["f2"] == pytest.approx(5 * p * r / (4 * p + r), abs=1e-3)


def test_when_a_line_is_not_a_labelled_note_then_loading_names_the_line(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text(json.dumps({"text": "abc", "spans": []}) + "\n" + json.dumps({"text": "ab", "spans": [
        {"start": 1, "end": 9, "label": "X"}]}) + "\n")
    with pytest.raises(ValueError, match=r"notes.jsonl:2"):
        load_labelled_notes(bad)


def test_when_generator_notes_are_scored_then_recall_is_at_least_095_for_every_label():
    notes = load_labelled_notes(generated(60, 11) / "notes.jsonl")
    predictions = shared_detector().detect_batch([n.text for n in notes])
    scores = score(notes, predictions)
    gold_labels = {label for n in notes for _, _, label in n.spans}
    assert gold_labels <= set(scores.per_label)
    low = {lab: scores.per_label[lab]["recall"] for lab in gold_labels if scores.per_label[lab]["recall"] < 0.95}
    assert not low
    assert scores.overall["recall"] >= 0.999
    assert scores.overall["precision"] >= 0.95


@pytest.mark.e2e
def test_when_evaluate_runs_from_the_cli_then_json_has_overall_and_per_label(tmp_path):
    notes = tmp_path / "notes.jsonl"
    lines = (generated(60, 11) / "notes.jsonl").read_text().splitlines()[:8]
    notes.write_text("\n".join(lines) + "\n")
    done = subprocess.run([MEDGUARD, "deidentify", "evaluate", "--notes", str(notes), "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["overall"]) >= {"precision", "recall", "f2"}
    assert result["per_label"]["PERSON"]["recall"] >= 0.95


@pytest.mark.e2e
def test_when_the_notes_file_is_missing_then_the_cli_fails_with_one_line(tmp_path):
    done = subprocess.run([MEDGUARD, "deidentify", "evaluate", "--notes", str(tmp_path / "none.jsonl")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and done.stderr.strip()


def test_when_the_baseline_is_vanilla_then_its_spans_are_not_cleaned_up_by_medguard():
    from storage_security.deid.detection import PhiDetector

    vanilla = PhiDetector("vanilla")
    text = "Seen on 11/29/2024 at the clinic."
    assert any(s.entity_type == "DATE_TIME" and text[s.start:s.end] == "11/29/2024" for s in vanilla.detect(text))
