"""The security core's demo steps: bring up the key provider first, watch the audit log, check the guarantees last.

``20_security`` starts the local OpenBao (the embedded default's Vault) and makes sure the data and audit KEKs
exist, so every later step runs the production key path. ``87_audit_monitor`` runs the ``medguard_audit_monitor``
DAG after the users' steps (chain check, activity detectors) and reports the alerts the lake holds;
``88_rotate_keys`` and ``89_backup`` run the weekly rotation and the daily encrypted backup once. ``90_verify``
runs after every layer: it verifies the audit chain and greps every file under ``MEDGUARD_HOME`` (but the source
extracts) and this user's new files in the system temp folder for the plaintext of identifiers from the demo
sources — the "no plaintext PHI on disk" promise, checked on what the demo actually wrote, wherever it wrote it.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyarrow import ArrowException

if TYPE_CHECKING:
    from pipeline.settings import Settings

# Identifier columns of the demo's patients extract whose values must never appear in the lake.
_IDENTIFIERS = ("mrn", "ssn", "phone", "email", "address", "insurance_member_id")
_SAMPLE = 200
_PIECE_BYTES = 32 * 2**20


def security_step(settings: Settings) -> dict[str, Any]:
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


def audit_monitor_step(settings: Settings) -> dict[str, Any]:
    """Run the audit monitor DAG; returns the run and the stored alerts by detector and by severity (from the lake).
    """
    from collections import Counter

    from pipeline.demo import run_dag_step
    from pipeline.lake import Lake, Zone
    from storage_security.audit.monitoring import ALERTS_TABLE

    run = run_dag_step(settings, "medguard_audit_monitor")
    lake = Lake(settings)
    alerts = (lake.read_arrow(Zone.AUDIT, ALERTS_TABLE, columns=["detector", "severity"]).to_pylist()
              if lake.exists(Zone.AUDIT, ALERTS_TABLE) else [])
    counted = {"total": len(alerts),
               "by_detector": dict(Counter(a["detector"] for a in alerts).most_common()),
               "by_severity": dict(Counter(a["severity"] for a in alerts).most_common())}
    return {"dag_run": run, "summary": {"alerts": counted}}


def rotate_keys_step(settings: Settings) -> dict[str, Any]:
    """Run the weekly key-rotation DAG once; returns the run and each KEK's latest version, read from the provider."""
    from pipeline.demo import run_dag_step
    from storage_security.audit.log import DEFAULT_KEY_NAME
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault import openbao

    run = run_dag_step(settings, "medguard_rotate_keys")
    provider = provider_from_settings(settings, role=openbao.KEY_ROTATION_ROLE)
    return {"dag_run": run,
            "keks": {name: provider.versions(name).latest for name in (settings.vault.kek_name, DEFAULT_KEY_NAME)}}


def backup_step(settings: Settings) -> dict[str, Any]:
    """Run the daily backup DAG once; returns the run and the newest backup's folder (the closing summary's)."""
    from pipeline.demo import run_dag_step
    from storage_security.backup.archive import list_backups

    run = run_dag_step(settings, "medguard_backup")
    backups = list_backups(settings)
    return {"dag_run": run, "backups": len(backups), "summary": {"backup": str(backups[-1])}}


def verify_step(settings: Settings) -> dict[str, Any]:
    """Verify the audit chain, then look for plaintext identifiers of the demo patients in every file medguard
    could have written: all of ``MEDGUARD_HOME`` (the lake, models, reports, logs, OpenBao, Airflow, scratch) but
    the source extracts themselves, and the system temp folder's files of this user written since the demo began.

    Raises:
        AuditIntegrityError: the audit chain does not verify.
        PlaintextLeakError: an identifier was found; the message names the files and the identifier kinds only.
    """
    from pipeline.demo import DEMO_SOURCES
    from pipeline.errors import AuditIntegrityError, PlaintextLeakError
    from pipeline.lake import Lake
    from pipeline.settings import SYSTEM_TEMP_DIR
    from storage_security.audit.log import AuditLog
    from storage_security.keys.providers import provider_from_settings
    from storage_security.local_vault.openbao import AUDITOR_ROLE

    lake = Lake(settings)
    audit = AuditLog(lake, provider_from_settings(settings, role=AUDITOR_ROLE))
    verified = audit.verify()
    if not verified.ok:
        raise AuditIntegrityError(verified.summary())
    sources = settings.home / DEMO_SOURCES
    needles = demo_identifiers(sources / "patients.csv")
    began = sources.stat().st_mtime - 60 if sources.exists() else None
    places: list[tuple[Path, float | None]] = [(settings.home, None)]
    if settings.lake_is_local and not Path(lake.root).resolve().is_relative_to(settings.home.resolve()):
        places.append((Path(lake.root), None))
    if not SYSTEM_TEMP_DIR.resolve().is_relative_to(settings.home.resolve()):
        places.append((SYSTEM_TEMP_DIR, began))
    found: dict[str, set[str]] = {}
    scanned = 0
    for root, since in places:
        hits, count = scan_for_identifiers(root, needles, exclude=(settings.home / "sources",), since=since)
        scanned += count
        for path, kinds in hits.items():
            found.setdefault(path, set()).update(kinds)
    if not settings.lake_is_local:
        # The lake is not under any folder scanned above: read its objects through the store itself.
        hits, count = scan_store_for_identifiers(settings, needles)
        scanned += count
        for path, kinds in hits.items():
            found.setdefault(path, set()).update(kinds)
    place_names = [str(root) for root, _ in places] + ([] if settings.lake_is_local else [str(settings.lake_root)])
    if found:
        named = "; ".join(f"{path} ({', '.join(sorted(kinds))})" for path, kinds in sorted(found.items())[:5])
        raise PlaintextLeakError(f"plaintext identifiers of the demo patients found in {len(found)} file(s): {named}")
    return {"audit": verified.summary(), "identifiers_checked": len(needles), "files_scanned": scanned,
            "places": place_names, "plaintext_found": 0}


