"""What a user sees from long commands: progress lines on stderr off a terminal, pure JSON on stdout, readable
demo summaries (rounded numbers, nothing cut mid-word)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import number, summary_line

MEDGUARD = str(Path(sys.executable).with_name("medguard"))


@pytest.mark.e2e
def test_when_generate_runs_in_a_pipe_then_stderr_shows_patients_advancing_and_stdout_is_json(tmp_path: Path) -> None:
    done = subprocess.run([MEDGUARD, "generate", "--out", str(tmp_path / "p"), "--patients", "40", "--formats",
                           "csv,fhir", "--json"], capture_output=True, text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["patients"] == 40
    lines = done.stderr.splitlines()
    # FHIR bundles are the slow part: the count moves patient by patient, not once at the end of the chunk.
    assert lines[0] == "generate: 1/40 patients (2%)"
    assert lines[-1] == "generate: 40/40 patients (100%) — done"


@pytest.mark.parametrize(("value", "shown"), [
    (0.8523456789012345, "0.852"), (0.5, "0.5"), (12.0, "12"), (1234567, "1,234,567"), (25741.4, "25,741"),
    (-0.0001, "0"), (True, "True"), (None, "None"), ("FAC-NORTH", "FAC-NORTH"), (float("nan"), "nan"),
])
def test_when_a_demo_number_is_shown_then_it_is_rounded_with_thousands_separators(value: object, shown: str) -> None:
    assert number(value) == shown


def test_when_a_demo_step_summary_is_long_and_nested_then_it_is_one_whole_line_with_rounded_numbers() -> None:
    outcome = {"published": {f"table_{i}": {"version": i, "rows_in": 25_741, "k": 5, "suppressed": 0.0123456789,
                                            "flagged_columns": []} for i in range(12)},
               "evaluation": {"notes": 500, "medguard": {"precision": 0.912345678, "recall": 0.98765432}},
               "alerts": [{"detector": "bulk_read"}] * 7, "tables": ["patients", "observations"]}

    line = summary_line(outcome)

    assert "\n" not in line and "…" not in line and len(line) > 400
    assert "table_11(version=11, rows_in=25,741, k=5, suppressed=0.012, flagged_columns=[])" in line
    assert "medguard(precision=0.912, recall=0.988)" in line
    assert "alerts=[7 items]" in line and "tables=[patients, observations]" in line


def test_when_facts_nest_deeper_than_three_levels_then_the_deeper_group_is_named_not_cut() -> None:
    outcome = {"published": {"conditions": {"rows_out": 62, "release": {"quasi_identifiers": {"patients": ["sex"]}},
                                            "generalization": {}}}}
    assert summary_line(outcome) == "published(conditions(rows_out=62, release(…), generalization()))"
