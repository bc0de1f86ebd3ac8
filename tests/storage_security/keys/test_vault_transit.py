"""The Transit key provider and the Vault client, against a real OpenBao (or the Vault of VAULT_ADDR).

Round trips, batch chunking, rotation and rewrap, retired versions, destroyed keys, policies that deny, an
unreachable server, and retries on 5xx answers from a scripted local HTTP server.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from pipeline.errors import (
    CryptoError,
    DecryptionError,
    KeyAccessDeniedError,
    KeyProviderUnavailableError,
    SettingsError,
)
from pipeline.settings import VaultSettings
from storage_security.keys._vault import RetryPolicy, VaultClient
from storage_security.keys.base import KeyProvider
from storage_security.keys.vault_transit import VaultTransitKeys
from storage_security.local_vault.openbao import free_port_pair, load_policies

if TYPE_CHECKING:
    from tests.storage_security.conftest import VaultEndpoint

_VERSION = re.compile(r"vault:v(\d+):")


def _version(wrapped: str) -> int:
    match = _VERSION.match(wrapped)
    assert match, wrapped
    return int(match.group(1))


def _limited_provider(openbao: VaultEndpoint, kek_name: str, policy_file: str) -> VaultTransitKeys:
    """A provider whose token holds only one local_vault policy, written for this test's KEK."""
    root = openbao.client()
    name = f"test-{policy_file}-{uuid.uuid4().hex[:8]}"
    root.write(f"sys/policies/acl/{name}", {"policy": load_policies(kek_name=kek_name)[f"medguard-{policy_file}"]})
    answer = root.write("auth/token/create", {"policies": [name], "ttl": "10m", "no_default_policy": False})
    assert answer is not None
    return VaultTransitKeys(VaultClient(openbao.addr, token=answer["auth"]["client_token"]))


def test_when_provider_built_then_it_is_a_key_provider(vault_provider: VaultTransitKeys) -> None:
    assert isinstance(vault_provider, KeyProvider)
    assert vault_provider.name == "vault"


