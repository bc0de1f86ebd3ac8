"""Interoperability: requests signed by the third-party ``http-message-signatures`` package (RFC 9421) verify here,
and requests our client signs verify with that package's verifier."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver, algorithms

from access.client import sign_request
from access.signatures import SignatureRejected
from tests.access._signing import NOW, Clock, key_pair, registry, verifier

ALGORITHMS = {"ed25519": algorithms.ED25519, "ecdsa-p256": algorithms.ECDSA_P256_SHA256}
BODY = b'{"encounters":[{"age":61,"bmi":31.2}]}'


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _registered(tmp_path, clock, alg):
    keys = key_pair(alg)
    endpoint = registry(tmp_path, clock).register("partner", keys.public_pem, operator="tester")
    return keys, endpoint.keys[0].keyid


def _third_party_signed(keys, keyid, alg, url, components, *, body=BODY, nonce="tp-nonce-1"):
    prepared = requests.Request("POST", url, data=body, headers={"Content-Type": "application/json"}).prepare()
    signer = HTTPMessageSigner(signature_algorithm=ALGORITHMS[alg],
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={keyid: keys.private}))
    signer.sign(prepared, key_id=keyid, created=datetime.fromtimestamp(NOW, UTC), nonce=nonce, include_alg=True,
                covered_component_ids=components, body=body)
    return prepared


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
@pytest.mark.parametrize("components", [
    ("@method", "@target-uri", "content-digest", "content-type"),
    ("@method", "@authority", "@path", "@query", "content-digest", "content-type"),
])
def test_when_the_third_party_library_signs_then_our_verifier_accepts(tmp_path, clock, alg, components):
    keys, keyid = _registered(tmp_path, clock, alg)
    url = "https://api.example.org:8443/v1/diagnoses?model=t2d&explain=1"
    prepared = _third_party_signed(keys, keyid, alg, url, components)
    verified = verifier(tmp_path, clock).verify(method=prepared.method, url=prepared.url,
                                                headers=dict(prepared.headers), body=prepared.body,
                                                operation="diagnose")
    assert verified.endpoint.name == "partner" and verified.keyid == keyid and verified.nonce == "tp-nonce-1"
    assert set(verified.covered) == set(components)


@pytest.mark.parametrize("url", ["https://API.Example.org:443/v1/a%20b?x=1&y", "http://[::1]:8080/v1/diagnoses",
                                 "http://user@host.example:80/", "https://host.example/v1?"])
@pytest.mark.parametrize("components", [("@method", "@authority", "@path", "@query", "@scheme", "@request-target"),
                                        ("@method", "@target-uri")])
def test_when_urls_are_unusual_then_both_sides_build_the_same_signature_base(tmp_path, clock, url, components):
    keys, keyid = _registered(tmp_path, clock, "ed25519")
    prepared = _third_party_signed(keys, keyid, "ed25519", url, (*components, "content-type"))
    verified = verifier(tmp_path, clock).verify(method="POST", url=prepared.url, headers=dict(prepared.headers),
                                                body=prepared.body, operation="diagnose")
    assert verified.keyid == keyid


def test_when_a_third_party_signed_body_is_altered_then_our_verifier_refuses(tmp_path, clock):
    keys, keyid = _registered(tmp_path, clock, "ed25519")
    url = "https://api.example.org/v1/diagnoses"
    prepared = _third_party_signed(keys, keyid, "ed25519", url, ("@method", "@target-uri", "content-type"))
    with pytest.raises(SignatureRejected) as caught:
        verifier(tmp_path, clock).verify(method="POST", url=url, headers=dict(prepared.headers),
                                         body=BODY.replace(b"61", b"16"), operation="diagnose")
    assert caught.value.code == "digest_mismatch"


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
def test_when_our_client_signs_then_the_third_party_verifier_accepts(tmp_path, alg):
    keys = key_pair(alg)
    keyid = "partner-0123456789abcdef"
    url = "https://api.example.org:8443/v1/diagnoses?model=t2d"
    created = int(datetime.now(UTC).timestamp())  # the third-party verifier reads the real clock
    headers = sign_request("POST", url, {"Content-Type": "application/json"}, BODY, keyid=keyid,
                           private_key=keys.private, created=created)
    prepared = requests.Request("POST", url, data=BODY, headers=headers).prepare()
    check = HTTPMessageVerifier(signature_algorithm=ALGORITHMS[alg],
                                key_resolver=MappingKeyResolver(public_keys={keyid: keys.private.public_key()},
                                                                private_keys={}))
    [result] = check.verify(prepared, body=BODY, require_components=("@method", "@target-uri", "content-digest",
                                                                     "content-type"))
    assert result.parameters["keyid"] == keyid and result.parameters["alg"] == keys.alg
    assert result.nonce == headers["Signature-Input"].split('nonce="')[1].split('"')[0]
    assert result.body == BODY


def test_when_our_client_signs_a_get_then_the_third_party_verifier_accepts(tmp_path):
    keys = key_pair("ed25519")
    url = "http://localhost:8080/v1/models"
    headers = sign_request("GET", url, {}, b"", keyid="k", private_key=keys.private,
                           created=int(datetime.now(UTC).timestamp()))
    prepared = requests.Request("GET", url, headers=headers).prepare()
    check = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519,
                                key_resolver=MappingKeyResolver(public_keys={"k": keys.private.public_key()},
                                                                private_keys={}))
    [result] = check.verify(prepared)
    assert list(result.covered_components)[:2] == ['"@method"', '"@target-uri"']
