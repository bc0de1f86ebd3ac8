"""Principals (users and services), their roles and attributes, API tokens, TOTP, lockout and sessions.

The store is one JSON file, ``$MEDGUARD_HOME/access/principals.json`` (mode 0600, in a 0700 folder), written
atomically under an exclusive ``flock``. It holds no secret that would let anyone authenticate:

- API tokens (``mgt_<id>_<secret>``) are shown once, at issue; the store keeps their id, a random salt and
  ``scrypt(secret, salt)`` only. Verification recomputes the hash and compares in constant time.
- Session tokens (``mgs_<secret>``) are random and short-lived (``access.session_ttl_minutes``); the store
  keeps their SHA-256 (they have 256 bits of entropy, so a slow hash adds nothing).
- A TOTP second factor (RFC 6238, via pyotp) needs its shared seed to verify a code, so the seed is sealed:
  AES-256-GCM under a store data key that the key provider wraps (Vault Transit or the keyring; only the wrapped
  form is in the file), bound to the principal's name. A code is accepted once: the time step of the last code
  accepted is kept, and a code of that step or an earlier one is refused (no replay within the window).

Failed logins are throttled where they come from, never by locking a principal: a wrong or unknown token counts
against its source (``endpoint``), so someone who knows a token id cannot lock its owner out from elsewhere; a wrong
TOTP code after the right token secret counts against that token, so the second factor cannot be guessed from many
sources. ``access.max_failed_logins`` failures throttle for ``access.lockout_minutes``. An unknown token id and a
wrong secret fail with the same message, after the same scrypt work. Every time-dependent check takes an
injectable clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from access._json_store import LockedJsonFile
from pipeline.errors import AccessDeniedError

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
# What a principal's record holds beside the Principal's own fields.
_PRIVATE_FIELDS = ("totp_secret", "totp_sealed", "totp_last_step")
_TOTP_AAD = b"medguard.totp-seed.v1\x00"
_TOTP_STEP = 30  # seconds: RFC 6238's default, what authenticator apps use
_FAILED = "authentication failed: invalid token"


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


def _principal(record: dict[str, Any]) -> Principal:
    return Principal(**{k: v for k, v in record.items() if k not in _PRIVATE_FIELDS})


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
        max_failures: failed logins from one source (or, for TOTP, with one token) before it is throttled.
        lockout: how long a throttle lasts.
        clock: the current time, timezone-aware (tests inject one).
        provider: the key provider that wraps the data key sealing TOTP seeds, or a function returning it
            (called only when a TOTP seed is sealed or opened).
        kek_name: the KEK that wraps that data key.
    """

    def __init__(self, path: Path, *, session_ttl: timedelta = timedelta(minutes=60),
                 token_ttl: timedelta = timedelta(days=90), max_failures: int = 5,
                 lockout: timedelta = timedelta(minutes=15), clock: Callable[[], datetime] = _utcnow,
                 provider: Any = None, kek_name: str = "medguard-kek") -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {max_failures}")
        self.path = Path(path)
        self._file = LockedJsonFile(self.path, fmt=_FORMAT, kind="principal store",
                                    empty=lambda: {"principals": {}, "tokens": {}, "sessions": {}, "failures": {}})
        self._session_ttl = session_ttl
        self._token_ttl = token_ttl
        self._max_failures = max_failures
        self._lockout = lockout
        self._clock = clock
        self._provider = provider
        self._kek_name = kek_name

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], datetime] = _utcnow) -> PrincipalStore:
        """The store under ``settings.home`` with the TTLs and lockout of ``settings.access``."""
        access = settings.access
        return cls(Path(settings.home) / "access" / "principals.json",
                   session_ttl=timedelta(minutes=access.session_ttl_minutes),
                   token_ttl=timedelta(days=access.token_ttl_days), max_failures=access.max_failed_logins,
                   lockout=timedelta(minutes=access.lockout_minutes), clock=clock,
                   provider=lambda: _provider_of(settings), kek_name=settings.vault.kek_name)

    def __repr__(self) -> str:
        return f"PrincipalStore(path={str(self.path)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("PrincipalStore cannot be pickled; open one per process")

    # persistence -------------------------------------------------------------------------------------

    def _edit(self) -> Any:
        return self._file.edit()

    def _read(self) -> dict[str, Any]:
        return self._file.read()

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
        return _principal(record)

    def list(self) -> list[Principal]:
        """Every principal, by name."""
        principals = self._read()["principals"]
        return [_principal(principals[n])
                for n in sorted(principals)]

    def disable(self, name: str) -> None:
        """Disable a principal: no new sessions, and its open sessions stop working."""
        with self._edit() as data:
            if name not in data["principals"]:
                raise AccessDeniedError(f"unknown principal {name!r}")
            data["principals"][name]["disabled"] = True

    def enable_totp(self, name: str) -> str:
        """Give ``name`` a TOTP second factor; returns the provisioning URI (shown once, for an authenticator).

        Raises:
            ValueError: the store has no key provider to seal the seed with.
        """
        import pyotp

        secret = pyotp.random_base32()
        with self._edit() as data:
            if name not in data["principals"]:
                raise AccessDeniedError(f"unknown principal {name!r}")
            record = data["principals"][name]
            record.pop("totp_secret", None)
            record["totp_sealed"] = _b64(self._totp_cipher(data).encrypt(secret.encode(), _TOTP_AAD + name.encode()))
            record.pop("totp_last_step", None)
        return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="medguard")

    def _totp_cipher(self, data: dict[str, Any]) -> Any:
        """AES-256-GCM under the store's TOTP data key, made and wrapped by the key provider on first use."""
        from storage_security.crypto._aead import AesGcm

        provider = self._provider() if callable(self._provider) else self._provider
        if provider is None:
            raise ValueError("TOTP seeds are sealed with the key provider: open the store with one "
                             "(PrincipalStore.from_settings does)")
        stored = data.get("totp_key")
        if stored is None:
            provider.ensure_key(self._kek_name)
            key = provider.generate_data_key(self._kek_name)
            data["totp_key"] = {"kek_name": self._kek_name, "wrapped": key.wrapped}
            return AesGcm(key.plaintext)
        return AesGcm(provider.unwrap(stored["kek_name"], stored["wrapped"]))

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

        Args:
            token: the API token.
            totp: the current TOTP code, for principals with a second factor (each code is accepted once).
            endpoint: where the attempt comes from (client address, ``cli@host``): failures are throttled there.

        Raises:
            AccessDeniedError: a malformed, unknown or wrong token (one message for all three, so a token id's
                existence is not revealed), an expired or revoked token, a wrong, reused or missing TOTP code, a
                disabled principal, or a throttled source or token.
        """
        source = f"source:{endpoint or 'unknown'}"
        now = self._clock()
        match = _TOKEN.fullmatch(token or "")
        with self._edit() as data:
            self._check_not_throttled(data, source, now, "this source")
            record = data["tokens"].get(match.group(1)) if match else None
            # The same scrypt work for an unknown id as for a known one: timing does not tell them apart either.
            salt = bytes.fromhex(record["salt"]) if record else b"\x00" * 16
            digest = _scrypt(match.group(2) if match else "", salt)
            if record is None or not hmac.compare_digest(digest, record["hash"]):
                self._fail(data, source, now)
                failed: str | None = _FAILED
            else:
                token_id = match.group(1)
                name = record["principal"]
                self._check_not_throttled(data, f"token:{token_id}", now, "this token")
                failed = None
                if record["revoked"]:
                    failed = "authentication failed: token revoked"
                elif datetime.fromisoformat(record["expires_at"]) <= now:
                    failed = "authentication failed: token expired"
                else:
                    problem = self._check_principal(data, name, totp, now)
                    if problem:
                        if "TOTP" in problem:
                            self._fail(data, f"token:{token_id}", now)
                        failed = f"authentication failed: {problem}"
                if failed is None:
                    data["failures"].pop(source, None)
                    data["failures"].pop(f"token:{token_id}", None)
                    session = self._open(data, name, now, auth="token", token_id=token_id, endpoint=endpoint)
        if failed:
            raise AccessDeniedError(failed)
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
        principal = _principal(principal_record)
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
        if "totp_secret" in record:  # a store written before seeds were sealed: seal it now
            record["totp_sealed"] = _b64(self._totp_cipher(data).encrypt(record.pop("totp_secret").encode(),
                                                                         _TOTP_AAD + name.encode()))
        if record.get("totp_sealed"):
            import pyotp

            if not totp:
                return "TOTP code required"
            seed = self._totp_cipher(data).decrypt(base64.urlsafe_b64decode(record["totp_sealed"] + "=="),
                                                   _TOTP_AAD + name.encode()).decode()
            current = int(now.timestamp()) // _TOTP_STEP
            last = int(record.get("totp_last_step") or -1)
            code = pyotp.TOTP(seed)
            # One step either side for clock drift; a step at or before the last accepted one is a replay.
            step = next((s for s in (current - 1, current, current + 1)
                         if hmac.compare_digest(code.at(s * _TOTP_STEP), str(totp))), None)
            if step is None:
                return "wrong TOTP code"
            if step <= last:
                return "TOTP code already used"
            record["totp_last_step"] = step
        return None

    def _check_not_throttled(self, data: dict[str, Any], key: str, now: datetime, what: str) -> None:
        state = data["failures"].get(key)
        if state and state.get("locked_until") and datetime.fromisoformat(state["locked_until"]) > now:
            raise AccessDeniedError(f"authentication failed: too many failures from {what}; try again after "
                                    f"{state['locked_until']}")

    def _fail(self, data: dict[str, Any], key: str, now: datetime) -> None:
        # Forget ended throttles and counts older than a lockout, so the file does not grow with every source.
        for stale in [k for k, v in data["failures"].items() if self._stale(v, now)]:
            del data["failures"][stale]
        state = data["failures"].setdefault(key, {"count": 0, "locked_until": None})
        state["count"] += 1
        state["last"] = now.isoformat()
        if state["count"] >= self._max_failures:
            state["locked_until"] = (now + self._lockout).isoformat()
            state["count"] = 0

    def _stale(self, state: dict[str, Any], now: datetime) -> bool:
        if state.get("locked_until"):
            return datetime.fromisoformat(state["locked_until"]) <= now
        return not state.get("last") or datetime.fromisoformat(state["last"]) <= now - self._lockout

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
        principal = _principal(record)
        return Session(principal=principal, expires_at=expires, auth=auth, operator=operator, token_id=token_id,
                       endpoint=endpoint, token=token)


def _provider_of(settings: Settings) -> Any:
    from storage_security.keys.providers import provider_from_settings

    return provider_from_settings(settings)


def parse_purposes(values: Sequence[str] | None) -> tuple[str, ...]:
    """Purposes from repeated or comma-separated options, de-duplicated in order."""
    out: list[str] = []
    for value in values or ():
        out += [p.strip() for p in value.split(",") if p.strip()]
    return tuple(dict.fromkeys(out))
