"""Principals (users and services), their roles and attributes, API tokens, TOTP, lockout and sessions.

The store is one JSON file, ``$MEDGUARD_HOME/access/principals.json`` (mode 0600, in a 0700 folder), written
atomically under an exclusive ``flock``. It holds no secret that would let anyone authenticate:

- API tokens (``mgt_<id>_<secret>``) are shown once, at issue; the store keeps their id, a random salt and
  ``scrypt(secret, salt)`` only. Verification recomputes the hash and compares in constant time.
- Session tokens (``mgs_<secret>``) are random and short-lived (``access.session_ttl_minutes``); the store
  keeps their SHA-256 (they have 256 bits of entropy, so a slow hash adds nothing).
- A TOTP second factor (RFC 6238, via pyotp) keeps its shared secret in the store: TOTP needs the secret
  itself to verify. The file's mode and folder are its protection; an operator who needs more keeps
  ``MEDGUARD_HOME`` on an encrypted volume.

After ``access.max_failed_logins`` consecutive failures a principal is locked for ``access.lockout_minutes``;
every time-dependent check takes an injectable clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import AccessDeniedError
from storage_security._locks import exclusive_lock

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["Principal", "PrincipalKind", "PrincipalStore", "Role", "Session"]

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_ATTRIBUTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_TOKEN = re.compile(r"mgt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_SESSION = re.compile(r"mgs_[A-Za-z0-9_-]{43}")
# scrypt at n=2**14, r=8 costs ~16 MiB and ~50 ms: slow for a guesser, tolerable once per login.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_FORMAT = 1


class Role(StrEnum):
    """What a principal does; policies grant to roles."""

    DATA_ENGINEER = "data_engineer"
    ANALYST = "analyst"
    CLINICIAN = "clinician"
    ML_PIPELINE = "ml_pipeline"
    AUDITOR = "auditor"
    SECURITY_ADMIN = "security_admin"


class PrincipalKind(StrEnum):
    """A person or a service account."""

    USER = "user"
    SERVICE = "svc"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Principal:
    """A user or service with one role and the attributes policies test (facility, department, purposes).

    ``qualified`` (``user:alice``, ``svc:train``) is the name used in audit events and commits.
    """

    name: str
    role: Role
    kind: PrincipalKind = PrincipalKind.USER
    facility: str | None = None
    department: str | None = None
    purposes: tuple[str, ...] = ()
    disabled: bool = False
    created_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"principal name {self.name!r} must match {_NAME.pattern} (lower case, no spaces)")
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "kind", PrincipalKind(self.kind))
        object.__setattr__(self, "purposes", tuple(self.purposes))
        for label, value in (("facility", self.facility), ("department", self.department),
                             *(("purpose", p) for p in self.purposes)):
            if value is not None and not _ATTRIBUTE.fullmatch(value):
                raise ValueError(f"{label} {value!r} must match {_ATTRIBUTE.pattern}")

    @property
    def qualified(self) -> str:
        """``user:<name>`` or ``svc:<name>``."""
        return f"{self.kind.value}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (no secrets: principals hold none)."""
        out = asdict(self)
        out.update(role=self.role.value, kind=self.kind.value, purposes=list(self.purposes))
        return out


