"""The local keyring: KEK versions like Vault's, a 0600 file rewritten atomically, the master key from settings."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.errors import CryptoError, DecryptionError, KeyProviderUnavailableError
from pipeline.settings import Settings, load_settings
from storage_security.keys.base import DataKey, KeyProvider
from storage_security.keys.keyring import LocalKeyring, encode_master_key, master_key_from_settings

KEK = "medguard-kek"


@pytest.fixture
def master() -> bytes:
    return LocalKeyring.generate_master_key()


@pytest.fixture
def keyring(tmp_path: Path, master: bytes) -> LocalKeyring:
    ring = LocalKeyring.init(tmp_path / "keys" / "keyring.json", master)
    ring.ensure_key(KEK)
    return ring


def test_when_keyring_is_built_then_it_is_a_key_provider_named_keyring(keyring: LocalKeyring) -> None:
    assert isinstance(keyring, KeyProvider)
    assert keyring.name == "keyring"
    assert keyring.health() == {"provider": "keyring", "ok": True, "path": str(keyring.path), "mode": "0600",
                                "keys": 1}


def test_when_keyring_is_created_then_file_is_0600_and_directory_0700(keyring: LocalKeyring) -> None:
    assert keyring.path.stat().st_mode & 0o777 == 0o600
    assert keyring.path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606, 0o700 | 0o004])
def test_when_file_is_group_or_world_accessible_then_open_refuses_and_says_how_to_fix(
    keyring: LocalKeyring, master: bytes, mode: int
) -> None:
    keyring.path.chmod(mode)
    with pytest.raises(KeyProviderUnavailableError, match=rf"mode {mode:04o}.*chmod 600"):
        LocalKeyring(keyring.path, master)
    with pytest.raises(KeyProviderUnavailableError, match="chmod 600"):
        keyring.rotate(KEK)  # an open keyring re-checks on every reload
    assert keyring.health()["ok"] is False


def test_when_master_key_is_wrong_then_open_fails_clearly(keyring: LocalKeyring) -> None:
    with pytest.raises(KeyProviderUnavailableError, match="does not open with this master key"):
        LocalKeyring(keyring.path, LocalKeyring.generate_master_key())


@pytest.mark.parametrize(("master_key", "error"), [(b"short", ValueError), ("x" * 44, TypeError)])
def test_when_master_key_is_not_32_bytes_then_caller_error(
    tmp_path: Path, master_key: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        LocalKeyring(tmp_path / "keyring.json", master_key)  # type: ignore[arg-type]


def test_when_file_is_missing_then_error_says_to_run_keys_init(tmp_path: Path, master: bytes) -> None:
    with pytest.raises(KeyProviderUnavailableError, match="medguard keys init"):
        LocalKeyring(tmp_path / "nope.json", master)


@pytest.mark.parametrize("content", ["not json", "[]", '{"format": "other"}',
                                    '{"format": "medguard-keyring", "format_version": 9}'])
def test_when_file_is_not_a_keyring_then_open_fails_naming_it(tmp_path: Path, master: bytes, content: str) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyProviderUnavailableError, match=re.escape(str(path))):
        LocalKeyring(path, master)


def test_when_keyring_exists_then_init_refuses_to_replace_it(keyring: LocalKeyring, master: bytes) -> None:
    before = keyring.path.read_bytes()
    with pytest.raises(CryptoError, match="already exists"):
        LocalKeyring.init(keyring.path, master)
    assert keyring.path.read_bytes() == before


def test_when_data_key_is_generated_then_wrapped_names_the_version_and_unwraps(keyring: LocalKeyring) -> None:
    key = keyring.generate_data_key(KEK)
    assert isinstance(key, DataKey) and len(key.plaintext) == 32
    assert re.fullmatch(r"keyring:v1:[A-Za-z0-9+/]{80}", key.wrapped)
    assert keyring.unwrap(KEK, key.wrapped) == key.plaintext
    assert keyring.unwrap_many(KEK, [key.wrapped, key.wrapped]) == [key.plaintext] * 2
    assert keyring.generate_data_key(KEK).plaintext != key.plaintext


def test_when_more_keks_are_used_than_the_cache_holds_then_memory_stays_bounded_and_every_key_still_unwraps(
        keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storage_security.keys.keyring._MAX_CACHED_KEKS", 3)
    names = [f"patient-{i}" for i in range(8)]
    keyring.ensure_keys(names)
    keys = {name: keyring.generate_data_key(name) for name in names}  # a KEK per patient, as ingestion uses

    assert len(keyring._keks) <= 3
    for name, key in keys.items():  # the evicted ones are unwrapped again from the file
        assert keyring.unwrap(name, key.wrapped) == key.plaintext
    assert len(keyring._keks) <= 3


def _tamper(wrapped: str, position: int) -> str:
    prefix, _, body = wrapped.rpartition(":")
    raw = bytearray(base64.b64decode(body))
    raw[position] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: "",
        lambda w: w.replace("keyring:", "vault:"),
        lambda w: w.replace(":v1:", ":v0:"),
        lambda w: w.replace(":v1:", ":v2:"),
        lambda w: w.replace(":v1:", ":v99999:"),
        lambda w: w[:-4],
        lambda w: w + "AAAA",
        lambda w: w[:-2] + "!!",
        lambda w: _tamper(w, 0),
        lambda w: _tamper(w, 20),
        lambda w: _tamper(w, 59),
    ],
    ids=["empty", "other-provider", "version-0", "future-version", "huge-version", "truncated", "extended",
         "not-base64", "nonce-flipped", "key-flipped", "tag-flipped"],
)
def test_when_wrapped_key_is_malformed_or_tampered_then_unwrap_raises_decryption_error(
    keyring: LocalKeyring, mangle
) -> None:
    wrapped = keyring.generate_data_key(KEK).wrapped
    with pytest.raises(DecryptionError):
        keyring.unwrap(KEK, mangle(wrapped))


def test_when_wrapped_key_is_unwrapped_under_another_kek_then_it_fails(keyring: LocalKeyring) -> None:
    keyring.ensure_key("other-kek")
    with pytest.raises(DecryptionError):
        keyring.unwrap("other-kek", keyring.generate_data_key(KEK).wrapped)


def test_when_kek_is_rotated_then_new_keys_use_latest_and_old_ones_still_unwrap(keyring: LocalKeyring) -> None:
    old = keyring.generate_data_key(KEK)
    assert keyring.rotate(KEK) == 2
    new = keyring.generate_data_key(KEK)
    assert new.wrapped.startswith("keyring:v2:")
    assert keyring.unwrap(KEK, old.wrapped) == old.plaintext
    versions = keyring.versions(KEK)
    assert (versions.latest, versions.min_decryption_version, versions.versions) == (2, 1, (1, 2))


def test_when_rewrapped_and_min_version_raised_then_only_old_wrappings_fail(keyring: LocalKeyring) -> None:
    old = keyring.generate_data_key(KEK)
    keyring.rotate(KEK)
    keyring.rotate(KEK)
    [rewrapped] = keyring.rewrap(KEK, [old.wrapped])
    assert rewrapped.startswith("keyring:v3:")
    assert keyring.rewrap(KEK, [rewrapped])[0].startswith("keyring:v3:")
    keyring.set_min_decryption_version(KEK, 3)

    assert keyring.unwrap(KEK, rewrapped) == old.plaintext
    with pytest.raises(DecryptionError):
        keyring.unwrap(KEK, old.wrapped)
    with pytest.raises(DecryptionError):
        keyring.rewrap(KEK, [old.wrapped])
    keyring.set_min_decryption_version(KEK, 1)  # like Vault, the old versions are kept until destroyed
    assert keyring.unwrap(KEK, old.wrapped) == old.plaintext


@pytest.mark.parametrize("version", [0, 3, -1])
def test_when_min_decryption_version_out_of_range_then_value_error(keyring: LocalKeyring, version: int) -> None:
    keyring.rotate(KEK)
    with pytest.raises(ValueError, match="min_decryption_version"):
        keyring.set_min_decryption_version(KEK, version)
    assert keyring.versions(KEK).min_decryption_version == 1


@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "x" * 129, "-lead"])
def test_when_key_name_is_invalid_then_value_error(keyring: LocalKeyring, name: str) -> None:
    with pytest.raises(ValueError, match="key name"):
        keyring.ensure_key(name)


def test_when_key_is_missing_then_generate_fails_and_unwrap_says_decryption_failed(keyring: LocalKeyring) -> None:
    with pytest.raises(CryptoError, match="no key named 'ghost'"):
        keyring.generate_data_key("ghost")
    with pytest.raises(DecryptionError):
        keyring.unwrap("ghost", keyring.generate_data_key(KEK).wrapped)


def test_when_key_is_destroyed_then_file_keeps_no_copy_and_every_holder_loses_it(
    keyring: LocalKeyring, master: bytes
) -> None:
    keyring.ensure_key("patient-a")
    other_process_view = LocalKeyring(keyring.path, master)
    dek = keyring.generate_data_key("patient-a")
    assert other_process_view.unwrap("patient-a", dek.wrapped) == dek.plaintext  # its KEK now cached there
    sealed_versions = json.loads(keyring.path.read_text())["keys"]["patient-a"]["versions"].values()

    keyring.destroy_key("patient-a")

    content = keyring.path.read_text()
    assert "patient-a" not in content
    assert not any(sealed in content for sealed in sealed_versions)
    assert sorted(p.name for p in keyring.path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]
    assert not keyring.key_exists("patient-a")
    for holder in (keyring, other_process_view):
        with pytest.raises(DecryptionError):
            holder.unwrap("patient-a", dek.wrapped)
    keyring.destroy_key("patient-a")  # shredding twice is no error
    assert keyring.key_names() == [KEK]


def test_when_rewrite_crashes_before_rename_then_file_is_unchanged_and_no_temp_file_is_left(
    keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = keyring.path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        keyring.rotate(KEK)
    monkeypatch.undo()
    assert keyring.path.read_bytes() == before
    assert sorted(p.name for p in keyring.path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]
    assert keyring.versions(KEK).latest == 1


def test_when_threads_with_their_own_handles_add_keys_at_once_then_none_is_lost(
    keyring: LocalKeyring, master: bytes
) -> None:
    def add(worker: int) -> None:
        ring = LocalKeyring(keyring.path, master)
        for i in range(5):
            ring.ensure_key(f"t{worker}-{i}")
            ring.rotate(KEK)

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keyring.key_names()) == 1 + 4 * 5
    assert keyring.versions(KEK).latest == 1 + 4 * 5


def test_when_processes_add_keys_at_once_then_none_is_lost(keyring: LocalKeyring, master: bytes) -> None:
    code = (
        "import sys\n"
        "from storage_security.keys.keyring import LocalKeyring, decode_master_key\n"
        "ring = LocalKeyring(sys.argv[1], decode_master_key(sys.argv[2], 'argv'))\n"
        "for i in range(10):\n"
        "    ring.ensure_key(f'p{sys.argv[3]}-{i}')\n"
        "    ring.rotate('medguard-kek')\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(keyring.path), encode_master_key(master), str(w)])
               for w in range(3)]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0]
    assert len(keyring.key_names()) == 1 + 3 * 10
    assert keyring.versions(KEK).latest == 1 + 3 * 10


def test_when_keyring_or_data_key_is_pickled_or_printed_then_no_key_material_leaks(
    keyring: LocalKeyring, master: bytes
) -> None:
    key = keyring.generate_data_key(KEK)
    for holder in (keyring, key):
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(holder)
    for text in (repr(keyring), repr(key)):
        assert master.hex() not in text and encode_master_key(master) not in text
        assert key.plaintext.hex() not in text and repr(key.plaintext) not in text


# master key from settings ---------------------------------------------------------------------------------


def _settings(tmp_path: Path, **keyring: object) -> Settings:
    return load_settings(home=tmp_path, key_provider="keyring", keyring=keyring)


def test_when_master_key_env_is_set_then_from_settings_opens_the_keyring(
    tmp_path: Path, master: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    LocalKeyring.init(tmp_path / "keyring.json", master)
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", encode_master_key(master))
    assert LocalKeyring.from_settings(_settings(tmp_path)).path == tmp_path / "keyring.json"
    monkeypatch.setenv("OTHER_VAR", encode_master_key(master).rstrip("="))  # unpadded is fine
    monkeypatch.delenv("MEDGUARD_KEYRING_MASTER_KEY")
    assert master_key_from_settings(_settings(tmp_path, master_key_env="OTHER_VAR")) == master


def test_when_master_key_file_is_0600_then_it_is_used_and_when_readable_by_others_refused(
    tmp_path: Path, master: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDGUARD_KEYRING_MASTER_KEY", raising=False)
    key_file = tmp_path / "master.key"
    key_file.write_text(encode_master_key(master) + "\n")
    key_file.chmod(0o600)
    assert master_key_from_settings(_settings(tmp_path, master_key_file=key_file)) == master
    key_file.chmod(0o644)
    with pytest.raises(KeyProviderUnavailableError, match="chmod 600"):
        master_key_from_settings(_settings(tmp_path, master_key_file=key_file))


@pytest.mark.parametrize(
    ("env", "message"),
    [(None, "MEDGUARD_KEYRING_MASTER_KEY.*master_key_file"), ("not base64 !!", "not base64"),
     (base64.b64encode(b"short").decode(), "at least 32")],
)
def test_when_master_key_is_missing_or_malformed_then_error_says_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, message: str
) -> None:
    if env is None:
        monkeypatch.delenv("MEDGUARD_KEYRING_MASTER_KEY", raising=False)
    else:
        monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", env)
    with pytest.raises(KeyProviderUnavailableError, match=message) as raised:
        master_key_from_settings(_settings(tmp_path))
    if env:
        assert env not in str(raised.value)


# medguard keys init / status ---------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    from pipeline.cli import app
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    done = CliRunner().invoke(app, args, env=env)
    return done.exit_code, done.stdout


def test_when_keys_init_runs_on_a_fresh_home_then_keyring_is_made_and_master_key_shown_once(tmp_path: Path) -> None:
    env = {"MEDGUARD_HOME": str(tmp_path), "MEDGUARD_KEY_PROVIDER": "keyring", "MEDGUARD_KEYRING_MASTER_KEY": ""}
    code, out = _cli(["keys", "init", "--json"], env)
    assert code == 0, out
    first = json.loads(out)
    assert (first["created"], first["kek"], first["kek_created"], first["kek_latest_version"]) == (
        True, KEK, True, 1)
    assert (tmp_path / "keyring.json").stat().st_mode & 0o777 == 0o600
    assert first["master_key"] not in (tmp_path / "keyring.json").read_text()

    env["MEDGUARD_KEYRING_MASTER_KEY"] = first["master_key"]
    code, out = _cli(["keys", "init", "--json"], env)
    again = json.loads(out)
    assert code == 0 and (again["created"], again["kek_created"]) == (False, False) and "master_key" not in again

    code, out = _cli(["keys", "status", "--json"], env)
    status = json.loads(out)
    assert code == 0
    assert status["health"]["ok"] and status["kek"]["latest"] == 1 and status["deks"]["deks"] == 0
    assert status["patient_keys"] == {"deks": 0, "patients": 0, "stale": 0}


def test_when_keys_init_has_a_master_key_file_setting_then_the_new_key_goes_there(tmp_path: Path) -> None:
    key_file = tmp_path / "secrets" / "master.key"
    env = {"MEDGUARD_HOME": str(tmp_path), "MEDGUARD_KEY_PROVIDER": "keyring", "MEDGUARD_KEYRING_MASTER_KEY": "",
           "MEDGUARD_KEYRING__MASTER_KEY_FILE": str(key_file)}
    code, out = _cli(["keys", "init"], env)
    assert code == 0, out
    assert "master key" not in out and key_file.stat().st_mode & 0o777 == 0o600
    code, out = _cli(["keys", "status"], env)
    assert code == 0 and "keyring: healthy; KEK 'medguard-kek' latest v1" in out
