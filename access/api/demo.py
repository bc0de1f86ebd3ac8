"""Demo step ``80_serve``: a registered endpoint signs a diagnosis request to ``medguard serve``; its replay is refused.

Starts ``medguard serve`` on a free loopback port (a subprocess, on the demo's home), registers an endpoint with a
fresh Ed25519 key pair (the private key stays in a temporary folder of this process), sends one signed
``POST /v1/diagnoses`` with :class:`access.client.SignedClient`, sends the identical bytes again (refused:
401 ``nonce_replayed``), and stops the server with SIGTERM. Returns counts and status codes only (no PHI).
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# A made-up encounter (no patient behind it) in the units a lab would send: HbA1c in IFCC mmol/mol, glucose in
# mmol/L — the server converts both.
DEMO_ENCOUNTER = {"encounter_ref": "demo-1", "age": 58,
                  "observations": [{"code": "4548-4", "value": 50, "unit": "mmol/mol"},
                                   {"code": "2345-7", "value": 7.4, "unit": "mmol/L"},
                                   {"code": "8480-6", "value": 138, "unit": "mm[Hg]"},
                                   {"code": "8462-4", "value": 88, "unit": "mm[Hg]"},
                                   {"code": "39156-5", "value": 31.5, "unit": "kg/m2"}],
                  "conditions": [{"code": "R73.03", "system": "icd10cm"}]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_env(settings: Any) -> dict[str, str]:
    """The environment for ``medguard serve`` on the same home, lake and key provider as this process."""
    env = {**os.environ, "MEDGUARD_HOME": str(settings.home), "MEDGUARD_LAKE_ROOT": str(settings.lake_root),
           "MEDGUARD_KEY_PROVIDER": settings.key_provider}
    if settings.key_provider == "keyring" and settings.keyring.path is not None:
        env["MEDGUARD_KEYRING__PATH"] = str(settings.keyring.path)
    return env


def step(settings: Any) -> dict[str, Any]:
    """Run the demo (skipped with the reason when the registry holds no current model)."""
    import httpx

    from access.client import SignedClient, generate_key_pair
    from access.endpoints import EndpointRegistry
    from analytics.demo import registered_model

    model = registered_model(settings)
    if model["current"] is None:
        return {"skipped": f"no current model: {model['model_version']} stays a candidate"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    medguard = str(Path(sys.executable).with_name("medguard"))
    with tempfile.TemporaryDirectory(prefix="medguard-demo-keys-") as keys:
        private, public = generate_key_pair(Path(keys), name="demo-client")
        endpoint = EndpointRegistry.from_settings(settings).register(
            f"demo-client-{secrets.token_hex(3)}", public.read_text(), operations=("diagnose", "models.read"),
            operator=getpass.getuser())
        keyid = endpoint.keys[0].keyid
        log = Path(keys) / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen([medguard, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                      env=_server_env(settings), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                    return {"skipped": f"medguard serve exited: {tail[0][:200]}"}
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    return {"skipped": "medguard serve did not start within 120 s"}
                time.sleep(0.3)
            ready = httpx.get(f"{base}/readyz", timeout=30).status_code
            with SignedClient(base, keyid, private.read_bytes()) as client:
                first = client.post("/v1/diagnoses", json={"encounters": [DEMO_ENCOUNTER]})
            replay = httpx.request(first.request.method, str(first.request.url), headers=first.request.headers,
                                   content=first.request.content, timeout=30)
        finally:
            server.terminate()
            try:
                exit_code = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                exit_code = server.wait()
    diagnosis = first.json().get("diagnoses", [{}])[0] if first.status_code == 200 else {}
    return {"endpoint_id": endpoint.endpoint_id, "keyid": keyid, "readyz": ready,
            "signed_request": {"status": first.status_code, "model_version": (diagnosis.get("model") or {}).get(
                "model_version"), "flag": diagnosis.get("flag"), "checks": diagnosis.get("checks"),
                "code": None if first.status_code == 200 else first.json().get("code")},
            "replayed_request": {"status": replay.status_code, "code": replay.json().get("code")},
            "server_exit_code": exit_code}
