"""One JSON document in a 0600 file under the home: read and edited under an exclusive lock, replaced atomically.

The principal store and the endpoint registry keep their records this way, so that several processes of one home
(the CLI, every server worker) see one consistent document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storage_security._locks import exclusive_lock


class LockedJsonFile:
    """``path`` holds ``{"format": fmt, ...}``; ``empty()`` is the document before the first write."""

    def __init__(self, path: Path, *, fmt: int, kind: str, empty: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._lock_path = path.with_suffix(".lock")
        self._format = fmt
        self._kind = kind
        self._empty = empty

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": self._format, **self._empty()}
        data = json.loads(self.path.read_text())
        if data.get("format") != self._format:
            raise ValueError(f"{self.path}: unknown {self._kind} format {data.get('format')!r}")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The document, saved when the block ends without an exception."""
        with exclusive_lock(self._lock_path, timeout=30):
            data = self._load()
            yield data
            self._save(data)

    def read(self) -> dict[str, Any]:
        with exclusive_lock(self._lock_path, timeout=30):
            return self._load()
