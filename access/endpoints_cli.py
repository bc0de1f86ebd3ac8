"""``medguard endpoints``: the registry of endpoints (devices, EHR integrations, partner apps) that call the API.

``keygen`` makes a key pair on the endpoint's side; ``register`` takes its **public** key only (a private key is
refused) and prints the endpoint id and the keyid the endpoint signs with; ``list``/``show`` read the registry;
``suspend``/``resume``/``revoke``/``rotate-key`` change it (each change is audited as ``operator:<os account>``,
and only the owner of ``MEDGUARD_HOME`` may make one); ``call`` sends one signed request, as an endpoint would.
Heavy imports stay inside the commands so ``medguard --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

if TYPE_CHECKING:
    from access.endpoints import Endpoint, EndpointRegistry
    from pipeline.settings import Settings

endpoints_app = typer.Typer(help="Registered endpoints: the only callers the diagnosis API answers.",
                            no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(help="The endpoint's name (or its endpoint id, ep_…).")]
PublicKeyOption = Annotated[Path, typer.Option("--public-key", help="The endpoint's PUBLIC key, PEM (Ed25519 or "
                                               "ECDSA P-256).", dir_okay=False)]


def _registry(settings: Settings) -> EndpointRegistry:
    from access.endpoints import EndpointRegistry

    return EndpointRegistry.from_settings(settings)


def _operator(settings: Settings) -> str:
    from access.cli import _operator as operator_of_home

    return operator_of_home(settings)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path}: not a PEM text file") from exc


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _summary(endpoint: Endpoint) -> str:
    keys = ", ".join(f"{k.keyid} ({k.alg}"
                     f"{', until ' + k.not_after.isoformat(timespec='seconds') if k.not_after else ''})"
                     for k in endpoint.keys)
    return (f"{endpoint.name}  {endpoint.endpoint_id}  {endpoint.status}  operations={','.join(endpoint.operations)}"
            f"  networks={','.join(endpoint.networks) or 'any'}  rate={endpoint.rate_per_minute}/min"
            f"{'  principal=' + endpoint.principal if endpoint.principal else ''}"
            f"{'  client-cert=' + endpoint.client_cert_sha256[:16] + '…' if endpoint.client_cert_sha256 else ''}"
            f"\n  keys: {keys}")


@endpoints_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.key (private, 0600) and NAME.pub (public).",
                                      file_okay=False)],
    alg: Annotated[str, typer.Option("--alg", help="ed25519 or ecdsa-p256.")] = "ed25519",
    name: Annotated[str, typer.Option("--name", help="File name stem.")] = "endpoint",
    as_json: JsonOption = False,
) -> None:
    """Generate a key pair for an endpoint: keep NAME.key on the endpoint, register NAME.pub."""
    from access.client import generate_key_pair

    private_path, public_path = generate_key_pair(out, alg=alg, name=name)
    emit({"private_key": str(private_path), "public_key": str(public_path), "alg": alg}, as_json,
         f"private key {private_path} (0600; keep it on the endpoint)\npublic key  {public_path} (register it: "
         f"medguard endpoints register NAME --public-key {public_path})")


@endpoints_app.command("register")
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Lower-case name, e.g. ward7-monitor or epic-prod.")],
    public_key: PublicKeyOption,
    principal: Annotated[str | None, typer.Option("--principal", help="The principal the endpoint acts for "
                                                  "(e.g. svc:ward7), used by fronts that query.")] = None,
    operations: Annotated[list[str] | None, typer.Option("--operations", help="What it may do, comma-separated or "
                                                         "repeated: diagnose, models.read, query, cds (default: "
                                                         "all).")] = None,
    network: Annotated[list[str] | None, typer.Option("--network", help="A CIDR it may call from (repeat; "
                                                      "default: any).")] = None,
    rate_limit: Annotated[int | None, typer.Option("--rate-limit", min=1, help="Requests per minute (default "
                                                   "endpoints.default_rate_per_minute).")] = None,
    client_cert: Annotated[Path | None, typer.Option("--client-cert", help="Bind to this mTLS client certificate "
                                                     "(PEM).", dir_okay=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an endpoint with its public key; prints the endpoint id and the keyid it signs with."""
    from access.endpoints import OPERATIONS

    settings = settings_from(ctx)
    operator = _operator(settings)
    endpoint = _registry(settings).register(
        name, _read_text(public_key, "public key"), principal=principal,
        operations=_split(operations) or OPERATIONS, networks=_split(network), rate_per_minute=rate_limit,
        client_cert_sha256=_read_text(client_cert, "client certificate") if client_cert else None,
        operator=operator)
    key = endpoint.keys[0]
    emit({**endpoint.to_dict(), "keyid": key.keyid}, as_json,
         f"registered {endpoint.name} ({endpoint.endpoint_id}); it signs with keyid {key.keyid} ({key.alg})")