@dataclass(frozen=True)
class Session:
    """An authenticated principal for a short time. Holds a bearer secret: never pickled, never printed.

    Args:
        principal: who is authenticated.
        expires_at: when the session ends.
        auth: how it was opened: ``token`` (an API token, maybe with TOTP) or ``local-operator`` (``--as``).
        operator: for ``local-operator`` sessions, the OS account that owns ``MEDGUARD_HOME``.
        token_id: the API token's id (not its secret), for ``token`` sessions.
        endpoint: where the caller came from (an address or client id), when known.
    """

    principal: Principal
    expires_at: datetime
    auth: str
    operator: str | None = None
    token_id: str | None = None
    endpoint: str | None = None
    token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return (f"Session(principal={self.principal.qualified!r}, auth={self.auth!r}, "
                f"expires_at={self.expires_at.isoformat()!r}, token=<redacted>)")

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a Session holds a bearer token and cannot be pickled")

    def audit_details(self) -> dict[str, str]:
        """Facts about how the caller authenticated, for audit events (no secrets)."""
        out = {"auth": self.auth}
        for key in ("operator", "token_id", "endpoint"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


@dataclass(frozen=True, repr=False)
class IssuedToken:
    """A freshly issued API token: the only time its secret exists outside the caller's hands."""

    token_id: str
    principal: str
    expires_at: datetime
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"IssuedToken(token_id={self.token_id!r}, principal={self.principal!r}, secret=<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("an IssuedToken holds a bearer secret and cannot be pickled")


def _scrypt(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 2**20, **_SCRYPT).hex()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class PrincipalStore:
    """The principals, token hashes, TOTP secrets and lockout counters of one ``MEDGUARD_HOME``.

    Args:
        path: the store file (created 0600 on first write).
        session_ttl: how long a session lasts.
        token_ttl: how long an API token lasts.
        max_failures: consecutive failed logins before a lockout.
        lockout: how long a lockout lasts.
        clock: the current time, timezone-aware (tests inject one).
    """

    def __init__(self, path: Path, *, session_ttl: timedelta = timedelta(minutes=60),
                 token_ttl: timedelta = timedelta(days=90), max_failures: int = 5,
                 lockout: timedelta = timedelta(minutes=15), clock: Callable[[], datetime] = _utcnow) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {max_failures}")
        self.path = Path(path)
        self._lock_path = self.path.with_suffix(".lock")
        self._session_ttl = session_ttl
        self._token_ttl = token_ttl
        self._max_failures = max_failures
        self._lockout = lockout
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], datetime] = _utcnow) -> PrincipalStore:
        """The store under ``settings.home`` with the TTLs and lockout of ``settings.access``."""
        access = settings.access
        return cls(Path(settings.home) / "access" / "principals.json",
                   session_ttl=timedelta(minutes=access.session_ttl_minutes),
                   token_ttl=timedelta(days=access.token_ttl_days), max_failures=access.max_failed_logins,
                   lockout=timedelta(minutes=access.lockout_minutes), clock=clock)

    def __repr__(self) -> str:
        return f"PrincipalStore(path={str(self.path)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("PrincipalStore cannot be pickled; open one per process")

    # persistence -------------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": _FORMAT, "principals": {}, "tokens": {}, "sessions": {}, "failures": {}}
        data = json.loads(self.path.read_text())
        if data.get("format") != _FORMAT:
            raise ValueError(f"{self.path}: unknown principal store format {data.get('format')!r}")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        with exclusive_lock(self._lock_path, timeout=30):
            data = self._load()
            yield data
            self._save(data)

    def _read(self) -> dict[str, Any]:
        with exclusive_lock(self._lock_path, timeout=30):
            return self._load()

    # principals --------------------------------------------------------------------------------------

    def add(self, principal: Principal) -> Principal:
        """Create a principal.

        Raises:
            ValueError: a principal of that name exists already.
        """
        with self._edit() as data:
            if principal.name in data["principals"]:
                raise ValueError(f"principal {principal.name!r} exists already")
            stored = Principal(**{**principal.to_dict(), "created_at": self._clock().isoformat()})
            data["principals"][principal.name] = stored.to_dict()
        return stored

    def get(self, name: str) -> Principal:
        """The principal called ``name``.

        Raises:
            AccessDeniedError: no such principal (the message does not hint at which names exist).
        """
        record = self._read()["principals"].get(name)
        if record is None:
            raise AccessDeniedError(f"unknown principal {name!r}")
        return Principal(**{k: v for k, v in record.items() if k != "totp_secret"})

    def list(self) -> list[Principal]:
        """Every principal, by name."""
        principals = self._read()["principals"]
        return [Principal(**{k: v for k, v in principals[n].items() if k != "totp_secret"})
                for n in sorted(principals)]

    def disable(self, name: str) -> None:
        """Disable a principal: no new sessions, and its open sessions stop working."""
        with self._edit() as data:
            if name not in data["principals"]:
                raise AccessDeniedError(f"unknown principal {name!r}")
            data["principals"][name]["disabled"] = True

    def enable_totp(self, name: str) -> str:
        """Give ``name`` a TOTP second factor; returns the provisioning URI (shown once, for an authenticator)."""
        import pyotp

        secret = pyotp.random_base32()
        with self._edit() as data:
            if name not in data["principals"]:
                raise AccessDeniedError(f"unknown principal {name!r}")
            data["principals"][name]["totp_secret"] = secret
        return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="medguard")

    # tokens ------------------------------------------------------------------------------------------

    def issue_token(self, name: str, *, ttl: timedelta | None = None) -> IssuedToken:
        """A new API token for ``name``; its secret is returned once and stored only as a salted scrypt hash."""
        token_id = secrets.token_hex(8)
        secret = _b64(secrets.token_bytes(32))
        salt = secrets.token_bytes(16)
        now = self._clock()
        expires = now + (ttl or self._token_ttl)
        with self._edit() as data:
            if name not in data["principals"]:
                raise AccessDeniedError(f"unknown principal {name!r}")
            data["tokens"][token_id] = {"principal": name, "salt": salt.hex(), "hash": _scrypt(secret, salt),
                                        "created_at": now.isoformat(), "expires_at": expires.isoformat(),
                                        "revoked": False}
        return IssuedToken(token_id=token_id, principal=name, expires_at=expires,
                           secret=f"mgt_{token_id}_{secret}")

    def revoke_token(self, token_id: str) -> str:
        """Revoke an API token by id; returns the principal it belonged to. Its sessions end too."""
        with self._edit() as data:
            record = data["tokens"].get(token_id)
            if record is None:
                raise ValueError(f"no token with id {token_id!r}")
            record["revoked"] = True
            for key in [k for k, s in data["sessions"].items() if s.get("token_id") == token_id]:
                del data["sessions"][key]
            return record["principal"]

    def tokens(self, name: str | None = None) -> list[dict[str, Any]]:
        """Token metadata (id, principal, dates, revoked); never salts or hashes."""
        tokens = self._read()["tokens"]
        return [{"token_id": tid, **{k: v for k, v in rec.items() if k not in ("salt", "hash")}}
                for tid, rec in sorted(tokens.items()) if name is None or rec["principal"] == name]

    # authentication ----------------------------------------------------------------------------------

    def authenticate(self, token: str, *, totp: str | None = None, endpoint: str | None = None) -> Session:
        """Exchange an API token (and a TOTP code when the principal has one) for a short-lived session.

        Raises:
            AccessDeniedError: a malformed, unknown, expired or revoked token, a wrong or missing TOTP code, a
                disabled principal, or a locked one. Messages say what failed, never why a hash differed.
        """
        match = _TOKEN.fullmatch(token or "")
        if match is None:
            raise AccessDeniedError("authentication failed: malformed token")
        token_id, secret = match.groups()
        now = self._clock()
        with self._edit() as data:
            record = data["tokens"].get(token_id)
            if record is None:
                raise AccessDeniedError("authentication failed: unknown token")
            name = record["principal"]
            self._check_not_locked(data, name, now)
            ok = hmac.compare_digest(_scrypt(secret, bytes.fromhex(record["salt"])), record["hash"])
            problem = None
            if not ok:
                problem = "wrong token secret"
            elif record["revoked"]:
                problem = "token revoked"
            elif datetime.fromisoformat(record["expires_at"]) <= now:
                problem = "token expired"
            else:
                problem = self._check_principal(data, name, totp, now)
            if problem:
                self._fail(data, name, now)
                failed = problem
            else:
                data["failures"].pop(name, None)
                session = self._open(data, name, now, auth="token", token_id=token_id, endpoint=endpoint)
                failed = None
        if failed:
            raise AccessDeniedError(f"authentication failed: {failed}")
        return session

    def local_session(self, name: str, *, operator: str, endpoint: str | None = "local") -> Session:
        """A session of ``name`` for the operator who owns ``MEDGUARD_HOME`` (``--as``); audited as such."""
        now = self._clock()
        with self._edit() as data:
            record = data["principals"].get(name)
            if record is None:
                raise AccessDeniedError(f"unknown principal {name!r}")
            if record.get("disabled"):
                raise AccessDeniedError(f"principal {name!r} is disabled")
            self._check_not_locked(data, name, now)
            return self._open(data, name, now, auth="local-operator", operator=operator, endpoint=endpoint)

    def resume(self, session_token: str) -> Session:
        """The session a session token belongs to.

        Raises:
            AccessDeniedError: unknown or expired session, or a principal disabled since.
        """
        if not _SESSION.fullmatch(session_token or ""):
            raise AccessDeniedError("session invalid: malformed session token")
        key = hashlib.sha256(session_token.encode()).hexdigest()
        now = self._clock()
        with self._edit() as data:
            record = data["sessions"].get(key)
            if record is None:
                raise AccessDeniedError("session invalid: unknown or ended session")
            expires = datetime.fromisoformat(record["expires_at"])
            if expires <= now:
                del data["sessions"][key]
                raise AccessDeniedError("session invalid: expired")
            principal_record = data["principals"].get(record["principal"])
            if principal_record is None or principal_record.get("disabled"):
                raise AccessDeniedError("session invalid: principal disabled")
        principal = Principal(**{k: v for k, v in principal_record.items() if k != "totp_secret"})
        return Session(principal=principal, expires_at=expires, auth=record["auth"],
                       operator=record.get("operator"), token_id=record.get("token_id"),
                       endpoint=record.get("endpoint"), token=session_token)

    def end(self, session: Session) -> None:
        """End a session now."""
        key = hashlib.sha256(session.token.encode()).hexdigest()
        with self._edit() as data:
            data["sessions"].pop(key, None)

    def _check_principal(self, data: dict[str, Any], name: str, totp: str | None, now: datetime) -> str | None:
        record = data["principals"].get(name)
        if record is None or record.get("disabled"):
            return "principal disabled"
        secret = record.get("totp_secret")
        if secret:
            import pyotp

            if not totp:
                return "TOTP code required"
            if not pyotp.TOTP(secret).verify(totp, for_time=now, valid_window=1):
                return "wrong TOTP code"
        return None

    def _check_not_locked(self, data: dict[str, Any], name: str, now: datetime) -> None:
        state = data["failures"].get(name)
        if state and state.get("locked_until") and datetime.fromisoformat(state["locked_until"]) > now:
            raise AccessDeniedError(f"authentication failed: principal {name!r} is locked until "
                                    f"{state['locked_until']} after repeated failures")

    def _fail(self, data: dict[str, Any], name: str, now: datetime) -> None:
        state = data["failures"].setdefault(name, {"count": 0, "locked_until": None})
        state["count"] += 1
        if state["count"] >= self._max_failures:
            state["locked_until"] = (now + self._lockout).isoformat()
            state["count"] = 0

    def _open(self, data: dict[str, Any], name: str, now: datetime, *, auth: str, operator: str | None = None,
              token_id: str | None = None, endpoint: str | None = None) -> Session:
        # Drop ended sessions so the file does not grow without bound.
        for key in [k for k, s in data["sessions"].items() if datetime.fromisoformat(s["expires_at"]) <= now]:
            del data["sessions"][key]
        token = f"mgs_{_b64(secrets.token_bytes(32))}"
        expires = now + self._session_ttl
        data["sessions"][hashlib.sha256(token.encode()).hexdigest()] = {
            "principal": name, "expires_at": expires.isoformat(), "auth": auth, "operator": operator,
            "token_id": token_id, "endpoint": endpoint}
        record = data["principals"][name]
        principal = Principal(**{k: v for k, v in record.items() if k != "totp_secret"})
        return Session(principal=principal, expires_at=expires, auth=auth, operator=operator, token_id=token_id,
                       endpoint=endpoint, token=token)


def parse_purposes(values: Sequence[str] | None) -> tuple[str, ...]:
    """Purposes from repeated or comma-separated options, de-duplicated in order."""
    out: list[str] = []
    for value in values or ():
        out += [p.strip() for p in value.split(",") if p.strip()]
    return tuple(dict.fromkeys(out))
