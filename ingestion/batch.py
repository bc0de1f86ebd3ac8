"""One ingestion batch: read a source in chunks, validate, quarantine the rejects, load the rest into ``raw``.

Flow per chunk: the source reader yields raw records per table and the records it could not read; each
table's records are conformed to the contract's types in Arrow and validated by the contract's rules, vectorised
with ``pyarrow.compute`` and summarised into Great Expectations results for the Data Docs
(:mod:`ingestion.validate`); rows that pass are given a keyed record hash (HMAC under a key derived from the
lake's provider-wrapped pseudonym key, see :func:`~ingestion.checking.record_hash_key`), checked for duplicates
within the batch, given their ``patient_pseudonym`` (one keyed hash per distinct patient) and provenance,
and appended to ``raw/<table>`` through the security core's :class:`~storage_security.protected.ProtectedLake`,
which seals every PHI column of the contract before anything is written. Rejected rows go to
``quarantine/records`` with their position, rules and reason; their payload is sealed the same way.

Idempotence (the choice, documented): **a deterministic batch id, Delta transaction identifiers per chunk,
and a batch ledger.** The batch id is a keyed digest (HMAC under the lake's source key, see
:mod:`ingestion.sources._keyed`) of the source kind, the contracts, the chunk size and the input files' names and
bytes, so re-running the same input on the same lake gives the same batch and the same chunks, and nobody without
the key can confirm which files a batch held. Every chunk is appended to
``raw/<table>`` and ``quarantine/records`` with the Delta transaction identifier ``(medguard-ingest/<batch>,
<chunk>)`` in the same atomic commit; a run that resumes after a crash at any point asks each table which chunk
it committed last and writes only the chunks after it, so nothing is added twice and nothing is lost. An append
costs the same however large the table has grown (a merge on content would rescan the table for every chunk).
When a batch has finished, a row in ``quarantine/batches`` (the ledger) records its counts and validation
results, and a later run of the same batch returns those without touching the tables.

No file name reaches the lake: a file name can name a patient (Synthea writes ``Aaron697_Brekke496_<uuid>.json``).
Positions and reasons in ``quarantine/records``, its ``source_path``, the ledger's ``source_path`` and the batch
report name a file by its keyed label ``fd_<16 hex>``; ``medguard ingest --locate fd_… --path FOLDER`` finds the
file again (:func:`locate_file`), with the same key. Records with no id of their own are keyed by a keyed digest of
their content (``hmac:…``), never an unkeyed SHA-256.

``raw`` is the append-only landing zone: the same record arriving in two different batches (the same extract
as CSV and as Parquet, or a patient in both a FHIR bundle and an HL7 feed) is kept once per batch, with the
same ``_record_hash``; de-identification publishes one row per ``_record_hash``.

Duplicates inside a batch: a row identical to an earlier accepted row (same ``_record_hash``: an exact copy,
or the same patient repeated across HL7 messages or FHIR bundles) is accepted once and counted in
``duplicates``; a row whose key was already taken by a *different* accepted row is quarantined under
``<key>:unique``. A patient's record (encounters, observations…) is keyed within its patient: two senders'
ids collide across patients, never within one patient's record. The invariant ``in = accepted + quarantined``
is checked per table before the batch is recorded; a breach raises and records nothing.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.checking import (
    CheckedTable,
    CheckPipeline,
    HashKey,
    hash_prefixes,
    record_hash_array,
    record_hash_key,
    worker_count,
)
from ingestion.contract import CONFORMED_TABLES, Contract, builtin_contract, load_contract, with_defaults
from ingestion.identity import IDENTITY_COLUMN, IdentityCheck, conflict_reason, held_record_reason
from ingestion.identity import RULE as IDENTITY_RULE
from ingestion.sources._base import SourceChunk, TableRows
from ingestion.sources._keyed import LEGACY_BATCH_ID, SourceKeys, locate
from ingestion.validate import ChunkValidator
from pipeline.errors import ValidationError
from pipeline.lake import CommitInfo, Zone
from pipeline.settings import Settings

__all__ = ["SOURCES", "BatchReport", "TableCounts", "ingest", "legacy_digests", "locate_file"]

SOURCES = ("tabular", "fhir", "hl7", "ccda", "notes")
QUARANTINE_TABLE = "records"
LEDGER_TABLE = "batches"
STAGES = ("quarantine", "raw")
PRINCIPAL = "svc:ingest"
FIRST_REASONS = 5  # quarantine reasons a report keeps verbatim (one per rule broken), for the command line
_FHIR_TABLES = ("patients", "encounters", "observations", "conditions", "medications", "procedures", "immunizations",
                "allergies", "diagnostic_reports", "resources")
_HL7_TABLES = ("patients", "encounters", "observations", "conditions", "medications", "procedures", "immunizations",
               "allergies", "diagnostic_reports", "resources")
_CCDA_TABLES = ("patients", "encounters", "observations", "conditions", "medications", "procedures",
                "immunizations", "allergies", "diagnostic_reports", "resources")
_PROVENANCE = [pa.field("patient_pseudonym", pa.string()), pa.field("_source", pa.string()),
               pa.field("_batch_id", pa.string()), pa.field("_ingested_at", pa.timestamp("us", tz="UTC")),
               pa.field("_record_hash", pa.string())]
_QUARANTINE_SCHEMA = pa.schema([
    ("quarantine_id", pa.string()), ("table_name", pa.string()), ("source", pa.string()),
    ("source_path", pa.string()), ("batch_id", pa.string()), ("position", pa.string()),
    ("rules", pa.list_(pa.string())), ("reason", pa.string()), ("record_key", pa.string()),
    ("patient_pseudonym", pa.string()), ("payload", pa.string()), ("payload_truncated", pa.bool_()),
    ("_ingested_at", pa.timestamp("us", tz="UTC")),
])
_LEDGER_SCHEMA = pa.schema([
    ("batch_id", pa.string()), ("stage", pa.string()), ("source", pa.string()), ("source_path", pa.string()),
    ("contracts", pa.string()), ("counts", pa.string()), ("validation", pa.string()), ("data_docs", pa.string()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class TableCounts:
    """Rows in, accepted and quarantined for one table of a batch, with the rules broken."""

    rows_in: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.rows_in, "accepted": self.accepted, "quarantined": self.quarantined,
                "duplicates": self.duplicates, "by_rule": dict(sorted(self.by_rule.items()))}


@dataclass
class BatchReport:
    """What a batch did (or, when ``replayed``, what the ledger says it did the first time)."""

    batch_id: str
    source: str
    path: str
    tables: dict[str, TableCounts] = field(default_factory=dict)
    validation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    contracts: dict[str, str] = field(default_factory=dict)
    data_docs: str | None = None
    stages: tuple[str, ...] = STAGES
    replayed: bool = False
    # The first quarantine reason of each rule broken in this run (table, rules, position, reason): they name
    # non-PHI values only, as in the quarantine zone. Empty for a replayed batch.
    first_reasons: list[dict[str, Any]] = field(default_factory=list)

    def counts(self, table: str) -> TableCounts:
        return self.tables.setdefault(table, TableCounts())

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "source": self.source, "path": self.path,
                "tables": {name: counts.to_dict() for name, counts in sorted(self.tables.items())},
                "validation": self.validation, "contracts": self.contracts, "data_docs": self.data_docs,
                "stages": list(self.stages), "replayed": self.replayed, "first_reasons": self.first_reasons}

    def check_invariant(self) -> None:
        """Raise ValidationError unless rows in = accepted + quarantined for every table."""
        broken = {name: c.to_dict() for name, c in self.tables.items() if c.rows_in != c.accepted + c.quarantined}
        if broken:
            raise ValidationError(f"batch {self.batch_id}: rows in != accepted + quarantined for {broken}")


# contracts and batch identity ------------------------------------------------------------------------------


def source_files(source: str, path: Path) -> list[Path]:
    """The input files of a source (a file, or a directory of FHIR/HL7 files)."""
    from ingestion.sources.fhir import fhir_files
    from ingestion.sources.hl7v2 import hl7_files
    from ingestion.sources.notes_text import note_files

    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if source == "fhir":
        files = fhir_files(path)
    elif source == "ccda":
        from ingestion.sources.ccda import ccda_files

        files = ccda_files(path).files
    elif source == "hl7":
        files = hl7_files(path)
    elif _note_files(source, path):
        files = note_files(path)
    else:
        if path.is_dir():
            raise ValueError(f"{path} is a directory; --source {source} takes one extract file")
        from ingestion.sources._files import input_files

        files = input_files(path, ()).files  # a FIFO or device is refused: reading one may block or never end
    if not files:
        raise ValueError(f"{path} holds no {source} files")
    return files


def resolve_contracts(settings: Settings, source: str, path: Path, table: str | None,
                      contract: str | Path | Contract | None) -> dict[str, Contract]:
    """The contract of every table the source can fill.

    Tabular: ``contract`` when given; the shipped contract when ``table`` is a conformed table; otherwise a
    draft inferred from the data, saved under ``$MEDGUARD_HOME/contracts/`` for review.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    if source == "fhir":
        return {name: builtin_contract(name) for name in _FHIR_TABLES}
    if source == "hl7":
        return {name: builtin_contract(name) for name in _HL7_TABLES}
    if source == "ccda":
        return {name: builtin_contract(name) for name in _CCDA_TABLES}
    if source == "notes":
        return {"notes": _given(contract) if contract is not None else builtin_contract("notes")}
    if contract is not None:
        chosen = _given(contract)
        if table and table != chosen.table:
            raise ValueError(f"--table {table} but the contract is for table {chosen.table}")
        return {chosen.table: chosen}
    name = table or _table_from_path(path)
    if name in CONFORMED_TABLES:
        return {name: builtin_contract(name)}
    from ingestion.infer import infer_contract, save_draft

    draft = infer_contract(path, table=name, sample_rows=settings.ingestion.infer_sample_rows,
                           max_columns=settings.ingestion.max_columns,
                           max_record_bytes=settings.ingestion.max_record_bytes)
    save_draft(settings, draft)
    return {name: draft}


