"""An exclusive inter-process lock on a local file (``fcntl.flock``), with a timeout."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import MedguardError, StorageError

_FIRST_WAIT = 0.001
_LONGEST_WAIT = 0.02


@contextmanager
def exclusive_lock(path: Path, *, timeout: float, error: type[MedguardError] = StorageError) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if needed) for the ``with`` block.

    Separate processes, and separate ``open`` calls in one process, exclude each other. The lock is released
    when the block ends or the process dies, so a crashed holder never wedges the others.

    Args:
        error: what to raise when the lock cannot be had (callers whose lock guards a key store say
            :class:`~pipeline.errors.KeyProviderUnavailableError`).

    Raises:
        StorageError (or ``error``): the lock was not acquired within ``timeout`` seconds, or the file cannot
            be opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise error(f"cannot open lock file {path}: {exc}") from exc
    try:
        deadline = time.monotonic() + timeout
        wait = _FIRST_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(f"timed out after {timeout:g}s waiting for lock {path}") from None
                time.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
