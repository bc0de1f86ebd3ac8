"""Key lifecycle recipes behind ``medguard keys rotate / reencrypt / shred``: each one re-runnable, each audited.

- :func:`rotate_keys` adds a KEK version, rewraps every stored DEK — the patients' in batches of
  :data:`~storage_security.keys.base.MAX_BATCH_ITEMS` per request — and the audit log's signing key under it
  without touching any data, then retires the old versions (``min_decryption_version``) — only once nothing is
  left wrapped under them. A rotation interrupted anywhere is resumed, not restarted, by running it again: a
  KEK whose ``min_decryption_version`` is below its latest version has a rotation in progress.
- :func:`reencrypt_table` moves a table's cells to fresh DEKs (a new version of the table; time travel keeps
  the old one readable) and marks the old DEKs retired.
- :func:`shred_patient` erases one patient (:func:`erase_patient`): crypto-shreds their key (see
  :meth:`ProtectedLake.shred`), drops and re-keys the batch-keyed quarantine payloads that name them, removes
  their rows from ``deidentified``, ``predictions`` and the training snapshots, and reports what it touched.
- :func:`migrate_patient_keys` moves a lake written with one KEK per patient (``patient-<pseudonym>``) to the
  data-KEK hierarchy: each patient's DEKs keep their key ids (so no cell changes) and are wrapped again under the
  data KEK into the patient key store; then, if asked, the per-patient KEKs are deleted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DecryptionError
from pipeline.lake import SYSTEM_ZONE, CommitInfo, Zone
from pipeline.settings import Settings
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
from storage_security.crypto.envelope import CellCipher
from storage_security.keys.base import MAX_BATCH_ITEMS, KeyProvider
from storage_security.keys.dek_store import DekStore, check_scope_key, wrapped_version
from storage_security.keys.patient_keys import PatientKey, PatientKeyStore, PatientShreddedError, bind
from storage_security.protected import ProtectedLake

__all__ = ["MigrationReport", "ReencryptReport", "RotationReport", "ShredReport", "erase_patient",
           "migrate_patient_keys", "reencrypt_table", "rotate_keys", "rotate_with_settings", "shred_patient"]

_PSEUDONYM = re.compile(r"^ps1_[0-9a-f]{8}_[0-9a-f]{32}$")
_LEGACY_KEK = "patient-"
# Requests in flight at once where Transit has no batch form (one legacy KEK per patient); below requests' pool.
_WORKERS = 8


@dataclass(frozen=True)
class RotationReport:
    """What :func:`rotate_keys` did, per KEK and in total."""

    rotated: dict[str, int] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    rewrapped: int = 0
    already_current: int = 0
    patient_keys_rewrapped: int = 0
    audit_keys_rewrapped: int = 0
    min_decryption_version: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReencryptReport:
    """What :func:`reencrypt_table` did."""

    zone: str
    table: str
    rows: int
    version: int
    retired_deks: int
    shredded_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate_patient_keys` did."""

    patients: int = 0
    deks_moved: int = 0
    already_moved: int = 0
    unreadable: int = 0
    patient_keks_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rotate_keys(provider: KeyProvider, store: DekStore, audit: AuditLog, *, patient_keys: PatientKeyStore,
                kek_names: Sequence[str], principal: str, optional: Sequence[str] = ()) -> RotationReport:
    """Rotate each KEK, rewrap every stored DEK and audit signing key, then retire the old KEK versions.

    Args:
        patient_keys: the patients' wrapped DEKs (rewrapped in batches, and counted before retiring).
        kek_names: the KEKs to rotate (the data KEK and the audit KEK, typically).
        principal: who rotates, for the audit log.
        optional: KEKs of ``kek_names`` that may not exist yet (the audit KEK before the first signed head):
            skipped when missing, since nothing can be wrapped under them.

    Raises:
        ValueError: a KEK does not exist.
        KeyProviderUnavailableError, KeyAccessDeniedError: the provider failed; run again once it is back.
    """
    rotated: dict[str, int] = {}
    resumed: list[str] = []
    kek_names = [name for name in kek_names if name not in optional or provider.key_exists(name)]
    for name in kek_names:
        if not provider.key_exists(name):
            raise ValueError(f"KEK {name!r} does not exist; create it with `medguard keys init`")
        versions = provider.versions(name)
        if versions.min_decryption_version < versions.latest:
            resumed.append(name)  # an earlier rotation did not finish: finish it, rotate no further
            details = {"kek": name, "version": versions.latest, "resumed": True}
        else:
            rotated[name] = provider.rotate(name)
            details = {"kek": name, "version": rotated[name], "resumed": False}
        audit.record(AuditEvent(principal=principal, action=AuditAction.KEY_ROTATE, decision=Decision.ALLOW,
                                purpose="key-rotation", details=details))
    commit = CommitInfo(principal=principal, purpose="key-rotation")
    rewrap = store.rewrap_all(provider, commit=commit)
    latest = {name: provider.versions(name).latest for name in kek_names}
    patients_rewrapped, patients_current = _rewrap_patient_keys(provider, patient_keys, latest, commit)
    audit_keys = audit.rewrap_signing_keys()
    audit.record(AuditEvent(principal=principal, action=AuditAction.KEY_REWRAP, decision=Decision.ALLOW,
                            purpose="key-rotation", row_count=rewrap.rewrapped + patients_rewrapped,
                            details={"keks": list(kek_names), "deks_rewrapped": rewrap.rewrapped,
                                     "already_current": rewrap.already_current + patients_current,
                                     "patient_keys_rewrapped": patients_rewrapped,
                                     "audit_keys_rewrapped": audit_keys}))
    # Retire old versions only when nothing stored is still wrapped under them.
    stale = {r.kek_name for r in store.records()
             if r.kek_name in latest and wrapped_version(r.wrapped) != latest[r.kek_name]}
    stale |= {r.kek_name for r in patient_keys.records()
              if r.kek_name in latest and wrapped_version(r.wrapped) != latest[r.kek_name]}
    retired: dict[str, int] = {}
    for name in kek_names:
        if name not in stale:
            provider.set_min_decryption_version(name, latest[name])
            retired[name] = latest[name]
    if retired:
        audit.record(AuditEvent(principal=principal, action=AuditAction.KEY_RETIRE, decision=Decision.ALLOW,
                                purpose="key-rotation", details={"min_decryption_version": retired}))
    return RotationReport(rotated=rotated, resumed=resumed, rewrapped=rewrap.rewrapped + patients_rewrapped,
                          already_current=rewrap.already_current + patients_current,
                          patient_keys_rewrapped=patients_rewrapped, audit_keys_rewrapped=audit_keys,
                          min_decryption_version=retired)


