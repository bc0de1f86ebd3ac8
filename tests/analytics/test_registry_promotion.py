"""The registry's current pointer: registered versions are candidates until promoted; promotion and rollback are
signed and audited; a swapped pointer fails closed; the same training is never registered twice."""

from __future__ import annotations

import json

import pytest
from _registry_helpers import BUNDLE, booster_bytes, write_card

from analytics.registry import INDEX_FILE, ModelRegistry
from pipeline.errors import ModelIntegrityError, ValidationError
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog


@pytest.fixture
def registry(settings, tmp_path, keyring):
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    return ModelRegistry(local, keyring, lake=Lake(local))


def _candidate(registry: ModelRegistry, fingerprint: str | None = None) -> dict:
    return registry.register("t__y", booster_raw=booster_bytes(), bundle=BUNDLE, metrics={"auroc": 0.9},
                             table_versions={"t": 3}, data_sha256="ab" * 32, card=write_card, fingerprint=fingerprint)


def _events(registry: ModelRegistry):
    return [e.event for e in AuditLog(registry._lake, registry._provider).events()]


def test_when_a_model_is_only_registered_then_it_is_a_candidate_and_nothing_loads(registry):
    _candidate(registry)
    assert registry.describe("t__y")["versions"][0]["status"] == "candidate"
    with pytest.raises(ModelIntegrityError, match="no current version"):
        registry.load("t__y")


def test_when_a_candidate_is_promoted_then_it_loads_and_the_promotion_is_signed_and_audited(registry):
    _candidate(registry)
    _candidate(registry)
    registry.promote("t__y", 1, reason="meets the floors", principal="user:alice")
    assert registry.load("t__y")[0]["version"] == 1  # the current one, not the newest
    described = registry.describe("t__y")
    assert [v["status"] for v in described["versions"]] == ["current", "candidate"]
    assert described["history"][-1] | {"at": None} == {"action": "promote", "version": 1, "previous": None,
                                                       "reason": "meets the floors", "principal": "user:alice",
                                                       "at": None}
    promoted = [e for e in _events(registry) if e.action == "write" and "promoted" in (e.reason or "")]
    assert promoted and "user:alice" in promoted[-1].reason and promoted[-1].details["model_version"] == "t__y@v1"


def test_when_a_newer_version_is_promoted_then_the_old_one_is_retired_and_rollback_restores_it(registry):
    _candidate(registry)
    _candidate(registry)
    registry.promote("t__y", 1, reason="first", principal="user:alice")
    registry.promote("t__y", 2, reason="better", principal="user:alice")
    assert [v["status"] for v in registry.describe("t__y")["versions"]] == ["retired", "current"]
    entry = registry.rollback("t__y", reason="v2 misses cases on the ward", principal="user:bob")
    assert entry["version"] == 1 and entry["previous"] == 2 and entry["action"] == "rollback"
    assert registry.load("t__y")[0]["version"] == 1
    assert [v["status"] for v in registry.describe("t__y")["versions"]] == ["current", "retired"]


def test_when_rolling_back_to_a_version_that_was_never_current_then_it_is_refused(registry):
    _candidate(registry)
    _candidate(registry)
    registry.promote("t__y", 1, reason="first", principal="user:alice")
    with pytest.raises(ValidationError, match="never current"):
        registry.rollback("t__y", to=2, reason="try", principal="user:bob")
    with pytest.raises(ValidationError, match="no earlier current version"):
        registry.rollback("t__y", reason="nothing before v1", principal="user:bob")


@pytest.mark.parametrize("reason", ["", "   "])
def test_when_a_promotion_has_no_reason_then_it_is_refused(registry, reason):
    _candidate(registry)
    with pytest.raises(ValidationError, match="needs a reason"):
        registry.promote("t__y", 1, reason=reason, principal="user:alice")


def test_when_the_current_pointer_is_swapped_on_disk_then_loading_fails_closed(registry):
    _candidate(registry)
    _candidate(registry)
    registry.promote("t__y", 2, reason="good", principal="user:alice")
    path = registry.root / "t__y" / INDEX_FILE
    record = json.loads(path.read_text())
    record["index"]["current"] = 1  # an attacker points diagnosis at the other version
    path.write_text(json.dumps(record))
    with pytest.raises(ModelIntegrityError, match="signature does not verify"):
        registry.load("t__y")
    with pytest.raises(ModelIntegrityError):
        registry.promote("t__y", 1, reason="anything", principal="user:alice")
    assert _events(registry)[-1].decision == "deny"


def test_when_the_current_version_moved_since_the_judgement_then_promotion_is_refused(registry):
    _candidate(registry)
    _candidate(registry)
    registry.promote("t__y", 1, reason="first", principal="user:alice")
    with pytest.raises(ValidationError, match="changed"):
        registry.promote("t__y", 2, reason="judged against none", principal="svc:analytics", expect_current=None)
    assert registry.current("t__y") == 1


def test_when_the_same_fingerprint_is_registered_again_then_nothing_new_is_stored(registry):
    first = _candidate(registry, fingerprint="f" * 64)
    again = _candidate(registry, fingerprint="f" * 64)
    assert again["duplicate"] is True and again["version"] == first["version"] == 1
    assert sorted(p.name for p in (registry.root / "t__y").glob("v*")) == ["v1"]
    assert registry.duplicate_of("t__y", "f" * 64) == 1 and registry.duplicate_of("t__y", "e" * 64) is None
    assert _candidate(registry, fingerprint="e" * 64)["version"] == 2


def test_when_an_index_predates_promotion_then_its_newest_version_stays_served(registry):
    _candidate(registry)
    path = registry.root / "t__y" / INDEX_FILE
    payload = json.loads(path.read_text())["index"]
    legacy = {k: payload[k] for k in ("name", "latest", "versions", "updated_at")}
    path.write_text(json.dumps({"index": legacy, "signature": registry._sign(b"medguard.model-index.v1\x00",
                                                                               legacy)}))
    assert registry.load("t__y")[0]["version"] == 1 and registry.current("t__y") == 1


def test_when_runs_of_one_training_register_at_once_then_one_version_is_stored(registry):
    from concurrent.futures import ThreadPoolExecutor

    _candidate(registry, fingerprint="0" * 64)  # the signing key exists before the race
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _candidate(registry, fingerprint="a" * 64), range(4)))
    assert sorted(r["version"] for r in results) == [2, 2, 2, 2]
    assert sum(not r.get("duplicate") for r in results) == 1
    assert sorted(p.name for p in (registry.root / "t__y").glob("v*")) == ["v1", "v2"]
