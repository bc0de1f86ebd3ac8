"""Where the latest signed head of the audit chain is kept outside the lake, so a cut tail cannot go unseen.

Heads in ``audit/heads`` live beside the events they sign: whoever can rewrite the lake can delete the newest
events *and* their heads, leaving a shorter log that verifies. The anchor is a copy of the latest signed head
kept where the lake's writers cannot reach: ``medguard audit verify`` fails when the anchor is ahead of the log
or no longer matches it.

:class:`FileAnchor` (the default, any key provider): ``$MEDGUARD_HOME/audit-anchors/<lake id>.json``, mode 0600
in a 0700 folder. It protects against anyone who can write the lake but not the home folder of the account that
runs medguard: a data engineer's or analyst's grant on the lake's storage, object-store credentials, a Delta
restore, a backup restored over the lake. It does not protect against that account itself (or root), who can
rewrite both; use a Vault anchor, a WORM bucket or a SIEM for that.

:class:`VaultKVAnchor`: a KV v2 secret at ``medguard-audit/anchors/<lake id>`` that only the
``medguard-audit-anchor`` policy writes (the auditor reads it); pass it as ``AuditLog(..., anchor=...)`` with a
client logged in as that role.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import StorageError


@dataclass(frozen=True)
class AnchoredHead:
    """The signed head as the anchor keeps it."""

    seq: int
    hash: str
    signature: str
    key_ref: str
    signed_at: datetime


class HeadAnchor(Protocol):
    """A place outside the lake holding the latest signed head of one audit log."""

    where: str

    def read(self) -> AnchoredHead | None:
        """The anchored head; None when nothing was ever anchored. Raises StorageError when unreadable."""
        ...

    def write(self, head: AnchoredHead) -> None:
        """Replace the anchored head (callers hold the audit writer lock). Raises StorageError."""
        ...


class FileAnchor:
    """The anchor as a 0600 JSON file outside the lake (see the module docstring for what it protects)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def __repr__(self) -> str:
        return f"FileAnchor({self.where!r})"

    def read(self) -> AnchoredHead | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read the audit anchor {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            return AnchoredHead(seq=int(data["seq"]), hash=str(data["hash"]), signature=str(data["signature"]),
                                key_ref=str(data["key_ref"]), signed_at=datetime.fromisoformat(data["signed_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"the audit anchor {self.path} is not a signed head (altered?)") from exc

    def write(self, head: AnchoredHead) -> None:
        data = {"seq": head.seq, "hash": head.hash, "signature": head.signature, "key_ref": head.key_ref,
                "signed_at": head.signed_at.isoformat(timespec="microseconds")}
        partial = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(data, sort_keys=True))
            os.replace(partial, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise StorageError(f"cannot write the audit anchor {self.path}: {exc}") from exc


class VaultKVAnchor:
    """The anchor as a KV v2 secret that only the ``medguard-audit-anchor`` policy may write.

    ``client`` is a :class:`~storage_security.keys._vault.VaultClient` logged in as the audit writer (to write)
    or the auditor (to read). It protects against anyone holding the lake and any other medguard role,
    the pipeline's included: they can cut the tail of the log but cannot move this copy back. It does not
    protect against a holder of the audit writer's credentials or an operator token. KV v2 keeps earlier
    versions, so an operator can also see the anchor's history.

    Args:
        client: the Vault client.
        lake_id: the lake's id (the audit writer lock's): one anchor per lake.
        mount: the KV v2 mount (``medguard vault up`` and ``infra/vault/approle.sh`` enable ``medguard-audit``).
    """

    def __init__(self, client: Any, lake_id: str, *, mount: str = "medguard-audit") -> None:
        self._client = client
        self._path = f"{mount.strip('/')}/data/anchors/{lake_id}"
        self.where = f"vault:{self._path}"

    def __repr__(self) -> str:
        return f"VaultKVAnchor({self.where!r})"

    def read(self) -> AnchoredHead | None:
        answer = self._client.read(self._path)
        data = ((answer or {}).get("data") or {}).get("data")
        if not data:
            return None
        try:
            return AnchoredHead(seq=int(data["seq"]), hash=str(data["hash"]), signature=str(data["signature"]),
                                key_ref=str(data["key_ref"]), signed_at=datetime.fromisoformat(data["signed_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"the audit anchor {self.where} is not a signed head (altered?)") from exc

    def write(self, head: AnchoredHead) -> None:
        self._client.write(self._path, {"data": {
            "seq": head.seq, "hash": head.hash, "signature": head.signature, "key_ref": head.key_ref,
            "signed_at": head.signed_at.isoformat(timespec="microseconds")}})


class _LocalOpenBaoClient:
    """Logs in as ``medguard-audit-anchor`` on the local OpenBao at first use (not when a log is built)."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            from storage_security.keys._vault import VaultClient
            from storage_security.local_vault import openbao

            creds = openbao.local_credentials(self._settings, openbao.AUDIT_ANCHOR_ROLE)
            self._client = VaultClient(creds.addr, auth_method="approle", role_id=creds.role_id,
                                       secret_id=creds.secret_id, timeout=self._settings.vault.timeout_seconds)
        return self._client

    def read(self, path: str) -> Any:
        return self._get().read(path)

    def write(self, path: str, data: dict[str, Any]) -> Any:
        return self._get().write(path, data)


def default_anchor(settings: Any, provider: Any, lake_id: str) -> HeadAnchor:
    """The anchor a log gets unless given one: the local OpenBao's KV anchor when it is the key provider, else
    a :class:`FileAnchor` under the home (a remote Vault: pass ``VaultKVAnchor`` with the audit-anchor role's
    client; the settings hold one Vault login, the job's own)."""
    from storage_security.keys.vault_transit import VaultTransitKeys

    if isinstance(provider, VaultTransitKeys) and not settings.vault.addr and provider.addr == _local_addr(settings):
        from storage_security.local_vault.openbao import AUDIT_ANCHOR_MOUNT

        return VaultKVAnchor(_LocalOpenBaoClient(settings), lake_id, mount=AUDIT_ANCHOR_MOUNT)
    return FileAnchor(Path(settings.home) / "audit-anchors" / f"{lake_id}.json")


def _local_addr(settings: Any) -> str | None:
    """Where ``medguard vault up`` says the home's OpenBao listens (its pid file), if it was started."""
    from storage_security.local_vault.openbao import local_paths

    try:
        return str(json.loads(local_paths(settings).pid.read_text())["addr"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
