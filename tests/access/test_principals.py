"""Principals, API tokens (salted hashes only), TOTP, lockout with an injected clock, and short-lived sessions."""

from __future__ import annotations

import pickle
import stat
from datetime import timedelta

import pyotp
import pytest

from access.principals import Principal, PrincipalKind, PrincipalStore, Role
from pipeline.errors import AccessDeniedError


@pytest.fixture
def alice(store):
    store.add(Principal("alice", Role.ANALYST, facility="F1", department="cardiology", purposes=("research",)))
    return store


@pytest.fixture
def sealing_store(tmp_path, clock, keyring):
    """Alice in a store whose key provider (a keyring) seals TOTP seeds."""
    store = PrincipalStore(tmp_path / "sealed" / "principals.json", max_failures=3, lockout=timedelta(minutes=15),
                           clock=clock, provider=keyring)
    store.add(Principal("alice", Role.ANALYST, facility="F1"))
    return store


def test_when_a_token_is_issued_then_only_its_salted_hash_is_stored(alice):
    issued = alice.issue_token("alice")
    text = alice.path.read_text()
    secret = issued.secret.split("_", 2)[2]
    assert secret not in text and issued.secret not in text
    assert stat.S_IMODE(alice.path.stat().st_mode) == 0o600
    second = alice.issue_token("alice")
    hashes = {t["token_id"] for t in alice.tokens("alice")}
    assert hashes == {issued.token_id, second.token_id}
    assert all("hash" not in t and "salt" not in t for t in alice.tokens())


def test_when_the_right_token_is_given_then_a_session_of_the_principal_opens(alice, clock):
    issued = alice.issue_token("alice")
    session = alice.authenticate(issued.secret, endpoint="10.0.0.5")
    assert session.principal.name == "alice" and session.principal.facility == "F1"
    assert session.auth == "token" and session.token_id == issued.token_id
    assert alice.resume(session.token).principal.name == "alice"


@pytest.mark.parametrize("token", ["", "not-a-token", "mgt_0123456789abcdef_" + "A" * 43, "mgt_zz_" + "A" * 43])
def test_when_a_bad_token_is_given_then_authentication_fails(alice, token):
    alice.issue_token("alice")
    with pytest.raises(AccessDeniedError, match="authentication failed"):
        alice.authenticate(token)


def test_when_failures_repeat_from_one_source_then_that_source_is_throttled_until_the_lockout_ends(alice, clock):
    issued = alice.issue_token("alice")
    wrong = issued.secret[:-4] + ("AAAA" if not issued.secret.endswith("AAAA") else "BBBB")
    for _ in range(3):
        with pytest.raises(AccessDeniedError, match="invalid token"):
            alice.authenticate(wrong, endpoint="10.0.0.66")
    with pytest.raises(AccessDeniedError, match="too many failures from this source"):
        alice.authenticate(issued.secret, endpoint="10.0.0.66")
    clock.advance(minutes=16)
    assert alice.authenticate(issued.secret, endpoint="10.0.0.66").principal.name == "alice"


def test_when_a_token_is_revoked_or_expired_then_it_no_longer_authenticates(alice, clock):
    revoked, short = alice.issue_token("alice"), alice.issue_token("alice", ttl=timedelta(hours=1))
    session = alice.authenticate(revoked.secret)
    assert alice.revoke_token(revoked.token_id) == "alice"
    with pytest.raises(AccessDeniedError, match="revoked"):
        alice.authenticate(revoked.secret)
    with pytest.raises(AccessDeniedError, match="session invalid"):
        alice.resume(session.token)
    clock.advance(hours=2)
    with pytest.raises(AccessDeniedError, match="expired"):
        alice.authenticate(short.secret)


def test_when_a_session_outlives_its_ttl_then_it_is_invalid(alice, clock):
    session = alice.local_session("alice", operator="root")
    assert session.auth == "local-operator" and session.operator == "root"
    clock.advance(minutes=29)
    assert alice.resume(session.token).principal.name == "alice"
    clock.advance(minutes=2)
    with pytest.raises(AccessDeniedError, match="expired"):
        alice.resume(session.token)


def test_when_totp_is_enabled_then_the_code_is_required_and_checked(sealing_store, clock):
    alice = sealing_store
    uri = alice.enable_totp("alice")
    secret = pyotp.parse_uri(uri).secret
    issued = alice.issue_token("alice")
    with pytest.raises(AccessDeniedError, match="TOTP code required"):
        alice.authenticate(issued.secret)
    with pytest.raises(AccessDeniedError, match="wrong TOTP"):
        alice.authenticate(issued.secret, totp="000000" if pyotp.TOTP(secret).at(clock.now) != "000000" else "111111")
    code = pyotp.TOTP(secret).at(clock.now)
    assert alice.authenticate(issued.secret, totp=code).principal.name == "alice"
    assert "totp" not in repr(alice.get("alice")).lower()


def test_when_a_principal_is_disabled_then_sessions_stop(alice):
    session = alice.local_session("alice", operator="root")
    alice.disable("alice")
    with pytest.raises(AccessDeniedError, match="disabled"):
        alice.resume(session.token)
    with pytest.raises(AccessDeniedError, match="disabled"):
        alice.local_session("alice", operator="root")


def test_when_objects_hold_tokens_then_they_refuse_pickling_and_redact_repr(alice):
    issued = alice.issue_token("alice")
    session = alice.authenticate(issued.secret)
    for obj, secret in ((issued, issued.secret), (session, session.token)):
        assert secret not in repr(obj) and "<redacted>" in repr(obj)
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)
    with pytest.raises(TypeError):
        pickle.dumps(alice)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "Alice Smith", "role": "analyst"}, "principal name"),
    ({"name": "bob", "role": "wizard"}, "wizard"),
    ({"name": "bob", "role": "analyst", "facility": "F1; DROP"}, "facility"),
    ({"name": "bob", "role": "analyst", "purposes": ("re search",)}, "purpose"),
])
def test_when_a_principal_is_malformed_then_it_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Principal(**kwargs)


def test_when_a_principal_is_added_twice_then_the_second_is_refused(alice):
    with pytest.raises(ValueError, match="exists already"):
        alice.add(Principal("alice", Role.CLINICIAN))
    service = alice.add(Principal("trainer", Role.ML_PIPELINE, kind=PrincipalKind.SERVICE))
    assert service.qualified == "svc:trainer" and [p.name for p in alice.list()] == ["alice", "trainer"]
