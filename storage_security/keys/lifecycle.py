"""Key lifecycle recipes behind ``medguard keys rotate / reencrypt / shred``: each one re-runnable, each audited.

- :func:`rotate_keys` adds a KEK version, rewraps every stored DEK — the patients' in batches of
  :data:`~storage_security.keys.base.MAX_BATCH_ITEMS` per request — and the audit log's signing key under it
  without touching any data, then retires the old versions (``min_decryption_version``) — only once nothing is
  left wrapped under them. A rotation interrupted anywhere is resumed, not restarted, by running it again: a
  KEK whose ``min_decryption_version`` is below its latest version has a rotation in progress.
- :func:`reencrypt_table` moves a table's cells to fresh DEKs (a new version of the table; time travel keeps
  the old one readable) and marks the old DEKs retired.
- :func:`shred_patient` crypto-shreds one patient (see :meth:`ProtectedLake.shred`).
- :func:`migrate_patient_keys` moves a lake written with one KEK per patient (``patient-<pseudonym>``) to the
  data-KEK hierarchy: each patient's DEKs keep their key ids (so no cell changes) and are wrapped again under the
  data KEK into the patient key store; then, if asked, the per-patient KEKs are deleted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import DecryptionError
from pipeline.lake import CommitInfo, Zone
from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
from storage_security.crypto.envelope import CellCipher
from storage_security.keys.base import MAX_BATCH_ITEMS, KeyProvider
from storage_security.keys.dek_store import DekStore, wrapped_version
from storage_security.keys.patient_keys import PatientKey, PatientKeyStore, PatientShreddedError, bind
from storage_security.protected import ProtectedLake

__all__ = ["MigrationReport", "ReencryptReport", "RotationReport", "migrate_patient_keys", "reencrypt_table",
           "rotate_keys", "shred_patient"]

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


def shred_patient(plake: ProtectedLake, patient: str, *, reason: str) -> dict[str, Any]:
    """Crypto-shred a patient given their patient id (pseudonymised here) or their pseudonym (``ps1_…``).

    Surrounding blanks are ignored (`` PAT1`` is ``PAT1``).

    Raises:
        ValueError: no patient id, or no key of that patient to delete (and the patient was never shredded).
    """
    patient = patient.strip()
    if not patient:
        raise ValueError("no patient id given: name the patient id or its pseudonym (ps1_…)")
    pseudonym = patient if _PSEUDONYM.match(patient) else plake.pseudonymizer("patient").pseudonym(patient)
    assert pseudonym is not None
    dropped = plake.shred(pseudonym, reason=reason)
    return {"patient_pseudonym": pseudonym, "deks_dropped": dropped, "key_store": plake.patient_keys.uri}


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
