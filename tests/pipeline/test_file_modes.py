"""Files only their owner reads: MEDGUARD_HOME, the lake, models/ and every scratch file (issue 18, item 5)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import load_settings, private_home
from pipeline.spark import _builder_conf


@pytest.fixture()
def restored_process() -> Iterator[None]:
    """private_home changes the process (umask, TMPDIR, tempfile.tempdir): give the next test the old ones."""
    umask = os.umask(0o022)
    os.umask(umask)
    tmpdir, temp = os.environ.get("TMPDIR"), tempfile.tempdir
    yield
    os.umask(umask)
    tempfile.tempdir = temp
    if tmpdir is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = tmpdir


def _open_to_others(root: Path) -> list[str]:
    """Paths under root that a group member or another user can read, write or enter."""
    return [str(p.relative_to(root)) for p in [root, *root.rglob("*")]
            if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]


def test_when_home_is_prepared_then_its_folders_and_new_files_are_the_owners_alone(
        tmp_path: Path, restored_process: None) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    temp = private_home(settings)
    (home / "lake" / "raw").mkdir()
    (home / "lake" / "raw" / "part.parquet").write_bytes(b"x")
    (home / "models" / "signing_key.json").write_text("{}")
    with tempfile.NamedTemporaryFile(delete=False) as handle:
        handle.write(b"scratch")
    assert Path(handle.name).parent == temp == home / "tmp"
    assert os.environ["TMPDIR"] == str(temp)
    assert _open_to_others(home) == []
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "models" / "signing_key.json").stat().st_mode) == 0o600


def test_when_an_older_run_left_the_home_open_then_it_is_tightened(tmp_path: Path, restored_process: None) -> None:
    home = tmp_path / "home"
    (home / "lake").mkdir(parents=True)
    (home / "models").mkdir()
    for folder in (home, home / "lake", home / "models"):
        folder.chmod(0o755)
    private_home(load_settings(home=home))
    assert {stat.S_IMODE(f.stat().st_mode) for f in (home, home / "lake", home / "models", home / "tmp")} == {0o700}


def test_when_a_folder_of_the_home_is_a_symlink_then_nothing_is_written_through_it(
        tmp_path: Path, restored_process: None) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SettingsError, match="symbolic link"):
        private_home(load_settings(home=home))
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


def test_when_spark_starts_then_its_scratch_and_jvm_temp_folders_are_under_the_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    conf = _builder_conf(settings)
    assert conf["spark.local.dir"] == str(tmp_path / "tmp" / "spark")
    assert f"-Djava.io.tmpdir={tmp_path / 'tmp'}" in conf["spark.driver.extraJavaOptions"]
