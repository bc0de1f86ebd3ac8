"""``medguard serve``: the HTTP(S) API (diagnoses, CDS Hooks, ``/v1/query``) on uvicorn, and the pgwire endpoint.

``medguard serve [--host H] [--port P] [--pg-port PORT] [--no-http] [--workers N]``. With ``--pg-port`` the
PostgreSQL-wire server runs in a thread beside uvicorn; ``--no-http`` runs that alone. SIGTERM or SIGINT stops
both cleanly: uvicorn finishes the requests in flight, the request audit spool is flushed, then the pgwire thread is
told to stop and joined.

Transport (``api`` settings): ``tls_cert`` + ``tls_key`` serve HTTPS; ``tls_client_ca`` as well requires a client
certificate signed by that CA (mTLS), and the certificate's SHA-256 reaches the verifier through the ASGI scope
(uvicorn does not put the peer certificate there itself: :class:`_CertH11Protocol` does), so an endpoint registered
with ``--client-cert`` is bound to it. No ``Server`` banner, no access log (every request is in the audit log).
In production run it behind a reverse proxy that terminates TLS and forwards to 127.0.0.1, with
``api.trust_proxy`` on (see :mod:`access.api.security`).

``--workers N`` (N > 1) starts N processes that each build the application from the environment's settings
(``MEDGUARD_*``, ``MEDGUARD_CONFIG``); nonces, rate windows and the audit spool are SQLite files they share.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli_support import fail, settings_from
from pipeline.errors import MedguardError, SettingsError

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["app_factory", "serve", "uvicorn_config", "uvicorn_options"]


def _cert_protocol() -> type:
    """An h11 protocol that puts the TLS peer certificate's SHA-256 into each request's ASGI scope."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _CertH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der:
                self.app = _with_client_cert(self.app, hashlib.sha256(der).hexdigest())

    return _CertH11Protocol


def _with_client_cert(app: Any, sha256: str) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            extensions = scope.setdefault("extensions", {})
            extensions["tls"] = {**extensions.get("tls", {}), "client_cert_sha256": sha256}
        await app(scope, receive, send)

    return wrapped


def uvicorn_options(settings: Settings, *, log_level: str = "warning") -> dict[str, Any]:
    """uvicorn's options: TLS and mTLS from ``api`` settings, no banner, no access log.

    Raises:
        SettingsError: half a TLS configuration, or a file that is not there.
    """
    import ssl

    api = settings.api
    if (api.tls_cert is None) != (api.tls_key is None):
        raise SettingsError("api.tls_cert and api.tls_key: set both (HTTPS) or neither")
    if api.tls_client_ca is not None and api.tls_cert is None:
        raise SettingsError("api.tls_client_ca needs api.tls_cert and api.tls_key (mTLS runs over HTTPS)")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(api, name)
        if path is not None and not path.is_file():
            raise SettingsError(f"api.{name}: {path} is not a readable file")
    options: dict[str, Any] = {"server_header": False, "date_header": True, "access_log": False,
                               "log_level": log_level, "proxy_headers": False, "timeout_graceful_shutdown": 10}
    if api.tls_cert is not None:
        options.update(ssl_certfile=str(api.tls_cert), ssl_keyfile=str(api.tls_key))
    if api.tls_client_ca is not None:
        options.update(ssl_ca_certs=str(api.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED, http=_cert_protocol())
    return options


def uvicorn_config(settings: Settings, app: Any, host: str, port: int, *, log_level: str = "warning") -> Any:
    """The uvicorn configuration of one server process for ``app``."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, **uvicorn_options(settings, log_level=log_level))


def app_factory() -> Any:
    """The application from the environment's settings (what each ``--workers`` process builds)."""
    from access.api.app import create_app
    from pipeline.settings import load_settings

    return create_app(load_settings())


def _run_http(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    if workers > 1:
        # Each worker builds its own application (and its own SQLite connections) after the fork.
        uvicorn.run("access.serve:app_factory", factory=True, host=host, port=port, workers=workers,
                    **uvicorn_options(settings))
        return
    from access.api.app import create_app

    uvicorn.Server(uvicorn_config(settings, create_app(settings), host, port)).run()


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535,
                                             help="HTTP(S) port (default: api.port).")] = None,
    pg_port: Annotated[int | None, typer.Option("--pg-port", min=1, max=65535,
                                                help="Also serve SQL over the PostgreSQL wire protocol on this "
                                                     "port (pgwire.host).")] = None,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve only the pgwire endpoint.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64,
                                         help="HTTP worker processes (settings from the environment).")] = 1,
) -> None:
    """Serve the signed diagnosis API, CDS Hooks and /v1/query over HTTP(S), and optionally pgwire."""
    settings = settings_from(ctx)
    if no_http and pg_port is None:
        fail(SettingsError("--no-http serves nothing without --pg-port"))
    if workers > 1 and pg_port is not None:
        fail(SettingsError("--workers > 1 serves HTTP only; run the pgwire endpoint as its own `medguard serve "
                           "--no-http --pg-port PORT`"))
    if workers > 1 and settings.api.tls_client_ca is not None:
        fail(SettingsError("mTLS (api.tls_client_ca) serves with --workers 1; for more processes terminate TLS at a "
                           "reverse proxy and set api.trust_proxy"))
    stop = threading.Event()
    pg_thread: threading.Thread | None = None
    errors: list[BaseException] = []
    if pg_port is not None:
        from access.pgwire import run_pg_server

        ready = threading.Event()

        def run_pg() -> None:
            try:
                run_pg_server(settings, settings.pgwire.host, pg_port, stop=stop, ready=ready)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                ready.set()

        pg_thread = threading.Thread(target=run_pg, name="pgwire", daemon=True)
        pg_thread.start()
        ready.wait(timeout=60)
        if errors:
            fail(errors[0])
    # uvicorn handles SIGTERM/SIGINT while it runs, then re-raises the signal into the handler it found: ours,
    # which only sets ``stop``, so a requested shutdown exits 0 after everything is closed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if no_http:
            while not stop.wait(0.5):
                if errors or (pg_thread is not None and not pg_thread.is_alive()):
                    break
        else:
            _run_http(settings, host or settings.api.host, port or settings.api.port, workers)
    except (MedguardError, OSError) as exc:
        fail(exc)
    finally:
        stop.set()
        if pg_thread is not None:
            pg_thread.join(timeout=15)
    if errors:
        fail(errors[0])
