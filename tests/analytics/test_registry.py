"""The signed registry: a verified model loads; a changed byte, a missing signature, another key, a rollback, a copy
under another name or version, an edited card or an extra file is refused."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from _registry_helpers import BUNDLE, booster_bytes, write_card
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from analytics.registry import (
    BUNDLE_FILE,
    CARD_FILE,
    INDEX_FILE,
    KEY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    TRANSIT_KEY,
    ModelRegistry,
)
from pipeline.errors import KeyAccessDeniedError, ModelIntegrityError
from pipeline.lake import Lake
from storage_security.audit.log import AuditLog
from storage_security.keys.keyring import LocalKeyring


def _register(registry: ModelRegistry, name: str = "t__y", *, promote: bool = True) -> Path:
    """Register a version and (by default) make it the current one, as a training that earns it does."""
    manifest = registry.register(name, booster_raw=booster_bytes(), bundle=BUNDLE, metrics={"auroc": 0.9},
                                 table_versions={"t": 3}, data_sha256="ab" * 32, card=write_card)
    if promote:
        registry.promote(name, manifest["version"], reason="test", principal="user:test")
    return registry.root / manifest["name"] / f"v{manifest['version']}"


def _ring(path: Path) -> LocalKeyring:
    ring = LocalKeyring.init(path, LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    return ring


def _last_event(registry: ModelRegistry):
    return AuditLog(registry._lake, registry._provider).events()[-1].event


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
    assert set(manifest["sha256"]) == {MODEL_FILE, BUNDLE_FILE, CARD_FILE}
    assert "t__y@v1" in (folder / CARD_FILE).read_text()


def test_when_the_keyring_signs_then_its_key_file_and_the_artifacts_are_readable_by_the_owner_only(registry):
    folder = _register(registry)
    for path in (registry.root / KEY_FILE, registry.root / "t__y" / INDEX_FILE, *folder.iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("file", [MODEL_FILE, BUNDLE_FILE, MANIFEST_FILE, CARD_FILE])
def test_when_one_byte_of_an_artifact_changes_then_loading_is_refused_and_audited(registry, file):
    folder = _register(registry)
    data = bytearray((folder / file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / file).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="refusing"):
        registry.load("t__y")
    event = _last_event(registry)
    assert event.decision == "deny" and event.details["model_version"] == "t__y@v1"


def test_when_the_model_card_is_edited_then_loading_is_refused(registry):
    folder = _register(registry)
    card = folder / CARD_FILE
    card.write_text(card.read_text().replace("AUROC 0.9", "AUROC 0.99"))
    with pytest.raises(ModelIntegrityError, match=f"{CARD_FILE} does not match"):
        registry.load("t__y")


def test_when_an_extra_file_is_dropped_into_the_version_folder_then_loading_is_refused(registry):
    folder = _register(registry)
    (folder / "patch.py").write_text("import os\n")
    with pytest.raises(ModelIntegrityError, match="files the signature does not cover"):
        registry.load("t__y")


def test_when_the_signature_is_missing_then_loading_is_refused(registry):
    folder = _register(registry)
    (folder / SIGNATURE_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match="unsigned"):
        registry.load("t__y")


def test_when_the_newest_version_is_deleted_then_the_older_one_is_not_served_silently(registry):
    _register(registry)
    v2 = _register(registry)
    shutil.rmtree(v2)
    with pytest.raises(ModelIntegrityError, match="folder is missing"):
        registry.load("t__y")
    with pytest.raises(ModelIntegrityError, match=r"not the current version \(t__y@v2\)"):
        registry.load("t__y", 1)
    assert _last_event(registry).decision == "deny"


def test_when_an_older_version_is_pinned_explicitly_then_it_loads_and_the_pin_is_audited(registry):
    _register(registry)
    _register(registry)
    manifest, _, _ = registry.load("t__y", 1, pin=True)
    assert manifest["version"] == 1
    event = _last_event(registry)
    assert event.decision == "allow" and "pinned" in event.reason and event.details["model_version"] == "t__y@v1"


def test_when_v1_is_copied_over_v2_then_loading_v2_is_refused(registry):
    v1 = _register(registry)
    v2 = _register(registry)
    for path in v1.iterdir():
        shutil.copy(path, v2 / path.name)
    with pytest.raises(ModelIntegrityError, match="another name or version"):
        registry.load("t__y")


def test_when_a_model_is_copied_under_another_name_then_loading_it_is_refused(registry):
    _register(registry, "u__y")
    v1 = _register(registry)
    shutil.rmtree(registry.root / "u__y" / "v1")
    shutil.copytree(v1, registry.root / "u__y" / "v1")
    with pytest.raises(ModelIntegrityError, match="another name or version"):
        registry.load("u__y")
    shutil.copytree(registry.root / "t__y", registry.root / "w__y")  # the index too
    with pytest.raises(ModelIntegrityError, match="another model"):
        registry.load("w__y")


@pytest.mark.parametrize("attack", ["delete", "roll back"])
def test_when_the_index_is_deleted_or_rolled_back_then_loading_is_refused(registry, attack):
    _register(registry)
    old_index = (registry.root / "t__y" / INDEX_FILE).read_bytes()
    _register(registry)
    if attack == "delete":
        (registry.root / "t__y" / INDEX_FILE).unlink()
    else:
        (registry.root / "t__y" / INDEX_FILE).write_bytes(old_index)
    with pytest.raises(ModelIntegrityError, match=r"no signed index|does not list"):
        registry.load("t__y")


def test_when_the_index_is_edited_then_loading_is_refused(registry):
    _register(registry)
    _register(registry)
    path = registry.root / "t__y" / INDEX_FILE
    record = json.loads(path.read_text())
    record["index"]["latest"] = 1
    del record["index"]["versions"]["2"]
    path.write_text(json.dumps(record))
    shutil.rmtree(registry.root / "t__y" / "v2")
    with pytest.raises(ModelIntegrityError, match="signature does not verify"):
        registry.load("t__y")


def test_when_a_model_was_signed_by_another_registry_key_then_loading_is_refused(registry, settings, tmp_path):
    other_settings = settings.model_copy(update={"home": tmp_path / "other", "lake_root": str(tmp_path / "olake")})
    other = ModelRegistry(other_settings, _ring(tmp_path / "other.json"), lake=Lake(other_settings))
    _register(registry)  # this registry has its own signing key
    _register(other)
    shutil.rmtree(registry.root / "t__y")
    shutil.copytree(other.root / "t__y", registry.root / "t__y")
    with pytest.raises(ModelIntegrityError, match="another key"):
        registry.load("t__y")


def test_when_the_signing_key_record_is_swapped_for_a_foreign_one_then_nothing_verifies(registry, tmp_path):
    _register(registry)
    foreign_settings = registry.settings.model_copy(update={"home": tmp_path / "f", "lake_root": str(tmp_path / "fl")})
    foreign = ModelRegistry(foreign_settings, _ring(tmp_path / "f.json"), lake=Lake(foreign_settings))
    _register(foreign)
    shutil.copy(foreign.root / KEY_FILE, registry.root / KEY_FILE)
    fresh = ModelRegistry(registry.settings, registry._provider, lake=registry._lake)
    with pytest.raises(ModelIntegrityError):
        fresh.load("t__y")


def test_when_the_registry_signs_through_vault_transit_then_the_public_key_alone_verifies_it(
        settings, tmp_path, vault_provider, kek_name):
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                                        "vault": settings.vault.model_copy(update={"kek_name": kek_name})})
    vault_provider.ensure_key("medguard-audit")
    registry = ModelRegistry(local, vault_provider, lake=Lake(local))
    folder = _register(registry)
    assert not (registry.root / KEY_FILE).exists()  # nothing secret on disk: Vault holds the private key
    info = vault_provider._client.read(f"transit/keys/{TRANSIT_KEY}")["data"]
    assert info["type"] == "ed25519"
    # A verifier with the public key only (no Vault token, no secret) checks the signature.
    signature = json.loads((folder / SIGNATURE_FILE).read_text())
    version = int(signature["key_ref"].rsplit(":v", 1)[1])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(info["keys"][str(version)]["public_key"]))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    payload = b"medguard.model.v2\x00" + json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    public.verify(base64.b64decode(signature["ed25519"]), payload)
    assert ModelRegistry(local, vault_provider, lake=Lake(local)).load("t__y")[0]["version"] == 1
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        ModelRegistry(local, vault_provider, lake=Lake(local)).load("t__y")


def test_when_the_pipeline_role_signs_under_its_vault_policy_then_it_can_sign_and_verify_but_not_make_other_keys(
        settings, tmp_path, openbao):
    from storage_security.keys._vault import VaultClient
    from storage_security.keys.vault_transit import VaultTransitKeys
    from storage_security.local_vault.openbao import write_policies

    root = openbao.client()
    write_policies(root)
    VaultTransitKeys(root).ensure_key("medguard-audit")
    token = root.write("auth/token/create", {"policies": ["medguard-pipeline-writer"], "ttl": "10m"})["auth"]
    pipeline = VaultTransitKeys(VaultClient(openbao.addr, token=token["client_token"]))
    local = settings.model_copy(update={"home": tmp_path / "home", "lake_root": str(tmp_path / "lake")})
    registry = ModelRegistry(local, pipeline, lake=Lake(local))
    _register(registry)
    assert ModelRegistry(local, pipeline, lake=Lake(local)).load("t__y")[0]["version"] == 1
    with pytest.raises(KeyAccessDeniedError, match="medguard-forged"):
        pipeline.ensure_signing_key("medguard-forged")
