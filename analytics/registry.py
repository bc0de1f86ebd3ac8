"""The signed model registry: each model version is stored with what it needs to be trusted, and verified on load.

Layout, under ``$MEDGUARD_HOME/models/<name>/``:

- ``v<N>/model.ubj``: the xgboost booster (UBJSON; no pickle anywhere, so loading never runs code);
- ``v<N>/bundle.json``: calibrator, threshold, parameters, feature contract, training profile;
- ``v<N>/model_card.html``: the model card, when the trainer writes one (it is signed like the rest);
- ``v<N>/manifest.json``: name, version, metrics, training table versions, feature list, SHA-256 of every other file
  of the folder and of the training-data snapshot, the signing key's reference;
- ``v<N>/signature.json``: an ed25519 signature over the canonical manifest;
- ``index.json``: the signed, monotonic list of the model's versions (version -> SHA-256 of its manifest), the
  newest one, the *current* one (the version diagnosis and the API use; None while every version is a
  candidate), the retired ones (current once, replaced or rolled back), each version's training fingerprint (data
  digest and configuration, so the same training is never registered twice) and the history of promotions and
  rollbacks (who, when, why). The current pointer is inside the signed payload: swapping it on disk breaks the
  signature. An index written before promotion existed has no ``current`` and serves its newest version, as
  then.

A version's status is ``current``, ``retired`` or ``candidate`` (registered, never current). Registration adds a
candidate; :meth:`ModelRegistry.promote` and :meth:`ModelRegistry.rollback` move the pointer, each an audited
``write`` event. Writers of one model's index take a file lock (``.lock``), so concurrent training runs neither
lose a version nor register the same fingerprint twice.

Signing is asymmetric, so a verifier needs no secret. With Vault/OpenBao the key is the Transit key
``medguard-model`` (type ed25519): Vault signs (``transit/sign``) and loading verifies with the public key Vault
publishes for that key version. With the keyring the ed25519 seed is a data key generated under the data KEK and
kept only wrapped, in ``models/signing_key.json`` (0600); a record that does not unwrap is refused.

Loading refuses — :class:`~pipeline.errors.ModelIntegrityError` plus a ``deny`` audit event — a changed, missing or
extra file, a manifest whose name or version is not its folder's (a copy under another name or version), a
missing or unsigned index, a version the index does not list, and the current version's folder gone (it never
falls back to another one). By default the current version loads; another one only when pinned explicitly
(``pin=True``), which is audited; a model with no current version loads nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipeline.errors import CryptoError, DecryptionError, KeyAccessDeniedError, ModelIntegrityError, ValidationError
from pipeline.lake import Lake, Zone
from pipeline.settings import Settings

MODEL_FILE = "model.ubj"
BUNDLE_FILE = "bundle.json"
CARD_FILE = "model_card.html"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
KEY_FILE = "signing_key.json"
TRANSIT_KEY = "medguard-model"
_DOMAIN = b"medguard.model.v2\x00"
_INDEX_DOMAIN = b"medguard.model-index.v1\x00"
_PRINCIPAL = "svc:analytics"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path``, mode 0600 from creation (no window where others can read it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _created_at(folder: Path) -> str:
    # Ordering only: a manifest that does not parse sorts first, and loading it is refused by verification.
    try:
        return str(json.loads((folder / MANIFEST_FILE).read_text()).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _label(name: str, version: int | None) -> str:
    return f"{name}@v{version}" if version is not None else "none"


def model_name(table: str, label: str | None) -> str:
    """The registry name of a model trained on ``table`` for ``label``."""
    return re.sub(r"[^a-z0-9_]+", "_", f"{table}__{label or 'unlabelled'}".lower())


class _KeyringSigner:
    """An ed25519 key whose seed is a data key of the keyring's KEK, stored wrapped in ``signing_key.json``."""

    def __init__(self, provider: Any, kek: str, path: Path) -> None:
        self._provider, self._kek, self._path = provider, kek, path
        self._key: Ed25519PrivateKey | None = None

    def _private(self, *, create: bool) -> Ed25519PrivateKey:
        if self._key is not None:
            return self._key
        if self._path.exists():
            try:
                record = json.loads(self._path.read_text())
                seed = self._provider.unwrap(record["kek_name"], record["wrapped"])
            except (DecryptionError, KeyAccessDeniedError, CryptoError, ValueError, KeyError, TypeError) as exc:
                raise ModelIntegrityError("the registry's signing key does not unwrap with this key provider "
                                          "(foreign or forged key): refusing") from exc
        elif create:
            self._provider.ensure_key(self._kek)
            data_key = self._provider.generate_data_key(self._kek)
            seed = data_key.plaintext
            record = {"kek_name": self._kek, "wrapped": data_key.wrapped, "algorithm": "ed25519",
                      "created_at": datetime.now(UTC).isoformat()}
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(self._path, json.dumps(record, indent=2).encode())
        else:
            raise ModelIntegrityError(f"no model signing key in {self._path.parent}: nothing can be verified")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        return self._key

    def current_ref(self) -> str:
        return self.key_ref(create=True)

    def key_ref(self, *, create: bool) -> str:
        raw = self._private(create=create).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"ed25519:{hashlib.sha256(raw).hexdigest()[:16]}"

    def sign(self, data: bytes) -> tuple[str, bytes]:
        return self.key_ref(create=True), self._private(create=True).sign(data)

    def public_key(self, key_ref: str) -> Ed25519PublicKey | None:
        return self._private(create=False).public_key() if key_ref == self.key_ref(create=False) else None


