"""The signed registry: a verified model loads; a changed byte, a missing signature or another key is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from analytics.registry import BUNDLE_FILE, MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelRegistry
from pipeline.errors import ModelIntegrityError
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog
from storage_security.keys.keyring import LocalKeyring


def _booster() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    return bytes(xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, y), 5).save_raw("ubj"))


BUNDLE = {"calibrator": {"method": "platt", "params": {"a": [1.0], "b": [0.0]}}, "threshold": 0.5, "params": {},
          "contract": {"features": ["a", "b", "c"], "table": "t"}, "sources": {}, "profile": {}}


def _register(registry: ModelRegistry) -> Path:
    manifest = registry.register("t__y", booster_raw=_booster(), bundle=BUNDLE, metrics={"auroc": 0.9},
                                 table_versions={"t": 3}, data_sha256="ab" * 32)
    return registry.root / manifest["name"] / f"v{manifest['version']}"


def _ring(path: Path) -> LocalKeyring:
    ring = LocalKeyring.init(path, LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    return ring


@pytest.fixture
def registry(settings, tmp_path, keyring):
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    return ModelRegistry(local, keyring, lake=Lake(local))


def test_when_a_registered_model_is_loaded_then_it_verifies_and_scores(registry):
    folder = _register(registry)
    manifest, booster, bundle = registry.load("t__y")
    assert manifest["model_version"] == "t__y@v1" and manifest["training_tables"] == {"t": 3}
    assert booster.inplace_predict(np.zeros((1, 3))).shape == (1,)
    assert bundle["threshold"] == 0.5 and (folder / SIGNATURE_FILE).exists()


@pytest.mark.parametrize("file", [MODEL_FILE, BUNDLE_FILE, MANIFEST_FILE])
def test_when_one_byte_of_an_artifact_changes_then_loading_is_refused_and_audited(registry, file):
    folder = _register(registry)
    data = bytearray((folder / file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / file).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="refusing"):
        registry.load("t__y")
    events = AuditLog(registry._lake, registry._provider).events()
    assert events[-1].event.decision == "deny" and events[-1].event.details["model_version"] == "t__y@v1"


def test_when_the_signature_is_missing_then_loading_is_refused(registry):
    folder = _register(registry)
    (folder / SIGNATURE_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match="unsigned"):
        registry.load("t__y")


def test_when_a_model_was_signed_by_another_registry_key_then_loading_is_refused(registry, settings, tmp_path):
    other_settings = settings.model_copy(update={"home": tmp_path / "other", "lake_root": str(tmp_path / "olake")})
    other = ModelRegistry(other_settings, _ring(tmp_path / "other.json"), lake=Lake(other_settings))
    _register(registry)  # this registry has its own signing key
    foreign = _register(other)
    shutil.copytree(foreign, registry.root / "t__y" / "v2")
    with pytest.raises(ModelIntegrityError, match="another key"):
        registry.load("t__y", 2)
    assert registry.load("t__y", 1)[0]["version"] == 1


def test_when_the_signing_key_record_is_swapped_for_a_foreign_one_then_nothing_verifies(registry, tmp_path):
    _register(registry)
    foreign = ModelRegistry(registry.settings.model_copy(update={"home": tmp_path / "f"}), _ring(tmp_path / "f.json"),
                            lake=registry._lake)
    _register(foreign)
    shutil.copy(foreign.root / "signing_key.json", registry.root / "signing_key.json")
    fresh = ModelRegistry(registry.settings, registry._provider, lake=registry._lake)
    with pytest.raises(ModelIntegrityError):
        fresh.load("t__y")


def test_when_the_registry_signs_through_vault_transit_then_it_verifies_and_refuses_a_changed_byte(
        settings, tmp_path, vault_provider, kek_name):
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                                        "vault": settings.vault.model_copy(update={"kek_name": kek_name})})
    vault_provider.ensure_key("medguard-audit")
    registry = ModelRegistry(local, vault_provider, lake=Lake(local))
    folder = _register(registry)
    record = json.loads((registry.root / "signing_key.json").read_text())
    assert record["kek_name"] == kek_name and record["wrapped"].startswith("vault:")
    assert ModelRegistry(local, vault_provider, lake=Lake(local)).load("t__y")[0]["version"] == 1
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        ModelRegistry(local, vault_provider, lake=Lake(local)).load("t__y")
