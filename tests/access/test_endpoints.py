"""The endpoint registry: public keys only, derived keyids, statuses, rotation, audit of every change."""

from __future__ import annotations

import json
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from access.endpoints import OPERATIONS, EndpointRegistry, keyid_for
from access.signatures import SignatureRejected
from pipeline.errors import AccessDeniedError
from tests.access._signing import Clock, key_pair, registry


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list:
    return []


@pytest.fixture
def store(tmp_path, clock, events) -> EndpointRegistry:
    return registry(tmp_path, clock, events)


def _rejected(store, keyid, code, **kwargs):
    with pytest.raises(SignatureRejected) as caught:
        store.resolve(keyid, **kwargs)
    assert caught.value.code == code


def test_when_an_endpoint_is_registered_then_its_keyid_derives_from_the_key_and_it_may_do_everything(store, events):
    keys = key_pair("ecdsa-p256")
    endpoint = store.register("ward7-monitor", keys.public_pem, operator="alice")
    assert endpoint.keys[0].keyid == keyid_for("ward7-monitor", keys.public_pem)
    assert endpoint.keys[0].keyid.startswith("ward7-monitor-") and len(endpoint.keys[0].keyid) == 14 + 16
    assert (endpoint.status, endpoint.operations, endpoint.networks, endpoint.rate_per_minute) == (
        "active", OPERATIONS, (), 600)
    assert endpoint.endpoint_id.startswith("ep_")
    assert store.get(endpoint.endpoint_id) == store.get("ward7-monitor") == endpoint
    resolved, key, public = store.resolve(endpoint.keys[0].keyid)
    assert resolved == endpoint and key.alg == "ecdsa-p256-sha256" and isinstance(public, ec.EllipticCurvePublicKey)
    [(operation, details)] = events
    assert operation == "endpoint_register" and details["operator"] == "alice"
    assert details["keyid"] == endpoint.keys[0].keyid and "BEGIN" not in json.dumps(details)


def test_when_the_store_is_written_then_it_is_private_to_its_owner(store, tmp_path):
    store.register("a", key_pair().public_pem, operator="t")
    assert stat.S_IMODE((tmp_path / "endpoints.json").stat().st_mode) == 0o600


def test_when_a_private_key_is_offered_then_registration_refuses_it(store):
    with pytest.raises(ValueError, match="PRIVATE key"):
        store.register("a", key_pair().private_pem.decode(), operator="t")
    assert store.list() == []


@pytest.mark.parametrize(("key", "named"), [
    (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
    (ec.generate_private_key(ec.SECP384R1()), "secp384r1"),
])
def test_when_the_key_is_not_ed25519_or_p256_then_refused_naming_its_kind(store, key, named):
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match=f"{named} keys are not accepted; use Ed25519 or ECDSA P-256"):
        store.register("a", pem, operator="t")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "Ward 7"}, "endpoint name"),
    ({"operations": ["diagnose", "delete"]}, "operations: unknown delete"),
    ({"operations": []}, "at least one"),
    ({"networks": ["10.0.0.0/33"]}, "not a CIDR"),
    ({"rate_per_minute": 0}, "at least 1"),
    ({"client_cert_sha256": "abc"}, "SHA-256 fingerprint"),
])
def test_when_a_registration_field_is_bad_then_the_error_names_it(store, kwargs, message):
    arguments = {"name": "a", "public_key_pem": key_pair().public_pem, "operator": "t", **kwargs}
    with pytest.raises(ValueError, match=message):
        store.register(**arguments)


def test_when_a_name_or_a_key_is_registered_twice_then_refused(store):
    keys = key_pair()
    store.register("a", keys.public_pem, operator="t")
    with pytest.raises(ValueError, match="exists already"):
        store.register("a", key_pair().public_pem, operator="t")
    with pytest.raises(ValueError, match="already registered"):
        store.register("b", keys.public_pem, operator="t")


