"""The test tree itself: file names pytest can import side by side (default prepend import mode, no packages)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_when_tests_are_collected_then_no_two_test_files_share_a_name() -> None:
    # Two test_x.py in different folders make pytest refuse the second one ("import file mismatch"), which
    # silently drops it from a marker-selected run such as `make test-fast`.
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
