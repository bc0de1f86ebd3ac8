"""The one Vault/OpenBao HTTP client of medguard: checked auth settings, lazy login, bounded retries, our errors.

Everything that talks to Vault (the Transit key provider, the local OpenBao manager; an Airflow hook would too)
:class:`VaultClient`. It validates its auth settings when constructed and logs in on first use (a token is
used as given; AppRole logs in and logs in again when its token expires or is refused). Connection errors,
timeouts and 5xx/429 answers are retried with capped exponential backoff and jitter; everything else fails at
once. No hvac or requests exception leaves this module: they become

- :class:`~pipeline.errors.KeyProviderUnavailableError` (unreachable, sealed, not initialised), naming the address;
- :class:`~pipeline.errors.KeyAccessDeniedError` (403, refused login), naming the path and the policy to check;
- :class:`~pipeline.errors.DecryptionError` (a ciphertext Vault refuses, for calls marked ``decrypting``);
- :class:`~pipeline.errors.CryptoError` (any other refusal).

The client holds a token: its ``repr`` is redacted and it refuses to be pickled.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import hvac
import hvac.exceptions as hvac_errors
import requests

from pipeline.errors import (
    CryptoError,
    DecryptionError,
    KeyAccessDeniedError,
    KeyProviderUnavailableError,
    SettingsError,
)
from pipeline.settings import VaultSettings

log = logging.getLogger(__name__)

AuthMethod = Literal["token", "approle", "none"]
Method = Literal["GET", "POST", "PUT", "DELETE", "LIST"]

# Answers worth another try: the server is busy, restarting, unsealing or behind a flaky proxy. 501 (not
# initialised) is a 5xx that no amount of waiting fixes.
_RETRYABLE_STATUS = frozenset({412, 429, 500, 502, 503, 504})
# Transport failures worth another try; TLS failures (an SSLError is a ConnectionError) are handled first.
_RETRYABLE_TRANSPORT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_CAPABILITY = {"GET": "read", "LIST": "list", "POST": "update", "PUT": "update", "DELETE": "delete"}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried on connection errors and 5xx answers.

    Attempt ``n`` (from 0) that fails waits ``min(max_delay, base_delay * 2**n)``, jittered down to half of
    that, before the next; after ``attempts`` tries the last error is raised. Nothing else is retried.
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 3.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter, not a secret


class VaultClient:
    """A Vault/OpenBao client that fails early, logs in late and speaks medguard's errors.

    Args:
        addr: ``http(s)://host:port`` of the server.
        auth_method: ``token`` (use ``token``), ``approle`` (log in with ``role_id``/``secret_id``) or
            ``none`` (only unauthenticated endpoints such as ``sys/health``, ``sys/init``, ``sys/unseal``).
        token: the token for ``token`` auth.
        role_id: the AppRole role id for ``approle`` auth.
        secret_id: the AppRole secret id (omit for roles that do not bind one).
        approle_mount: where the AppRole auth method is mounted.
        namespace: a Vault Enterprise namespace.
        verify: verify TLS (``True``), skip it (``False``) or a CA bundle path.
        timeout: seconds per HTTP request.
        retry: the retry policy for connection errors and 5xx answers.
        sleep: how to wait between attempts (tests pass a recorder).
        clock: a monotonic clock in seconds, for token expiry.
        session: the ``requests.Session`` to send through (hvac makes one when omitted); tests pass one that
            counts requests.

    Raises:
        SettingsError: the auth settings are incomplete or the address is not an http(s) URL.
        ValueError: ``timeout`` is not positive.
    """

    def __init__(
        self,
        addr: str,
        *,
        auth_method: AuthMethod = "token",
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str = "approle",
        namespace: str | None = None,
        verify: bool | str = True,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        if not addr or not addr.startswith(("http://", "https://")):
            raise SettingsError(f"vault.addr (MEDGUARD_VAULT__ADDR) must be an http:// or https:// URL, not {addr!r}")
        if auth_method == "token" and not token:
            raise SettingsError("vault.auth_method 'token' needs vault.token (MEDGUARD_VAULT__TOKEN)")
        if auth_method == "approle" and not role_id:
            raise SettingsError("vault.auth_method 'approle' needs vault.role_id (MEDGUARD_VAULT__ROLE_ID)")
        if auth_method not in ("token", "approle", "none"):
            raise SettingsError(f"vault.auth_method must be 'token' or 'approle', not {auth_method!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.addr = addr.rstrip("/")
        self.auth_method: AuthMethod = auth_method
        self._static_token = token if auth_method == "token" else None
        self._role_id = role_id
        self._secret_id = secret_id
        self._approle_mount = approle_mount.strip("/")
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None
        self._token_expires_at: float | None = None
        self._login_lock = threading.Lock()
        # An explicit (empty) token keeps hvac from reading VAULT_TOKEN or ~/.vault-token behind our back; the
        # token goes into each request's headers instead, so threads sharing this client never race on it.
        self._hvac = hvac.Client(url=self.addr, token="", verify=verify, timeout=timeout, namespace=namespace,
                                 session=session)

    @classmethod
    def from_settings(cls, vault: VaultSettings, **overrides: Any) -> VaultClient:
        """A client for ``settings.vault`` (its ``addr`` must be set; the local OpenBao has its own path).

        Args:
            vault: the ``vault`` section of the settings.
            **overrides: keyword arguments of the constructor that win over the settings (``retry``, ``sleep``).
        """
        if not vault.addr:
            raise SettingsError("vault.addr (MEDGUARD_VAULT__ADDR) is empty: there is no remote Vault to connect to")
        kwargs: dict[str, Any] = {
            "auth_method": vault.auth_method,
            "token": vault.token.get_secret_value() if vault.token else None,
            "role_id": vault.role_id,
            "secret_id": vault.secret_id.get_secret_value() if vault.secret_id else None,
            "namespace": vault.namespace,
            "verify": str(vault.ca_cert) if vault.ca_cert else vault.verify_tls,
            "timeout": vault.timeout_seconds,
        }
        kwargs.update(overrides)
        return cls(vault.addr, **kwargs)

    def __repr__(self) -> str:
        return f"VaultClient(addr={self.addr!r}, auth_method={self.auth_method!r}, token=<redacted>)"

    def __getstate__(self) -> NoReturn:
        raise TypeError("VaultClient holds a Vault token and cannot be pickled; build one per process")

    def __reduce__(self) -> NoReturn:
        raise TypeError("VaultClient holds a Vault token and cannot be pickled; build one per process")

    def read(self, path: str, *, policy: str | None = None, authenticated: bool = True) -> dict[str, Any] | None:
        """GET ``/v1/<path>``; ``None`` when Vault has nothing there (404)."""
        return self.request("GET", path, policy=policy, authenticated=authenticated, missing_ok=True)

    def write(
        self,
        path: str,
        data: dict[str, Any] | None = None,
        *,
        policy: str | None = None,
        decrypting: bool = False,
        batch: bool = False,
        authenticated: bool = True,
    ) -> dict[str, Any] | None:
        """POST ``data`` to ``/v1/<path>``; see :meth:`request` for the flags."""
        return self.request(
            "POST", path, data, policy=policy, decrypting=decrypting, batch=batch, authenticated=authenticated
        )

    def delete(self, path: str, *, policy: str | None = None) -> None:
        """DELETE ``/v1/<path>`` (nothing there is not an error)."""
        self.request("DELETE", path, policy=policy, missing_ok=True)

    def request(
        self,
        method: Method,
        path: str,
        data: dict[str, Any] | None = None,
        *,
        policy: str | None = None,
        decrypting: bool = False,
        batch: bool = False,
        missing_ok: bool = False,
        authenticated: bool = True,
    ) -> dict[str, Any] | None:
        """One call to Vault with login, retries and error translation.

        Args:
            method: the HTTP method (``LIST`` for Vault's list operation).
            path: the API path without ``/v1/``, e.g. ``transit/decrypt/medguard-kek``.
            data: the JSON body.
            policy: the ``local_vault/policies`` policy that should grant this path, named in a 403 error.
            decrypting: a 400 answer means a ciphertext was refused: raise :class:`DecryptionError`.
            batch: a 400 answer that carries ``batch_results`` is returned, so the caller can report the item.
            missing_ok: a 404 answer returns ``None`` instead of raising.
            authenticated: send a token (logging in first if needed); ``False`` for ``sys/health`` and friends.

        Returns:
            The decoded JSON answer, or ``None`` for an empty (204) or missing (404, with ``missing_ok``) one.
        """
        path = path.strip("/")
        relogged = False
        while True:
            try:
                return self._with_retries(method, path, data, authenticated)
            except hvac_errors.Forbidden as exc:
                if authenticated and self.auth_method == "approle" and not relogged:
                    # The AppRole token may have been revoked or expired early: log in once more, then give up.
                    with self._login_lock:
                        self._token = None
                    relogged = True
                    continue
                raise KeyAccessDeniedError(self._denied_message(method, path, policy)) from exc
            except hvac_errors.InvalidPath as exc:
                if missing_ok:
                    return None
                raise CryptoError(f"Vault at {self.addr} has nothing at {path} (404): {_reason(exc)}") from exc
            except (hvac_errors.InvalidRequest, hvac_errors.UnsupportedOperation) as exc:
                if batch and isinstance(exc.json, dict) and "batch_results" in (exc.json.get("data") or {}):
                    return exc.json
                if decrypting:
                    raise DecryptionError(f"decryption failed: Vault refused a ciphertext at {path}") from exc
                raise CryptoError(f"Vault at {self.addr} refused {method} {path}: {_reason(exc)}") from exc
            except hvac_errors.Unauthorized as exc:
                raise KeyAccessDeniedError(self._denied_message(method, path, policy)) from exc
            except hvac_errors.VaultNotInitialized as exc:
                raise KeyProviderUnavailableError(
                    f"Vault at {self.addr} is not initialised (run `medguard vault up` for the local OpenBao)"
                ) from exc
            except hvac_errors.VaultError as exc:
                raise CryptoError(f"Vault at {self.addr} failed {method} {path}: {_reason(exc)}") from exc

    def lookup_self(self) -> dict[str, Any]:
        """What Vault knows about our token, without the token or its accessor."""
        answer = self.read("auth/token/lookup-self") or {}
        data = answer.get("data") or {}
        return {key: data.get(key) for key in ("display_name", "policies", "ttl", "expire_time", "renewable")}

    def health(self) -> dict[str, Any]:
        """``sys/health`` as a dict, whatever the state (sealed and uninitialised servers answer too)."""
        answer = self.request(
            "GET",
            "sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200",
            authenticated=False,
        )
        return dict(answer or {})

    def _with_retries(
        self, method: Method, path: str, data: dict[str, Any] | None, authenticated: bool
    ) -> dict[str, Any] | None:
        last: Exception | None = None
        for attempt in range(self._retry.attempts):
            if attempt:
                delay = self._retry.delay(attempt - 1)
                log.debug("retrying %s %s at %s in %.2fs after %r", method, path, self.addr, delay, last)
                self._sleep(delay)
            try:
                token = self._ensure_token() if authenticated else None
                return self._send(method, path, data, token)
            except requests.exceptions.SSLError as exc:
                raise KeyProviderUnavailableError(
                    f"Vault at {self.addr} is unreachable: TLS verification failed "
                    "(check vault.ca_cert / vault.verify_tls)"
                ) from exc
            except _RETRYABLE_TRANSPORT as exc:
                last = exc
            except hvac_errors.VaultError as exc:
                if getattr(exc, "status_code", None) not in _RETRYABLE_STATUS:
                    raise
                last = exc
            except requests.exceptions.RequestException as exc:  # a bad URL, too many redirects: no retry helps
                raise KeyProviderUnavailableError(
                    f"Vault at {self.addr} is unreachable: {type(exc).__name__} (check vault.addr)"
                ) from exc
        raise KeyProviderUnavailableError(self._unavailable_message(last)) from last

    def _send(self, method: Method, path: str, data: dict[str, Any] | None, token: str | None) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {} if data is None else {"json": data}
        headers = {"X-Vault-Token": token} if token else None
        answer = self._hvac.adapter.request(method, f"/v1/{path}", headers=headers, raise_exception=False, **kwargs)
        if isinstance(answer, dict):
            return answer
        body = _json_body(answer)
        if answer.ok:
            return body  # 204 No Content, or a 2xx without a JSON body
        errors = body.get("errors") if body else None
        exc = hvac_errors.VaultError.from_status(
            answer.status_code,
            None if errors else f"HTTP {answer.status_code}",
            errors=errors,
            method=method,
            url=path,
            json=body,
        )
        exc.status_code = answer.status_code  # hvac's errors do not keep it; retries depend on it
        raise exc

    def _ensure_token(self) -> str | None:
        if self.auth_method == "token":
            return self._static_token
        if self.auth_method == "none":
            return None
        with self._login_lock:
            expired = self._token_expires_at is not None and self._clock() >= self._token_expires_at
            if not self._token or expired:
                self._login()
            return self._token

    def _login(self) -> None:
        login = f"auth/{self._approle_mount}/login"
        body = {"role_id": self._role_id}
        if self._secret_id:
            body["secret_id"] = self._secret_id
        try:
            answer = self._send("POST", login, body, token=None)
        except (hvac_errors.InvalidRequest, hvac_errors.Forbidden, hvac_errors.Unauthorized) as exc:
            raise KeyAccessDeniedError(
                f"Vault at {self.addr} refused the AppRole login at {login}: check vault.role_id and "
                "vault.secret_id (MEDGUARD_VAULT__ROLE_ID, MEDGUARD_VAULT__SECRET_ID) and the role's CIDR bindings"
            ) from exc
        except hvac_errors.InvalidPath as exc:
            raise KeyAccessDeniedError(
                f"Vault at {self.addr} has no AppRole auth method at auth/{self._approle_mount} "
                "(see infra/vault/approle.sh)"
            ) from exc
        auth = (answer or {}).get("auth") or {}
        if not auth.get("client_token"):
            raise KeyAccessDeniedError(f"Vault at {self.addr} answered the AppRole login at {login} without a token")
        self._token = auth["client_token"]
        lease = float(auth.get("lease_duration") or 0)
        # Log in again a little before the token expires rather than be refused mid-batch.
        self._token_expires_at = self._clock() + lease * 0.9 if lease > 0 else None

    def _denied_message(self, method: Method, path: str, policy: str | None) -> str:
        bare = path.split("?", 1)[0]
        capability = _CAPABILITY.get(method, "update")
        hint = f" (storage_security/local_vault/policies/{policy}.hcl grants it)" if policy else ""
        who = "token" if self.auth_method == "token" else "AppRole token"
        return (
            f"Vault at {self.addr} denied {method} {bare} (403 permission denied): check that the {who}'s "
            f"policy grants {capability!r} on {bare!r}{hint}"
        )

    def _unavailable_message(self, exc: Exception | None) -> str:
        tries = f"after {self._retry.attempts} attempt{'s' if self._retry.attempts > 1 else ''}"
        if isinstance(exc, requests.exceptions.Timeout):
            why = "timed out"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            why = "connection failed"
        elif isinstance(exc, hvac_errors.VaultDown):
            why = f"sealed or unavailable (503: {_reason(exc)})"
        else:
            why = f"server error ({_reason(exc) if exc else 'unknown'})"
        return f"Vault at {self.addr} is unreachable: {why} {tries} (for the local OpenBao run `medguard vault up`)"


def _json_body(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _reason(exc: BaseException) -> str:
    # Only Vault's "errors" list: a raw body may hold batch results, plaintext included, and must not be echoed.
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return " ".join("; ".join(str(error) for error in errors).split())[:300]  # one line
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