def scan_store_for_identifiers(settings: Settings, needles: dict[bytes, str]) -> tuple[dict[str, set[str]], int]:
    """:func:`scan_for_identifiers` for a lake on an object store: every object under the lake root, read through
    the store (``settings.storage_options``), Parquet decoded too. Returns found kinds per object and the count."""
    import pyarrow.fs as pafs

    from storage_security.backup._members import lake_fs

    found: dict[str, set[str]] = {}
    if not needles:
        return found, 0
    fs, base = lake_fs(settings)
    finder = _Finder(set(needles))
    overlap = max(len(n) for n in needles) + 1
    scanned = 0
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        with fs.open_input_stream(info.path) as stream:
            hits = _find_in_stream(finder, stream, overlap)
        if info.path.endswith(".parquet"):
            with fs.open_input_file(info.path) as handle:
                hits |= finder.find(_parquet_text(handle))
        scanned += 1
        if hits:
            found[f"{str(settings.lake_root).rstrip('/')}/{info.path.lstrip('/')}"] = {needles[n] for n in hits}
    return found, scanned


def demo_identifiers(patients_csv: Path, *, sample: int = _SAMPLE) -> dict[bytes, str]:
    """The identifiers of the first ``sample`` patients of a patients extract, each with its kind (its column, or
    ``full_name``); values shorter than 6 bytes are left out (they turn up by chance)."""
    if not patients_csv.exists():
        return {}
    needles: dict[bytes, str] = {}
    with patients_csv.open(newline="", encoding="utf-8") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= sample:
                break
            values = {c: row.get(c) or "" for c in _IDENTIFIERS}
            values["full_name"] = f"{row.get('first_name') or ''} {row.get('last_name') or ''}".strip()
            needles.update((v.encode(), kind) for kind, v in values.items() if len(v) >= 6)
    return needles


def scan_for_identifiers(root: Path, needles: dict[bytes, str], *, exclude: tuple[Path, ...] = (),
                         since: float | None = None) -> tuple[dict[str, set[str]], int]:
    """Every regular file under ``root`` (links not followed; Parquet decoded too) holding one of ``needles``.

    Args:
        exclude: folders left out (the source extracts, which are plaintext by nature).
        since: for a shared folder such as /tmp: only files of this user modified at or after this time, inside
            top-level folders modified since then too, and no folder named ``sources`` (another home's extracts),
            holding a source extract (``patients.csv``…, ``notes.jsonl``) or a code checkout (``pyproject.toml``,
            ``.git``): other runs' plaintext by nature, not medguard's scratch.

    Returns:
        ``{path: identifier kinds found}`` (never a value) and how many files were read.
    """
    found: dict[str, set[str]] = {}
    if not needles or not root.is_dir():
        return found, 0
    finder = _Finder(set(needles))
    overlap = max(len(n) for n in needles) + 1
    skipped = {str(p) for p in exclude}
    scanned = 0
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=lambda _exc: None):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
        if since is not None:
            # A shared folder: only what appeared there since `since` (a top-level entry made by this run), and
            # not what holds plaintext identifiers by nature: source extracts (other medguard homes' `sources`, or
            # any folder holding a generated extract, e.g. a test's) and code checkouts (their test data).
            if folder != str(root) and _plaintext_by_nature(Path(folder)):
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if d != "sources" and (folder != str(root) or _newer(Path(folder, d), since))]
        for name in files:
            path = Path(folder, name)
            try:
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode) or (since is not None and (info.st_uid != os.getuid()
                                                                            or info.st_mtime < since)):
                    continue
                hits = _find_in_file(finder, path, overlap)
                if path.suffix == ".parquet":  # compressed pages hide text from a byte grep: decode them too
                    hits |= finder.find(_parquet_text(path))
            except (OSError, ValueError, ArrowException):  # gone meanwhile, unreadable, or not really Parquet
                continue
            scanned += 1
            if hits:
                found[str(path)] = {needles[hit] for hit in hits}
    return found, scanned


# A folder holding one of these is a source extract or a code checkout, not a place medguard writes scratch to.
_EXTRACT_OR_CHECKOUT = ("patients.csv", "patients.parquet", "patients.jsonl", "notes.jsonl", "pyproject.toml", ".git")


def _plaintext_by_nature(folder: Path) -> bool:
    return any(os.path.lexists(folder / name) for name in _EXTRACT_OR_CHECKOUT)


def _newer(path: Path, since: float) -> bool:
    try:
        return path.lstat().st_mtime >= since
    except OSError:
        return False


def _find_in_file(finder: _Finder, path: Path, overlap: int) -> set[bytes]:
    with path.open("rb") as handle:
        return _find_in_stream(finder, handle, overlap)


def _find_in_stream(finder: _Finder, handle: Any, overlap: int) -> set[bytes]:
    """The needles in a binary stream read in pieces (the finder holds 8 bytes per byte searched), each piece
    starting with the end of the one before so no match is cut in two."""
    found: set[bytes] = set()
    tail = b""
    while piece := handle.read(_PIECE_BYTES):
        blob = tail + bytes(piece)
        found |= finder.find(blob)
        tail = blob[-overlap:]
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


def _parquet_text(path: Path | Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    parts = [b"\0".join(v for v in column.cast(pa.binary()).to_pylist() if v is not None)
             for column in table.columns
             if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
             or pa.types.is_binary(column.type)]
    return b"\0".join(parts)
