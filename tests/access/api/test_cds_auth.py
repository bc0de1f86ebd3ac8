"""The CDS Hooks JWT check: each refusal's code with a fixed clock, and the tokens an EHR really sends accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import jwt
import pytest

from access.api.cds_auth import CDS_REJECTIONS, CdsJwtVerifier, CdsRejected
from access.signatures import NonceStore
from tests.access._signing import NOW, Clock, key_pair, registry
from tests.access.api._cds import token

AUD = "https://cds.example.org/cds-services/medguard-risk"


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    reg = registry(tmp_path, clock)
    keys = {"ehr": key_pair("ed25519"), "ehr-ec": key_pair("ecdsa-p256"), "other": key_pair("ed25519"),
            "diag": key_pair("ed25519"), "slow": key_pair("ed25519")}
    eps = {
        "ehr": reg.register("ehr", keys["ehr"].public_pem, operations=("cds",), operator="t"),
        "ehr-ec": reg.register("ehr-ec", keys["ehr-ec"].public_pem, operations=("cds",), operator="t"),
        "diag": reg.register("diag", keys["diag"].public_pem, operations=("diagnose",), operator="t"),
        "slow": reg.register("slow", keys["slow"].public_pem, operations=("cds",), rate_per_minute=2, operator="t"),
    }
    verifier = CdsJwtVerifier(reg, NonceStore(tmp_path / "nonces.sqlite3", clock=clock), clock=clock)

    class W:
        pass

    w = W()
    w.clock, w.reg, w.keys, w.eps, w.verifier = clock, reg, keys, eps, verifier
    w.kid = lambda name: eps[name].keys[0].keyid
    return w


def _token(w, name="ehr", *, alg=None, key=None, **kw):
    kw.setdefault("iss", name)
    kw.setdefault("aud", AUD)
    kw.setdefault("now", w.clock.now)
    alg = alg or ("ES256" if name == "ehr-ec" else "EdDSA")
    return token(key or w.keys[name].private, kw.pop("kid", None) or w.kid(name), alg=alg, **kw)


def _refused(w, authorization, code, **kw):
    with pytest.raises(CdsRejected) as caught:
        w.verifier.verify(authorization, audience=kw.pop("audience", AUD), **kw)
    assert caught.value.code == code, caught.value
    assert (caught.value.status, caught.value.title) == CDS_REJECTIONS[code]
    return caught.value


def test_when_an_ehr_signs_with_ed25519_or_p256_then_its_endpoint_is_returned(world):
    ed = world.verifier.verify(f"Bearer {_token(world)}", audience=AUD)
    ec = world.verifier.verify(f"Bearer {_token(world, 'ehr-ec')}", audience=[AUD, "https://other/"])
    assert ed.endpoint.name == "ehr" and ec.endpoint.name == "ehr-ec"
    assert ec.keyid == world.kid("ehr-ec") and ed.expires_at - ed.issued_at == 120


def test_when_iss_is_the_endpoint_id_or_aud_is_a_list_with_a_trailing_slash_then_it_is_accepted(world):
    ok = world.verifier.verify(f"Bearer {_token(world, iss=world.eps['ehr'].endpoint_id, aud=['x', AUD + '/'])}",
                               audience=AUD)
    assert ok.endpoint.endpoint_id == world.eps["ehr"].endpoint_id


def test_when_the_same_jti_comes_again_then_it_is_refused_as_replayed(world):
    t = _token(world)
    world.verifier.verify(f"Bearer {t}", audience=AUD)
    _refused(world, f"Bearer {t}", "jwt_replayed")
    # A fresh token with the same jti (re-signed) is the same replay.
    jti = jwt.decode(t, options={"verify_signature": False})["jti"]
    _refused(world, f"Bearer {_token(world, jti=jti)}", "jwt_replayed")


def test_when_no_bearer_token_is_sent_then_jwt_missing(world):
    _refused(world, None, "jwt_missing")
    _refused(world, "Basic dXNlcjpwYXNz", "jwt_missing")
    _refused(world, "Bearer ", "jwt_missing")


def test_when_the_token_is_not_a_jws_or_lacks_kid_then_jwt_malformed(world):
    _refused(world, "Bearer not.a.jwt", "jwt_malformed")
    no_kid = jwt.encode({"iss": "ehr"}, world.keys["ehr"].private, algorithm="EdDSA")
    _refused(world, f"Bearer {no_kid}", "jwt_malformed")
    _refused(world, "Bearer " + "a" * 9000, "jwt_malformed")


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
def test_when_a_required_claim_is_missing_then_jwt_malformed(world, claim):
    _refused(world, f"Bearer {_token(world, **{claim: None})}", "jwt_malformed")


def test_when_the_audience_is_another_service_then_jwt_audience(world):
    _refused(world, f"Bearer {_token(world, aud='https://cds.example.org/cds-services/other')}", "jwt_audience")
    _refused(world, f"Bearer {_token(world, aud='https://evil.example/cds-services/medguard-risk')}", "jwt_audience")


def test_when_the_token_has_expired_then_jwt_expired(world):
    _refused(world, f"Bearer {_token(world, now=NOW - 400)}", "jwt_expired")  # exp 280 s ago
    # Within the clock skew (30 s) past exp a token is still accepted; beyond it, refused.
    late, later = _token(world, lifetime=60), _token(world, lifetime=60)
    world.clock.now = NOW + 60 + 29
    world.verifier.verify(f"Bearer {late}", audience=AUD)
    world.clock.now = NOW + 60 + 31
    _refused(world, f"Bearer {later}", "jwt_expired")


def test_when_the_token_is_issued_in_the_future_then_jwt_expired(world):
    _refused(world, f"Bearer {_token(world, now=NOW + 120)}", "jwt_expired")
    _refused(world, f"Bearer {_token(world, nbf=int(NOW + 100))}", "jwt_expired")


def test_when_the_lifetime_exceeds_five_minutes_then_jwt_lifetime(world):
    _refused(world, f"Bearer {_token(world, lifetime=301)}", "jwt_lifetime")
    # exp far ahead with a back-dated iat: the lifetime is what counts, not the time left.
    _refused(world, f"Bearer {_token(world, now=NOW - 200, lifetime=600)}", "jwt_lifetime")
    world.verifier.verify(f"Bearer {_token(world, lifetime=300)}", audience=AUD)


def test_when_the_kid_is_not_registered_then_endpoint_unknown(world):
    stranger = key_pair("ed25519")
    _refused(world, f"Bearer {_token(world, key=stranger.private, kid='nobody-0123456789abcdef')}",
             "endpoint_unknown")


def test_when_the_right_kid_is_signed_by_another_key_then_jwt_invalid(world):
    _refused(world, f"Bearer {_token(world, key=world.keys['other'].private)}", "jwt_invalid")


def test_when_the_alg_is_not_the_keys_then_jwt_invalid(world):
    # ES256 named over an Ed25519 key, EdDSA over a P-256 key, HS256 keyed with the public PEM, and none.
    ec_signed = token(world.keys["ehr-ec"].private, world.kid("ehr"), alg="ES256", iss="ehr", aud=AUD,
                      now=world.clock.now)
    _refused(world, f"Bearer {ec_signed}", "jwt_invalid")
    ed_signed = token(world.keys["ehr"].private, world.kid("ehr-ec"), alg="EdDSA", iss="ehr-ec", aud=AUD,
                      now=world.clock.now)
    _refused(world, f"Bearer {ed_signed}", "jwt_invalid")
    claims = {"iss": "ehr", "aud": AUD, "iat": NOW, "exp": NOW + 60, "jti": "x1"}
    _refused(world, f"Bearer {_hs256(claims, world.kid('ehr'), world.keys['ehr'].public_pem.encode())}",
             "jwt_invalid")
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": world.kid("ehr")})
    _refused(world, f"Bearer {none}", "jwt_invalid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict, kid: str, secret: bytes) -> str:
    """The classic key-confusion token: HMAC keyed with the endpoint's public key (PyJWT refuses to make one)."""
    signing = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + \
        _b64(json.dumps(claims).encode())
    return signing + "." + _b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def test_when_iss_is_not_the_endpoint_then_jwt_issuer(world):
    _refused(world, f"Bearer {_token(world, iss='https://ehr.example/fhir')}", "jwt_issuer")
    _refused(world, f"Bearer {_token(world, iss='ehr-ec')}", "jwt_issuer")


