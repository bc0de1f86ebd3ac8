"""Free text bound for the audit zone, with identifiers taken out: the audit log stores no PHI value.

The audit zone is plaintext and read by auditors, so a person's words (a break-glass justification, an
operator's reason) must not carry a patient's name, MRN or SSN there. Two layers:

- :func:`redact_free_text`: the PHI detector (:class:`~storage_security.deid.detection.PhiDetector`, the same
  Presidio engine and healthcare recognizers that de-identify notes) replaces every detected span with its type,
  e.g. ``[PERSON]``, ``[MEDICAL_RECORD_NUMBER]``. The gateway runs it on every break-glass reason before the
  policy decision is made and recorded. The engine is built once per process (about 3 s; then ~5 ms a reason).
- :func:`scrub_identifiers`: patterns only (SSNs, e-mail addresses, phone numbers, runs of six or more digits,
  with an optional short letter prefix as MRNs have), microseconds a call. :class:`~storage_security.audit.log.AuditLog`
  runs it on every event's ``reason`` as a backstop, whatever wrote the event.

What neither layer catches is a name the detector does not recognise as one; the justification keeps its words
otherwise, since an auditor must still read why access was taken.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Any

_PATTERNS = (
    ("US_SSN", re.compile(r"\b\d{3}[- ]?\d{2}[- ]?\d{4}\b")),
    ("EMAIL_ADDRESS", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("PHONE_NUMBER", re.compile(r"(?<!\w)(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b")),
    ("ID_NUMBER", re.compile(r"\b[A-Za-z]{0,4}[-#:]?\d{6,}\b")),
)
_LOCK = threading.Lock()


def scrub_identifiers(text: str | None) -> str | None:
    """``text`` with SSN-, e-mail-, phone- and record-number-shaped values replaced by their type (cheap)."""
    if not text:
        return text
    for label, pattern in _PATTERNS:
        text = pattern.sub(f"[{label}]", text)
    return text


@cache
def _detector() -> Any:
    from storage_security.deid.detection import PhiDetector

    return PhiDetector()


def redact_free_text(text: str | None) -> str | None:
    """``text`` with every PHI span the detector finds replaced by ``[ENTITY_TYPE]``, then scrubbed.

    Raises:
        ImportError, OSError: the PHI detector's model is not installed (callers must not store the text then).
    """
    if not text:
        return text
    with _LOCK:  # one engine per process; spaCy pipelines are not meant to be shared across threads
        spans = _detector().detect(text)
    cut = len(text)
    for span in sorted(spans, key=lambda s: (s.start, -s.end), reverse=True):
        end = min(span.end, cut)  # overlapping spans: the earlier one takes what the later left
        if span.start < end:
            text = f"{text[:span.start]}[{span.entity_type}]{text[end:]}"
            cut = span.start
    return scrub_identifiers(text)
