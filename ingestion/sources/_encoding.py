"""Whether a text file's first bytes say it is in an encoding other than UTF-8 (a UTF-16 or UTF-32 byte-order mark).

Readers decode every line as strict UTF-8. A file written as "Unicode text" by a spreadsheet or a Windows tool
starts with a UTF-16 byte-order mark and has a NUL byte beside every character: read line by line, each of its
lines would be quarantined alone with a reason that hides the cause. Checked first, the whole file is refused
once with a reason that names the encoding and the fix. A UTF-8 byte-order mark is not a problem: it is stripped.
"""

from __future__ import annotations

__all__ = ["UTF8_BOM", "foreign_encoding"]

UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: the UTF-32 little-endian mark begins with the UTF-16 little-endian one.
_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"), (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
          (b"\xff\xfe", "UTF-16 (little-endian)"), (b"\xfe\xff", "UTF-16 (big-endian)"))


def foreign_encoding(head: bytes) -> str | None:
    """Why a file starting with ``head`` is not UTF-8 text (a reason naming the encoding and the fix), or None."""
    for mark, name in _MARKS:
        if head.startswith(mark):
            return (f"starts with a {name} byte-order mark: the file is {name.split()[0]}, not UTF-8; convert it "
                    f"(e.g. iconv -f {name.split()[0]} -t UTF-8) and ingest it again")
    return None
