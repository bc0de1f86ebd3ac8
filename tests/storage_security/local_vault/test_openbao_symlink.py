"""The local OpenBao's start-up check never acts through a symbolic link in the home (issue 18, item 6)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pipeline.errors import CryptoError
from pipeline.settings import load_settings
from storage_security.local_vault import openbao


@pytest.fixture()
def linked_home(tmp_path: Path) -> tuple[Path, Path]:
    """A home whose openbao folder links to another folder holding a stale server.json and an approle.json."""
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "server.json").write_text(json.dumps({"pid": 999_999_999, "addr": "http://127.0.0.1:1"}))
    (victim / "approle.json").write_text("{}")
    home = tmp_path / "home"
    home.mkdir()
    (home / "openbao").symlink_to(victim, target_is_directory=True)
    return home, victim


@pytest.mark.parametrize("command", [openbao.status, openbao.down, openbao.up, openbao.local_credentials])
def test_when_the_openbao_folder_is_a_symlink_then_it_is_refused_and_nothing_behind_it_changes(
        linked_home: tuple[Path, Path], command) -> None:
    home, victim = linked_home
    settings = load_settings(home=home)
    with pytest.raises(CryptoError, match="symbolic link"):
        command(settings)
    assert sorted(p.name for p in victim.iterdir()) == ["approle.json", "server.json"]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755


def test_when_the_openbao_folder_is_a_file_then_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "openbao").write_text("not a folder")
    with pytest.raises(CryptoError, match="not a folder"):
        openbao.status(load_settings(home=tmp_path))
    assert (tmp_path / "openbao").read_text() == "not a folder"
