"""Authentication attacks: TOTP replay, a readable TOTP seed, locking an owner out with a known token id, and
telling whether a token id exists."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pyotp
import pytest

from access.principals import Principal, PrincipalStore, Role
from pipeline.errors import AccessDeniedError, DecryptionError


@pytest.fixture
def store(tmp_path, clock, keyring):
    store = PrincipalStore(tmp_path / "home" / "access" / "principals.json", max_failures=3,
                           lockout=timedelta(minutes=15), clock=clock, provider=keyring)
    store.add(Principal("alice", Role.CLINICIAN, facility="F1"))
    return store


def _wrong(secret: str) -> str:
    return secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")


def test_when_a_totp_code_is_replayed_within_its_window_then_it_is_refused(store, clock):
    secret = pyotp.parse_uri(store.enable_totp("alice")).secret
    issued = store.issue_token("alice")
    code = pyotp.TOTP(secret).at(clock.now)
    assert store.authenticate(issued.secret, totp=code).principal.name == "alice"
    clock.advance(seconds=10)  # same 30-second step, and still inside the one-step drift window afterwards
    with pytest.raises(AccessDeniedError, match="TOTP code already used"):
        store.authenticate(issued.secret, totp=code)
    clock.advance(seconds=30)
    with pytest.raises(AccessDeniedError, match="TOTP code already used"):
        store.authenticate(issued.secret, totp=code)
    assert store.authenticate(issued.secret, totp=pyotp.TOTP(secret).at(clock.now)).principal.name == "alice"


def test_when_totp_is_enabled_then_the_seed_is_not_in_the_store_file(store):
    secret = pyotp.parse_uri(store.enable_totp("alice")).secret
    text = store.path.read_text()
    assert secret not in text and secret.lower() not in text.lower()
    record = json.loads(text)["principals"]["alice"]
    assert "totp_secret" not in record and record["totp_sealed"]


def test_when_a_sealed_seed_is_moved_to_another_principal_then_it_does_not_open(store, clock):
    store.add(Principal("mallory", Role.CLINICIAN, facility="F1"))
    secret = pyotp.parse_uri(store.enable_totp("alice")).secret
    store.enable_totp("mallory")
    data = json.loads(store.path.read_text())
    data["principals"]["mallory"]["totp_sealed"] = data["principals"]["alice"]["totp_sealed"]
    store.path.write_text(json.dumps(data))
    issued = store.issue_token("mallory")
    with pytest.raises(DecryptionError, match="decryption failed"):
        store.authenticate(issued.secret, totp=pyotp.TOTP(secret).at(clock.now))


def test_when_a_store_holds_a_plaintext_seed_from_before_then_the_next_login_seals_it(store, clock):
    data = json.loads(store.path.read_text())
    data["principals"]["alice"]["totp_secret"] = seed = pyotp.random_base32()
    store.path.write_text(json.dumps(data))
    issued = store.issue_token("alice")
    assert store.authenticate(issued.secret, totp=pyotp.TOTP(seed).at(clock.now)).principal.name == "alice"
    assert seed not in store.path.read_text()


def test_when_a_store_has_no_key_provider_then_enabling_totp_is_refused(tmp_path, clock):
    bare = PrincipalStore(tmp_path / "bare.json", clock=clock)
    bare.add(Principal("alice", Role.ANALYST))
    with pytest.raises(ValueError, match="sealed with the key provider"):
        bare.enable_totp("alice")


def test_when_someone_who_knows_a_token_id_fails_repeatedly_then_the_owner_still_logs_in(store):
    issued = store.issue_token("alice")
    for _ in range(10):
        with pytest.raises(AccessDeniedError):
            store.authenticate(_wrong(issued.secret), endpoint="203.0.113.9")
    with pytest.raises(AccessDeniedError, match="too many failures from this source"):
        store.authenticate(issued.secret, endpoint="203.0.113.9")
    assert store.authenticate(issued.secret, endpoint="10.0.0.5").principal.name == "alice"
    assert store.local_session("alice", operator="root").principal.name == "alice"


def test_when_totp_codes_are_guessed_from_many_sources_then_the_token_is_throttled(store, clock):
    secret = pyotp.parse_uri(store.enable_totp("alice")).secret
    issued = store.issue_token("alice")
    right = pyotp.TOTP(secret).at(clock.now)
    wrong = "000000" if right != "000000" else "111111"
    for n in range(3):
        with pytest.raises(AccessDeniedError, match="wrong TOTP"):
            store.authenticate(issued.secret, totp=wrong, endpoint=f"198.51.100.{n}")
    with pytest.raises(AccessDeniedError, match="too many failures from this token"):
        store.authenticate(issued.secret, totp=right, endpoint="198.51.100.77")
    clock.advance(minutes=16)
    assert store.authenticate(issued.secret, totp=pyotp.TOTP(secret).at(clock.now)).principal.name == "alice"


def test_when_a_token_id_is_unknown_or_its_secret_wrong_then_the_error_is_the_same(store):
    issued = store.issue_token("alice")
    unknown = "mgt_0123456789abcdef_" + issued.secret.split("_", 2)[2]
    messages, seconds = [], []
    for token in (unknown, _wrong(issued.secret)):
        started = time.perf_counter()
        with pytest.raises(AccessDeniedError) as caught:
            store.authenticate(token, endpoint=f"e{len(messages)}")
        seconds.append(time.perf_counter() - started)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "authentication failed: invalid token"
    assert min(seconds) > 0.3 * max(seconds)  # both pay the scrypt: no fast path for an unknown id


def test_when_many_sources_fail_then_old_failures_are_forgotten(store, clock):
    issued = store.issue_token("alice")
    for n in range(50):
        with pytest.raises(AccessDeniedError):
            store.authenticate(_wrong(issued.secret), endpoint=f"10.1.0.{n}")
    clock.advance(minutes=16)
    with pytest.raises(AccessDeniedError):
        store.authenticate(_wrong(issued.secret), endpoint="10.2.0.1")
    assert len(json.loads(store.path.read_text())["failures"]) == 1


def test_when_the_store_comes_from_settings_then_the_configured_key_provider_seals_the_seed(
        keyring_env, tmp_path, clock):
    from pipeline.settings import load_settings

    settings = load_settings(home=str(tmp_path / "medhome"))
    assert settings.key_provider == "keyring"
    store = PrincipalStore.from_settings(settings, clock=clock)
    store.add(Principal("alice", Role.CLINICIAN, facility="F1"))
    secret = pyotp.parse_uri(store.enable_totp("alice")).secret
    assert secret not in store.path.read_text()
    issued = store.issue_token("alice")
    again = PrincipalStore.from_settings(settings, clock=clock)  # a new process: unwraps the store's data key
    assert again.authenticate(issued.secret, totp=pyotp.TOTP(secret).at(clock.now)).principal.name == "alice"