def test_when_suspended_then_resumed_or_revoked_then_resolve_follows_and_each_change_is_audited(store, events):
    endpoint = store.register("a", key_pair().public_pem, operator="t")
    keyid = endpoint.keys[0].keyid
    assert store.suspend("a", operator="bob").status == "suspended"
    _rejected(store, keyid, "endpoint_suspended")
    store.resume("a", operator="bob")
    assert store.resolve(keyid)[0].status == "active"
    store.revoke(endpoint.endpoint_id, operator="bob")
    _rejected(store, keyid, "endpoint_revoked")
    with pytest.raises(ValueError, match="revoked; cannot resume"):
        store.resume("a", operator="bob")
    with pytest.raises(ValueError, match="revoked"):
        store.rotate_key("a", key_pair().public_pem, operator="bob")
    assert [op for op, _ in events] == ["endpoint_register", "endpoint_suspend", "endpoint_resume", "endpoint_revoke"]
    _rejected(store, "nobody-0000000000000000", "endpoint_unknown")
    with pytest.raises(AccessDeniedError, match="unknown endpoint"):
        store.suspend("nobody", operator="bob")


def test_when_a_key_is_rotated_then_the_old_one_expires_after_the_overlap(store, clock, events):
    old = store.register("a", key_pair().public_pem, operator="t").keys[0]
    new = store.rotate_key("a", key_pair("ecdsa-p256").public_pem, overlap=timedelta(hours=2), operator="t")
    assert store.resolve(old.keyid)[1].not_after == clock.at() + timedelta(hours=2)
    assert store.resolve(new.keyid)[1].not_after is None
    clock.now += 2 * 3600 - 1
    assert store.resolve(old.keyid)
    clock.now += 1
    _rejected(store, old.keyid, "key_expired")
    assert store.resolve(new.keyid)[1] == new
    assert events[-1][0] == "endpoint_rotate_key" and events[-1][1]["retired_keyids"] == [old.keyid]


def test_when_rotated_twice_then_no_older_key_outlives_the_latest_overlap(store, clock):
    first = store.register("a", key_pair().public_pem, operator="t").keys[0]
    store.rotate_key("a", key_pair().public_pem, overlap=timedelta(hours=24), operator="t")
    store.rotate_key("a", key_pair().public_pem, overlap=timedelta(0), operator="t")
    _rejected(store, first.keyid, "key_expired")
    assert [k.not_after is None for k in store.get("a").keys] == [False, False, True]


def test_when_no_overlap_is_given_then_the_registrys_default_applies(tmp_path, clock):
    store = EndpointRegistry(tmp_path / "e.json", clock=clock.at, key_overlap=timedelta(hours=5))
    old = store.register("a", key_pair().public_pem, operator="t").keys[0]
    store.rotate_key("a", key_pair().public_pem, operator="t")
    assert store.get("a").key(old.keyid).not_after == clock.at() + timedelta(hours=5)


def test_when_another_process_suspends_an_endpoint_then_a_running_server_sees_it_at_once(tmp_path, clock):
    server, operator = registry(tmp_path, clock), registry(tmp_path, clock)
    keyid = operator.register("a", key_pair().public_pem, operator="t").keys[0].keyid
    assert server.resolve(keyid)  # cached now
    operator.suspend("a", operator="t")
    _rejected(server, keyid, "endpoint_suspended")


@pytest.mark.parametrize(("ip", "allowed"), [("10.0.0.1", True), ("2001:db8::5", True), ("::ffff:10.2.3.4", True),
                                             ("11.0.0.1", False), ("", False), (None, False), ("bogus", False)])
def test_when_networks_are_set_then_allows_ip_checks_membership(store, ip, allowed):
    endpoint = store.register("a", key_pair().public_pem, operator="t", networks=["10.0.0.0/8", "2001:db8::/32"])
    assert endpoint.allows_ip(ip) is allowed
    assert store.register("b", key_pair().public_pem, operator="t").allows_ip(None)


def test_when_a_registry_is_pickled_then_it_refuses(store):
    import pickle

    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(store)


def test_when_a_client_certificate_pem_is_given_then_the_endpoint_is_bound_to_its_der_sha256(store):
    import hashlib
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ward7")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    endpoint = store.register("a", key_pair().public_pem, operator="t",
                              client_cert_sha256=certificate.public_bytes(Encoding.PEM).decode())
    assert endpoint.client_cert_sha256 == hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
