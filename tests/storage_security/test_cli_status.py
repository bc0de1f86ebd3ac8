"""Status commands' exit codes tell health: 0 when healthy, 1 (one line on stderr) when not, the status still shown."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from storage_security.keys.keyring import LocalKeyring, encode_master_key


def _run(args: list[str], env: dict[str, str]):
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    return CliRunner().invoke(app, args, env=env)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_when_the_local_openbao_is_not_running_then_vault_status_exits_1_and_still_reports(tmp_path: Path) -> None:
    env = {"MEDGUARD_HOME": str(tmp_path)}

    text = _run(["vault", "status"], env)
    as_json = _run(["vault", "status", "--json"], env)

    assert text.exit_code == 1 and text.stdout == ""
    assert text.stderr.count("\n") == 1 and "OpenBao not running" in text.stderr and "vault up" in text.stderr
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["running"] is False


def _keyring_env(tmp_path: Path, keks: tuple[str, ...]) -> dict[str, str]:
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(tmp_path / "keyring.json", master)
    for kek in keks:
        ring.ensure_key(kek)
    return {"MEDGUARD_HOME": str(tmp_path), "MEDGUARD_KEY_PROVIDER": "keyring",
            "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master)}


def test_when_the_keyring_holds_the_kek_then_keys_status_exits_0(tmp_path: Path) -> None:
    done = _run(["keys", "status", "--json"], _keyring_env(tmp_path, ("medguard-kek", "medguard-audit")))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["healthy"] is True


def test_when_the_kek_is_missing_then_keys_status_shows_the_status_and_exits_1(tmp_path: Path) -> None:
    done = _run(["keys", "status"], _keyring_env(tmp_path, ()))
    assert done.exit_code == 1
    assert "KEK 'medguard-kek' missing" in done.stdout
    assert done.stderr.strip().endswith("is missing from keyring: run `medguard keys init`")


def test_when_the_keyring_file_is_gone_then_keys_status_exits_1_in_one_line(tmp_path: Path) -> None:
    env = _keyring_env(tmp_path, ("medguard-kek",))
    Path(env["MEDGUARD_KEYRING__PATH"]).unlink()
    done = _run(["keys", "status"], env)
    assert done.exit_code == 1 and done.stderr.count("\n") == 1 and "keyring" in done.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_when_the_vault_server_is_down_then_keys_status_exits_1(tmp_path: Path, as_json: bool) -> None:
    env = {"MEDGUARD_HOME": str(tmp_path), "MEDGUARD_KEY_PROVIDER": "vault",
           "MEDGUARD_VAULT__ADDR": f"http://127.0.0.1:{_closed_port()}", "MEDGUARD_VAULT__TOKEN": "s.not-a-token"}
    done = _run(["keys", "status", *(["--json"] if as_json else [])], env)
    assert done.exit_code == 1
    assert done.stderr.startswith("medguard: error: ") and done.stderr.count("\n") == 1
    assert "unreachable" in done.stderr
    if as_json:
        assert json.loads(done.stdout) | {"health": None} == {"provider": "vault", "health": None, "healthy": False}
