"""Which files under an input path a reader may open: regular files directly inside the folder, no links.

A folder handed to ``medguard ingest`` is read flat (no sub-folders), and only regular files whose name ends with
one of the reader's suffixes are inputs. A symbolic link, or anything that is not a regular file (a FIFO, a
device), is never opened: it becomes a ``files`` record refused with rule ``file:symlink`` or ``file:special``
and its name as position, so the run says what it skipped and ``rows in = accepted + quarantined`` still holds.
(A link in a notes folder once made ingestion read, and store, the local OpenBao's root-token file.)

A single file given by the user is taken as given, links resolved: pointing at it was the user's choice.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from ingestion.sources._base import Rejected, SourceChunk
from ingestion.sources._keyed import SourceKeys

__all__ = ["FILES", "InputFiles", "input_files"]

FILES = "files"


@dataclass
class InputFiles:
    """The files a reader opens, in name order, and the entries it refused (each a ``files`` rejection)."""

    files: list[Path] = field(default_factory=list)
    refused: list[Rejected] = field(default_factory=list)

    def report_refused(self, chunk: SourceChunk) -> None:
        """Count every refused entry as one ``files`` unit of ``chunk`` and add its rejection."""
        if self.refused:
            chunk.units[FILES] = chunk.units.get(FILES, 0) + len(self.refused)
            chunk.rejected.extend(self.refused)


def input_files(path: Path, suffixes: tuple[str, ...], keys: SourceKeys | None = None) -> InputFiles:
    """The inputs under ``path``: the file itself, or the folder's regular files ending with ``suffixes``.

    ``suffixes`` are matched case-insensitively against the end of the name (``.ndjson``, ``.ndjson.gz``). A refused
    entry is named as ``keys`` names files (its keyed label in a batch: a file name can name a patient).
    Raises ``ValueError`` when ``path`` does not exist or is neither a file nor a folder.
    """
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_dir():
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file or a folder")
        return InputFiles([path])
    found = InputFiles()
    wanted = tuple(s.lower() for s in suffixes)
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if not entry.name.lower().endswith(wanted):
            continue
        mode = entry.lstat().st_mode
        name = keys.file_name(entry.name) if keys is not None else entry.name
        if stat.S_ISLNK(mode):
            found.refused.append(Rejected(FILES, name, "file:symlink",
                                          f"{name} is a symbolic link; links are not followed (an input "
                                          "must be a regular file inside the folder)", ""))
        elif not stat.S_ISREG(mode):
            found.refused.append(Rejected(FILES, name, "file:special",
                                          f"{name} is not a regular file (a folder, FIFO or device); "
                                          "not read", ""))
        else:
            found.files.append(entry)
    return found
