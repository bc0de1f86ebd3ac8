"""The signed model registry: each model version is stored with what it needs to be trusted, and verified on load.

Layout, under ``$MEDGUARD_HOME/models/<name>/v<N>/``:

- ``model.ubj``: the xgboost booster (UBJSON; no pickle anywhere, so loading never runs code);
- ``bundle.json``: calibrator, threshold, parameters, feature contract, training profile;
- ``manifest.json``: version, metrics, training table versions, feature list, SHA-256 of ``model.ubj``, of
  ``bundle.json`` and of the training-data snapshot, the signing key's reference;
- ``signature.json``: HMAC-SHA256 over the canonical manifest.

The HMAC key is a data key from the key provider (Vault Transit or the keyring), stored only wrapped, in
``models/signing_key.json``, as the audit log keeps its own. Its reference is a one-way digest of the key, so a
swapped key record is noticed. Loading re-hashes every file, checks the manifest's signature and refuses —
:class:`~pipeline.errors.ModelIntegrityError` plus a ``deny`` audit event — on any mismatch, a missing
signature, or a key this provider cannot unwrap (signed by someone else).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import DecryptionError, KeyAccessDeniedError, ModelIntegrityError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings

MODEL_FILE = "model.ubj"
BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
KEY_FILE = "signing_key.json"
_DOMAIN = b"medguard.model.v1\x00"
_KEY_DOMAIN = b"medguard.model-key\x00"
_PRINCIPAL = "svc:analytics"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key_ref(kek_name: str, key: bytes) -> str:
    digest = hashlib.sha256(_KEY_DOMAIN + key).hexdigest()[:16]
    return f"{kek_name}:{digest}"


def _created_at(folder: Path) -> str:
    # Ordering only: a manifest that does not parse sorts first, and loading it is refused by verification.
    try:
        return str(json.loads((folder / MANIFEST_FILE).read_text()).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def model_name(table: str, label: str | None) -> str:
    """The registry name of a model trained on ``table`` for ``label``."""
    return re.sub(r"[^a-z0-9_]+", "_", f"{table}__{label or 'unlabelled'}".lower())


class ModelRegistry:
    """Signed model versions under ``$MEDGUARD_HOME/models``.

    Args:
        settings: where the home is and which KEK wraps the signing key (``vault.kek_name``).
        provider: the key provider.
        lake: for audit events (the audit zone); defaults to the settings' lake.
    """

    def __init__(self, settings: Settings, provider: Any, *, lake: Lake | None = None, root: Path | None = None):
        self.settings = settings
        self.root = root or settings.home / "models"
        self._provider = provider
        self._lake = lake
        self._kek = settings.vault.kek_name
        self._key: tuple[str, bytes] | None = None

    def __repr__(self) -> str:
        return f"ModelRegistry(root={str(self.root)!r})"

    def __getstate__(self) -> None:
        raise TypeError("ModelRegistry holds a signing key and cannot be pickled")

    # keys --------------------------------------------------------------------------------------------

    def _signing_key(self, *, create: bool) -> tuple[str, bytes]:
        if self._key is not None:
            return self._key
        path = self.root / KEY_FILE
        if path.exists():
            record = json.loads(path.read_text())
            try:
                key = self._provider.unwrap(record["kek_name"], record["wrapped"])
            except (DecryptionError, KeyAccessDeniedError) as exc:
                raise ModelIntegrityError("the registry's signing key does not unwrap with this key provider "
                                          "(foreign or forged key): refusing") from exc
            if _key_ref(record["kek_name"], key) != record["key_ref"]:
                raise ModelIntegrityError("the registry's signing key record was altered: refusing")
        elif create:
            self._provider.ensure_key(self._kek)
            data_key = self._provider.generate_data_key(self._kek)
            key = data_key.plaintext
            record = {"key_ref": _key_ref(self._kek, key), "kek_name": self._kek, "wrapped": data_key.wrapped,
                      "created_at": datetime.now(UTC).isoformat()}
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
        else:
            raise ModelIntegrityError(f"no model signing key in {self.root}: nothing can be verified")
        self._key = (record["key_ref"], key)
        return self._key

    def _mac(self, manifest: dict[str, Any], key: bytes) -> str:
        return hmac.new(key, _DOMAIN + _canonical(manifest), hashlib.sha256).hexdigest()

    # write -------------------------------------------------------------------------------------------

    def register(self, name: str, *, booster_raw: bytes, bundle: dict[str, Any], metrics: dict[str, Any],
                 table_versions: dict[str, int], data_sha256: str, extra: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
        """Store and sign a new version of model ``name``; returns its manifest."""
        key_ref, key = self._signing_key(create=True)
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()]
        number = max(existing, default=0) + 1
        folder = base / f"v{number}"
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(booster_raw)
        (folder / BUNDLE_FILE).write_text(json.dumps(bundle, sort_keys=True, allow_nan=False))
        manifest = {
            "name": name, "version": number, "model_version": f"{name}@v{number}",
            "created_at": datetime.now(UTC).isoformat(), "metrics": metrics, "training_tables": table_versions,
            "features": bundle["contract"]["features"], "feature_contract": bundle["contract"],
            "sha256": {MODEL_FILE: _sha256(folder / MODEL_FILE), BUNDLE_FILE: _sha256(folder / BUNDLE_FILE)},
            "training_data_sha256": data_sha256, "key_ref": key_ref, **(extra or {}),
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
        (folder / SIGNATURE_FILE).write_text(json.dumps({"key_ref": key_ref, "hmac_sha256": self._mac(manifest, key)}))
        self._audit("allow", manifest["model_version"], "registered")
        return manifest

    # read --------------------------------------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[Path]:
        """Version folders, oldest first (of one model, or of all by creation order)."""
        if not self.root.is_dir():
            return []
        names = [name] if name else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        found = []
        for n in names:
            for p in (self.root / n).glob("v*"):
                if p.name[1:].isdigit() and (p / MANIFEST_FILE).exists():
                    found.append(p)
        return sorted(found, key=lambda p: (_created_at(p), int(p.name[1:])))

    def load(self, name: str | None = None, version: int | None = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Verify and load a version (the newest by default): (manifest, booster, bundle).

        Raises:
            ModelIntegrityError: no such model, a file changed, unsigned, or signed with another key.
        """
        if version is not None and name:
            folder = self.root / name / f"v{version}"
        else:
            found = self.versions(name)
            if not found:
                raise ModelIntegrityError(f"no registered model{' ' + name if name else ''} in {self.root}: "
                                          "run `medguard train` first")
            folder = found[-1]
        label = f"{folder.parent.name}@{folder.name}"
        try:
            manifest, booster, bundle = self._verified(folder)
        except ModelIntegrityError as exc:
            self._audit("deny", label, str(exc))
            raise
        self._audit("allow", label, "verified")
        return manifest, booster, bundle

    def _verified(self, folder: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        label = f"{folder.parent.name}@{folder.name}"
        if not (folder / SIGNATURE_FILE).exists():
            raise ModelIntegrityError(f"model {label} is unsigned: refusing to load it")
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            signature = json.loads((folder / SIGNATURE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"model {label}: manifest or signature unreadable: refusing") from exc
        key_ref, key = self._signing_key(create=False)
        if signature.get("key_ref") != key_ref or manifest.get("key_ref") != key_ref:
            raise ModelIntegrityError(f"model {label} was signed with another key ({signature.get('key_ref')}): "
                                      "refusing")
        if not hmac.compare_digest(str(signature.get("hmac_sha256", "")), self._mac(manifest, key)):
            raise ModelIntegrityError(f"model {label}: the manifest's signature does not verify: refusing")
        for file, digest in manifest.get("sha256", {}).items():
            path = folder / file
            if not path.exists() or not hmac.compare_digest(_sha256(path), digest):
                raise ModelIntegrityError(f"model {label}: {file} does not match its signed SHA-256: refusing")
        if set(manifest.get("sha256", {})) != {MODEL_FILE, BUNDLE_FILE}:
            raise ModelIntegrityError(f"model {label}: the manifest does not cover every artifact: refusing")
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray((folder / MODEL_FILE).read_bytes()))
        except xgb.core.XGBoostError as exc:
            raise ModelIntegrityError(f"model {label}: the booster does not load: refusing") from exc
        bundle = json.loads((folder / BUNDLE_FILE).read_text())
        return manifest, booster, bundle

    def _audit(self, decision: str, model_version: str, reason: str) -> None:
        from storage_security.audit.log import AuditAction, AuditEvent, AuditLog

        lake = self._lake or Lake(self.settings)
        AuditLog(lake, self._provider).record(AuditEvent(
            principal=_PRINCIPAL, action=AuditAction.READ if reason != "registered" else AuditAction.WRITE,
            zone=Zone.PREDICTIONS, table_name="model_registry", decision=decision, purpose="model integrity",
            reason=reason[:300], details={"model_version": model_version}))
