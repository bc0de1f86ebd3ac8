"""The security core's demo steps: bring up the key provider first, and check the guarantees last.

``20_security`` starts the local OpenBao (the embedded default's Vault) and makes sure the data and audit KEKs
exist, so every later step runs the production key path. ``90_verify`` runs after every layer: it verifies the
audit chain and greps every file under the lake root for the plaintext of identifiers from the demo sources —
the "no plaintext PHI on disk" promise, checked on what the demo actually wrote.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.demo import DemoReport
    from pipeline.settings import Settings

# Identifier columns of the demo's patients extract whose values must never appear in the lake.
_IDENTIFIERS = ("mrn", "ssn", "phone", "email", "address", "insurance_member_id")
_SAMPLE = 200


def security_step(settings: Settings, report: DemoReport) -> dict[str, Any]:
    """Start the key provider of the embedded default and create the KEKs; returns what is running."""
    from storage_security.audit.log import DEFAULT_KEY_NAME
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault import openbao

    result: dict[str, Any] = {"provider": settings.key_provider}
    if settings.key_provider == "vault" and not settings.vault.addr:
        started = openbao.up(settings)
        result.update(openbao={"addr": started["addr"], "status": started["status"]})
    # The role only applies to the local OpenBao; a remote Vault or the keyring use their own credentials.
    provider = provider_from_settings(settings, role=openbao.KEY_ROTATION_ROLE)
    for name in (settings.vault.kek_name, DEFAULT_KEY_NAME):
        provider.ensure_key(name)
    result["keks"] = {name: provider.versions(name).latest for name in (settings.vault.kek_name, DEFAULT_KEY_NAME)}
    return result


def verify_step(settings: Settings, report: DemoReport) -> dict[str, Any]:
    """Verify the audit chain and look for plaintext identifiers of the demo sources anywhere in the lake."""
    from pipeline.demo import DEMO_SOURCES
    from pipeline.errors import AuditIntegrityError, PlaintextLeakError
    from pipeline.lake import Lake
    from storage_security.audit.log import AuditLog
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault.openbao import AUDITOR_ROLE

    lake = Lake(settings)
    audit = AuditLog(lake, provider_from_settings(settings, role=AUDITOR_ROLE))
    verified = audit.verify()
    if not verified.ok:
        raise AuditIntegrityError(verified.summary())
    needles = _identifiers(settings.home / DEMO_SOURCES / "patients.csv")
    found = _grep(Path(lake.root), needles)
    if found:
        raise PlaintextLeakError(f"plaintext identifiers found in the lake: {sorted(found)[:5]}")
    return {"audit": verified.summary(), "identifiers_checked": len(needles), "plaintext_found": 0}


def _identifiers(patients_csv: Path) -> set[bytes]:
    if not patients_csv.exists():
        return set()
    needles: set[bytes] = set()
    with patients_csv.open(newline="", encoding="utf-8") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= _SAMPLE:
                break
            needles.update(row[c].encode() for c in _IDENTIFIERS if len(row.get(c) or "") >= 6)
    return needles


def _grep(root: Path, needles: set[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    if not needles or not root.exists():
        return found
    finder = _Finder(needles)
    for path in root.rglob("*"):
        if path.is_file():
            found |= finder.find(path.read_bytes())
            if path.suffix == ".parquet":  # compressed pages hide text from a byte grep: decode them too
                found |= finder.find(_parquet_text(path))
    return found


class _Finder:
    """Finds which of many needles (6 bytes or longer) occur in a blob, in one vectorised pass over it.

    Testing each needle with ``in`` costs needles × blob size, which on a lake of a few hundred MB and a
    thousand identifiers runs for many minutes. Instead every 6-byte window of the blob is read as an integer
    and looked up among the needles' first 6 bytes; only those hits are compared in full. A hit counts only
    when it stands alone (no letter or digit right before or after it): an 8-digit MRN turns up by chance
    inside long hex pseudonyms and digests, which is no leak.
    """

    _WIDTH = 6

    def __init__(self, needles: set[bytes]) -> None:
        self._by_prefix: dict[int, list[bytes]] = {}
        for needle in needles:
            self._by_prefix.setdefault(int.from_bytes(needle[:self._WIDTH], "little"), []).append(needle)
        self._prefixes = np.array(sorted(self._by_prefix), dtype=np.uint64)

    def find(self, blob: bytes) -> set[bytes]:
        if len(blob) < self._WIDTH:
            return set()
        data = np.frombuffer(blob, dtype=np.uint8)
        count = len(data) - self._WIDTH + 1
        windows = np.zeros(count, dtype=np.uint64)
        for shift in range(self._WIDTH):
            windows |= data[shift:shift + count].astype(np.uint64) << np.uint64(8 * shift)
        found: set[bytes] = set()
        slots = np.minimum(np.searchsorted(self._prefixes, windows), len(self._prefixes) - 1)
        for position in np.flatnonzero(self._prefixes[slots] == windows).tolist():
            for needle in self._by_prefix[int(windows[position])]:
                if blob.startswith(needle, position) and _standalone(blob, position, len(needle)):
                    found.add(needle)
        return found


def _standalone(blob: bytes, start: int, length: int) -> bool:
    """True when the match is not part of a longer alphanumeric run (an MRN's digits inside a hex pseudonym)."""
    before = blob[start - 1:start] if start else b""
    after = blob[start + length:start + length + 1]
    return not (before.isalnum() or after.isalnum())


def _parquet_text(path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    parts = [b"\0".join(v for v in column.cast(pa.binary()).to_pylist() if v is not None)
             for column in table.columns
             if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
             or pa.types.is_binary(column.type)]
    return b"\0".join(parts)