@endpoints_app.command("list")
def list_endpoints(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List endpoints: status, operations, networks, rate and keys."""
    endpoints = _registry(settings_from(ctx)).list()
    emit([e.to_dict() for e in endpoints], as_json,
         "\n".join(_summary(e) for e in endpoints) or "no endpoints yet: `medguard endpoints register`")


@endpoints_app.command("show")
def show(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """One endpoint, with its public keys."""
    endpoint = _registry(settings_from(ctx)).get(name)
    emit(endpoint.to_dict(), as_json, lambda: typer.echo(_summary(endpoint) + "".join(
        f"\n\n{k.keyid}:\n{k.public_key_pem.rstrip()}" for k in endpoint.keys)))


def _change(ctx: typer.Context, name: str, change: str, as_json: bool) -> None:
    settings = settings_from(ctx)
    operator = _operator(settings)
    endpoint = getattr(_registry(settings), change)(name, operator=operator)
    emit(endpoint.to_dict(), as_json, f"{endpoint.name} is {endpoint.status}")


@endpoints_app.command("suspend")
def suspend(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Refuse the endpoint's requests (403 endpoint_suspended) until `resume`."""
    _change(ctx, name, "suspend", as_json)


@endpoints_app.command("resume")
def resume(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Accept a suspended endpoint's requests again."""
    _change(ctx, name, "resume", as_json)


@endpoints_app.command("revoke")
def revoke(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Refuse the endpoint for good (403 endpoint_revoked); the record stays for the audit trail."""
    _change(ctx, name, "revoke", as_json)


@endpoints_app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    name: NameArgument,
    public_key: PublicKeyOption,
    overlap_hours: Annotated[float | None, typer.Option("--overlap-hours", min=0, help="How long the old key stays "
                                                        "valid (default endpoints.key_overlap_hours; 0: now).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add a new key, valid at once; the old key stays valid for the overlap, then is refused (key_expired)."""
    from datetime import timedelta

    settings = settings_from(ctx)
    operator = _operator(settings)
    key = _registry(settings).rotate_key(
        name, _read_text(public_key, "public key"),
        overlap=None if overlap_hours is None else timedelta(hours=overlap_hours), operator=operator)
    overlap = settings.endpoints.key_overlap_hours if overlap_hours is None else overlap_hours
    emit({"endpoint": name, **key.to_dict(), "overlap_hours": overlap}, as_json,
         f"{name} now signs with keyid {key.keyid}; older keys stay valid for {overlap:g} h")


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if data.startswith("@"):
        return Path(data[1:]).read_bytes()
    return data.encode()


@endpoints_app.command("call")
def call(
    method: Annotated[str, typer.Argument(help="GET, POST, …")],
    url: Annotated[str, typer.Argument(help="The absolute URL, e.g. https://localhost:8443/v1/models.")],
    keyid: Annotated[str, typer.Option("--keyid", help="The keyid `register` printed.")],
    private_key: Annotated[Path, typer.Option("--private-key", help="The endpoint's private key (PEM).",
                                              dir_okay=False)],
    data: Annotated[str | None, typer.Option("--data", help="The body: JSON text, or @FILE.")] = None,
    content_type: Annotated[str, typer.Option("--content-type", help="The body's type.")] = "application/json",
    cacert: Annotated[Path | None, typer.Option("--cacert", help="CA bundle to verify the server with.",
                                                dir_okay=False)] = None,
    cert: Annotated[Path | None, typer.Option("--cert", help="Client certificate (mTLS), PEM.", dir_okay=False)] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Client certificate's key (mTLS), PEM.",
                                             dir_okay=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Send one signed request as an endpoint; prints the status and the body (exit 1 on a 4xx/5xx answer)."""
    import httpx

    from access.client import SignedClient
    from pipeline.errors import AccessDeniedError

    if (cert is None) != (key is None):
        raise ValueError("give both --cert and --key for a client certificate, or neither")
    body = _body(data)
    client = SignedClient(url, keyid, private_key.read_bytes(), verify=str(cacert) if cacert else True,
                          cert=(str(cert), str(key)) if cert and key else None)
    try:
        with client:
            response = client.request(method, url, content=body or None,
                                      headers={"Content-Type": content_type} if body else None)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{method.upper()} {url}: {exc}") from exc
    try:
        payload: Any = response.json()
    except ValueError:
        payload = response.text
    emit({"status": response.status_code, "body": payload}, as_json,
         f"HTTP {response.status_code}\n{json.dumps(payload, indent=2) if not isinstance(payload, str) else payload}")
    if response.status_code >= 400:
        code = payload.get("code") if isinstance(payload, dict) else None
        raise AccessDeniedError(f"HTTP {response.status_code}{': ' + str(code) if code else ''}")
