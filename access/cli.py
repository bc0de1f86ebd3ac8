"""Command line of the access layer: ``medguard access …`` (principals, tokens, tables) and ``medguard query``.

Registered through the ``medguard.commands`` entry points. Who acts:

- ``--as NAME`` opens a local session of NAME for the operator who owns ``MEDGUARD_HOME`` (refused for anyone
  else); audit events name NAME and carry ``auth: local-operator`` and the operator's OS account.
- ``--token TOKEN [--totp CODE]`` authenticates as a real caller would (salted-hash check, TOTP, lockout).

Principal management (add-principal, issue-token, revoke-token, enable-totp) is the operator's: it is audited
as ``operator:<os account>``. Heavy imports stay inside the commands so ``medguard --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

if TYPE_CHECKING:
    from access.principals import PrincipalStore, Session
    from pipeline.settings import Settings

access_app = typer.Typer(help="Principals, roles, API tokens and what each principal may query.",
                         no_args_is_help=True)

AsOption = Annotated[str | None, typer.Option("--as", help="Act as this principal (operator of MEDGUARD_HOME only).")]
TokenOption = Annotated[str | None, typer.Option("--token", help="Authenticate with this API token.")]
TotpOption = Annotated[str | None, typer.Option("--totp", help="The TOTP code, for principals with a second factor.")]
PurposeOption = Annotated[str | None, typer.Option("--purpose",
                                                   help="Purpose of use (default: the principal's first).")]


def _operator(settings: Settings) -> str:
    """The OS account running this command, which must own MEDGUARD_HOME."""
    import getpass
    import os

    from pipeline.errors import AccessDeniedError

    home = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if home.stat().st_uid != os.getuid():
        raise AccessDeniedError(f"only the operator who owns {home} may act for principals there (--as)")
    return getpass.getuser()


def _store(settings: Settings) -> PrincipalStore:
    from access.principals import PrincipalStore

    return PrincipalStore.from_settings(settings)


def _record_admin(settings: Settings, operator: str, operation: str, details: dict[str, object]) -> None:
    from pipeline.lake import Lake
    from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
    from storage_security.keys.providers import provider_from_settings

    AuditLog(Lake(settings), provider_from_settings(settings)).record(AuditEvent(
        principal=f"operator:{operator}", action=AuditAction.POLICY_DECISION, decision=Decision.ALLOW,
        purpose="administration", reason=operation, details={"requested_action": "grant", "operation": operation,
                                                               **details}))


def open_session(settings: Settings, as_name: str | None, token: str | None, totp: str | None) -> Session:
    """The session for ``--as`` or ``--token`` (exactly one of them)."""
    import socket

    if bool(as_name) == bool(token):
        raise ValueError("give exactly one of --as NAME (local operator) or --token TOKEN")
    store = _store(settings)
    if as_name:
        return store.local_session(as_name, operator=_operator(settings))
    return store.authenticate(token or "", totp=totp, endpoint=f"cli@{socket.gethostname()}")


@access_app.command("add-principal")
def add_principal(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Lower-case name, e.g. alice or train-job.")],
    role: Annotated[str, typer.Option("--role", help="data_engineer, analyst, clinician, ml_pipeline, auditor or "
                                      "security_admin.")],
    facility: Annotated[str | None, typer.Option("--facility", help="The principal's facility (row filter).")] = None,
    department: Annotated[str | None, typer.Option("--department", help="Department attribute.")] = None,
    purpose: Annotated[list[str] | None, typer.Option("--purpose", help="Purpose of use (repeat or comma-separate); "
                                                      "default: the role's usual purpose.")] = None,
    service: Annotated[bool, typer.Option("--service", help="A service principal (svc:NAME), not a person.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a user or service principal with a role and attributes."""
    from access.policy import DEFAULT_PURPOSES
    from access.principals import Principal, PrincipalKind, Role, parse_purposes

    settings = settings_from(ctx)
    operator = _operator(settings)
    try:
        role_value = Role(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from None
    purposes = parse_purposes(purpose) or DEFAULT_PURPOSES[role_value]
    principal = _store(settings).add(Principal(
        name, role_value, kind=PrincipalKind.SERVICE if service else PrincipalKind.USER, facility=facility,
        department=department, purposes=purposes))
    _record_admin(settings, operator, "add-principal", {"target": principal.qualified, "role": role_value.value})
    emit(principal.to_dict(), as_json, f"added {principal.qualified} ({role_value.value}"
          f"{', facility ' + facility if facility else ''}; purposes {', '.join(purposes)})")


@access_app.command("list")
def list_principals(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List principals and their roles and attributes."""
    principals = [p.to_dict() for p in _store(settings_from(ctx)).list()]
    lines = [f"{p['kind']}:{p['name']}  {p['role']}  facility={p['facility'] or '-'}  purposes="
             f"{','.join(p['purposes']) or '-'}{'  (disabled)' if p['disabled'] else ''}" for p in principals]
    emit(principals, as_json, "\n".join(lines) or "no principals yet: `medguard access add-principal`")


@access_app.command("issue-token")
def issue_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The principal.")],
    ttl_days: Annotated[int | None, typer.Option("--ttl-days", min=1, help="Lifetime (default "
                                                 "access.token_ttl_days).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Issue an API token; it is shown ONCE and stored only as a salted scrypt hash."""
    from datetime import timedelta

    settings = settings_from(ctx)
    operator = _operator(settings)
    issued = _store(settings).issue_token(name, ttl=timedelta(days=ttl_days) if ttl_days else None)
    _record_admin(settings, operator, "issue-token", {"target": name, "token_id": issued.token_id})
    emit({"token_id": issued.token_id, "principal": name, "expires_at": issued.expires_at.isoformat(),
           "token": issued.secret}, as_json,
          f"token {issued.token_id} for {name}, expires {issued.expires_at:%Y-%m-%d} (shown once):\n{issued.secret}")


@access_app.command("revoke-token")
def revoke_token(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id (the part after mgt_, or from --json).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke an API token; its sessions end at once."""
    settings = settings_from(ctx)
    operator = _operator(settings)
    principal = _store(settings).revoke_token(token_id)
    _record_admin(settings, operator, "revoke-token", {"target": principal, "token_id": token_id})
    emit({"token_id": token_id, "principal": principal, "revoked": True}, as_json,
          f"revoked token {token_id} of {principal}")


@access_app.command("enable-totp")
def enable_totp(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The principal.")],
    as_json: JsonOption = False,
) -> None:
    """Require a TOTP code at login; prints the provisioning URI once (load it into an authenticator)."""
    settings = settings_from(ctx)
    operator = _operator(settings)
    uri = _store(settings).enable_totp(name)
    _record_admin(settings, operator, "enable-totp", {"target": name})
    emit({"principal": name, "provisioning_uri": uri}, as_json, f"TOTP enabled for {name}; provisioning URI "
          f"(shown once):\n{uri}")


@access_app.command("tables")
def tables(
    ctx: typer.Context,
    as_name: AsOption = None,
    token: TokenOption = None,
    totp: TotpOption = None,
    purpose: PurposeOption = None,
    columns: Annotated[bool, typer.Option("--columns", help="Also count each table's visible columns.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The logical tables (zone.table) the principal may query."""
    from access.gateway import QueryGateway

    settings = settings_from(ctx)
    session = open_session(settings, as_name, token, totp)
    gateway = QueryGateway.from_settings(settings)
    names = gateway.tables(session, purpose=purpose)
    if not columns:
        emit(names, as_json, "\n".join(names) or f"{session.principal.qualified} may query no table")
        return
    counted = [{"table": name, "columns": len(gateway.describe(session, name, purpose=purpose))} for name in names]
    emit(counted, as_json, "\n".join(f"{c['table']}  ({c['columns']} visible columns)" for c in counted)
         or f"{session.principal.qualified} may query no table")


@access_app.command("describe")
def describe(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="The logical table, zone.table (see `medguard access tables`).")],
    as_name: AsOption = None,
    token: TokenOption = None,
    totp: TotpOption = None,
    purpose: PurposeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The columns of a table the principal can see, with type, class and mask; hidden columns are not listed."""
    from access.gateway import QueryGateway

    settings = settings_from(ctx)
    session = open_session(settings, as_name, token, totp)
    rows = QueryGateway.from_settings(settings).describe(session, table, purpose=purpose)
    width = max((len(r["name"]) for r in rows), default=0)
    lines = [f"{r['name']:<{width}}  {r['type']:<12}  {r['class']:<17}  {r['mask']}" for r in rows]
    emit(rows, as_json, "\n".join(lines) or f"no column of {table} is visible to {session.principal.qualified}")


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One SELECT over logical tables zone.table.")],
    as_name: AsOption = None,
    token: TokenOption = None,
    totp: TotpOption = None,
    purpose: PurposeOption = None,
    break_glass: Annotated[str | None, typer.Option("--break-glass", help="Emergency access: the written reason "
                                                    "(raises an alert).")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a policy-enforced SQL query (masks and row filters applied); refusals exit 1 with the reason."""
    from access.gateway import QueryGateway

    settings = settings_from(ctx)
    session = open_session(settings, as_name, token, totp)
    result = QueryGateway.from_settings(settings).query(session, sql, purpose=purpose,
                                                        break_glass_reason=break_glass)
    if as_json:  # the rows become JSON only when asked for
        emit({"columns": result.table.column_names, "rows": result.table.to_pylist(),
              "row_count": result.table.num_rows, "masks": result.masks(), "withheld": result.withheld(),
              "column_masks": dict(result.column_masks), "notices": result.notices(),
              "seconds": result.seconds}, True, "")
    elif csv:
        sys.stdout.write(result.to_csv())
    else:
        typer.echo(render_table(result))
        for notice in result.notices():
            typer.echo(f"note: {notice}")


MASKED_CELL = "‹masked›"
MISSING_CELL = "null"


def render_table(result: object, *, max_rows: int = 200) -> str:
    """A result as a text table: a cell the policy hid prints as ``‹masked›``, a missing value as ``null``."""
    import pandas as pd

    table = result.table  # type: ignore[attr-defined]
    hidden = {c for c, m in result.column_masks.items() if m == "null"}  # type: ignore[attr-defined]
    rows = table.slice(0, max_rows).to_pylist()
    cells = {name: [MASKED_CELL if name in hidden and row[name] is None else
                    MISSING_CELL if row[name] is None else _cell(row[name]) for row in rows]
             for name in table.column_names}
    text = pd.DataFrame(cells, columns=table.column_names).to_string(index=False) if table.num_columns else ""
    if table.num_rows > max_rows:
        text += f"\n… {table.num_rows - max_rows:,} more rows (use --csv or --json for all)"
    return text if rows else f"{text}\n(no rows)".lstrip("\n")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
