"""The key stores' writer lock on a lake whose root is an object store (which has no file lock of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import StorageError
from pipeline.lake import Lake
from pipeline.settings import load_settings
from storage_security.keys.dek_store import store_lock


def test_when_the_lake_is_on_an_object_store_then_key_store_writers_of_one_machine_still_exclude_each_other(
        tmp_path: Path) -> None:
    # Building the lake contacts no store: the lock is all this test needs.
    lake = Lake(load_settings(home=tmp_path / "home", lake_root="s3://hospital-lake/medguard"))
    first, second = store_lock(lake, "patient_keys", timeout=0.2), store_lock(lake, "patient_keys", timeout=0.2)

    with first(), pytest.raises(StorageError, match="lock"), second():
        pass

    with second():  # released with the first writer's block
        pass
    assert [p.parent for p in (tmp_path / "home").rglob("keys-*-patient_keys.lock")] == [tmp_path / "home" / "locks"]
    assert not (tmp_path / "home" / "lake").exists()