def rotate_with_settings(settings: Settings, *, principal: str) -> RotationReport:
    """:func:`rotate_keys` as ``medguard keys rotate`` and the weekly DAG run it: the data KEK and the audit KEK
    (skipped before it exists), through the protected lake of the key-rotation role."""
    from storage_security.audit.log import DEFAULT_KEY_NAME
    from storage_security.local_vault.openbao import KEY_ROTATION_ROLE

    plake = ProtectedLake.from_settings(settings, principal=principal, role=KEY_ROTATION_ROLE)
    return rotate_keys(plake.provider, plake.store, plake.audit, patient_keys=plake.patient_keys,
                       kek_names=(settings.vault.kek_name, DEFAULT_KEY_NAME), principal=plake.principal,
                       optional=(DEFAULT_KEY_NAME,))


def _rewrap_patient_keys(provider: KeyProvider, patient_keys: PatientKeyStore, latest: dict[str, int],
                         commit: CommitInfo) -> tuple[int, int]:
    """Rewrap the patients' DEKs not yet under their KEK's latest version, a batch request per chunk, each chunk
    committed as it is done (so a re-run resumes); returns (rewrapped, already current)."""
    rewrapped = current = 0
    stale: dict[str, list[PatientKey]] = {}
    for record in patient_keys.records():
        if record.kek_name in latest and wrapped_version(record.wrapped) != latest[record.kek_name]:
            stale.setdefault(record.kek_name, []).append(record)
        else:
            current += 1
    for kek, records in sorted(stale.items()):
        for start in range(0, len(records), MAX_BATCH_ITEMS):
            chunk = records[start:start + MAX_BATCH_ITEMS]
            fresh = provider.rewrap(kek, [r.wrapped for r in chunk])
            rewrapped += patient_keys.replace(
                [PatientKey(key_id=r.key_id, scope_key=r.scope_key, kek_name=r.kek_name, wrapped=w,
                            created_at=r.created_at) for r, w in zip(chunk, fresh, strict=True)], commit=commit)
    return rewrapped, current


