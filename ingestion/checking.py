"""The side-effect-free half of loading a chunk: conform, validate and hash it, inline or in spawned workers.

:func:`check_table` turns one table's raw records into row verdicts (type violations and the contract's rules,
vectorised over Arrow), the typed Arrow rows that passed, and their keyed record hashes. It touches no table, key
or file, so it can run in another process: :class:`CheckPipeline` hands chunks to a ``spawn`` process pool
(delta-rs and spaCy do not survive ``fork``) and gives the results back in source order, while the loader seals
and writes earlier chunks. At most ``workers + 1`` chunks are in flight, so memory stays bounded. With no
workers everything runs inline, which is also what small inputs do: a one-chunk input is checked inline. The
pool starts with the first input of two chunks or more and stays up for the process's later batches.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.contract import Contract
from ingestion.sources._base import SourceChunk, TableRows
from ingestion.validate import ChunkResult, ChunkValidator, conform
from pipeline.settings import Settings

__all__ = ["CheckPipeline", "CheckedTable", "HashKey", "check_chunk", "check_table", "hash_prefixes",
           "install_hash_key", "record_hash_array", "record_hash_key", "record_hashes", "worker_count"]


@dataclass(frozen=True)
class HashKey:
    """The secret of the keyed record hash, as bytes a pure function can take; its repr never shows them.

    It is derived from a provider-held key (see :func:`record_hash_key`) and reaches a spawned worker through
    the pool's initializer (a pipe, never a file); it is never written anywhere.
    """

    secret: bytes = field(repr=False)
    version: str = ""

    def __repr__(self) -> str:
        return f"HashKey(version={self.version!r}, secret=<redacted>)"


def record_hash_key(plake: Any) -> HashKey:
    """The record-hash key of a lake, derived from its ``patient`` pseudonym key (wrapped by the provider).

    :meth:`~storage_security.crypto.pseudonyms.Pseudonymizer.derive_key` gives it (label ``record-hash``): a
    secret only a holder of the provider-wrapped key can compute, at no extra provider request.
    """
    pseudonymizer = plake.pseudonymizer("patient")
    return HashKey(pseudonymizer.derive_key("record-hash"), version=pseudonymizer.key_version)


_INSTALLED: list[HashKey] = []


def install_hash_key(key: HashKey | None) -> None:
    """Make ``key`` the record-hash key of this process (a spawned worker's initializer calls this)."""
    _INSTALLED[:] = [key] if key is not None else []


@dataclass
class CheckedTable:
    """One table of one chunk after checking.

    Attributes:
        result: the per-rule outcomes, and ``violations``: every rule each row index broke.
        candidates: the row indices that broke nothing, in order; ``typed`` holds them in the contract's types.
        hashes: the keyed record hash of each candidate (hex); None when the check had no hash key, in which
            case the loader hashes ``typed`` itself.
        patients: the source patient id of every row as text (Arrow; for the quarantine's pseudonym).
        keys: the key value of every row as text (Arrow; null when missing), or None when there is no key.
    """

    result: ChunkResult
    candidates: list[int]
    typed: pa.Table
    hashes: pa.StringArray | None
    patients: pa.Array | None = None
    keys: pa.Array | None = None


def record_hash_array(table: str, data: pa.Table, key: HashKey) -> pa.StringArray:
    """HMAC-SHA256, under ``key``, of the table name and each row's typed values (its content, not provenance),
    as 64 lowercase hex digits per row.

    Each value is written as its text with its length in front (``5:hello``), a null as ``\\0``, so no two
    different rows share an encoding; the text of a value is Arrow's cast to string of the contract's type,
    the same whatever format the row arrived in. Where the native helpers were built, one call frames and MACs
    every row from the text columns; where not, the framing is built column-wise (:func:`_framed_rows`) and the
    MAC is one ``hmac`` call a row.
    """
    count = data.num_rows
    if count == 0:
        return pa.array([], pa.string())
    from storage_security.crypto.pseudonyms import framed_keyed_hex, keyed_hex  # the security core's digests

    prefix = json.dumps(table).encode() + b"\0"
    hashes = framed_keyed_hex(key.secret, prefix, _texts(data))
    return hashes if hashes is not None else keyed_hex(key.secret, prefix, _framed_rows(data))


_HEX_DIGITS = 2 * hashlib.sha256().digest_size


def _framed_rows(data: pa.Table) -> pa.Array:
    """Each row's values framed as ``<characters>:<text>`` (a null as ``\\0``) and joined, one string a row.

    The text of a value is Arrow's cast to string; the framing and joining run in DuckDB, over the Arrow
    columns without copying them in, about twice as fast as the same kernels in Arrow (whose element-wise join
    of many columns dominated the record hash). DuckDB's ``length`` counts code points, as Arrow's
    ``utf8_length`` did: the bytes, and so every hash, are the same (a test recomputes the documented HMAC
    value by value in Python).
    """
    import duckdb

    texts = pa.table(_texts(data), names=[f"c{i}" for i in range(data.num_columns)])
    # One flat concat: a chain of || nests one level per column, past DuckDB's depth limit on wide tables.
    framed = "concat(" + ", ".join(f"coalesce(length(c{i})::varchar || ':' || c{i}, chr(0))"
                                   for i in range(texts.num_columns)) + ")"
    with duckdb.connect() as connection:
        connection.register("texts", texts)
        result = connection.sql(f"SELECT {framed} AS framed FROM texts").to_arrow_table()  # noqa: S608
    return result.column("framed").combine_chunks()


def _texts(data: pa.Table) -> list[pa.Array]:
    """Each column as Arrow's text of its values (one array each)."""
    return [(column if column.type == pa.string() else pc.cast(column, pa.string())).combine_chunks()
            for column in data.itercolumns()]


def record_hashes(table: str, data: pa.Table, key: HashKey) -> list[str]:
    """:func:`record_hash_array` as a list of hex strings."""
    return record_hash_array(table, data, key).to_pylist()


def hash_prefixes(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 64 bits of each record hash of :func:`record_hash_array` (hex, no nulls), as ``uint64``."""
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    count = len(hashes)
    offsets = np.frombuffer(hashes.buffers()[1], dtype=np.int32, count=count + 1, offset=4 * hashes.offset)
    if hashes.null_count or np.any(np.diff(offsets) != _HEX_DIGITS):
        raise ValueError("record hashes must be 64 hex digits")
    text = np.frombuffer(hashes.buffers()[2], dtype=np.uint8, count=_HEX_DIGITS * count, offset=int(offsets[0]))
    nibbles = _NIBBLE[text.reshape(count, _HEX_DIGITS)[:, :16]]
    if np.any(nibbles > 15):
        raise ValueError("record hashes must be 64 hex digits")
    return ((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).copy().view(">u8").ravel().astype(np.uint64)


_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


_VALIDATORS: dict[tuple[str, str], ChunkValidator] = {}


def _validator(contract: Contract) -> ChunkValidator:
    # One per contract and process: its checks are built once.
    key = (contract.table, contract.fingerprint)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = ChunkValidator(contract)
    return _VALIDATORS[key]


def _as_text(data: pa.Table, column: str | None) -> pa.Array | None:
    if column is None:
        return None
    values = data.column(column).combine_chunks()
    return values if values.type == pa.string() else pc.cast(values, pa.string())


def check_table(contract: Contract, rows: TableRows, hash_key: HashKey | None = None) -> CheckedTable:
    """Conform, validate and hash one table's records of a chunk; pure (Arrow in, Arrow out).

    ``hash_key`` defaults to this process's installed key (:func:`install_hash_key`); with neither, no hashes
    are computed here and the loader hashes the accepted rows itself.
    """
    data, violations = conform(rows, contract)
    result = _validator(contract).validate(data)
    for index, found in result.violations.items():
        violations.setdefault(index, []).extend(found)
    result.violations = violations
    keep = np.ones(data.num_rows, dtype=bool)
    if violations:
        keep[np.fromiter(violations, dtype=np.int64, count=len(violations))] = False
    typed = data.filter(pa.array(keep)) if violations else data
    key = hash_key if hash_key is not None else (_INSTALLED[0] if _INSTALLED else None)
    hashes = record_hash_array(contract.table, typed, key) if key is not None else None
    return CheckedTable(result, np.flatnonzero(keep).tolist(), typed, hashes,
                        _as_text(data, contract.patient_column), _as_text(data, contract.key))


def check_chunk(chunk: SourceChunk, contracts: dict[str, Contract],
                hash_key: HashKey | None = None) -> dict[str, CheckedTable]:
    """Every table of a chunk checked against its contract (the tables without one are left to the loader)."""
    return {table: check_table(contracts[table], rows, hash_key) for table, rows in chunk.tables.items()
            if table in contracts}


def worker_count(settings: Settings) -> int:
    """The checking workers to use: ``ingestion.workers``, or when unset one per two cores beyond the first two
    (at most 4). On 2 cores one worker measured no faster than none: the loader's own half (reading, sealing,
    writing) keeps the other core busy, and shipping chunks between processes costs what it saves."""
    chosen = settings.ingestion.workers
    return chosen if chosen is not None else min(4, max(0, (os.cpu_count() or 1) // 2 - 1))


def _prepare_worker(hash_key: HashKey | None = None) -> None:
    install_hash_key(hash_key)
    # Great Expectations imports pyspark.sql.connect, which takes a __main__ without __file__ or __spec__ for a
    # doctest run and calls sys.exit(0). A spawned worker of a parent started as `python -m ...` (pytest, an
    # Airflow task) has just such a __main__; naming it keeps the import an import.
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
        main.__file__ = "<medguard ingestion worker>"
    # A loader killed hard (the crash tests do it) leaves its workers waiting on a dead pipe: they leave too.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class CheckPipeline:
    """Checks a stream of chunks ahead of the loader, in order; a context manager that owns its pool.

    Args:
        contracts: the contract of every table the source can fill.
        workers: processes to check in (0: inline).
    """

    def __init__(self, contracts: dict[str, Contract], workers: int, hash_key: HashKey | None = None) -> None:
        self.contracts = contracts
        self.workers = max(0, workers)
        self.hash_key = hash_key
        self._pending: deque[Future[dict[str, CheckedTable]]] = deque()

    def __enter__(self) -> CheckPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        # The pool outlives the batch (its workers are warm: imports, GX contexts); what this batch left
        # queued, after an error, is dropped.
        for future in self._pending:
            future.cancel()

    def _submit(self, chunk: SourceChunk) -> Future[dict[str, CheckedTable]]:
        future = _pool(self.workers, self.hash_key).submit(check_chunk, chunk, self.contracts)
        self._pending.append(future)
        return future

    def run(self, chunks: Iterator[SourceChunk]) -> Iterator[tuple[SourceChunk, dict[str, CheckedTable]]]:
        """``(chunk, checked tables)`` for every chunk, in source order."""
        chunks = iter(chunks)
        head = list(itertools.islice(chunks, 2))
        if len(head) < 2 or self.workers == 0:
            for chunk in itertools.chain(head, chunks):
                yield chunk, check_chunk(chunk, self.contracts, self.hash_key)
            return
        pending: deque[tuple[SourceChunk, Future[dict[str, CheckedTable]]]] = deque()
        for chunk in itertools.chain(head, chunks):
            while len(pending) > self.workers:
                done, future = pending.popleft()
                yield done, future.result()
            pending.append((chunk, self._submit(chunk)))
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
        self._pending.clear()


_POOLS: dict[tuple[int, bytes | None], ProcessPoolExecutor] = {}


def _pool(workers: int, hash_key: HashKey | None) -> ProcessPoolExecutor:
    """One pool per worker count, hash key and process, started on first use and kept for later batches.

    The workers receive the hash key once, through the initializer (a pipe); chunks travel without it.
    """
    ident = (workers, hashlib.sha256(hash_key.secret).digest() if hash_key is not None else None)
    pool = _POOLS.get(ident)
    if pool is None or getattr(pool, "_broken", False):  # a worker that died breaks its pool for good
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_prepare_worker, initargs=(hash_key,))
        _POOLS[ident] = pool
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool
