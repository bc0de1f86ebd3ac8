"""The backup envelope (X25519 + HKDF + AES-256-GCM chunks) and backup retention, without a lake."""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.settings import load_settings
from storage_security.backup import _envelope as envelope
from storage_security.backup.archive import ARCHIVE, MANIFEST, VERIFIED, ensure_public_key, prune_backups


@pytest.fixture
def pair(tmp_path: Path):
    envelope.generate_key_pair(tmp_path / "k.pub", tmp_path / "k.pem")
    return envelope.load_public_key(tmp_path / "k.pub"), envelope.load_private_key(tmp_path / "k.pem")


def _seal(public, data: bytes, chunk: int = 64) -> bytes:
    out = io.BytesIO()
    writer = envelope.EncryptingWriter(out, public, meta={"backup_id": "b1", "kind": "test"}, chunk_bytes=chunk)
    for start in range(0, len(data), 50):  # writes that straddle chunk boundaries
        writer.write(data[start:start + 50])
    writer.close()
    return out.getvalue()


def _open(private, sealed: bytes) -> bytes:
    return b"".join(envelope.decrypt_chunks(io.BytesIO(sealed), private, "test"))


@pytest.mark.parametrize("size", [0, 1, 64, 65, 640, 1000])
def test_when_data_is_sealed_then_only_the_private_key_opens_it_whole(pair, size: int) -> None:
    public, private = pair
    data = os.urandom(size)
    sealed = _seal(public, data)
    assert _open(private, sealed) == data
    assert size < 16 or data[:16] not in sealed


def test_when_a_chunk_is_altered_then_it_fails_authentication_naming_the_chunk(pair) -> None:
    public, private = pair
    sealed = bytearray(_seal(public, os.urandom(640)))
    sealed[-100] ^= 1
    with pytest.raises(envelope.ChunkAuthenticationError, match=r"chunk \d+ fails authentication"):
        _open(private, bytes(sealed))


def test_when_the_tail_is_cut_at_a_chunk_boundary_then_the_missing_final_chunk_is_named(pair) -> None:
    public, private = pair
    sealed = _seal(public, os.urandom(640))
    last = 4 + 64 + 16  # the final chunk here holds 64 bytes
    with pytest.raises(envelope.BackupIntegrityError, match="the final chunk is missing"):
        _open(private, sealed[:-last])


def test_when_the_header_is_altered_then_no_chunk_authenticates(pair) -> None:
    public, private = pair
    sealed = _seal(public, b"x" * 100)
    tampered = sealed.replace(b'"kind":"test"', b'"kind":"tost"')
    assert tampered != sealed
    with pytest.raises(envelope.ChunkAuthenticationError):
        _open(private, tampered)


def test_when_the_wrong_private_key_opens_it_then_both_key_ids_are_named(pair, tmp_path: Path) -> None:
    public, _ = pair
    envelope.generate_key_pair(tmp_path / "o.pub", tmp_path / "o.pem")
    other = envelope.load_private_key(tmp_path / "o.pem")
    with pytest.raises(envelope.BackupIntegrityError,
                       match=f"encrypted to backup key {envelope.key_id(public)}, but the private key given is "
                             f"{envelope.key_id(other.public_key())}"):
        _open(other, _seal(public, b"data"))


def test_when_no_key_pair_exists_then_one_is_made_with_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    _, created = ensure_public_key(settings)
    assert created == tmp_path / "home" / "backup-key.pem"
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    assert ensure_public_key(settings)[1] is None  # made once


def _fake_backup(root: Path, created: datetime, *, verified: bool) -> Path:
    path = root / f"mg-{created:%Y%m%dT%H%M%SZ}-000000"
    path.mkdir(parents=True)
    (path / ARCHIVE).write_bytes(b"x")
    (path / MANIFEST).write_bytes(b"x")
    if verified:
        (path / VERIFIED).write_text("{}")
    return path


def test_when_backups_age_past_retention_then_they_go_but_the_newest_verified_one_stays(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", backup={"retention_days": 7})
    root = tmp_path / "home" / "backups"
    now = datetime(2026, 12, 1, tzinfo=UTC)
    old_verified = _fake_backup(root, now - timedelta(days=20), verified=True)
    old = _fake_backup(root, now - timedelta(days=10), verified=False)  # newer, but never verified
    recent = _fake_backup(root, now - timedelta(days=1), verified=False)

    removed = prune_backups(settings, now=now)

    assert removed == [old.name]
    assert old_verified.exists() and recent.exists()
    _fake_backup(root, now - timedelta(days=2), verified=True)
    assert prune_backups(settings, now=now) == [old_verified.name]