def reencrypt_table(plake: ProtectedLake, zone: Zone | str, table: str, *,
                    commit: CommitInfo | None = None) -> ReencryptReport:
    """Move every cell of a protected table to fresh batch DEKs, then retire the table's old batch DEKs.

    Cells of a patient are sealed again under that patient's lifelong DEK (fresh nonces, same key).

    The table's earlier versions stay readable (their DEKs are retired, not deleted). Cells of shredded
    patients are written as nulls. Re-running after an interruption re-encrypts again and retires the rest.

    Raises:
        ValueError: the table is not protected.
    """
    zone = Zone(zone)
    protection = plake.protection(zone, table)
    if protection is None:
        raise ValueError(f"{zone}.{table} has no encrypted columns: nothing to re-encrypt")
    bound = f"{zone}.{table}"
    old = [r.key_id for r in plake.store.records(scope="batch") if r.table == bound and not r.retired]
    result = plake.read_result(zone, table, decrypt=True, purpose="key-reencryption")
    fresh = ProtectedLake(plake.lake, plake.provider, principal=plake.principal, kek_name=plake.kek_name,
                          audit=plake.audit, cipher=CellCipher(plake.provider, plake.store, kek_name=plake.kek_name,
                                                               patient_keys=plake.patient_keys))
    info = commit or CommitInfo(principal=plake.principal, purpose="key-reencryption")
    version = fresh.overwrite(zone, table, result.table, protection, commit=info)
    retired = plake.store.retire(old, commit=info)
    plake.audit.record(AuditEvent(principal=plake.principal, action=AuditAction.REENCRYPT, zone=zone,
                                  table_name=table, columns=protection.encrypted, row_count=result.table.num_rows,
                                  decision=Decision.ALLOW, purpose=info.purpose,
                                  details={"version": version, "retired_deks": retired}))
    return ReencryptReport(zone=zone.value, table=table, rows=result.table.num_rows, version=version,
                           retired_deks=retired, shredded_rows=result.shredded_rows)


def shred_patient(plake: ProtectedLake, patient: str, *, reason: str, vacuum: bool = True) -> dict[str, Any]:
    """Erase a patient given their patient id (pseudonymised here) or their pseudonym (``ps1_…``); see
    :func:`erase_patient`. Surrounding blanks are ignored (`` PAT1`` is ``PAT1``).

    Returns:
        :meth:`ShredReport.to_dict`: ``patient_pseudonym``, ``deks_dropped``, ``key_store`` and what else the
        erasure touched (``quarantine``, ``tables``, ``snapshots``, ``vacuumed``).

    Raises:
        ValueError: no patient id, or no key of that patient to delete (and the patient was never shredded).
    """
    patient = patient.strip()
    if not patient:
        raise ValueError("no patient id given: name the patient id or its pseudonym (ps1_…)")
    if _PSEUDONYM.match(patient):
        pseudonym, source_id = patient, None
    else:
        pseudonym, source_id = plake.pseudonymizer("patient").pseudonym(patient), patient
    assert pseudonym is not None
    return erase_patient(plake, pseudonym, source_id=source_id, reason=reason, vacuum=vacuum).to_dict()


