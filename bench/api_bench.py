"""What an RFC 9421 signature costs a diagnosis: p50/p99 latency and requests/s on loopback, signed vs unsigned.

Run: ``.venv/bin/python -m bench.api_bench [--requests 2000] [--seconds 60]``.

Starts uvicorn in a subprocess with the application ``medguard serve`` runs (same middleware, spool, model
service, uvicorn settings) on a temporary home holding a small signed T2D-shaped model (tests/access/api/_model.py)
and one registered endpoint, plus one extra route only this bench adds: ``POST /baseline/diagnoses``, the same
scoring with no signature (the middleware lets unsigned paths through). One client on keep-alive sends, alternately,
a signed single-encounter ``POST /v1/diagnoses`` (signed before the timer starts: the figure is the server's cost)
and the same body unsigned to the baseline, until ``--requests`` of each or ``--seconds``. Also ``GET /healthz`` for
the stack's floor. The figure is the p50 ratio signed / unsigned (target ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import Request

from access.api.scoring import EncounterIn

ROOT = Path(__file__).resolve().parent.parent
ENCOUNTER = {"age": 57, "observations": [{"code": "4548-4", "value": 6.4, "unit": "%"},
                                         {"code": "2345-7", "value": 6.9, "unit": "mmol/L"},
                                         {"code": "8480-6", "value": 134}, {"code": "8462-4", "value": 86}],
             "conditions": [{"code": "R73.03"}]}


def _serve(port: int) -> None:
    """The bench's server process: medguard's application plus the unsigned baseline route."""
    import uvicorn

    from access.api.app import create_app
    from access.serve import uvicorn_config
    from pipeline.settings import load_settings

    settings = load_settings()
    app = create_app(settings)

    @app.post("/baseline/diagnoses", include_in_schema=False)
    def baseline(request: Request, body: EncounterIn) -> dict:
        return {"diagnoses": request.app.state.service.diagnose([body])}

    uvicorn.Server(uvicorn_config(settings, app, "127.0.0.1", port)).run()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return

    import httpx

    sys.path.insert(0, str(ROOT))
    from access.client import sign_request
    from access.endpoints import EndpointRegistry
    from pipeline.settings import load_settings
    from storage_security.keys.keyring import LocalKeyring, encode_master_key
    from tests.access._signing import key_pair
    from tests.access.api._model import register_model

    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        home = Path(tmp) / "home"
        master = LocalKeyring.generate_master_key()
        ring = LocalKeyring.init(home / "keyring.json", master)
        ring.ensure_key("medguard-kek")
        ring.ensure_key("medguard-audit")
        settings = load_settings(home=home, key_provider="keyring", keyring={"path": ring.path})
        register_model(settings, ring)
        keys = key_pair()
        endpoint = EndpointRegistry(home / "access" / "endpoints.json").register(
            "bench", keys.public_pem, rate_per_minute=1_000_000, operator="bench")
        keyid = endpoint.keys[0].keyid
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "MEDGUARD_HOME": str(home), "MEDGUARD_KEY_PROVIDER": "keyring",
               "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master)}
        server = subprocess.Popen([sys.executable, "-m", "bench.api_bench", "--serve", str(port)], cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=30) as client:
                for _ in range(600):
                    try:
                        if client.get(f"{base}/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                body = json.dumps(ENCOUNTER, separators=(",", ":")).encode()
                plain = {"Content-Type": "application/json"}
                url = f"{base}/v1/diagnoses"
                for _ in range(50):  # warm-up: model load, thread pool, connections
                    client.post(url, content=body, headers=sign_request("POST", url, plain, body, keyid=keyid,
                                                                        private_key=keys.private))
                    client.post(f"{base}/baseline/diagnoses", content=body, headers=plain)
                signed, unsigned, health = [], [], []
                deadline = time.monotonic() + args.seconds
                while len(signed) < args.requests and time.monotonic() < deadline:
                    headers = sign_request("POST", url, plain, body, keyid=keyid, private_key=keys.private)
                    t = time.perf_counter()
                    r = client.post(url, content=body, headers=headers)
                    signed.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    r = client.post(f"{base}/baseline/diagnoses", content=body, headers=plain)
                    unsigned.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    client.get(f"{base}/healthz")
                    health.append(time.perf_counter() - t)
        finally:
            server.terminate()
            server.wait(timeout=60)
    for label, values in (("signed POST /v1/diagnoses", signed), ("unsigned POST /baseline/diagnoses", unsigned),
                          ("unsigned GET /healthz", health)):
        print(f"{label:36s} n={len(values):5d}  p50 {_percentile(values, 0.5) * 1000:7.2f} ms  "
              f"p99 {_percentile(values, 0.99) * 1000:7.2f} ms  {len(values) / sum(values):8.1f} req/s")
    ratio = _percentile(signed, 0.5) / _percentile(unsigned, 0.5)
    print(f"{'p50 ratio signed / unsigned':36s} {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