def test_when_the_endpoint_is_suspended_or_revoked_then_it_is_refused(world):
    world.reg.suspend("ehr", operator="t")
    _refused(world, f"Bearer {_token(world)}", "endpoint_suspended")
    world.reg.revoke("ehr", operator="t")
    _refused(world, f"Bearer {_token(world)}", "endpoint_revoked")


def test_when_the_key_was_rotated_away_then_key_expired(world):
    world.reg.rotate_key("ehr", key_pair().public_pem, overlap=timedelta(0), operator="t")
    _refused(world, f"Bearer {_token(world)}", "key_expired")


def test_when_the_endpoint_may_not_call_cds_then_operation_forbidden(world):
    _refused(world, f"Bearer {_token(world, 'diag')}", "operation_forbidden")


def test_when_the_endpoint_calls_over_its_rate_then_rate_limited_with_retry_after(world):
    for _ in range(2):
        world.verifier.verify(f"Bearer {_token(world, 'slow')}", audience=AUD)
    refused = _refused(world, f"Bearer {_token(world, 'slow')}", "rate_limited")
    assert refused.retry_after is not None and refused.retry_after >= 1


def test_when_the_endpoint_is_bound_to_networks_then_other_addresses_are_refused(world, tmp_path):
    keys = key_pair()
    ep = world.reg.register("ward", keys.public_pem, operations=("cds",), networks=("10.0.0.0/8",), operator="t")
    t1 = token(keys.private, ep.keys[0].keyid, iss="ward", aud=AUD, now=world.clock.now)
    _refused(world, f"Bearer {t1}", "network_forbidden", client_ip="192.0.2.7")
    t2 = token(keys.private, ep.keys[0].keyid, iss="ward", aud=AUD, now=world.clock.now)
    assert world.verifier.verify(f"Bearer {t2}", audience=AUD, client_ip="10.1.2.3").endpoint.name == "ward"


def test_when_a_refused_token_is_checked_then_its_jti_is_not_spent(world):
    t = _token(world, aud="https://cds.example.org/cds-services/other")
    _refused(world, f"Bearer {t}", "jwt_audience")
    # The same token sent to the right service is still only refused for its audience, never "replayed".
    _refused(world, f"Bearer {t}", "jwt_audience")