@dataclass(frozen=True)
class ShredReport:
    """What :func:`erase_patient` touched: counts and table names only, never a value.

    ``quarantine``: ``scanned`` batch-keyed payloads decrypted and searched, ``matched`` (payload dropped),
    ``rekeyed`` (other payloads sealed again under fresh keys), ``deks_destroyed`` (batch keys deleted for good);
    ``tables``: rows removed per ``zone.table``; ``snapshots``: rows removed per training-run file;
    ``vacuumed``: tables vacuumed with zero retention (their history before the erasure is gone).
    """

    patient_pseudonym: str
    deks_dropped: int
    key_store: str
    quarantine: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    snapshots: dict[str, int] = field(default_factory=dict)
    vacuumed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def erase_patient(plake: ProtectedLake, pseudonym: str, *, reason: str, source_id: str | None = None,
                  vacuum: bool = True) -> ShredReport:
    """Erase one patient from every zone and version: crypto-shred, quarantine scan, published rows, snapshots.

    1. The patient's identifiers (source id, MRN, SSN, phone, e-mail, address, member id, and first with last
       name) are read from ``raw.patients`` while their key still exists (on a re-run only ``source_id`` is left).
    2. Their data key is deleted for good (:meth:`ProtectedLake.shred`): every cell sealed per patient, in every
       table and version, quarantine included, stops decrypting.
    3. Quarantined payloads sealed under batch keys (a record that failed before its patient id could be read)
       are decrypted and searched for those identifiers (:func:`_scan_quarantine`). A payload that names the
       patient is dropped (set to null; the record's position, rules and reason stay), and every other payload
       under the same batch key is sealed again under a fresh one, in the same commit; then those batch keys are
       deleted from the DEK store and the store vacuumed, so no older version of the quarantine decrypts them.
    4. Their rows are deleted from every ``deidentified`` and ``predictions`` table holding ``patient_pseudonym``
       (a new version each), and from the training snapshots (``<home>/analytics/runs/*/*.parquet``).
    5. With ``vacuum`` (the default), each table changed in 4 is vacuumed with zero retention: the versions from
       before the erasure, which still hold the rows in plain (de-identified) form, become unreadable — time
       travel on those tables ends at the erasure, and a model's recorded training version with it.

    Re-runnable: each step finds nothing left to do once done.

    Raises:
        ValueError: no reason, or no key of this patient and never shredded (see :meth:`ProtectedLake.shred`).
    """
    check_scope_key(pseudonym)
    if not reason or not reason.strip():
        raise ValueError("shredding a patient needs a reason (e.g. the erasure request's reference)")
    info = CommitInfo(principal=plake.principal, purpose="erasure")
    identifiers = _identifiers(plake, pseudonym, source_id)
    dropped = plake.shred(pseudonym, reason=reason)
    quarantine = _scan_quarantine(plake, identifiers, info)
    tables: dict[str, int] = {}
    vacuumed: list[str] = ["_keys.deks"] if quarantine.get("deks_destroyed") else []
    for zone in (Zone.DEIDENTIFIED, Zone.PREDICTIONS):
        for table in plake.tables(zone):
            if "patient_pseudonym" not in plake.schema(zone, table).names:
                continue
            removed = plake.delete_rows(zone, table, where=f"patient_pseudonym = '{pseudonym}'", commit=info)
            if removed:
                tables[f"{zone.value}.{table}"] = removed
                if vacuum:
                    plake.lake.vacuum(zone, table, retention_hours=0, dry_run=False, commit=info)
                    vacuumed.append(f"{zone.value}.{table}")
    snapshots = _erase_snapshots(Path(plake.lake.settings.home) / "analytics" / "runs", pseudonym)
    report = ShredReport(patient_pseudonym=pseudonym, deks_dropped=dropped, key_store=plake.patient_keys.uri,
                         quarantine=quarantine, tables=tables, snapshots=snapshots, vacuumed=vacuumed)
    plake.audit.record(AuditEvent(principal=plake.principal, action=AuditAction.KEY_SHRED,
                                  row_keys=(pseudonym,), decision=Decision.ALLOW, purpose=info.purpose,
                                  row_count=sum(tables.values()) + sum(snapshots.values()) + quarantine["matched"],
                                  details={"quarantine": quarantine, "tables": tables,
                                           "snapshot_files": len(snapshots), "vacuumed": vacuumed}))
    return report


# Identifier columns of raw.patients whose value alone names the patient in a quarantined payload.
_STRONG = ("patient_id", "mrn", "ssn", "phone", "email", "address", "insurance_member_id")
_NAME = ("first_name", "last_name")
_MIN_CHARS = 4


