"""What the endpoint, signature and client tests share: key pairs, a settable clock, a registry with one endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from access.endpoints import EndpointRegistry
from access.signatures import NonceStore, RequestVerifier

# 2026-11-30 12:00:00 UTC: a fixed "now" so every time check is exact.
NOW = 1_796_040_000


class Clock:
    """Seconds since the epoch, moved by the test; ``at()`` is the same instant as a datetime for the registry."""

    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@dataclass(frozen=True)
class KeyPair:
    private: Any
    private_pem: bytes
    public_pem: str
    alg: str


def key_pair(alg: str = "ed25519") -> KeyPair:
    private = ed25519.Ed25519PrivateKey.generate() if alg == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    return KeyPair(private, private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                   private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
                   "ed25519" if alg == "ed25519" else "ecdsa-p256-sha256")


def registry(path: Path, clock: Clock, events: list | None = None) -> EndpointRegistry:
    audit = (lambda operation, details: events.append((operation, details))) if events is not None else None
    return EndpointRegistry(path / "endpoints.json", audit=audit, clock=clock.at)


def verifier(path: Path, clock: Clock, *, window: int = 300) -> RequestVerifier:
    return RequestVerifier(registry(path, clock), NonceStore(path / "requests.sqlite3", clock=clock),
                           window_seconds=window, clock=clock)
