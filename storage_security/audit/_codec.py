"""The byte-exact encodings the audit log hashes and signs: canonical JSON, event hashes, head signatures.

Writer and verifier both go through these functions, so a row is hashed the same way whether it was just built
or read back from Delta. Formats (version 1):

- event hash: ``SHA-256(b"medguard-audit-event-v1\\x00" || canonical_json(fields))`` as 64 lowercase hex digits,
  where ``fields`` maps every name in :data:`EVENT_FIELDS` (``seq`` and ``prev_hash`` included, ``hash``
  excluded) to its value; timestamps become ISO-8601 UTC strings with microseconds, a missing column is null.
- head signature: ``HMAC-SHA256(key, b"medguard-audit-head-v1\\x00" || canonical_json({seq, hash, key_ref,
  signed_at}))`` as 64 hex digits.
- key reference: ``<kek name>/<first 16 hex digits of HMAC-SHA256(key, b"medguard-audit-key-id-v1")>``: names
  the signing key itself, so it survives re-wrapping and a swapped key record is noticed.
- canonical JSON: sorted keys, no whitespace, UTF-8, no NaN/Infinity (RFC 8785-like for the values we store).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
EVENT_FIELDS = (
    "seq", "prev_hash", "time", "principal", "action", "zone", "table_name", "columns", "row_count", "row_keys",
    "decision", "purpose", "reason", "dag_run", "details",
)
_EVENT_DOMAIN = b"medguard-audit-event-v1\x00"
_HEAD_DOMAIN = b"medguard-audit-head-v1\x00"
_KEY_ID_DOMAIN = b"medguard-audit-key-id-v1"


def utc_text(moment: datetime) -> str:
    """An aware datetime as ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``.

    Raises:
        ValueError: the datetime is naive (its time zone is unknown).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"audit times must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, UTF-8; NaN and Infinity are refused.

    Raises:
        ValueError: the value holds NaN/Infinity; TypeError: it holds something JSON cannot encode.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def event_hash(row: Mapping[str, Any]) -> str:
    """The SHA-256 of one event row (every field of :data:`EVENT_FIELDS`, ``seq`` and ``prev_hash`` included)."""
    fields = {name: _plain(row.get(name)) for name in EVENT_FIELDS}
    return hashlib.sha256(_EVENT_DOMAIN + canonical_json(fields)).hexdigest()


def _head_message(seq: int, head_hash: str, key_ref: str, signed_at: datetime) -> bytes:
    fields = {"seq": seq, "hash": head_hash, "key_ref": key_ref, "signed_at": utc_text(signed_at)}
    return _HEAD_DOMAIN + canonical_json(fields)


def sign_head(key: bytes, seq: int, head_hash: str, key_ref: str, signed_at: datetime) -> str:
    """The HMAC-SHA256 signature of a chain head, hex."""
    return hmac.new(key, _head_message(seq, head_hash, key_ref, signed_at), hashlib.sha256).hexdigest()


def head_signature_ok(key: bytes, seq: int, head_hash: str, key_ref: str, signed_at: datetime,
                      signature: str | None) -> bool:
    """True when ``signature`` is the head's signature under ``key`` (constant-time comparison)."""
    if not isinstance(signature, str):
        return False
    return hmac.compare_digest(sign_head(key, seq, head_hash, key_ref, signed_at), signature)


def key_ref(kek_name: str, key: bytes) -> str:
    """The public reference of a signing key: the KEK's name and a one-way digest of the key."""
    return f"{kek_name}/{hmac.new(key, _KEY_ID_DOMAIN, hashlib.sha256).hexdigest()[:16]}"