@dataclass(frozen=True)
class _Identifiers:
    """What marks a payload as the patient's: any strong identifier, or both first and last name."""

    strong: frozenset[str]
    names: tuple[str, ...] = ()

    def named_in(self, text: str) -> bool:
        folded = text.casefold()
        if any(_standalone(folded, value) for value in self.strong):
            return True
        return bool(self.names) and all(_standalone(folded, name) for name in self.names)


def _standalone(text: str, needle: str) -> bool:
    """True when ``needle`` occurs in ``text`` not as part of a longer run of letters or digits."""
    start = text.find(needle)
    while start >= 0:
        end = start + len(needle)
        if not (start and text[start - 1].isalnum()) and not (end < len(text) and text[end].isalnum()):
            return True
        start = text.find(needle, start + 1)
    return False


def _identifiers(plake: ProtectedLake, pseudonym: str, source_id: str | None) -> _Identifiers:
    strong = {source_id.casefold()} if source_id and len(source_id) >= _MIN_CHARS else set()
    names: tuple[str, ...] = ()
    if plake.exists(Zone.RAW, "patients") and pseudonym not in plake.shredded():
        protection = plake.protection(Zone.RAW, "patients")
        sealed = set(protection.encrypted) if protection else set()
        schema = plake.schema(Zone.RAW, "patients").names
        wanted = [c for c in (*_STRONG, *_NAME) if c in schema]
        key = protection.patient_key if protection else None
        rows = [] if key is None or not wanted else plake.read(
            Zone.RAW, "patients", columns=wanted, decrypt=[c for c in wanted if c in sealed],
            where=f"{key} = '{pseudonym}'", purpose="erasure").to_pylist()
        for row in rows:
            strong |= {str(row[c]).casefold() for c in _STRONG
                       if row.get(c) is not None and len(str(row[c]).strip()) >= _MIN_CHARS}
            first, last = (str(row.get(c) or "").strip().casefold() for c in _NAME)
            if len(first) >= 2 and len(last) >= 2:
                names = (first, last)
    return _Identifiers(frozenset(strong), names)


def _scan_quarantine(plake: ProtectedLake, identifiers: _Identifiers, info: CommitInfo) -> dict[str, int]:
    """Drop the batch-keyed quarantine payloads naming the patient, re-key their batch-mates, destroy the old keys.

    Cost: one decrypting read of every batch-keyed payload of the quarantine's current version (a DEK unwrap per
    batch, AES-GCM per cell) and a substring search per payload; then one merge of the rows sharing a batch key
    with a match. Payloads sealed per patient are not scanned: theirs is the patient's key or another's.
    """
    from ingestion.batch import QUARANTINE_PROTECTION, QUARANTINE_TABLE

    counts = {"scanned": 0, "matched": 0, "rekeyed": 0, "deks_destroyed": 0}
    if not plake.exists(Zone.QUARANTINE, QUARANTINE_TABLE) or not (identifiers.strong or identifiers.names):
        return counts
    batch_keyed = "patient_pseudonym IS NULL AND payload IS NOT NULL"
    cells = plake.read(Zone.QUARANTINE, QUARANTINE_TABLE, columns=["quarantine_id", "payload"], where=batch_keyed,
                       purpose="erasure")
    if not cells.num_rows:
        return counts
    opened = plake.read(Zone.QUARANTINE, QUARANTINE_TABLE, columns=["quarantine_id", "payload"], decrypt=["payload"],
                        where=batch_keyed, purpose="erasure")
    counts["scanned"] = opened.num_rows
    plain = dict(zip(opened.column("quarantine_id").to_pylist(), opened.column("payload").to_pylist(), strict=True))
    matched = {qid for qid, text in plain.items() if text is not None and identifiers.named_in(text)}
    if not matched:
        return counts
    key_of = {qid: _cell_key_id(cell) for qid, cell in
              zip(cells.column("quarantine_id").to_pylist(), cells.column("payload").to_pylist(), strict=True)}
    dead_keys = {key_of[qid] for qid in matched}
    affected = sorted(qid for qid, key in key_of.items() if key in dead_keys)
    rows = plake.read(Zone.QUARANTINE, QUARANTINE_TABLE, decrypt=["payload"], where=batch_keyed,
                      purpose="erasure")
    rows = rows.filter(pc.is_in(rows.column("quarantine_id"), value_set=pa.array(affected, pa.string())))
    payloads = [None if qid in matched else text
                for qid, text in zip(rows.column("quarantine_id").to_pylist(), rows.column("payload").to_pylist(),
                                     strict=True)]
    rows = rows.set_column(rows.schema.get_field_index("payload"), "payload", pa.array(payloads, pa.string()))
    # A fresh cipher: its batch DEKs are new, so nothing re-sealed here stays under a key about to be destroyed.
    fresh = ProtectedLake(plake.lake, plake.provider, principal=plake.principal, kek_name=plake.kek_name,
                          audit=plake.audit, cipher=CellCipher(plake.provider, plake.store, kek_name=plake.kek_name,
                                                               patient_keys=plake.patient_keys))
    fresh.merge(Zone.QUARANTINE, QUARANTINE_TABLE, rows, QUARANTINE_PROTECTION, keys=["quarantine_id"], commit=info)
    counts["matched"], counts["rekeyed"] = len(matched), len(affected) - len(matched)
    counts["deks_destroyed"] = plake.store.drop_keys(sorted(dead_keys), commit=info)
    plake.cipher.evict()
    if counts["deks_destroyed"]:
        # The DEK store's older versions still hold the wrapped keys: only a vacuum makes them go.
        plake.lake.vacuum(SYSTEM_ZONE, plake.store.table, retention_hours=0, dry_run=False, commit=info)
    return counts