def _given(contract: str | Path | Contract) -> Contract:
    return contract if isinstance(contract, Contract) else load_contract(contract)


def _table_from_path(path: Path) -> str:
    from ingestion.sources.tabular import safe_name

    stem = path.name.split(".")[0]
    return safe_name(stem if stem[:1].isalpha() else f"t_{stem}")


def batch_id_for(source: str, files: list[Path], contracts: dict[str, Contract], chunk_rows: int,
                 keys: SourceKeys) -> str:
    """A deterministic batch id, ``bk<24 hex>``: same lake key, source, files, contracts and chunk size, same id.

    The chunk size is part of it because chunk numbers are what a resumed batch skips by. It is an HMAC under the
    lake's source key: an unkeyed digest of the files would let anyone holding a guessed file confirm it was loaded.
    """
    digest = keys.batch()
    digest.update(json.dumps([source, sorted((t, c.fingerprint) for t, c in contracts.items()),
                              chunk_rows]).encode())
    for file in files:
        name = file.name.encode("utf-8", "surrogateescape")
        digest.update(len(name).to_bytes(4, "big") + name)
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return f"bk{digest.hexdigest()[:24]}"


def _note_files(source: str, path: Path) -> bool:
    # Notes come as an extract with a text column (.jsonl, .csv, .parquet) or as .txt files, one note each.
    return source == "notes" and (path.is_dir() or path.suffix.lower() == ".txt")