def test_when_data_key_generated_then_unwrap_returns_its_plaintext(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    key = vault_provider.generate_data_key(kek_name)

    assert len(key.plaintext) == 32
    assert key.wrapped.startswith("vault:v1:")
    assert key.plaintext.hex() not in repr(key) and str(key.plaintext) not in repr(key)
    assert vault_provider.unwrap(kek_name, key.wrapped) == key.plaintext
    assert vault_provider.generate_data_key(kek_name).plaintext != key.plaintext


def test_when_ensure_key_repeated_then_the_same_kek_stays(vault_provider: VaultTransitKeys, kek_name: str) -> None:
    key = vault_provider.generate_data_key(kek_name)
    vault_provider.ensure_key(kek_name)

    assert vault_provider.key_exists(kek_name)
    assert vault_provider.versions(kek_name).latest == 1
    assert vault_provider.unwrap(kek_name, key.wrapped) == key.plaintext


def test_when_many_keks_ensured_at_once_then_each_exists_and_a_bad_name_creates_none(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    names = [f"{kek_name}-p{i}" for i in range(20)]
    try:
        with pytest.raises(ValueError, match="invalid KEK name"):
            vault_provider.ensure_keys([*names, "bad name"])
        assert not any(vault_provider.key_exists(name) for name in names)

        vault_provider.ensure_keys(names + names[:3])

        assert all(vault_provider.key_exists(name) for name in names)
    finally:
        for name in names:
            vault_provider.destroy_key(name)


def test_when_unwrap_many_over_500_then_chunked_below_the_limit_and_in_order(
    vault_provider: VaultTransitKeys, kek_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [vault_provider.generate_data_key(kek_name) for _ in range(7)]
    wrapped = [keys[i % 7].wrapped for i in range(1001)]
    client = vault_provider._client
    sizes: list[int] = []
    real_write = client.write

    def spy(path: str, data: dict | None = None, **kwargs: object) -> dict | None:
        if data and "batch_input" in data:
            sizes.append(len(data["batch_input"]))
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(client, "write", spy)
    plaintexts = vault_provider.unwrap_many(kek_name, wrapped)

    assert plaintexts == [keys[i % 7].plaintext for i in range(1001)]
    assert sizes == [400, 400, 201]
    assert vault_provider.unwrap_many(kek_name, []) == []


def test_when_one_wrapped_key_in_a_batch_is_damaged_then_decryption_error_names_its_position(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    good = vault_provider.generate_data_key(kek_name).wrapped
    prefix, body = good.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    damaged = f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"
    wrapped = [good] * 450 + [damaged] + [good] * 10

    with pytest.raises(DecryptionError, match=r"decryption failed: wrapped data key #450 of 461") as caught:
        vault_provider.unwrap_many(kek_name, wrapped)
    assert "plaintext" not in str(caught.value)
    with pytest.raises(DecryptionError, match="decryption failed"):
        vault_provider.unwrap(kek_name, damaged)


def test_when_wrapped_key_belongs_to_another_kek_then_it_does_not_unwrap(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    other = f"{kek_name}-other"
    vault_provider.ensure_key(other)
    try:
        wrapped = vault_provider.generate_data_key(other).wrapped
        with pytest.raises(DecryptionError):
            vault_provider.unwrap(kek_name, wrapped)
    finally:
        vault_provider.destroy_key(other)


def test_when_rotated_and_rewrapped_then_version_increases_and_every_key_still_unwraps(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    keys = [vault_provider.generate_data_key(kek_name) for _ in range(3)]
    old = [key.wrapped for key in keys] * 200  # 600 items: rewrap is chunked too

    assert vault_provider.rotate(kek_name) == 2
    rewrapped = vault_provider.rewrap(kek_name, old)

    assert [_version(item) for item in rewrapped] == [2] * 600
    assert rewrapped[:3] != old[:3]
    assert vault_provider.unwrap_many(kek_name, rewrapped) == [key.plaintext for key in keys] * 200
    assert vault_provider.unwrap(kek_name, old[0]) == keys[0].plaintext  # old versions unwrap until retired
    assert _version(vault_provider.generate_data_key(kek_name).wrapped) == 2
    versions = vault_provider.versions(kek_name)
    assert (versions.latest, versions.min_decryption_version, versions.versions) == (2, 1, (1, 2))


def test_when_min_decryption_version_raised_then_older_wrapped_keys_fail(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    key = vault_provider.generate_data_key(kek_name)
    vault_provider.rotate(kek_name)
    [rewrapped] = vault_provider.rewrap(kek_name, [key.wrapped])

    vault_provider.set_min_decryption_version(kek_name, 2)

    assert vault_provider.versions(kek_name).min_decryption_version == 2
    assert vault_provider.unwrap(kek_name, rewrapped) == key.plaintext
    with pytest.raises(DecryptionError, match="decryption failed"):
        vault_provider.unwrap(kek_name, key.wrapped)
    with pytest.raises(DecryptionError, match="#1 of 2"):
        vault_provider.unwrap_many(kek_name, [rewrapped, key.wrapped])
    with pytest.raises(DecryptionError):
        vault_provider.rewrap(kek_name, [key.wrapped])
    with pytest.raises(ValueError, match="at least 1"):
        vault_provider.set_min_decryption_version(kek_name, 0)
    with pytest.raises(CryptoError):
        vault_provider.set_min_decryption_version(kek_name, 9)


def test_when_key_destroyed_then_nothing_unwraps_and_the_key_is_gone(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    key = vault_provider.generate_data_key(kek_name)
    vault_provider.rotate(kek_name)

    vault_provider.destroy_key(kek_name)

    assert not vault_provider.key_exists(kek_name)
    with pytest.raises(DecryptionError):
        vault_provider.unwrap(kek_name, key.wrapped)
    with pytest.raises(DecryptionError):
        vault_provider.unwrap_many(kek_name, [key.wrapped])
    with pytest.raises(CryptoError, match="does not exist"):
        vault_provider.versions(kek_name)
    vault_provider.destroy_key(kek_name)  # idempotent
    # A new key of the same name is a new key: the old wrapped DEK stays unreadable.
    vault_provider.ensure_key(kek_name)
    with pytest.raises(DecryptionError):
        vault_provider.unwrap(kek_name, key.wrapped)


@pytest.mark.parametrize(
    ("policy_file", "operation", "denied_path", "granting_policy"),
    [
        ("pipeline-writer", "rotate", "transit/keys/{kek}/rotate", "key-rotation"),
        ("pipeline-writer", "rewrap", "transit/rewrap/{kek}", "key-rotation"),
        ("pipeline-writer", "set_min_decryption_version", "transit/keys/{kek}/config", "key-rotation"),
        ("clinician-reidentify", "generate_data_key", "transit/datakey/plaintext/{kek}", "pipeline-writer"),
        ("auditor", "unwrap", "transit/decrypt/{kek}", "pipeline-writer"),
        ("key-rotation", "destroy_key", "transit/keys/{kek}", None),
    ],
)
def test_when_token_policy_lacks_the_path_then_access_denied_names_path_and_policy(
    openbao: VaultEndpoint,
    vault_provider: VaultTransitKeys,
    kek_name: str,
    policy_file: str,
    operation: str,
    denied_path: str,
    granting_policy: str | None,
) -> None:
    wrapped = vault_provider.generate_data_key(kek_name).wrapped
    limited = _limited_provider(openbao, kek_name, policy_file)
    args = {
        "rotate": (kek_name,),
        "rewrap": (kek_name, [wrapped]),
        "set_min_decryption_version": (kek_name, 1),
        "generate_data_key": (kek_name,),
        "unwrap": (kek_name, wrapped),
        "destroy_key": (kek_name,),
    }[operation]

    with pytest.raises(KeyAccessDeniedError) as caught:
        getattr(limited, operation)(*args)

    message = str(caught.value)
    assert denied_path.format(kek=kek_name) in message
    assert "403" in message and "policy" in message
    if granting_policy:
        assert f"local_vault/policies/{granting_policy}.hcl" in message
    assert openbao.token not in message
    assert vault_provider.key_exists(kek_name)
    assert vault_provider._key_info(kek_name)["deletion_allowed"] is False


def test_when_token_holds_the_pipeline_policy_then_it_wraps_and_unwraps_only_its_kek(
    openbao: VaultEndpoint, vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    writer = _limited_provider(openbao, kek_name, "pipeline-writer")

    key = writer.generate_data_key(kek_name)
    writer.ensure_key(kek_name)  # reads metadata only: the KEK exists

    assert writer.unwrap(kek_name, key.wrapped) == key.plaintext
    assert writer.unwrap_many(kek_name, [key.wrapped] * 3) == [key.plaintext] * 3
    other = f"{kek_name}-x"
    with pytest.raises(KeyAccessDeniedError, match=f"transit/datakey/plaintext/{other}"):
        writer.generate_data_key(other)
    with pytest.raises(KeyAccessDeniedError, match=f"transit/keys/{other}"):
        writer.ensure_key(other)


def test_when_pipeline_writer_meets_new_patients_then_it_wraps_their_keys_in_a_batch_and_makes_no_patient_kek(
    openbao: VaultEndpoint, vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    writer = _limited_provider(openbao, kek_name, "pipeline-writer")
    rotation = _limited_provider(openbao, kek_name, "key-rotation")
    material = [os.urandom(48) for _ in range(450)]  # two batch requests: 400 items, then 50

    wrapped = writer.wrap_many(kek_name, material)

    assert all(w.startswith("vault:v1:") for w in wrapped)
    assert writer.unwrap_each(kek_name, [*wrapped[:2], "vault:v1:AAAA", wrapped[3]]) == [
        material[0], material[1], None, material[3]]  # one damaged item does not hide the others
    rotation.rotate(kek_name)
    rewrapped = rotation.rewrap(kek_name, wrapped)
    assert all(w.startswith("vault:v2:") for w in rewrapped)
    assert writer.unwrap_each(kek_name, rewrapped) == material
    patient = f"patient-{uuid.uuid4().hex[:12]}"
    for denied in (
        lambda: writer.ensure_key(patient),
        lambda: writer.wrap_many(patient, material[:1]),
        lambda: writer.set_min_decryption_version(kek_name, 2),
        lambda: writer._client.write(f"transit/keys/{kek_name}/trim", {"min_available_version": 1}),
    ):
        with pytest.raises(KeyAccessDeniedError):
            denied()
    assert not vault_provider.key_exists(patient)


def test_when_approle_used_then_it_logs_in_lazily_and_again_after_its_token_expires(
    openbao: VaultEndpoint, kek_name: str, vault_provider: VaultTransitKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = openbao.client()
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    root.write(f"sys/auth/{mount}", {"type": "approle"})
    root.write(f"sys/policies/acl/{mount}", {"policy": load_policies(kek_name=kek_name)["medguard-pipeline-writer"]})
    root.write(f"auth/{mount}/role/pipeline", {"token_policies": [mount], "token_ttl": "10m"})
    role_id = root.read(f"auth/{mount}/role/pipeline/role-id")["data"]["role_id"]
    secret_id = root.write(f"auth/{mount}/role/pipeline/secret-id")["data"]["secret_id"]
    now = [1000.0]
    client = VaultClient(openbao.addr, auth_method="approle", role_id=role_id, secret_id=secret_id,
                         approle_mount=mount, clock=lambda: now[0])
    logins: list[str] = []
    real_send = client._send

    def spy(method: str, path: str, data: dict | None, token: str | None) -> dict | None:
        if path.endswith("/login"):
            logins.append(path)
        return real_send(method, path, data, token)

    monkeypatch.setattr(client, "_send", spy)
    provider = VaultTransitKeys(client)
    try:
        assert logins == []  # nothing happens at construction
        key = provider.generate_data_key(kek_name)
        assert provider.unwrap(kek_name, key.wrapped) == key.plaintext
        assert logins == [f"auth/{mount}/login"]
        now[0] += 10 * 60  # past 90% of the 10-minute token TTL
        provider.unwrap(kek_name, key.wrapped)
        assert len(logins) == 2
        wrong = VaultClient(openbao.addr, auth_method="approle", role_id=role_id, secret_id="not-the-secret",
                            approle_mount=mount)
        with pytest.raises(KeyAccessDeniedError, match="AppRole login") as caught:
            VaultTransitKeys(wrong).generate_data_key(kek_name)
        assert "not-the-secret" not in str(caught.value)
    finally:
        root.delete(f"sys/auth/{mount}")


def test_when_address_unreachable_then_unavailable_error_names_it_quickly() -> None:
    addr = f"http://127.0.0.1:{free_port_pair()}"
    sleeps: list[float] = []
    client = VaultClient(addr, token="t", timeout=0.5, retry=RetryPolicy(attempts=3, base_delay=0.01),
                         sleep=sleeps.append)
    started = time.monotonic()

    with pytest.raises(KeyProviderUnavailableError, match=re.escape(addr)) as caught:
        VaultTransitKeys(client).generate_data_key("medguard-kek")

    assert time.monotonic() - started < 2.0
    assert len(sleeps) == 2
    assert "after 3 attempts" in str(caught.value)
    assert "medguard vault up" in str(caught.value)
    assert caught.value.__cause__ is not None


@dataclass
class _Scripted:
    """A local HTTP server answering Vault paths from a script of statuses, counting hits."""

    addr: str
    statuses: list[int] = field(default_factory=list)
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    state = _Scripted(addr="")
    dek = base64.b64encode(bytes(range(32))).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.hits.append(self.path)
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                body = {"data": {"plaintext": dek, "ciphertext": "vault:v1:AAAA", "key_version": 1}}
            else:
                body = {"errors": [f"scripted {status}"]}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.addr = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_when_server_answers_503_then_the_call_is_retried_with_backoff_until_it_succeeds(scripted: _Scripted) -> None:
    scripted.statuses = [503, 502, 500]
    sleeps: list[float] = []
    client = VaultClient(scripted.addr, token="t", retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=1.0),
                         sleep=sleeps.append)

    key = VaultTransitKeys(client).generate_data_key("medguard-kek")

    assert key.plaintext == bytes(range(32))
    assert len(scripted.hits) == 4
    assert len(sleeps) == 3
    for attempt, slept in enumerate(sleeps):
        ceiling = 0.01 * 2**attempt
        assert ceiling / 2 <= slept <= ceiling


def test_when_server_keeps_answering_503_then_unavailable_after_a_bounded_number_of_attempts(
    scripted: _Scripted,
) -> None:
    scripted.statuses = [503] * 10
    client = VaultClient(scripted.addr, token="t", retry=RetryPolicy(attempts=3, base_delay=0.0), sleep=lambda _: None)

    with pytest.raises(KeyProviderUnavailableError, match="sealed or unavailable"):
        VaultTransitKeys(client).generate_data_key("medguard-kek")

    assert len(scripted.hits) == 3


@pytest.mark.parametrize(
    ("status", "error"), [(400, CryptoError), (403, KeyAccessDeniedError), (501, KeyProviderUnavailableError)]
)
def test_when_server_answers_a_non_retryable_status_then_it_fails_at_once(
    scripted: _Scripted, status: int, error: type[Exception]
) -> None:
    scripted.statuses = [status] * 5
    client = VaultClient(scripted.addr, token="t", retry=RetryPolicy(attempts=5, base_delay=0.0), sleep=lambda _: None)

    with pytest.raises(error):
        VaultTransitKeys(client).generate_data_key("medguard-kek")

    assert len(scripted.hits) == 1


def test_when_objects_hold_a_token_then_repr_is_redacted_and_pickling_refused(openbao: VaultEndpoint) -> None:
    client = VaultClient(openbao.addr, token="s.super-secret-token")
    provider = VaultTransitKeys(client)

    for holder in (client, provider):
        assert "super-secret" not in repr(holder)
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(holder)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"addr": "vault:8200", "token": "t"}, "MEDGUARD_VAULT__ADDR"),
        ({"addr": "http://v:8200"}, "MEDGUARD_VAULT__TOKEN"),
        ({"addr": "http://v:8200", "auth_method": "approle", "secret_id": "s"}, "MEDGUARD_VAULT__ROLE_ID"),
    ],
)
def test_when_auth_settings_are_incomplete_then_the_client_fails_at_construction(
    kwargs: dict[str, str], named: str
) -> None:
    addr = kwargs.pop("addr")
    with pytest.raises(SettingsError, match=named):
        VaultClient(addr, **kwargs)


def test_when_built_from_settings_then_secrets_are_read_and_options_carried() -> None:
    settings = VaultSettings(addr="https://vault.example:8200", token="s.from-settings", timeout_seconds=3.0)

    client = VaultClient.from_settings(settings)

    assert client.addr == "https://vault.example:8200"
    assert "from-settings" not in repr(client)
    with pytest.raises(SettingsError, match=r"vault\.addr"):
        VaultClient.from_settings(VaultSettings())


def test_when_inputs_are_malformed_then_caller_errors_are_raised_before_any_request(
    vault_provider: VaultTransitKeys, kek_name: str
) -> None:
    with pytest.raises(ValueError, match="invalid KEK name"):
        vault_provider.generate_data_key("../sys/seal")
    with pytest.raises(TypeError, match="list of wrapped keys"):
        vault_provider.unwrap_many(kek_name, "vault:v1:AAAA")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bytes"):
        vault_provider.unwrap(kek_name, b"vault:v1:AAAA")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        VaultTransitKeys(vault_provider._client, batch_size=500)


def test_when_health_asked_then_server_and_token_identity_are_reported_without_secrets(
    openbao: VaultEndpoint, vault_provider: VaultTransitKeys
) -> None:
    health = vault_provider.health()

    assert health["provider"] == "vault"
    assert health["addr"] == openbao.addr
    assert health["sealed"] is False and health["initialized"] is True
    assert isinstance(health["token"], dict) and "policies" in health["token"]
    assert openbao.token not in json.dumps(health, default=str)