def _cell_key_id(cell: bytes) -> str:
    """The key id in a sealed cell's header (format version, key-id length, key id: see CellCipher)."""
    return cell[2:2 + cell[1]].hex()


def _erase_snapshots(runs: Path, pseudonym: str) -> dict[str, int]:
    """Rewrite each training run's Parquet file without the patient's rows (written beside, then renamed)."""
    import pyarrow.parquet as pq

    removed: dict[str, int] = {}
    if not runs.is_dir():
        return removed
    for path in sorted(runs.glob("*/*.parquet")):
        if path.is_symlink() or not path.is_file():
            continue
        table = pq.read_table(path)
        columns = [c for c in ("patient_pseudonym", "_group") if c in table.column_names]
        if not columns:
            continue
        theirs = pc.fill_null(pc.or_(*[pc.equal(table.column(c).cast(pa.string()), pseudonym) for c in columns])
                              if len(columns) > 1 else pc.equal(table.column(columns[0]).cast(pa.string()), pseudonym),
                              False)
        count = pc.sum(theirs).as_py() or 0
        if count:
            temporary = path.with_name(f".{path.name}.erasing")
            pq.write_table(table.filter(pc.invert(theirs)), temporary)
            os.replace(temporary, path)
            removed[f"{path.parent.name}/{path.name}"] = count
    return removed


