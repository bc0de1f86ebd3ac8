"""A writer-side cache of the audit chain's head, trusted only while the Delta table is still at its version.

Appending an event needs the current head (seq, hash). Reading it from Delta opens the table, which costs as
much as the append itself; this cache lets the holder of the writer lock skip that read. After each append the
writer stores ``(version, seq, hash)`` plus the size and mtime of that version's commit file. The entry is
used only when that commit file is unchanged and the next one (``version + 1``) does not exist, i.e. when no
commit of any kind (another tool, a restore, a crash after the commit but before the cache was written) has
happened since. Anything else, or a lake that is not a local directory, means a miss and a real read.
The cache is never used by verification.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def _commit_file(log_dir: Path, version: int) -> Path:
    return log_dir / f"{version:020d}.json"


class HeadCache:
    """The head cache of one audit table. Call :meth:`get` and :meth:`put` only while holding the writer lock.

    Args:
        path: the cache file (under ``$MEDGUARD_HOME/locks``).
        table_dir: the events table's local directory, or None when the lake is not local (never hits).
    """

    def __init__(self, path: Path, table_dir: Path | None) -> None:
        self._path = path
        self._log_dir = None if table_dir is None else table_dir / "_delta_log"

    def get(self) -> tuple[int, str] | None:
        """The cached (seq, hash) when the table has not moved since it was cached, else None."""
        if self._log_dir is None:
            return None
        try:
            entry = json.loads(self._path.read_text())
            version, seq, digest, stat = entry["version"], entry["seq"], entry["hash"], entry["stat"]
            current = _commit_file(self._log_dir, version).stat()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _commit_file(self._log_dir, version + 1).exists() or stat != [current.st_size, current.st_mtime_ns]:
            return None
        return seq, digest

    def put(self, version: int, seq: int, digest: str) -> None:
        """Remember that the table's ``version`` ends the chain at ``seq`` with ``digest``."""
        if self._log_dir is None:
            return
        try:
            current = _commit_file(self._log_dir, version).stat()
        except OSError:
            self.forget()
            return
        entry = {"version": version, "seq": seq, "hash": digest, "stat": [current.st_size, current.st_mtime_ns]}
        partial = self._path.with_suffix(".tmp")
        try:
            partial.write_text(json.dumps(entry))
            os.replace(partial, self._path)
        except OSError:
            # The event is committed already; failing here would invite a retry that records it twice.
            self.forget()

    def forget(self) -> None:
        """Drop the entry (the next writer reads the head from the table)."""
        with contextlib.suppress(OSError):
            self._path.unlink(missing_ok=True)