def _chunks(source: str, path: Path, contracts: dict[str, Contract], settings: Settings,
            keys: SourceKeys) -> Iterator[SourceChunk]:
    options = {"chunk_rows": settings.ingestion.chunk_rows, "max_record_bytes": settings.ingestion.max_record_bytes,
               "keys": keys}
    if _note_files(source, path):
        from ingestion.sources.notes_text import read_note_files

        yield from read_note_files(path, list(contracts["notes"].columns), **options)
    elif source == "fhir":
        from ingestion.sources.fhir import read_fhir

        yield from read_fhir(path, **options)
    elif source == "hl7":
        from ingestion.sources.hl7v2 import read_hl7

        yield from read_hl7(path, **options)
    elif source == "ccda":
        from ingestion.sources.ccda import read_ccda

        yield from read_ccda(path, **options)
    else:
        from ingestion.sources.tabular import read_tabular

        (table, contract), = contracts.items()
        yield from read_tabular(path, table, list(contract.columns), contract=contract,
                                max_columns=settings.ingestion.max_columns, **options)


# the batch ----------------------------------------------------------------------------------------------------


class _Dedup:
    """First accepted row wins per key; exact copies are duplicates, different rows with a taken key conflict.

    Everything is vectorised over the chunk (numpy): each row is reduced to a 64-bit fingerprint of what
    identifies it (SipHash-2-4 of its key, through pandas' ``hash_array``, under a random per-batch secret
    that never leaves memory: a keyed hash built against chosen collisions; for a table without a key, its
    record hash, itself keyed) and 64 bits of its record hash. Within a chunk the
    first occurrence of a fingerprint wins (a stable sort); across chunks the batch's seen fingerprints are kept
    in memory as sorted runs (merged like a binary counter up to 8 million rows a run, so a lookup is a few
    ``searchsorted`` calls),
    16 bytes a row: 53 MB for the 3.3 million observations of 100,000 patients. Nothing is written to disk, and
    neither keys nor content can be read back from the fingerprints. Two different keys share a fingerprint
    with odds of about n²/2⁶⁵ (3·10⁻⁵ at 33 million rows in one batch); such a row would be quarantined as a
    ``:unique`` conflict, never lost silently.
    """

    NEW, DUPLICATE, CONFLICT = 0, 1, 2

    def __init__(self) -> None:
        import secrets

        self._salt = secrets.token_hex(8)  # SipHash's 16-byte key, as pandas takes it
        self._runs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def close(self) -> None:
        self._runs.clear()

    def verdicts(self, table: str, keys: pa.Array | None, record_hashes: pa.Array) -> np.ndarray:
        """``NEW``, ``DUPLICATE`` or ``CONFLICT`` for each row, in order, against everything seen before."""
        count = len(record_hashes)
        out = np.zeros(count, dtype=np.int8)
        if not count:
            return out
        content = hash_prefixes(record_hashes)
        if keys is None:
            fingerprints = content.copy()
        else:
            # A row without a key value is identified by its content (its key column failed required anyway).
            values = keys.to_numpy(zero_copy_only=False)
            missing = np.flatnonzero(pc.is_null(keys).to_numpy(zero_copy_only=False))
            if len(missing):
                values[missing] = ["\0" + h for h in record_hashes.take(pa.array(missing)).to_pylist()]
            fingerprints = pd.util.hash_array(values, hash_key=self._salt, categorize=False)
        # Within the chunk: the first occurrence of each fingerprint stands for it.
        order = np.argsort(fingerprints, kind="stable")
        ordered = fingerprints[order]
        first = np.ones(count, dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        leader = order[np.maximum.accumulate(np.where(first, np.arange(count), 0))]
        repeat = ~first
        out[order[repeat]] = np.where(content[order[repeat]] == content[leader[repeat]], self.DUPLICATE,
                                      self.CONFLICT)
        # Across chunks: look the leaders up in the runs seen so far.
        leaders = order[first]
        runs = self._runs.setdefault(table, [])
        unseen = np.ones(len(leaders), dtype=bool)
        past = np.zeros(count, dtype=np.uint64)  # per leader seen before: the content that was accepted first
        for run_prints, run_content in runs:
            at = np.minimum(np.searchsorted(run_prints, fingerprints[leaders]), len(run_prints) - 1)
            hit = unseen & (run_prints[at] == fingerprints[leaders])
            past[leaders[hit]] = run_content[at[hit]]
            unseen &= ~hit
        seen = np.zeros(count, dtype=bool)
        seen[leaders[~unseen]] = True
        # Every row whose fingerprint was accepted in an earlier chunk is judged against that first row.
        judged = seen[order[first].repeat(np.diff(np.append(np.flatnonzero(first), count)))]
        rows = order[judged]
        first_rows = leader[judged]
        out[rows] = np.where(content[rows] == past[first_rows], self.DUPLICATE, self.CONFLICT)
        fresh = leaders[unseen]
        if len(fresh):
            runs.append((fingerprints[fresh], content[fresh]))  # leaders come in fingerprint order already
            while (len(runs) > 1 and len(runs[-1][0]) >= len(runs[-2][0])
                   and len(runs[-1][0]) + len(runs[-2][0]) <= _MERGED_RUN_ROWS):
                newer, older = runs.pop(), runs.pop()
                runs.append(_merge_runs(older, newer))
        return out


# Runs stop merging at this many rows (128 MB a run): merging two halves of a batch's 33 million observations
# held both and the merged run at once, about 1.2 GB, the peak of a million patients' ingestion. Past it a batch
# keeps a few runs of this size, each one more search a chunk.
_MERGED_RUN_ROWS = 8_000_000


def _merge_runs(older: tuple[np.ndarray, np.ndarray],
                newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs of (fingerprint, content) as one. Their fingerprints are disjoint (a run holds only what
    no earlier run did), so each of the newer run's rows goes where ``searchsorted`` puts it among the older
    run's: no sort, and no temporaries beyond the merged run and one position a newer row."""
    (old_prints, old_content), (new_prints, new_content) = older, newer
    total = len(old_prints) + len(new_prints)
    at = np.searchsorted(old_prints, new_prints)
    at += np.arange(len(new_prints), dtype=at.dtype)
    prints, content = np.empty(total, dtype=np.uint64), np.empty(total, dtype=np.uint64)
    prints[at], content[at] = new_prints, new_content
    rest = np.ones(total, dtype=bool)
    rest[at] = False
    prints[rest], content[rest] = old_prints, old_content
    return prints, content


def _per_patient_key(contract: Contract) -> bool:
    """Whether the table's key is unique per patient rather than across patients (a record of a patient)."""
    return (contract.patient_column is not None and contract.key is not None
            and contract.key != contract.patient_column)


def _dedup_keys(contract: Contract, checked: CheckedTable, rows: np.ndarray) -> pa.Array | None:
    """What identifies each offered row to the dedup: its key, within its patient for a patient's record.

    Source ids of child records are unique only within the system that issued them; two vendors' documents
    reuse entry ids for different patients (seen in the C-CDA samples). Keyed by patient and id, they are two
    records, while a second copy of one patient's record is still a duplicate.
    """
    if checked.keys is None:
        return None
    taken = pa.array(rows, pa.int64())
    keys = checked.keys.take(taken)
    if not _per_patient_key(contract) or checked.patients is None:
        return keys
    patients = checked.patients.take(taken)
    joined = pc.binary_join_element_wise(pc.fill_null(patients, ""), keys, "\x1f")
    return pc.if_else(pc.is_null(keys), pa.scalar(None, pa.string()), joined)


_HELD = 3  # a verdict of its own: the row was held by the identity check and never offered to the dedup


def _identity_check(plake: Any, contracts: dict[str, Contract]) -> IdentityCheck | None:
    """The identity check of a batch that loads patients (the known fingerprints read once), else None."""
    patients = contracts.get("patients")
    return IdentityCheck.from_lake(plake) if patients is not None and patients.patient_column else None


class _Batch:
    def __init__(self, settings: Settings, plake: Any, source: str, path: Path, contracts: dict[str, Contract],
                 batch_id: str, stages: tuple[str, ...], dag_run: str | None, docs_dir: Path | None,
                 progress: Callable[[str, int, int | None], None] | None = None, *, keys: SourceKeys) -> None:
        self.settings, self.plake, self.source, self.path = settings, plake, source, path
        self.contracts, self.batch_id, self.stages, self.dag_run = contracts, batch_id, stages, dag_run
        self.keys = keys
        self.path_label = keys.file_label(path.name)  # what the lake and the report call the input, never its name
        self.report = BatchReport(batch_id, source, self.path_label, stages=stages,
                                  contracts={t: c.fingerprint for t, c in contracts.items()})
        self.validators = {t: ChunkValidator(c, docs_dir) for t, c in contracts.items()}
        self.dedup = _Dedup()
        self.pseudonyms = plake.pseudonymizer("patient")
        self.hash_key = record_hash_key(plake)
        self.identity = _identity_check(plake, contracts)
        self._identity_evolves: bool | None = None
        self.now = datetime.now(UTC)
        self.commit = CommitInfo(principal=plake.principal, purpose="ingest", dag_run=dag_run, batch_id=batch_id)
        self.app_id = f"medguard-ingest/{batch_id}"
        self.progress = progress

    def run(self) -> BatchReport:
        try:
            with _checks(self.settings, self.contracts, self.hash_key) as checks:
                for chunk, checked in checks.run(_chunks(self.source, self.path, self.contracts, self.settings,
                                                                      self.keys)):
                    self._chunk(chunk, checked)
                    _release_freed_memory()
        finally:
            self.dedup.close()
        self.report.check_invariant()
        for _table, validator in self.validators.items():
            docs = validator.build_docs()
            if docs is not None:
                self.report.data_docs = str(docs)
        return self.report

    def _chunk(self, chunk: SourceChunk, checked: dict[str, CheckedTable]) -> None:
        quarantined: list[dict[str, Any]] = []
        for unit, count in chunk.units.items():
            if unit not in self.contracts:  # whole bundles/messages: their own in/accepted/quarantined
                counts = self.report.counts(unit)
                counts.rows_in += count
                rejected = sum(1 for r in chunk.rejected if r.table == unit)
                counts.accepted += count - rejected
        for rejected in chunk.rejected:
            counts = self.report.counts(rejected.table)
            if rejected.table in self.contracts:
                counts.rows_in += 1
            counts.quarantined += 1
            counts.by_rule[rejected.rule] += 1
            quarantined.append(self._quarantine_row(rejected.table, rejected.position, [rejected.rule],
                                                    rejected.reason, rejected.payload, rejected.patient_id,
                                                    None, rejected.payload_truncated))
        loads: list[tuple[str, pa.Table]] = []
        # Patients first: a record of a patient whose identity conflicts in this chunk is held with it.
        for table, rows in sorted(chunk.tables.items(), key=lambda item: item[0] != "patients"):
            contract = self.contracts.get(table)
            if contract is None:
                raise ValidationError(f"the {self.source} reader produced rows for {table!r}, which has no contract")
            accepted, rejected_rows = self._table(chunk.index, table, contract, rows, checked[table])
            quarantined += rejected_rows
            if accepted is not None and accepted.num_rows:
                loads.append((table, accepted))
        # Each write is one atomic commit carrying (app id, chunk): a resumed run skips what was committed.
        txn = (self.app_id, chunk.index)
        if "quarantine" in self.stages and quarantined:
            self._write_quarantine(quarantined, txn)
        if "raw" in self.stages:
            for table, data in loads:
                self.plake.append(Zone.RAW, table, data, _protection(self.contracts[table]), commit=self.commit,
                                  txn=txn, evolve_schema=self._adds_identity(table))
                self._report_progress(table)
        for table in chunk.tables.keys() - {table for table, _ in loads}:
            self._report_progress(table)

    def _report_progress(self, table: str) -> None:
        if self.progress is not None:
            self.progress(table, self.report.counts(table).rows_in, None)

    def _table(self, chunk_index: int, table: str, contract: Contract, rows: TableRows,
               checked: CheckedTable) -> tuple[pa.Table | None, list[dict[str, Any]]]:
        counts = self.report.counts(table)
        counts.rows_in += len(rows)
        result = checked.result
        self.validators[table].record(result, run_name=f"{self.batch_id}-{table}-{chunk_index:05d}")
        self._merge_outcomes(table, result.outcomes)
        violations = result.violations
        hashes = checked.hashes
        if hashes is None:  # checked where no hash key was installed (see check_table): hash here
            hashes = record_hash_array(table, checked.typed, self.hash_key)
        identities, held = self._identity_step(contract, checked)
        for position, message in held.items():
            violations[checked.candidates[position]] = [(IDENTITY_RULE, message)]
        # Rows held for their identity are not offered to the dedup: they must not take the key of a later row.
        offered = np.arange(len(hashes))
        if held:
            offered = np.setdiff1d(offered, np.fromiter(held, dtype=np.int64, count=len(held)))
        candidate_keys = _dedup_keys(contract, checked, np.asarray(checked.candidates, dtype=np.int64)[offered])
        verdicts = np.full(len(hashes), _HELD, dtype=np.int8)
        verdicts[offered] = self.dedup.verdicts(table, candidate_keys,
                                                hashes if not held else hashes.take(pa.array(offered)))
        counts.duplicates += int((verdicts == _Dedup.DUPLICATE).sum())
        counts.accepted += int(((verdicts == _Dedup.NEW) | (verdicts == _Dedup.DUPLICATE)).sum())
        for position in np.flatnonzero(verdicts == _Dedup.CONFLICT).tolist():
            violations[checked.candidates[position]] = [
                (f"{contract.key}:unique", f"{contract.key} was already loaded in this batch"
                 f"{' for the same patient' if _per_patient_key(contract) else ''} with different content")]
        keep = np.flatnonzero(verdicts == _Dedup.NEW)  # positions in checked.typed
        quarantined = []
        rejected = sorted(violations)
        for index, record in zip(rejected, rows.records(rejected), strict=True):
            rules = list(dict.fromkeys(rule for rule, _ in violations[index]))
            counts.quarantined += 1
            counts.by_rule.update(rules)
            key_value = (None if checked.keys is None or contract.columns[contract.key].phi
                         else checked.keys[index].as_py())
            naming = f" ({contract.key}={key_value})" if key_value else ""
            position = rows.position(index)
            reason = f"record at {position}{naming}: " + "; ".join(
                dict.fromkeys(message for _, message in violations[index]))
            patient = checked.patients[index].as_py() if checked.patients is not None else None
            quarantined.append(self._quarantine_row(
                table, position, rules, reason, json.dumps(record, default=str, ensure_ascii=False),
                patient, key_value, False))
        if not len(keep):
            return None, quarantined
        if len(keep) == checked.typed.num_rows:
            return self._raw_table(contract, checked.typed, hashes, identities), quarantined
        taken = pa.array(keep, pa.int64())
        return (self._raw_table(contract, checked.typed.take(taken), hashes.take(taken),
                                identities.take(taken) if identities is not None else None),
                quarantined)

    # one patient, one identity (ingestion.identity) ------------------------------------------------------------

    def _identity_step(self, contract: Contract, checked: CheckedTable) -> tuple[pa.Array | None, dict[int, str]]:
        """The ``_identity`` of a patients chunk's candidates, and the candidates held for an identity conflict.

        For a patients table: each candidate's fingerprint compared with its pseudonym's known identity. For a
        table of patients' records: the candidates of a patient whose patients row conflicted in this batch.
        """
        if self.identity is None or contract.patient_column is None or not checked.typed.num_rows:
            return None, {}
        if contract.table == "patients":
            column = contract.patient_column
            patients = pc.cast(checked.typed.column(column), pa.string()).combine_chunks().dictionary_encode()
            pseudonyms = self.pseudonyms.pseudonymize(patients.dictionary).take(patients.indices)
            identities, conflicts = self.identity.screen_patients(checked.typed, column, pseudonyms)
            return identities, {row: conflict_reason(fields) for row, fields in conflicts.items()}
        if checked.patients is None:
            return None, {}
        candidates = checked.patients.take(pa.array(checked.candidates, pa.int64()))
        return None, {row: held_record_reason() for row in self.identity.screen_records(candidates)}

    def _adds_identity(self, table: str) -> bool:
        """Whether this append brings ``_identity`` to a patients table written before the column existed."""
        if table != "patients" or self.identity is None:
            return False
        if self._identity_evolves is None:
            self._identity_evolves = (self.plake.exists(Zone.RAW, table)
                                      and IDENTITY_COLUMN not in self.plake.schema(Zone.RAW, table).names)
        return self._identity_evolves

    def _raw_table(self, contract: Contract, data: pa.Table, hashes: pa.Array,
                   identities: pa.Array | None = None) -> pa.Table:
        count = data.num_rows
        if contract.patient_column:
            # One keyed hash per distinct patient, not per row (a patient has dozens of observations).
            patients = pc.cast(data.column(contract.patient_column), pa.string()).combine_chunks().dictionary_encode()
            pseudonyms = self.pseudonyms.pseudonymize(patients.dictionary).take(patients.indices)
        else:
            pseudonyms = pa.nulls(count, pa.string())
        extra = [pseudonyms, pa.repeat(pa.scalar(self.source, pa.string()), count),
                 pa.repeat(pa.scalar(self.batch_id, pa.string()), count),
                 pa.repeat(pa.scalar(self.now, pa.timestamp("us", tz="UTC")), count), hashes]
        for fld, column in zip(_PROVENANCE, extra, strict=True):
            data = data.append_column(fld, column)
        if identities is not None:
            data = data.append_column(pa.field(IDENTITY_COLUMN, pa.string()), identities)
        return data

    def _quarantine_row(self, table: str, position: str, rules: list[str], reason: str, payload: str,
                        patient_id: str | None, record_key: str | None, truncated: bool) -> dict[str, Any]:
        qid = hashlib.sha256(json.dumps([self.batch_id, table, position, rules]).encode()).hexdigest()
        known = self.report.first_reasons
        if len(known) < FIRST_REASONS and not any(r["table"] == table and r["rules"] == rules for r in known):
            known.append({"table": table, "rules": rules, "position": position, "reason": reason})
        return {"quarantine_id": qid, "table_name": table, "source": self.source, "source_path": self.path_label,
                "batch_id": self.batch_id, "position": position, "rules": rules, "reason": f"{table}: {reason}",
                "record_key": record_key, "patient_id": patient_id, "payload": payload,
                "payload_truncated": truncated, "_ingested_at": self.now}

    def _write_quarantine(self, rows: list[dict[str, Any]], txn: tuple[str, int]) -> None:
        patients = pa.array([r.pop("patient_id") for r in rows], pa.string())
        has = [p is not None for p in patients.to_pylist()]
        pseudonyms = pa.nulls(len(rows), pa.string())
        if any(has):
            pseudonyms = self.pseudonyms.pseudonymize(patients)
        for row, pseudonym in zip(rows, pseudonyms.to_pylist(), strict=True):
            row["patient_pseudonym"] = pseudonym
        data = pa.Table.from_pylist(rows, schema=_QUARANTINE_SCHEMA)
        # The same position can be rejected twice in one chunk only if a reader repeats itself; keep one.
        unique = {r: i for i, r in enumerate(data.column("quarantine_id").to_pylist())}
        if len(unique) != data.num_rows:
            data = data.take(pa.array(sorted(unique.values())))
        self.plake.append(Zone.QUARANTINE, QUARANTINE_TABLE, data, QUARANTINE_PROTECTION, commit=self.commit,
                          txn=txn)

    def _merge_outcomes(self, table: str, outcomes: Iterable[Any]) -> None:
        rules = self.report.validation.setdefault(table, {})
        for outcome in outcomes:
            entry = rules.setdefault(outcome.rule, {"expectation": outcome.expectation, "column": outcome.column,
                                                    "success": True, "element_count": 0, "unexpected_count": 0})
            entry["success"] = entry["success"] and outcome.success
            entry["element_count"] += outcome.element_count
            entry["unexpected_count"] += outcome.unexpected_count


def _checks(settings: Settings, contracts: dict[str, Contract], hash_key: HashKey) -> Any:
    """Where chunks are checked: in this process (or its spawn pool), or on Spark's executors (``compute=spark``)."""
    if settings.compute == "spark":
        from ingestion.spark import SparkCheckPipeline

        return SparkCheckPipeline(settings, contracts)
    return CheckPipeline(contracts, worker_count(settings), hash_key)


def _protection(contract: Contract) -> Any:
    from storage_security.protected import Protection

    return Protection(encrypted=contract.phi_columns, row_key="_record_hash", patient_key="patient_pseudonym")


def _quarantine_protection() -> Any:
    from storage_security.protected import Protection

    return Protection(encrypted=("payload",), row_key="quarantine_id", patient_key="patient_pseudonym")


QUARANTINE_PROTECTION = _quarantine_protection()


# ledger ---------------------------------------------------------------------------------------------------------


def _ledger_rows(plake: Any, batch_id: str) -> list[dict[str, Any]]:
    if not plake.exists(Zone.QUARANTINE, LEDGER_TABLE):
        return []
    if not all(c.isalnum() for c in batch_id):
        raise ValueError(f"malformed batch id {batch_id!r}")
    return plake.read(Zone.QUARANTINE, LEDGER_TABLE, where=f"batch_id = '{batch_id}'", purpose="ingest").to_pylist()


def _replay(rows: list[dict[str, Any]], stages: tuple[str, ...]) -> BatchReport | None:
    done = {r["stage"]: r for r in rows}
    if not stages or not all(s in done for s in stages):
        return None
    row = done[stages[-1]]
    report = BatchReport(row["batch_id"], row["source"], row["source_path"], stages=stages, replayed=True,
                         contracts=json.loads(row["contracts"]), validation=json.loads(row["validation"]),
                         data_docs=row["data_docs"])
    for name, counts in json.loads(row["counts"]).items():
        report.tables[name] = TableCounts(counts["in"], counts["accepted"], counts["quarantined"],
                                          counts["duplicates"], Counter(counts["by_rule"]))
    return report


def _record_ledger(plake: Any, report: BatchReport, commit: CommitInfo) -> None:
    now = datetime.now(UTC)
    counts = json.dumps({n: c.to_dict() for n, c in report.tables.items()}, sort_keys=True)
    rows = [{"batch_id": report.batch_id, "stage": stage, "source": report.source, "source_path": report.path,
             "contracts": json.dumps(report.contracts, sort_keys=True), "counts": counts,
             "validation": json.dumps(report.validation, sort_keys=True), "data_docs": report.data_docs,
             "finished_at": now} for stage in report.stages]
    plake.merge_unsealed(Zone.QUARANTINE, LEDGER_TABLE, pa.Table.from_pylist(rows, schema=_LEDGER_SCHEMA),
                         keys=["batch_id", "stage"], commit=commit)


def _audit(plake: Any, report: BatchReport, commit: CommitInfo) -> None:
    from storage_security.audit.log import AuditAction, AuditEvent, Decision

    accepted = sum(c.accepted - c.duplicates for n, c in report.tables.items() if n in CONFORMED_TABLES)
    plake.record(AuditEvent(
        principal=plake.principal, action=AuditAction.WRITE, zone=Zone.RAW if "raw" in report.stages else None,
        columns=(), row_count=accepted, decision=Decision.ALLOW, purpose="ingest", dag_run=commit.dag_run,
        details={"batch_id": report.batch_id, "source": report.source, "stages": list(report.stages),
                 "replayed": report.replayed,
                 "tables": {n: {k: v for k, v in c.to_dict().items() if k != "by_rule"}
                            for n, c in report.tables.items()}}))


def ingest(settings: Settings, *, source: str, path: str | Path, table: str | None = None,
           contract: str | Path | Contract | None = None, plake: Any = None, stages: Iterable[str] = STAGES,
           dag_run: str | None = None, docs: bool = True,
           progress: Callable[[str, int, int | None], None] | None = None) -> BatchReport:
    """Ingest one source file (or directory of FHIR/HL7 files) as one batch.

    Args:
        settings: medguard settings (chunk size, record size limit, home for drafts and Data Docs).
        source: ``tabular``, ``fhir``, ``hl7``, ``ccda`` or ``notes``.
        path: the extract file, or a directory of ``*.ndjson`` bundles / ``*.hl7`` messages / ``*.xml`` C-CDA
            documents / ``*.txt`` notes.
        table: the table of a tabular extract (default: the file name's stem).
        contract: a contract file or object (tabular and notes); inferred when omitted for unknown tables.
        plake: the ProtectedLake to write through (built from settings as ``svc:ingest`` when omitted).
        stages: which writes to do: ``quarantine``, ``raw`` (both by default; none = validate only).
        dag_run: the Airflow run id, recorded in commits and the audit event.
        docs: build Great Expectations Data Docs under ``$MEDGUARD_HOME/reports/ingest/data_docs``.
        progress: called with (table, rows read so far, None) as each chunk's table is loaded.

    Returns:
        The batch report; ``replayed`` when the ledger shows the batch already finished these stages.

    Raises:
        ValueError: bad arguments (unknown source, missing path, table/contract mismatch).
        ValidationError: a contract is invalid, or the in = accepted + quarantined invariant broke.
        KeyProviderUnavailableError, CryptoError: the key provider failed; nothing was written in plaintext.
    """
    stages = tuple(s for s in STAGES if s in set(stages))
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    source_path = Path(path).expanduser().resolve()
    files = source_files(source, source_path)
    contracts = {name: with_defaults(found, facility=settings.ingestion.default_facility)
                 for name, found in resolve_contracts(settings, source, source_path, table, contract).items()}
    if plake is None:
        from storage_security.protected import ProtectedLake

        plake = ProtectedLake.from_settings(settings, principal=PRINCIPAL)
    keys = SourceKeys.of_lake(plake)  # fails closed: no key, no batch id and nothing read
    batch_id = batch_id_for(source, files, contracts, settings.ingestion.chunk_rows, keys)
    commit = CommitInfo(principal=plake.principal, purpose="ingest", dag_run=dag_run, batch_id=batch_id)
    if stages:
        replayed = _replay(_ledger_rows(plake, batch_id), stages)
        if replayed is not None:
            _audit(plake, replayed, commit)
            return replayed
    docs_dir = settings.home / "reports" / "ingest" / "data_docs" if docs else None
    with _long_lived_heap():
        report = _Batch(settings, plake, source, source_path, contracts, batch_id, stages, dag_run, docs_dir,
                        progress, keys=keys).run()
    if stages:
        _record_ledger(plake, report, commit)
    _audit(plake, report, commit)
    return report


def _release_freed_memory() -> None:
    """Hand the heap a chunk freed back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    A chunk's temporaries are freed when it is written, but glibc keeps the pages for reuse, so a long batch's
    resident memory only grows: 230 MB of the observations' peak at 100,000 patients, at no measurable cost.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    """The C library, where it has ``malloc_trim`` (glibc), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


@contextmanager
def _long_lived_heap() -> Iterator[None]:
    """Keep the garbage collector's full passes off the objects that exist before a batch starts.

    A batch creates many long-lived objects (a key per new patient, cipher objects, chunks in flight), so the
    collector's oldest generation fills and is swept again and again, each sweep walking every object the
    process holds (the imported libraries' included): 10-20 % of ingestion's CPU at 100,000 patients. Frozen,
    those are skipped; what the batch creates is still collected, and the freeze ends with the batch.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def locate_file(settings: Settings, label: str, folder: str | Path, *, plake: Any = None) -> list[Path]:
    """The files of ``folder`` whose keyed label is in ``label`` (a ``fd_…`` token, or a quarantine position).

    The label is the lake's keyed digest of the file's name, so this needs the lake's key, as the batch did. The
    search is audited (a read of the quarantine zone's file labels), naming neither the label nor the file.

    Raises:
        ValueError: no ``fd_<16 hex>`` token in ``label``, or no ``folder``.
        KeyProviderUnavailableError, KeyAccessDeniedError: the key provider failed.
    """
    from storage_security.audit.log import AuditAction, AuditEvent, Decision

    if plake is None:
        from storage_security.protected import ProtectedLake

        plake = ProtectedLake.from_settings(settings, principal=PRINCIPAL)
    found = locate(SourceKeys.of_lake(plake), label, Path(folder).expanduser())
    plake.record(AuditEvent(principal=plake.principal, action=AuditAction.READ, zone=Zone.QUARANTINE, columns=(),
                            row_count=len(found), decision=Decision.ALLOW, purpose="ingest-locate",
                            details={"located": len(found)}))
    return found


def legacy_digests(lake: Any) -> dict[str, int]:
    """Rows written before digests were keyed, per ``zone.table``: their batch id is an unkeyed ``b<24 hex>``.

    Such a batch may have left unkeyed ``sha256:`` keys of id-less records in ``raw`` and file names in quarantine
    positions, reasons and ``source_path`` and in the ledger; the batch id itself is an unkeyed digest of the input
    files. Reads one plaintext column per table (no key, nothing decrypted); tables without a batch column are
    not counted.
    """
    found: dict[str, int] = {}
    for zone, column in ((Zone.RAW, "_batch_id"), (Zone.QUARANTINE, "batch_id")):
        for table in lake.tables(zone):
            if column not in lake.schema(zone, table).names:
                continue
            ids = lake.read_arrow(zone, table, columns=[column]).column(column)
            legacy = int(pc.sum(pc.match_substring_regex(ids, LEGACY_BATCH_ID.pattern)).as_py() or 0)
            if legacy:
                found[f"{zone}.{table}"] = legacy
    return found


def extract_paths(source: str, sources_dir: str | Path, *,
                  tabular_format: str = "parquet") -> list[tuple[Path, str | None]]:
    """The inputs of one source kind in a generator-shaped extract folder: ``(path, table)`` pairs.

    Tabular: every ``<table>.<format>`` of the conformed tables found; FHIR: ``fhir/``; HL7: ``hl7/``; C-CDA:
    ``ccda/``; notes: ``notes.jsonl``. Missing inputs are simply absent from the list.
    """
    root = Path(sources_dir)
    if source == "tabular":
        return [(root / f"{t}.{tabular_format}", t) for t in CONFORMED_TABLES
                if t not in ("notes", "resources") and _not_a_link(root / f"{t}.{tabular_format}").is_file()]
    candidate = {"fhir": root / "fhir", "hl7": root / "hl7", "ccda": root / "ccda",
                 "notes": root / "notes.jsonl"}.get(source)
    if candidate is None:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    return [(candidate, None)] if _not_a_link(candidate).exists() else []


def _not_a_link(path: Path) -> Path:
    # An input inside an extract folder is the folder's own file: a link there could point anywhere (a secret).
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; links in an extract folder are not followed")
    return path


def ingest_extract(settings: Settings, *, source: str, sources_dir: str | Path, stages: Iterable[str] = STAGES,
                   tabular_format: str = "parquet", plake: Any = None, dag_run: str | None = None) -> dict[str, Any]:
    """Ingest every input of one source kind found in an extract folder; the DAG's tasks call this.

    Returns:
        ``{"batches": [batch ids], "tables": {table: {"in", "accepted", "quarantined"}}}`` summed over batches.
    """
    if plake is None:
        from storage_security.protected import ProtectedLake

        plake = ProtectedLake.from_settings(settings, principal=PRINCIPAL)
    totals: dict[str, Counter[str]] = {}
    batches = []
    for path, table in extract_paths(source, sources_dir, tabular_format=tabular_format):
        report = ingest(settings, source=source, path=path, table=table, plake=plake, stages=stages, dag_run=dag_run)
        batches.append(report.batch_id)
        for name, counts in report.tables.items():
            totals.setdefault(name, Counter()).update(
                {"in": counts.rows_in, "accepted": counts.accepted, "quarantined": counts.quarantined})
    return {"batches": batches, "tables": {name: dict(c) for name, c in sorted(totals.items())}}