def migrate_patient_keys(plake: ProtectedLake, *, delete_patient_keks: bool = False,
                         chunk_patients: int = MAX_BATCH_ITEMS) -> MigrationReport:
    """Move the DEKs of a lake written with one KEK per patient into the patient key store, under the data KEK.

    Each chunk of patients costs one ``decrypt`` per patient (their KEKs are distinct: Transit has no batch across
    keys, so a few run at once), one batched ``encrypt`` and one commit; it is committed before the next starts,
    so an interrupted migration resumes where it stopped when run again. A DEK keeps its key id, so no cell is
    rewritten; readers find it in the patient key store first. DEKs whose KEK is gone (patients shredded before)
    are counted as unreadable and left alone.

    Args:
        delete_patient_keks: also delete each migrated patient's KEK (with all its versions) from the provider,
            then their old records; patients moved by an earlier run are included, so run it once more with
            this flag after a migration without it.
        chunk_patients: patients per chunk (at most one ``batch_input`` request's worth).

    Raises:
        KeyProviderUnavailableError, KeyAccessDeniedError: the provider failed; what was committed stays.
    """
    if not 1 <= chunk_patients <= MAX_BATCH_ITEMS:
        raise ValueError(f"chunk_patients must be 1 to {MAX_BATCH_ITEMS}")
    shredded = plake.patient_keys.shredded()  # a shred cut short: left for the shred to finish, never moved
    legacy = [r for r in plake.store.records(scope="patient")
              if r.kek_name.startswith(_LEGACY_KEK) and r.scope_key not in shredded]
    by_patient: dict[str, list[Any]] = {}
    for record in legacy:
        by_patient.setdefault(record.scope_key, []).append(record)
    patients = sorted(by_patient)
    info = CommitInfo(principal=plake.principal, purpose="key-migration")
    moved = already = unreadable = deleted = 0
    for start in range(0, len(patients), chunk_patients):
        chunk = patients[start:start + chunk_patients]
        records = [record for patient in chunk for record in by_patient[patient]]
        present = plake.patient_keys.get(r.key_id for r in records)
        todo = [r for r in records if r.key_id not in present]
        already += len(records) - len(todo)
        groups: dict[str, list[Any]] = {}
        for record in todo:
            groups.setdefault(record.kek_name, []).append(record)
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            keys = list(pool.map(_unwrap_legacy, [plake.provider] * len(groups), groups.values()))
        readable = [(record, key) for group, unwrapped in zip(groups.values(), keys, strict=True)
                    for record, key in zip(group, unwrapped, strict=True) if key is not None and len(key) == 32]
        unreadable += len(todo) - len(readable)
        if readable:
            wrapped = plake.provider.wrap_many(plake.kek_name, [bind(key, r.key_id, r.scope_key)
                                                                for r, key in readable])
            stored = _put_unless_shredded(plake, [
                PatientKey(key_id=r.key_id, scope_key=r.scope_key, kek_name=plake.kek_name, wrapped=w,
                           created_at=r.created_at) for (r, _key), w in zip(readable, wrapped, strict=True)], info)
            readable = [(r, key) for r, key in readable if r.key_id in stored]
            moved += len(readable)
        if delete_patient_keks:
            # A patient's KEK goes only once all their DEKs are in the key store; then their old records follow.
            done = {r.key_id for r, _key in readable} | set(present)
            finished = sorted({r.kek_name for r in records} - {r.kek_name for r in records if r.key_id not in done})
            with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
                list(pool.map(plake.provider.destroy_key, finished))
            plake.store.drop_keys([r.key_id for r in records if r.kek_name in set(finished)], commit=info)
            deleted += len(finished)
    report = MigrationReport(patients=len(patients), deks_moved=moved, already_moved=already,
                             unreadable=unreadable, patient_keks_deleted=deleted)
    plake.audit.record(AuditEvent(principal=plake.principal, action=AuditAction.KEY_REWRAP, decision=Decision.ALLOW,
                                  purpose="key-migration", row_count=moved,
                                  details={"kek": plake.kek_name, **report.to_dict()}))
    return report


def _put_unless_shredded(plake: ProtectedLake, records: list[PatientKey], info: CommitInfo) -> set[str]:
    """Store migrated keys whose legacy record is still there and whose patient is not shredded; their key ids.

    A shred running meanwhile notes the patient before deleting anything, and the key store refuses a noted
    patient's key under its lock; the legacy record is checked again too (a shred drops it last).
    """
    present = plake.store.get(r.key_id for r in records)
    records = [r for r in records if r.key_id in present]
    while records:
        try:
            plake.patient_keys.put(records, commit=info)
            break
        except PatientShreddedError as exc:
            records = [r for r in records if r.scope_key not in exc.scope_keys]
    return {r.key_id for r in records}


def _unwrap_legacy(provider: KeyProvider, records: list[Any]) -> list[bytes | None]:
    """One patient's DEKs under their own KEK; all None when that KEK is gone (the patient was shredded)."""
    try:
        return provider.unwrap_each(records[0].kek_name, [r.wrapped for r in records])
    except DecryptionError:
        return [None] * len(records)
