"""``medguard serve --pg-port P --no-http`` as a subprocess on a home of its own, and TLS on the wire.

The served rows are compared with :meth:`QueryGateway.query` over the same home, as ``medguard query`` runs it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from access.gateway import QueryGateway
from access.pgwire import run_pg_server
from access.principals import Principal, PrincipalStore, Role
from pipeline.errors import SettingsError
from pipeline.lake import CommitInfo, Lake
from pipeline.settings import Settings, load_settings
from storage_security.keys.keyring import LocalKeyring, encode_master_key

pytestmark = pytest.mark.integration

MEDGUARD = str(Path(sys.executable).with_name("medguard"))
SQL = "SELECT sex, age_band, zip3 FROM deidentified.patients ORDER BY age_band, sex, zip3"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("pgwire-home")
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(root / "home" / "keyring.json", master)
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    settings = load_settings(home=root / "home", key_provider="keyring", keyring={"path": ring.path})
    rows = [{"patient_pseudonym": f"ps1_test_{i:032x}", "sex": "F" if i % 2 else "M",
             "age_band": f"{40 + (i % 4) * 5}-{44 + (i % 4) * 5}", "zip3": f"{100 + i % 3}", "facility_id": "F1",
             "consent_research": i % 5 != 0, "ssn": f"{100 + i:03d}-45-{6000 + i:04d}"} for i in range(40)]
    Lake(settings).append("deidentified", "patients", pa.Table.from_pylist(rows),
                          commit=CommitInfo(principal="svc:ingest", purpose="test"))
    store = PrincipalStore.from_settings(settings)
    store.add(Principal("ann", Role.ANALYST, facility="F1", purposes=("research",)))
    token = store.issue_token("ann").secret
    env = {**os.environ, "MEDGUARD_HOME": str(settings.home), "MEDGUARD_KEY_PROVIDER": "keyring",
           "MEDGUARD_KEYRING__PATH": str(ring.path), "MEDGUARD_KEYRING_MASTER_KEY": encode_master_key(master)}
    return settings, ring, env, token, root


def _expected(settings: Settings, ring) -> list[tuple]:
    gateway = QueryGateway.from_settings(settings, provider=ring)
    session = PrincipalStore.from_settings(settings).local_session("ann", operator="tester")
    return [tuple(r.values()) for r in gateway.query(session, SQL).table.to_pylist()]


def test_when_medguard_serve_runs_pgwire_alone_then_psycopg_gets_the_gateways_rows_and_descriptions(home):
    settings, ring, env, token, root = home
    port = _free_port()
    log = (root / "serve.log").open("w")
    process = subprocess.Popen([MEDGUARD, "serve", "--pg-port", str(port), "--no-http"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=port, user="ann", password=token, dbname="medguard",
                                       sslmode="disable", connect_timeout=5)
                break
            except psycopg.OperationalError:
                assert process.poll() is None, (root / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "pgwire did not answer within 120 s"
                time.sleep(0.3)
        with conn:
            got = conn.execute(SQL).fetchall()
            # What JDBC does before binding: describe the prepared statement (libpq blocks holding the GIL, so
            # this runs against the server in its own process).
            conn.pgconn.prepare(b"by_sex", b"SELECT sex, age_band FROM deidentified.patients WHERE sex = $1")
            described = conn.pgconn.describe_prepared(b"by_sex")
            assert described.nparams == 1
            assert [described.fname(i) for i in range(described.nfields)] == [b"sex", b"age_band"]
        assert got == _expected(settings, ring)
        assert len(got) == 32  # the 8 patients without research consent are filtered out
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "pg.crt", directory / "pg.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_when_tls_is_configured_then_clients_log_in_over_tls_and_plaintext_is_refused(home, tmp_path):
    settings, ring, _, token, _ = home
    cert, key = _certificate(tmp_path)
    tls_settings = settings.model_copy(update={"pgwire": settings.pgwire.model_copy(
        update={"tls_cert": cert, "tls_key": key})})
    stop, ready = threading.Event(), threading.Event()
    gateway = QueryGateway.from_settings(settings, provider=ring)
    thread = threading.Thread(target=run_pg_server, args=(tls_settings, "127.0.0.1", 0),
                              kwargs={"stop": stop, "ready": ready, "gateway": gateway}, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        params = {"host": "127.0.0.1", "port": ready.port, "user": "ann", "password": token, "dbname": "medguard",
                  "connect_timeout": 10}
        with psycopg.connect(**params, sslmode="verify-ca", sslrootcert=str(cert)) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute(SQL).fetchall() == _expected(settings, ring)
        with pytest.raises(psycopg.OperationalError, match="requires TLS"):
            psycopg.connect(**params, sslmode="disable")
    finally:
        stop.set()
        thread.join(10)


def test_when_a_non_loopback_address_has_no_tls_then_the_server_refuses_to_start(home):
    settings = home[0]
    with pytest.raises(SettingsError, match="without TLS"):
        run_pg_server(settings, "0.0.0.0", 0, stop=threading.Event())  # noqa: S104 -- the refusal under test