class _TransitSigner:
    """The Transit key ``medguard-model`` (ed25519): Vault signs; verification uses its published public keys."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._public: dict[int, bytes] | None = None

    def current_ref(self) -> str:
        try:
            self._provider.ensure_signing_key(TRANSIT_KEY)
            versions = self._provider.public_keys(TRANSIT_KEY)
        except CryptoError as exc:
            raise ModelIntegrityError(f"Vault has no usable Transit signing key {TRANSIT_KEY}") from exc
        if not versions:
            raise ModelIntegrityError(f"Vault published no public key for Transit key {TRANSIT_KEY}")
        return f"transit:{TRANSIT_KEY}:v{max(versions)}"

    def sign(self, data: bytes) -> tuple[str, bytes]:
        try:
            self._provider.ensure_signing_key(TRANSIT_KEY)
            version, signature = self._provider.sign(TRANSIT_KEY, data)
        except CryptoError as exc:
            raise ModelIntegrityError(f"Vault did not sign the model with Transit key {TRANSIT_KEY}") from exc
        return f"transit:{TRANSIT_KEY}:v{version}", signature

    def public_key(self, key_ref: str) -> Ed25519PublicKey | None:
        match = re.fullmatch(rf"transit:{re.escape(TRANSIT_KEY)}:v([1-9]\d*)", key_ref)
        if match is None:
            return None
        if self._public is None:
            try:
                self._public = self._provider.public_keys(TRANSIT_KEY)
            except CryptoError as exc:
                raise ModelIntegrityError(f"Vault has no Transit signing key {TRANSIT_KEY}: nothing can be "
                                          "verified") from exc
        raw = self._public.get(int(match.group(1)))
        return Ed25519PublicKey.from_public_bytes(raw) if raw else None


class ModelRegistry:
    """Signed model versions under ``$MEDGUARD_HOME/models``.

    Args:
        settings: where the home is and which KEK wraps the keyring's signing key (``vault.kek_name``).
        provider: the key provider; a Vault provider signs with Transit, a keyring with its local ed25519 key.
        lake: for audit events (the audit zone); defaults to the settings' lake.
    """

    def __init__(self, settings: Settings, provider: Any, *, lake: Lake | None = None, root: Path | None = None):
        self.settings = settings
        self.root = root or settings.home / "models"
        self._provider = provider
        self._lake = lake
        if getattr(provider, "name", "") == "vault":
            self._signer: _KeyringSigner | _TransitSigner = _TransitSigner(provider)
        else:
            self._signer = _KeyringSigner(provider, settings.vault.kek_name, self.root / KEY_FILE)

    def __repr__(self) -> str:
        return f"ModelRegistry(root={str(self.root)!r})"

    def __getstate__(self) -> None:
        raise TypeError("ModelRegistry holds a signing key and cannot be pickled")

    # signatures --------------------------------------------------------------------------------------

    def _sign(self, domain: bytes, payload: dict[str, Any]) -> dict[str, str]:
        key_ref, signature = self._signer.sign(domain + _canonical(payload))
        return {"key_ref": key_ref, "ed25519": base64.b64encode(signature).decode("ascii")}

    def _check(self, domain: bytes, payload: dict[str, Any], signature: Any, what: str) -> None:
        if not isinstance(signature, dict) or not isinstance(signature.get("key_ref"), str):
            raise ModelIntegrityError(f"{what} is unsigned: refusing")
        public = self._signer.public_key(signature["key_ref"])
        if public is None:
            raise ModelIntegrityError(f"{what} was signed with another key ({signature['key_ref'][:60]}): refusing")
        try:
            public.verify(base64.b64decode(str(signature.get("ed25519", "")), validate=True),
                          domain + _canonical(payload))
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise ModelIntegrityError(f"{what}: the signature does not verify: refusing") from exc

    # the index ---------------------------------------------------------------------------------------

    def _index(self, name: str) -> dict[str, Any] | None:
        """The model's verified index, or None when the model has neither index nor version folder."""
        path = self.root / name / INDEX_FILE
        if not path.exists():
            if self._folders(name):
                raise ModelIntegrityError(f"model {name} has versions but no signed index (deleted?): refusing")
            return None
        try:
            record = json.loads(path.read_text())
            payload, signature = record["index"], record["signature"]
            latest = int(payload["latest"])
            listed = {int(v): str(d) for v, d in payload["versions"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelIntegrityError(f"model {name}: the index is unreadable: refusing") from exc
        self._check(_INDEX_DOMAIN, payload, signature, f"the index of model {name}")
        if payload.get("name") != name or not listed or latest != max(listed):
            raise ModelIntegrityError(f"the index of model {name} belongs to another model or is inconsistent: "
                                      "refusing")
        try:
            # An index from before promotion (no "current" key, the absence signed too) serves its newest version.
            current = int(payload["current"]) if payload.get("current") is not None else (
                None if "current" in payload else latest)
            retired = sorted({int(v) for v in payload.get("retired", [])})
            fingerprints = {int(v): str(f) for v, f in payload.get("fingerprints", {}).items()}
            history = list(payload.get("history", []))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelIntegrityError(f"model {name}: the index is unreadable: refusing") from exc
        if (current is not None and current not in listed) or not set(retired) <= set(listed):
            raise ModelIntegrityError(f"the index of model {name} names a current or retired version it does not "
                                      "list: refusing")
        return {"name": name, "latest": latest, "versions": listed, "current": current, "retired": retired,
                "fingerprints": fingerprints, "history": history}

    def _write_index(self, name: str, index: dict[str, Any], updated_at: str) -> None:
        payload = {"name": name, "latest": index["latest"], "updated_at": updated_at,
                   "versions": {str(v): d for v, d in index["versions"].items()}, "current": index["current"],
                   "retired": sorted(index["retired"]),
                   "fingerprints": {str(v): f for v, f in index["fingerprints"].items()}, "history": index["history"]}
        record = {"index": payload, "signature": self._sign(_INDEX_DOMAIN, payload)}
        _write_private(self.root / name / INDEX_FILE, json.dumps(record, indent=2).encode())

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold the model's writer lock (one index writer at a time, across processes)."""
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(base / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _folders(self, name: str) -> list[int]:
        base = self.root / name
        return sorted(int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()) if base.is_dir() else []

    # write -------------------------------------------------------------------------------------------

    def register(self, name: str, *, booster_raw: bytes, bundle: dict[str, Any], metrics: dict[str, Any],
                 table_versions: dict[str, int], data_sha256: str, extra: dict[str, Any] | None = None,
                 card: Callable[[dict[str, Any], Path], None] | None = None,
                 fingerprint: str | None = None) -> dict[str, Any]:
        """Store and sign a new *candidate* version of model ``name``; returns its manifest.

        Registration never changes the current version: :meth:`promote` does.

        Args:
            card: writes the model card to the path it is given, from the manifest so far (everything but the
                card's own digest); the card is then signed with the rest.
            fingerprint: the training's data digest and configuration; when a version with the same fingerprint
                exists, nothing is registered and that version's manifest is returned with ``"duplicate": True``.

        Raises:
            ModelIntegrityError: the model's index does not verify (a new version is never added to a tampered
                history).
        """
        if not re.fullmatch(r"[a-z0-9_]{1,200}", name):
            raise ValueError(f"model name {name!r} must be lower-case letters, digits and '_'")
        with self._locked(name):
            index = self._index(name)
            if index is not None and fingerprint is not None:
                same = [v for v, f in index["fingerprints"].items() if f == fingerprint]
                if same:
                    manifest = self._manifest(name, same[0], index)
                    self._audit("allow", manifest["model_version"], "duplicate training: nothing registered")
                    return {**manifest, "duplicate": True}
            manifest = self._store(name, index, booster_raw=booster_raw, bundle=bundle, metrics=metrics,
                                   table_versions=table_versions, data_sha256=data_sha256,
                                   extra={**(extra or {}), **({"fingerprint": fingerprint} if fingerprint else {})},
                                   card=card)
        self._audit("allow", manifest["model_version"], "registered")
        return manifest

    def _store(self, name: str, index: dict[str, Any] | None, *, booster_raw: bytes, bundle: dict[str, Any],
               metrics: dict[str, Any], table_versions: dict[str, int], data_sha256: str, extra: dict[str, Any],
               card: Callable[[dict[str, Any], Path], None] | None) -> dict[str, Any]:
        base = self.root / name
        number = max([index["latest"] if index else 0, *self._folders(name)]) + 1
        folder = base / f"v{number}"
        folder.mkdir(mode=0o700)
        _write_private(folder / MODEL_FILE, booster_raw)
        _write_private(folder / BUNDLE_FILE, json.dumps(bundle, sort_keys=True, allow_nan=False).encode())
        manifest = {
            "name": name, "version": number, "model_version": f"{name}@v{number}",
            "created_at": datetime.now(UTC).isoformat(), "metrics": metrics, "training_tables": table_versions,
            "features": bundle["contract"]["features"], "feature_contract": bundle["contract"],
            "sha256": {MODEL_FILE: _sha256(folder / MODEL_FILE), BUNDLE_FILE: _sha256(folder / BUNDLE_FILE)},
            "training_data_sha256": data_sha256, **extra,
        }
        manifest["key_ref"] = self._signer.current_ref()
        if card is not None:
            card(manifest, folder / CARD_FILE)
            os.chmod(folder / CARD_FILE, 0o600)
            manifest["sha256"][CARD_FILE] = _sha256(folder / CARD_FILE)
        signature = self._sign(_DOMAIN, manifest)
        if signature["key_ref"] != manifest["key_ref"]:
            raise ModelIntegrityError("the signing key was rotated while registering: run the registration again")
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode()
        _write_private(folder / MANIFEST_FILE, manifest_bytes)
        _write_private(folder / SIGNATURE_FILE, json.dumps(signature).encode())
        updated = index or {"versions": {}, "current": None, "retired": [], "fingerprints": {}, "history": []}
        updated = {**updated, "latest": number,
                   "versions": {**updated["versions"], number: hashlib.sha256(manifest_bytes).hexdigest()}}
        if extra.get("fingerprint"):
            updated["fingerprints"] = {**updated["fingerprints"], number: extra["fingerprint"]}
        self._write_index(name, updated, manifest["created_at"])
        return manifest

    # promotion ---------------------------------------------------------------------------------------

    def current(self, name: str) -> int | None:
        """The current version of ``name`` per its verified index (None: no current version or no model)."""
        index = self._index(name)
        return index["current"] if index else None

    def duplicate_of(self, name: str, fingerprint: str) -> int | None:
        """The version already registered with ``fingerprint`` (per the verified index), or None."""
        index = self._index(name)
        same = [v for v, f in (index or {"fingerprints": {}})["fingerprints"].items() if f == fingerprint]
        return same[0] if same else None

    def promote(self, name: str, version: int, *, reason: str, principal: str,
                expect_current: int | str | None = "any") -> dict[str, Any]:
        """Make ``version`` the current one (the previous current is retired); signed and audited.

        Args:
            reason: why (recorded in the signed history and the audit event; no PHI).
            principal: who.
            expect_current: the current version the decision was judged against; when the pointer has moved
                since (another run promoted meanwhile), nothing changes. ``"any"``: do not check.

        Raises:
            ModelIntegrityError: the index or the version does not verify.
            ValidationError: no such version, already current, or the current version moved.
        """
        return self._move(name, version, action="promote", reason=reason, principal=principal,
                          expect_current=expect_current)

    def rollback(self, name: str, *, reason: str, principal: str, to: int | None = None) -> dict[str, Any]:
        """Make a retired version (current once) current again: ``to``, or the one the current one replaced.

        Raises:
            ValidationError: no current version, nothing to roll back to, or ``to`` was never current.
        """
        index = self._index(name)
        if index is None:
            raise ValidationError(f"no registered model {name}")
        if to is None:
            previous = [h.get("previous") for h in index["history"]
                        if h.get("version") == index["current"] and h.get("previous") in index["retired"]]
            if not previous:
                raise ValidationError(f"model {name} has no earlier current version to roll back to "
                                      "(use --to VERSION with a retired version)")
            to = int(previous[-1])
        elif to not in index["retired"]:
            raise ValidationError(f"model {name}@v{to} was never current (status: "
                                  f"{self._status(index, to)}): promote it instead of rolling back to it")
        return self._move(name, to, action="rollback", reason=reason, principal=principal, expect_current="any")

    def _move(self, name: str, version: int, *, action: str, reason: str, principal: str,
              expect_current: int | str | None) -> dict[str, Any]:
        if not reason.strip():
            raise ValidationError(f"{action} needs a reason")
        label = f"{name}@v{version}"
        with self._locked(name):
            try:
                index = self._index(name)
                if index is None or version not in index["versions"]:
                    raise ValidationError(f"model {label} is not registered")
                if expect_current != "any" and index["current"] != expect_current:
                    raise ValidationError(f"the current version of {name} changed (now "
                                          f"{_label(name, index['current'])}) since {label} was judged")
                if index["current"] == version:
                    raise ValidationError(f"model {label} is already the current version")
                self._verified(self.root / name / f"v{version}", index["versions"][version])
            except ModelIntegrityError as exc:
                self._audit("deny", label, f"{action}: {exc}")
                raise
            previous = index["current"]
            now = datetime.now(UTC).isoformat()
            entry = {"action": action, "version": version, "previous": previous, "reason": reason[:500],
                     "principal": principal, "at": now}
            retired = (set(index["retired"]) | ({previous} if previous is not None else set())) - {version}
            self._write_index(name, {**index, "current": version, "retired": sorted(retired),
                                     "history": [*index["history"], entry]}, now)
        done = {"promote": "promoted", "rollback": "rolled back to"}[action]
        self._audit("allow", label, f"{done} by {principal}: {reason}"[:300], write=True)
        return entry

    # read --------------------------------------------------------------------------------------------

    @staticmethod
    def _status(index: dict[str, Any], version: int) -> str:
        if version == index["current"]:
            return "current"
        return "retired" if version in index["retired"] else "candidate"

    def _manifest(self, name: str, version: int, index: dict[str, Any]) -> dict[str, Any]:
        """A version's manifest, its signature and its index digest checked (not the artifacts: a listing)."""
        folder = self.root / name / f"v{version}"
        try:
            manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
            manifest = json.loads(manifest_bytes)
            signature = json.loads((folder / SIGNATURE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"model {name}@v{version}: manifest or signature unreadable") from exc
        self._check(_DOMAIN, manifest, signature, f"model {name}@v{version}")
        if not hmac.compare_digest(hashlib.sha256(manifest_bytes).hexdigest(), index["versions"][version]):
            raise ModelIntegrityError(f"model {name}@v{version}: the manifest is not the one the index registered")
        return manifest

    def models(self) -> list[str]:
        """Names of the registered models, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / INDEX_FILE).exists())

    def describe(self, name: str) -> dict[str, Any]:
        """Every version of ``name`` with its status, metrics and promotion decision, and the signed history.

        Raises:
            ModelIntegrityError: the index does not verify.
        """
        index = self._index(name)
        if index is None:
            raise ValidationError(f"no registered model {name}")
        rows = []
        for version in sorted(index["versions"]):
            row: dict[str, Any] = {"model_version": f"{name}@v{version}", "version": version,
                                   "status": self._status(index, version)}
            try:
                manifest = self._manifest(name, version, index)
                row.update({"created_at": manifest.get("created_at"), "metrics": manifest.get("metrics", {}),
                            "threshold": manifest.get("threshold"), "promotion": manifest.get("promotion"),
                            "training_tables": manifest.get("training_tables"), "verified": True})
            except ModelIntegrityError as exc:
                row.update({"verified": False, "problem": str(exc)})
            rows.append(row)
        return {"name": name, "current": index["current"], "latest": index["latest"], "versions": rows,
                "history": index["history"]}

    # read --------------------------------------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[Path]:
        """Version folders, oldest first (of one model, or of all by creation order); unverified: a listing."""
        if not self.root.is_dir():
            return []
        names = [name] if name else sorted(p.name for p in self.root.iterdir() if p.is_dir())
        found = []
        for n in names:
            for p in (self.root / n).glob("v*"):
                if p.name[1:].isdigit() and (p / MANIFEST_FILE).exists():
                    found.append(p)
        return sorted(found, key=lambda p: (_created_at(p), int(p.name[1:])))

    def load(self, name: str | None = None, version: int | None = None, *, pin: bool = False,
             ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Verify and load a version — the current one by default: (manifest, booster, bundle).

        Args:
            name: the model (default: the most recently created one).
            version: a version number; one that is not current needs ``pin=True``.
            pin: load a version that is not current on purpose (recorded in the audit log).

        Raises:
            ModelIntegrityError: no such model, no current version, a file changed, added or missing, unsigned,
                signed with another key, copied from another name or version, the index missing or its current
                pointer changed, or a version that is not current not pinned.
        """
        if name is None:
            found = self.versions()
            if not found:
                raise ModelIntegrityError(f"no registered model in {self.root}: run `medguard train` first")
            name = found[-1].parent.name
        label = f"{name}@v{version}" if version is not None else name
        try:
            index = self._index(name)
            if index is None:
                raise ModelIntegrityError(f"no registered model {name} in {self.root}: run `medguard train` first")
            latest, current = index["latest"], index["current"]
            planted = sorted(set(self._folders(name)) - set(index["versions"]))
            if planted:
                raise ModelIntegrityError(f"model {name} has version folders the signed index does not list "
                                          f"(v{planted[0]}; planted, or the index rolled back): refusing")
            if version is None and current is None:
                raise ModelIntegrityError(f"model {name} has no current version (candidates up to v{latest}): "
                                          "promote one with `medguard models promote`")
            number = current if version is None else version
            label = f"{name}@v{number}"
            if number not in index["versions"]:
                raise ModelIntegrityError(f"model {label} is not in the signed index (newest v{latest}): refusing")
            if number != current and not pin:
                raise ModelIntegrityError(f"model {label} is not the current version ({_label(name, current)}): "
                                          "refusing (pin it explicitly, or promote it)")
            folder = self.root / name / f"v{number}"
            if not folder.is_dir():
                raise ModelIntegrityError(f"model {label} is registered but its folder is missing: refusing "
                                          "(no fallback to another version)")
            manifest, booster, bundle = self._verified(folder, index["versions"][number])
        except ModelIntegrityError as exc:
            self._audit("deny", label, str(exc))
            raise
        self._audit("allow", label, "verified" if number == current else
                    f"pinned explicitly (current {_label(name, current)})")
        return manifest, booster, bundle

    def _verified(self, folder: Path, manifest_sha256: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        name, number = folder.parent.name, int(folder.name[1:])
        label = f"{name}@v{number}"
        if not (folder / SIGNATURE_FILE).exists():
            raise ModelIntegrityError(f"model {label} is unsigned: refusing to load it")
        try:
            manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
            manifest = json.loads(manifest_bytes)
            signature = json.loads((folder / SIGNATURE_FILE).read_text())
            digests = dict(manifest.get("sha256", {}))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise ModelIntegrityError(f"model {label}: manifest or signature unreadable: refusing") from exc
        self._check(_DOMAIN, manifest, signature, f"model {label}")
        if manifest.get("name") != name or manifest.get("version") != number or manifest.get("key_ref") != (
                signature.get("key_ref")):
            raise ModelIntegrityError(f"model {label} holds the signed artifacts of another name or version: "
                                      "refusing")
        if not hmac.compare_digest(hashlib.sha256(manifest_bytes).hexdigest(), manifest_sha256):
            raise ModelIntegrityError(f"model {label}: the manifest is not the one the index registered: refusing")
        present = {p.name for p in folder.iterdir()}
        expected = {*digests, MANIFEST_FILE, SIGNATURE_FILE}
        if present != expected or not {MODEL_FILE, BUNDLE_FILE} <= set(digests):
            raise ModelIntegrityError(f"model {label}: the folder holds files the signature does not cover, or "
                                      "lacks signed ones: refusing")
        for file, digest in digests.items():
            path = folder / file
            if not path.is_file() or path.is_symlink() or not hmac.compare_digest(_sha256(path), str(digest)):
                raise ModelIntegrityError(f"model {label}: {file} does not match its signed SHA-256: refusing")
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray((folder / MODEL_FILE).read_bytes()))
        except xgb.core.XGBoostError as exc:
            raise ModelIntegrityError(f"model {label}: the booster does not load: refusing") from exc
        bundle = json.loads((folder / BUNDLE_FILE).read_text())
        return manifest, booster, bundle

    def _audit(self, decision: str, model_version: str, reason: str, *, write: bool = False) -> None:
        from storage_security.audit.log import AuditAction, AuditEvent, AuditLog

        lake = self._lake or Lake(self.settings)
        AuditLog(lake, self._provider).record(AuditEvent(
            principal=_PRINCIPAL, action=AuditAction.WRITE if write or reason == "registered" else AuditAction.READ,
            zone=Zone.PREDICTIONS, table_name="model_registry", decision=decision, purpose="model integrity",
            reason=reason[:300], details={"model_version": model_version}))
