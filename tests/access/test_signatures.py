"""Signed-request verification: every refusal code, with the clock injected, and what is accepted."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from access.client import sign_request
from access.signatures import REJECTIONS, NonceStore, RequestVerifier, SignatureRejected, signature_base
from tests.access._signing import NOW, Clock, key_pair, registry, verifier

URL = "https://api.example.org:8443/v1/diagnoses?model=t2d"
BODY = b'{"encounters":[{"age":61}]}'
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys():
    return key_pair("ed25519")


@pytest.fixture
def endpoint(tmp_path, clock, keys):
    return registry(tmp_path, clock).register("ward7", keys.public_pem, operator="tester", rate_per_minute=1000)


@pytest.fixture
def check(tmp_path, clock, endpoint):
    return verifier(tmp_path, clock)


def _signed(keyid, keys, *, method="POST", url=URL, body=BODY, headers=None, **kwargs):
    return sign_request(method, url, dict(JSON if headers is None else headers), body, keyid=keyid,
                        private_key=keys.private, created=kwargs.pop("created", NOW), **kwargs)


def _refused(check, code, **request):
    request = {"method": "POST", "url": URL, "body": BODY, "operation": "diagnose", **request}
    with pytest.raises(SignatureRejected) as caught:
        check.verify(**request)
    assert caught.value.code == code, caught.value
    assert caught.value.status == REJECTIONS[code][0]
    return caught.value


def _custom(keys, components, params, *, method="POST", url=URL, headers=None):
    """Headers carrying a signature over exactly ``components`` with the serialised ``params``."""
    fields = {k.lower(): v for k, v in (headers or {}).items()}
    inner = "(" + " ".join(f'"{c}"' for c in components) + ")" + params
    base = signature_base(components, inner, method=method, url=url, headers=fields)
    signature = base64.b64encode(keys.private.sign(base)).decode()
    return {**(headers or {}), "Signature-Input": f"sig1={inner}", "Signature": f"sig1=:{signature}:"}


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
def test_when_our_client_signs_a_request_then_it_is_verified_as_its_endpoint(tmp_path, clock, alg):
    keys = key_pair(alg)
    registered = registry(tmp_path, clock).register("ward7", keys.public_pem, operator="tester")
    keyid = registered.keys[0].keyid
    verified = verifier(tmp_path, clock).verify(method="POST", url=URL, headers=_signed(keyid, keys), body=BODY,
                                                operation="diagnose")
    assert (verified.endpoint.name, verified.keyid, verified.created) == ("ward7", keyid, NOW)
    assert verified.covered == ("@method", "@target-uri", "content-digest", "content-type")


def test_when_a_get_has_no_body_then_no_digest_is_needed(check, endpoint, keys):
    headers = _signed(endpoint.keys[0].keyid, keys, method="GET", url="https://api.example.org/v1/models", body=b"",
                      headers={})
    assert "Content-Digest" not in headers
    verified = check.verify(method="GET", url="https://api.example.org/v1/models", headers=headers, body=b"",
                            operation="models.read")
    assert verified.endpoint.name == "ward7"


def test_when_the_request_is_not_signed_then_signature_missing(check):
    _refused(check, "signature_missing", headers=JSON)


@pytest.mark.parametrize("signature_input", ['sig1=("@method" "@target-uri"', "sig1=(", "not a dictionary ,,"])
def test_when_the_signature_input_is_not_a_structured_dictionary_then_malformed(check, signature_input):
    _refused(check, "signature_malformed", headers={**JSON, "Signature-Input": signature_input,
                                                    "Signature": "sig1=:AAAA:"})


def test_when_two_signatures_are_sent_then_malformed(check, endpoint, keys):
    headers = _signed(endpoint.keys[0].keyid, keys)
    inner = headers["Signature-Input"].removeprefix("sig1=")
    value = headers["Signature"].removeprefix("sig1=")
    error = _refused(check, "signature_malformed", headers={**headers, "Signature-Input": f"a={inner}, b={inner}",
                                                            "Signature": f"a={value}, b={value}"})
    assert "exactly one signature" in error.detail


@pytest.mark.parametrize("missing", ["created", "keyid", "nonce", "alg"])
def test_when_a_required_parameter_is_missing_then_malformed_naming_it(check, endpoint, keys, missing):
    params = {"created": str(NOW), "keyid": f'"{endpoint.keys[0].keyid}"', "nonce": '"n-1"', "alg": '"ed25519"'}
    serialised = "".join(f";{name}={value}" for name, value in params.items() if name != missing)
    headers = _custom(keys, ["@method", "@target-uri"], serialised)
    error = _refused(check, "signature_malformed", method="GET", body=b"", headers=headers)
    assert missing in error.detail


@pytest.mark.parametrize(("components", "url", "body", "missing"), [
    (["@target-uri"], URL, b"", "@method"),
    (["@method"], URL, b"", "@authority"),
    (["@method", "@authority", "@path"], URL, b"", "@query"),
    (["@method", "@target-uri", "content-digest"], URL, BODY, "content-type"),
    (["@method", "@target-uri", "content-type"], URL, BODY, "content-digest"),
])
def test_when_a_required_component_is_not_covered_then_malformed_naming_it(check, endpoint, keys, components, url,
                                                                            body, missing):
    from access.signatures import content_digest

    headers = {**JSON, "Content-Digest": content_digest(body)} if body else {}
    params = f';created={NOW};keyid="{endpoint.keys[0].keyid}";nonce="n-2";alg="ed25519"'
    signed = _custom(keys, components, params, url=url, headers=headers)
    error = _refused(check, "signature_malformed", url=url, body=body, headers=signed)
    assert missing in error.detail


def test_when_authority_path_and_query_are_covered_instead_of_the_target_uri_then_accepted(check, endpoint, keys):
    params = f';created={NOW};keyid="{endpoint.keys[0].keyid}";nonce="n-3";alg="ed25519"'
    headers = _custom(keys, ["@method", "@authority", "@path", "@query"], params, method="GET")
    verified = check.verify(method="GET", url=URL, headers=headers, body=b"", operation="diagnose")
    assert verified.covered == ("@method", "@authority", "@path", "@query")


def test_when_the_keyid_is_unknown_then_endpoint_unknown(check, keys):
    _refused(check, "endpoint_unknown", headers=_signed("ward7-0000000000000000", keys))


def test_when_the_endpoint_is_suspended_then_refused_until_resumed(tmp_path, clock, check, endpoint, keys):
    store = registry(tmp_path, clock)
    store.suspend("ward7", operator="tester")
    _refused(check, "endpoint_suspended", headers=_signed(endpoint.keys[0].keyid, keys))
    store.resume("ward7", operator="tester")
    assert check.verify(method="POST", url=URL, headers=_signed(endpoint.keys[0].keyid, keys), body=BODY,
                        operation="diagnose").endpoint.status == "active"


def test_when_a_suspended_endpoints_keyid_comes_with_a_forged_signature_then_its_status_is_not_told(
        tmp_path, clock, check, endpoint):
    registry(tmp_path, clock).suspend("ward7", operator="tester")
    _refused(check, "signature_invalid", headers=_signed(endpoint.keys[0].keyid, key_pair("ed25519")))


def test_when_the_endpoint_is_revoked_then_endpoint_revoked(tmp_path, clock, check, endpoint, keys):
    registry(tmp_path, clock).revoke(endpoint.endpoint_id, operator="tester")
    _refused(check, "endpoint_revoked", headers=_signed(endpoint.keys[0].keyid, keys))


def test_when_another_key_signs_under_the_endpoints_keyid_then_signature_invalid(check, endpoint):
    _refused(check, "signature_invalid", headers=_signed(endpoint.keys[0].keyid, key_pair("ed25519")))


def test_when_the_alg_parameter_is_not_the_keys_algorithm_then_signature_invalid(check, endpoint, keys):
    params = f';created={NOW};keyid="{endpoint.keys[0].keyid}";nonce="n-7";alg="ecdsa-p256-sha256"'
    error = _refused(check, "signature_invalid", method="GET", body=b"",
                     headers=_custom(keys, ["@method", "@target-uri"], params, method="GET"))
    assert "ecdsa-p256-sha256" in error.detail


@pytest.mark.parametrize(("change", "code"), [
    ({"method": "PUT"}, "signature_invalid"),
    ({"url": URL.replace("t2d", "ckd")}, "signature_invalid"),
    ({"url": URL.replace("8443", "9443")}, "signature_invalid"),
    ({"body": BODY.replace(b"61", b"16")}, "digest_mismatch"),
])
def test_when_a_signed_request_is_altered_then_it_is_refused(check, endpoint, keys, change, code):
    _refused(check, code, headers=_signed(endpoint.keys[0].keyid, keys), **change)


def test_when_the_content_digest_header_is_replaced_then_the_signature_no_longer_verifies(check, endpoint, keys):
    from access.signatures import content_digest

    other = BODY.replace(b"61", b"16")
    headers = {**_signed(endpoint.keys[0].keyid, keys), "Content-Digest": content_digest(other)}
    _refused(check, "signature_invalid", headers=headers, body=other)


def test_when_a_body_comes_without_a_content_digest_then_digest_missing(check, endpoint, keys):
    params = f';created={NOW};keyid="{endpoint.keys[0].keyid}";nonce="n-4";alg="ed25519"'
    headers = _custom(keys, ["@method", "@target-uri", "content-type"], params, headers=JSON)
    assert _refused(check, "digest_missing", headers=headers).status == 400


def test_when_the_digest_is_sha512_then_it_is_checked_as_well(check, endpoint, keys):
    import hashlib

    good = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    params = f';created={NOW};keyid="{endpoint.keys[0].keyid}";nonce="n-5";alg="ed25519"'
    components = ["@method", "@target-uri", "content-digest", "content-type"]
    headers = _custom(keys, components, params, headers={**JSON, "Content-Digest": f"sha-512=:{good}:"})
    assert check.verify(method="POST", url=URL, headers=headers, body=BODY, operation="diagnose")
    bad = base64.b64encode(hashlib.sha512(b"other").digest()).decode()
    headers = _custom(keys, components, params.replace("n-5", "n-6"),
                      headers={**JSON, "Content-Digest": f"sha-256=:{good[:10]}:, sha-512=:{bad}:"})
    _refused(check, "digest_mismatch", headers=headers)


@pytest.mark.parametrize("offset", [-301, 301])
def test_when_created_is_outside_the_window_either_way_then_signature_expired(check, endpoint, keys, clock, offset):
    headers = _signed(endpoint.keys[0].keyid, keys, created=NOW + offset)
    error = _refused(check, "signature_expired", headers=headers)
    assert ("future" if offset > 0 else "too old") in error.detail


@pytest.mark.parametrize("offset", [-299, 299])
def test_when_created_is_just_inside_the_window_then_accepted(check, endpoint, keys, offset):
    headers = _signed(endpoint.keys[0].keyid, keys, created=NOW + offset)
    assert check.verify(method="POST", url=URL, headers=headers, body=BODY, operation="diagnose")


def test_when_expires_has_passed_then_signature_expired(check, endpoint, keys, clock):
    headers = _signed(endpoint.keys[0].keyid, keys, created=NOW - 10, expires=NOW - 1)
    _refused(check, "signature_expired", headers=headers)


def test_when_a_request_is_replayed_to_another_worker_then_nonce_replayed(tmp_path, clock, endpoint, keys):
    first, second = verifier(tmp_path, clock), verifier(tmp_path, clock)  # two processes, one store file
    headers = _signed(endpoint.keys[0].keyid, keys)
    assert first.verify(method="POST", url=URL, headers=headers, body=BODY, operation="diagnose")
    _refused(second, "nonce_replayed", headers=headers)
    _refused(first, "nonce_replayed", headers=headers)


def test_when_the_same_nonce_comes_from_two_endpoints_then_each_is_accepted_once(tmp_path, clock, check, endpoint,
                                                                                 keys):
    other_keys = key_pair("ecdsa-p256")
    other = registry(tmp_path, clock).register("lab2", other_keys.public_pem, operator="tester")
    assert check.verify(method="POST", url=URL, headers=_signed(endpoint.keys[0].keyid, keys, nonce="shared"),
                        body=BODY, operation="diagnose")
    assert check.verify(method="POST", url=URL, headers=_signed(other.keys[0].keyid, other_keys, nonce="shared"),
                        body=BODY, operation="diagnose")


def test_when_an_operation_is_not_granted_then_operation_forbidden(tmp_path, clock, check):
    viewer_keys = key_pair()
    viewer = registry(tmp_path, clock).register("viewer", viewer_keys.public_pem, operator="t",
                                                operations=["models.read"])
    _refused(check, "operation_forbidden", headers=_signed(viewer.keys[0].keyid, viewer_keys))
    assert check.verify(method="POST", url=URL, headers=_signed(viewer.keys[0].keyid, viewer_keys), body=BODY,
                        operation="models.read")


@pytest.mark.parametrize(("client_ip", "accepted"), [("10.1.2.3", True), ("::ffff:10.9.9.9", True),
                                                     ("192.168.0.1", False), (None, False), ("not-an-ip", False)])
def test_when_an_endpoint_is_bound_to_networks_then_only_those_addresses_pass(tmp_path, clock, check, client_ip,
                                                                              accepted):
    net_keys = key_pair()
    bound = registry(tmp_path, clock).register("bedside", net_keys.public_pem, operator="t", networks=["10.0.0.0/8"])
    headers = _signed(bound.keys[0].keyid, net_keys)
    if accepted:
        assert check.verify(method="POST", url=URL, headers=headers, body=BODY, operation="diagnose",
                            client_ip=client_ip)
    else:
        _refused(check, "network_forbidden", headers=headers, client_ip=client_ip)


def test_when_an_endpoint_is_bound_to_a_certificate_then_another_is_refused(tmp_path, clock, check):
    cert_keys = key_pair()
    fingerprint = "AB:" * 31 + "CD"
    bound = registry(tmp_path, clock).register("epic", cert_keys.public_pem, operator="t",
                                               client_cert_sha256=fingerprint)
    assert bound.client_cert_sha256 == "ab" * 31 + "cd"
    for presented in (None, "ef" * 32):
        _refused(check, "client_certificate_mismatch", headers=_signed(bound.keys[0].keyid, cert_keys),
                 client_cert_sha256=presented)
    assert check.verify(method="POST", url=URL, headers=_signed(bound.keys[0].keyid, cert_keys), body=BODY,
                        operation="diagnose", client_cert_sha256="ab" * 31 + "cd")


def test_when_an_endpoint_exceeds_its_rate_then_429_with_retry_after_across_workers(tmp_path, clock):
    slow_keys = key_pair()
    slow = registry(tmp_path, clock).register("slow", slow_keys.public_pem, operator="t", rate_per_minute=3)
    workers = [verifier(tmp_path, clock), verifier(tmp_path, clock)]  # two processes, one store file
    for i in range(3):
        assert workers[i % 2].verify(method="POST", url=URL, headers=_signed(slow.keys[0].keyid, slow_keys),
                                     body=BODY, operation="diagnose")
    held = _signed(slow.keys[0].keyid, slow_keys)
    for worker in workers:
        error = _refused(worker, "rate_limited", headers=held)
        # 3 requests at the start of a minute, 3 a minute: the sliding window has room again once the previous
        # minute's weight (3 * (60 - t) / 60) falls to 2, 20 s into the next minute.
        assert (error.status, error.retry_after) == (429, 80)
    clock.now += 79
    _refused(workers[1], "rate_limited", headers=held)
    # A refused request is not counted and its nonce not spent: the same request passes once the wait is over.
    clock.now += 1
    assert workers[1].verify(method="POST", url=URL, headers=held, body=BODY, operation="diagnose")


def test_when_a_key_is_rotated_then_the_old_key_works_until_the_overlap_ends(tmp_path, clock, check, endpoint, keys):
    new_keys = key_pair("ecdsa-p256")
    new = registry(tmp_path, clock).rotate_key("ward7", new_keys.public_pem, overlap=timedelta(hours=1),
                                               operator="tester")
    old_keyid = endpoint.keys[0].keyid
    for signer, keyid in ((keys, old_keyid), (new_keys, new.keyid)):
        assert check.verify(method="POST", url=URL, headers=_signed(keyid, signer), body=BODY, operation="diagnose")
    clock.now += 3600
    _refused(check, "key_expired", headers=_signed(old_keyid, keys, created=int(clock.now)))
    assert check.verify(method="POST", url=URL, headers=_signed(new.keyid, new_keys, created=int(clock.now)),
                        body=BODY, operation="diagnose")


def test_when_a_nonce_outlives_its_ttl_then_it_can_be_claimed_again(tmp_path, clock):
    first = NonceStore(tmp_path / "n.sqlite3", clock=clock)
    second = NonceStore(tmp_path / "n.sqlite3", clock=clock)
    assert first.claim("ep_1", "abc", ttl_seconds=60)
    assert not second.claim("ep_1", "abc", ttl_seconds=60)
    assert second.claim("ep_2", "abc", ttl_seconds=60)
    clock.now += 61
    assert second.claim("ep_1", "abc", ttl_seconds=60)


def test_when_every_code_is_listed_then_it_has_the_documented_status():
    assert {code: status for code, (status, _) in REJECTIONS.items()} == {
        "signature_missing": 401, "signature_malformed": 401, "endpoint_unknown": 401, "endpoint_suspended": 403,
        "endpoint_revoked": 403, "key_expired": 401, "signature_invalid": 401, "signature_expired": 401,
        "nonce_replayed": 401, "digest_missing": 400, "digest_mismatch": 400, "operation_forbidden": 403,
        "network_forbidden": 403, "client_certificate_mismatch": 403, "rate_limited": 429}
    with pytest.raises(ValueError, match="unknown rejection code"):
        SignatureRejected("nope")


def test_when_a_verifier_is_pickled_then_it_refuses(check):
    import pickle

    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(check)
    assert isinstance(check, RequestVerifier)
