"""Files only their owner reads: MEDGUARD_HOME, the lake, models/ and every scratch file (issue 18, item 5)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
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


@pytest.mark.e2e
def test_when_ingest_deidentify_and_train_have_run_then_no_file_under_the_home_is_group_or_other_readable(
        tmp_path: Path) -> None:
    from storage_security.local_vault.openbao import free_port_pair

    home = tmp_path / "home"
    env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_VAULT__LOCAL_PORT": str(free_port_pair()),
           "COLUMNS": "2000"}
    env.pop("TMPDIR", None)
    cli = [str(Path(sys.executable).with_name("medguard"))]
    try:
        # A umask of 022 (the usual default) in the shell: medguard must not rely on it.
        # 1,000 patients: at 300 the release-wide risk gate leaves too few labelled patients to train on.
        done = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *cli, "demo", "--patients", "1000"],
                              env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([*cli, "vault", "down"], env=env, capture_output=True, text=True, timeout=120)
    # Modes first: what the run wrote is checked even when a later step failed.
    assert (home / "lake" / "deidentified").is_dir() and any((home / "models").iterdir())
    assert _open_to_others(home) == []
    assert done.returncode == 0, done.stderr[-2000:]
    # A step's line is "name (12.3 s): summary".
    steps = {name.split(" (")[0]: text for name, text in
             (line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)}
    assert not steps["train"].startswith("skipped"), steps["train"]
    # The demo's last step scanned every file of the home and the system temp folder for the patients' identifiers.
    scanned = re.search(r"files_scanned=([\d,]+)", steps["verify"])
    assert scanned and int(scanned.group(1).replace(",", "")) > 100 and "plaintext_found=0" in steps["verify"]
