"""The query digest in the gateway's audit events is keyed: a reader of the audit log cannot confirm a guessed query.

The attack: an auditor (or anyone holding the audit zone) suspects a query named a patient (``WHERE mrn = '…'``),
hashes each candidate SQL text and compares it with the recorded digest. With a keyed digest no candidate matches,
while the same SQL still gets the same digest, which the activity monitor needs to tell one query's events apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

import pytest

from access.gateway import QueryGateway
from pipeline.errors import AccessDeniedError
from storage_security.keys.keyring import LocalKeyring

MRN_QUERY = "SELECT mrn FROM raw.patients WHERE mrn = 'MRN000003'"


def _unkeyed(sql: str) -> set[str]:
    """What an attacker would try: the common unkeyed hashes of the text, as it is and normalised."""
    out = set()
    for text in {sql, sql.strip(), sql.lower(), " ".join(sql.split())}:
        data = text.encode()
        out |= {hashlib.new(name, data).hexdigest() for name in ("sha256", "sha3_256", "blake2s", "sha512")}
        out |= {hashlib.blake2b(data).hexdigest(), hashlib.blake2b(data, digest_size=32).hexdigest()}
    return out


def _digest_of(world, who: str, sql: str) -> str:
    """Run ``sql`` as ``who`` (granted or refused) and return the digest its last audit event recorded."""
    with contextlib.suppress(AccessDeniedError):
        world.gateway.query(world.session(who), sql)
    last = world.audit.events()[-1].event
    assert last.principal == f"user:{who}"
    return last.details["sql_digest"]


@pytest.mark.parametrize(("who", "sql"), [
    ("cleo", MRN_QUERY),  # a clinician's query naming a patient's MRN
    ("ann", MRN_QUERY),  # the same query refused for an analyst: the refusal records the digest too
    ("ann", "SELECT count(*) AS n FROM deidentified.patients WHERE sex = 'F'"),
])
def test_when_a_query_is_audited_then_its_digest_is_no_unkeyed_hash_of_the_sql(world, who, sql):
    digest = _digest_of(world, who, sql)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest not in _unkeyed(sql)
    assert "sql_sha256" not in world.audit.events()[-1].event.details
    assert "MRN000003" not in str(world.audit.events()[-1].event.to_dict())


def test_when_the_same_sql_is_sent_twice_then_the_digest_is_the_same_and_another_sql_differs(world):
    first = _digest_of(world, "cleo", MRN_QUERY)
    again = _digest_of(world, "cleo", MRN_QUERY)
    other = _digest_of(world, "cleo", MRN_QUERY.replace("MRN000003", "MRN000004"))
    assert first == again and other != first


def test_when_a_new_gateway_opens_the_same_lake_then_it_records_the_same_digest(world):
    # monitoring compares digests across the gateway's restarts: the key comes from the lake, not the process
    before = _digest_of(world, "cleo", MRN_QUERY)
    restarted = QueryGateway(world.lake, world.provider, world.engine, audit=world.audit)
    with pytest.raises(AccessDeniedError):
        restarted.query(world.session("ann"), MRN_QUERY)
    assert world.audit.events()[-1].event.details["sql_digest"] == before


def test_when_the_key_provider_cannot_unwrap_the_lake_key_then_the_query_is_refused_without_a_digest(world, tmp_path):
    stranger = LocalKeyring.init(tmp_path / "other.json", LocalKeyring.generate_master_key())
    stranger.ensure_key("medguard-kek")
    gateway = QueryGateway(world.lake, stranger, world.engine, audit=world.audit)
    with pytest.raises(AccessDeniedError, match="query digest key cannot be loaded"):
        gateway.query(world.session("ann"), "SELECT count(*) AS n FROM deidentified.patients")
    last = world.audit.events()[-1].event
    assert last.decision == "deny" and last.details["sql_digest"] is None
