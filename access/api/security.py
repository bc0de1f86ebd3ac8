"""What runs in front of every route: RFC 9421 verification, response hardening headers, one audit event per call.

:class:`SignedRequests` is a pure ASGI middleware, outermost in the application: for a ``/v1/*`` path it reads
the body (at most ``MAX_BODY`` bytes), rebuilds the URL the client called and asks
:meth:`access.signatures.RequestVerifier.verify` before anything else runs — no routing, no body parsing, no model
— so a refused signature costs the server nothing else and reveals nothing about the payload or the model. A
refusal is answered as problem+json with its stable code and title only (``Retry-After`` for ``rate_limited``).
An accepted request carries :class:`~access.signatures.VerifiedRequest` to the routes as
``request.state.verified``.

Paths and the operation an endpoint must be allowed (:data:`SIGNED_PATHS`): ``/v1/diagnoses`` → ``diagnose``,
``/v1/models`` → ``models.read``, ``/v1/query`` → ``query``; any other ``/v1/`` path is 404 unverified.
``/healthz``, ``/readyz``, ``/openapi.json`` and ``/cds-services`` (CDS Hooks authenticates with its own JWT) are
not signed.

Every response gets ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``, and
``Strict-Transport-Security`` when served over TLS. The server banner is off in ``medguard serve`` (uvicorn's
``server_header=False``).

**Audit.** Each request — accepted, refused, or failed — is one :class:`AuditEvent` (action ``request``): principal
``endpoint:<endpoint_id>`` (``unauthenticated`` when the signature was refused before the endpoint was known),
decision allow/deny by status, and details ``{front, route, method, operation, status, code, endpoint_id,
latency_ms}``: no payload, no values, no client address. A route that knows more puts it in
``request.state.audit`` (a dict merged into the details; JSON-safe, no PHI) and may set
``request.state.audit_principal``, e.g. the CDS Hooks router sets its EHR's endpoint id and its ``code`` after its
JWT check. Events go to an :class:`AuditSpool` (SQLite under the home, durable at once) and a background thread
writes them to the audit log in batches (one Delta commit per batch, not per request), and at shutdown.

**Client certificates (mTLS).** ``medguard serve`` with ``api.tls_client_ca`` puts the SHA-256 of the peer's
certificate into the ASGI scope (``scope["extensions"]["tls"]["client_cert_sha256"]``, see
:mod:`access.serve`); behind a TLS-terminating reverse proxy, ``api.trust_proxy`` takes it from the
``X-Client-Cert-SHA256`` header and the scheme, host and client address from ``X-Forwarded-Proto``,
``X-Forwarded-Host`` and ``X-Forwarded-For`` instead — off by default, since any client could send them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from access.api import problems

if TYPE_CHECKING:
    from access.signatures import RequestVerifier
    from pipeline.settings import Settings

__all__ = ["MAX_BODY", "SIGNED_PATHS", "AuditSpool", "SignedRequests", "operation_for"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 1 << 20
SIGNED_PATHS: tuple[tuple[str, str], ...] = (("/v1/diagnoses", "diagnose"), ("/v1/models", "models.read"),
                                             ("/v1/query", "query"))
_HSTS = "max-age=31536000; includeSubDomains"
_PROXY_CERT_HEADER = "x-client-cert-sha256"


def operation_for(path: str) -> str | None:
    """The operation a signed path needs; None for an unsigned path."""
    for prefix, operation in SIGNED_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return operation
    return None


# the audit spool ----------------------------------------------------------------------------------------------

class AuditSpool:
    """Request events spooled in SQLite (WAL) under the home, flushed to the audit log in batches.

    Shared by all worker processes of one server: a flush claims rows under a token before writing them, and
    rows claimed by a flush that died are claimed again after ``stale_seconds``.

    Args:
        path: the SQLite file.
        sink: writes a batch of event dicts to the audit log (``AuditLog.record_many`` in production).
        interval: seconds between background flushes.
    """

    def __init__(self, path: Path, sink: Callable[[list[dict[str, Any]]], None] | None, *,
                 interval: float = 2.0, batch: int = 500, stale_seconds: float = 300.0) -> None:
        self.path = path
        self._sink = sink
        self._interval = interval
        self._batch = batch
        self._stale = stale_seconds
        self._local = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = self._db()
        db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, "
                   "claim TEXT, claimed_at REAL)")
        db.commit()
        os.chmod(path, 0o600)

    @classmethod
    def from_settings(cls, settings: Settings, *, provider: Any = None, interval: float = 2.0) -> AuditSpool:
        """A spool at ``<home>/access/api_audit.sqlite`` whose sink is the home's audit log."""
        state: dict[str, Any] = {}

        def sink(events: list[dict[str, Any]]) -> None:
            from pipeline.lake import Lake
            from storage_security.audit.log import AuditEvent, AuditLog
            from storage_security.keys.providers import provider_from_settings

            if "log" not in state:
                state["log"] = AuditLog(Lake(settings), provider or provider_from_settings(settings))
            state["log"].record_many([AuditEvent(**e) for e in events])

        return cls(settings.home / "access" / "api_audit.sqlite", sink, interval=interval)

    def __repr__(self) -> str:
        return f"AuditSpool(path={str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def add(self, event: dict[str, Any]) -> None:
        """Spool one event (the keyword arguments of an ``AuditEvent``, JSON-safe; ``time`` as ISO text)."""
        self._db().execute("INSERT INTO events (event) VALUES (?)", (json.dumps(event, separators=(",", ":")),))

    def pending(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def flush(self) -> int:
        """Write spooled events to the sink, oldest first, in batches; returns how many were written."""
        if self._sink is None:
            return 0
        written = 0
        db = self._db()
        while True:
            token = uuid.uuid4().hex
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE events SET claim = ?, claimed_at = ? WHERE id IN (SELECT id FROM events WHERE "
                           "claim IS NULL OR claimed_at < ? ORDER BY id LIMIT ?)",
                           (token, now, now - self._stale, self._batch))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            rows = db.execute("SELECT id, event FROM events WHERE claim = ? ORDER BY id", (token,)).fetchall()
            if not rows:
                return written
            events = []
            for _, text in rows:
                event = json.loads(text)
                if event.get("time"):
                    from datetime import datetime

                    event["time"] = datetime.fromisoformat(event["time"])
                events.append(event)
            try:
                self._sink(events)
            except Exception:
                db.execute("UPDATE events SET claim = NULL, claimed_at = NULL WHERE claim = ?", (token,))
                raise
            db.execute("DELETE FROM events WHERE claim = ?", (token,))
            written += len(rows)

    def start(self) -> None:
        """Flush in a background thread every ``interval`` seconds until :meth:`close`."""
        if self._thread is not None or self._sink is None:
            return

        def loop() -> None:
            while not self._stop.wait(self._interval):
                try:
                    self.flush()
                except Exception as exc:  # the events stay spooled; the next round retries
                    log.warning("audit spool flush failed (%s); events stay spooled", type(exc).__name__)

        self._thread = threading.Thread(target=loop, name="audit-spool", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            self.flush()
        except Exception as exc:
            log.warning("audit spool: final flush failed (%s); %d events stay spooled for the next start",
                        type(exc).__name__, self.pending())


# the middleware ---------------------------------------------------------------------------------------------

def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class SignedRequests:
    """The ASGI middleware described in the module docstring.

    Args:
        app: the application behind it.
        verifier: returns the request verifier (built lazily, once per process).
        spool: where request events go (None: not audited — tests of the routes alone).
        trust_proxy: take scheme, host, client address and client certificate from a reverse proxy's headers.
        clock: wall-clock seconds, for event times.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, verifier: Callable[[], RequestVerifier],
                 spool: AuditSpool | None, trust_proxy: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self._verifier = verifier
        self._spool = spool
        self._trust_proxy = trust_proxy
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        scheme = scope.get("scheme", "http")
        client = (scope.get("client") or (None,))[0]
        cert = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_sha256")
        if self._trust_proxy:
            scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
            client = headers.get("x-forwarded-for", client or "").split(",")[0].strip() or None
            cert = headers.get(_PROXY_CERT_HEADER, cert)
        tls = scheme == "https"
        state = scope.setdefault("state", {})
        outcome: dict[str, Any] = {"status": 500, "code": None}

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"], outcome["started"] = message["status"], True
                extra = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
                if tls:
                    extra.append((b"strict-transport-security", _HSTS.encode()))
                drop = {b"cache-control", b"server"}
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() not in drop] + extra
            await send(message)

        path = scope.get("path", "")
        operation = operation_for(path)
        try:
            await self._dispatch(scope, receive, send_hardened, headers, path, operation, scheme, client, cert,
                                 state, outcome)
        except Exception as exc:
            log.error("unhandled %s on %s", type(exc).__name__, _route_shape(path))
            if outcome.get("started"):
                raise
            outcome["code"] = "internal_error"
            await self._problem(send_hardened, *problems.problem("internal_error"))
        finally:
            verified = state.get("verified")
            self._audit(scope, state, operation, verified, outcome, started)

    async def _dispatch(self, scope: Scope, receive: Receive, send_hardened: Send, headers: dict[str, str],
                        path: str, operation: str | None, scheme: str, client: str | None, cert: str | None,
                        state: dict[str, Any], outcome: dict[str, Any]) -> None:
        if operation is None and path.startswith("/v1/"):
            outcome["code"] = "not_found"
            await self._problem(send_hardened, *problems.problem("not_found"))
            return
        if operation is None:
            await self.app(scope, receive, send_hardened)
            return
        body, too_large = await _read_body(receive)
        if too_large:
            outcome["code"] = "payload_too_large"
            await self._problem(send_hardened, *problems.problem("payload_too_large"))
            return
        from access.signatures import SignatureRejected

        host = headers.get("x-forwarded-host", "") if self._trust_proxy else ""
        host = host.split(",")[0].strip() or headers.get("host", "")
        target = scope.get("raw_path") or path.encode()
        query = scope.get("query_string", b"")
        url = f"{scheme}://{host}{target.decode('latin-1')}" + (f"?{query.decode('latin-1')}" if query else "")
        try:
            verified = self._verifier().verify(method=scope["method"], url=url, headers=headers, body=body,
                                               operation=operation, client_ip=client, client_cert_sha256=cert)
        except SignatureRejected as exc:
            outcome["code"] = exc.code
            extra = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else {}
            await self._problem(send_hardened, exc.status, problems.rejection(exc.code, exc.status, exc.title),
                                extra)
            return
        state["verified"] = verified
        await self.app(scope, _replay(body, receive), send_hardened)

    @staticmethod
    async def _problem(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = problems.encode(body)
        raw = [(b"content-type", problems.MEDIA_TYPE.encode()), (b"content-length", str(len(data)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    def _audit(self, scope: Scope, state: dict[str, Any], operation: str | None, verified: Any,
               outcome: dict[str, Any], started: float) -> None:
        if self._spool is None:
            return
        from datetime import UTC, datetime

        extra = state.get("audit") if isinstance(state.get("audit"), dict) else {}
        endpoint_id = verified.endpoint.endpoint_id if verified is not None else extra.get("endpoint_id")
        route = scope.get("route")
        status = int(outcome["status"])
        details = {"front": "http", "route": getattr(route, "path", None) or _route_shape(scope.get("path", "")),
                   "method": scope.get("method"), "operation": operation, "status": status,
                   "code": outcome["code"] or state.get("problem_code"), "endpoint_id": endpoint_id,
                   "latency_ms": round((time.perf_counter() - started) * 1000, 2), **extra}
        details = {k: v for k, v in details.items() if v is not None}
        principal = state.get("audit_principal") or (f"endpoint:{endpoint_id}" if endpoint_id else "unauthenticated")
        try:
            self._spool.add({"principal": principal, "action": "request", "decision": "allow" if status < 400
                             else "deny", "purpose": "treatment" if operation == "diagnose" else "operations",
                             "reason": details.get("code"), "details": details,
                             "time": datetime.fromtimestamp(self._clock(), UTC).isoformat()})
        except Exception as exc:  # never fail a request after its response was sent; the log says why
            log.error("request event not spooled (%s)", type(exc).__name__)


def _route_shape(path: str) -> str:
    """A path as a route shape, never its variable parts (an unmatched path may carry anything)."""
    for prefix, _ in SIGNED_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    known = ("/healthz", "/readyz", "/openapi.json", "/cds-services")
    return next((k for k in known if path == k or path.startswith(k + "/")), "(other)")


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
