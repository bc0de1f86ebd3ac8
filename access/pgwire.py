"""The PostgreSQL-wire SQL endpoint: psql, psycopg, pandas and DBeaver in front of the policy gateway.

``medguard serve --pg-port PORT`` runs :func:`run_pg_server`. The wire protocol (v3) is framed with
``buenavista``'s handler and buffers; every statement a client sends is answered by medguard, never by
buenavista's DuckDB passthrough:

- **Data queries** (a SELECT naming ``zone.table``) go to :meth:`access.gateway.QueryGateway.query` with the
  connection's session: the same parser, allow-list, policy, row filters, masks, row and byte caps, per-principal
  rate limit and audit as ``medguard query``. The result's :meth:`~access.gateway.QueryResult.notices` (row
  filters and the rows they removed, masked columns) arrive as NoticeResponse messages before the rows. Masked
  cells travel as NULL; the notices say which columns were masked, so a NULL there is not missing data.
- **Catalog queries** (``pg_catalog.*``, ``information_schema.*``, ``version()``, ``SELECT 1``...) run in a
  per-connection, empty in-memory DuckDB that holds nothing but the principal's own view of the lake: one empty
  table per table :meth:`~access.gateway.QueryGateway.tables` grants, with only the columns
  :meth:`~access.gateway.QueryGateway.describe` shows (a column the principal only ever sees as null is absent).
  It has no data, external access is off and its configuration is locked; ``pg_sleep`` and file readers are
  refused.
- **Session chatter** (SET, SHOW, BEGIN/COMMIT/ROLLBACK, DISCARD, DEALLOCATE...) is acknowledged and changes
  nothing. **COPY** and **several statements in one message** are refused.
- **Extended protocol** (Parse/Bind/Describe/Execute/Sync): ``$n`` parameters are substituted into the parsed
  statement as typed SQL literals (:func:`substitute_parameters`, on sqlglot's tree, never by splicing text), then
  the statement runs as above. A Describe of a portal runs it (once; Execute sends the rows).

Authentication: the startup message's ``user`` is the principal's name; the server asks for a cleartext password
(AuthenticationCleartextPassword), which is one of that principal's API tokens, ``<token>:<totp>`` for a
principal with TOTP enrolled. The token is checked server-side by :meth:`PrincipalStore.authenticate`, so md5 or
SCRAM (which need the password's secret on the server) cannot be used; the password is protected by TLS instead.
A token of another principal is refused like a wrong one; failures count toward the store's lockout of the
client's address. Every login attempt, accepted or refused, is one ``request`` audit event (no secrets).

TLS: with ``pgwire.tls_cert`` and ``pgwire.tls_key`` set, an SSLRequest is answered ``S`` and the socket wrapped
(TLS 1.2+); a client that does not ask for TLS is refused. Without them the server refuses to listen on a
non-loopback address unless ``pgwire.allow_plaintext_non_loopback`` is set (a TLS-terminating proxy in front).
Cancel requests and GSS encryption are not supported (GSSENCRequest is answered ``N``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import ipaddress
import logging
import math
import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlglot
from buenavista.core import Connection as _BVConnection
from buenavista.core import Session as _BVSession
from buenavista.postgres import BuenaVistaHandler, BuenaVistaServer, BVBuffer, ServerResponse
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from pipeline.errors import AccessDeniedError, MedguardError, SettingsError
from storage_security.audit.log import AuditAction, AuditEvent, Decision

if TYPE_CHECKING:
    from access.gateway import QueryGateway
    from access.principals import PrincipalStore, Session
    from pipeline.settings import Settings

__all__ = ["CatalogView", "PgWireError", "classify", "run_pg_server", "substitute_parameters"]

log = logging.getLogger(__name__)

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_PROTOCOL_3 = 196608
_MAX_STARTUP = 10_000
# Rows a catalog query may return (the catalog is small; a cross join of it is not).
MAX_CATALOG_ROWS = 10_000
CATALOG_TIMEOUT_SECONDS = 5.0
SERVER_VERSION = "15.0 (medguard)"
_PARAMETER_STATUS = {
    "server_version": SERVER_VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres", "TimeZone": "UTC", "integer_datetimes": "on", "standard_conforming_strings": "on",
    "is_superuser": "off", "application_name": "", "default_transaction_read_only": "on",
}
# What SHOW answers (lower-cased names); anything else is an empty string.
_SHOW = {**{k.lower(): v for k, v in _PARAMETER_STATUS.items()}, "transaction isolation level": "read committed",
         "transaction_isolation": "read committed", "search_path": "deidentified, predictions, raw",
         "max_identifier_length": "63", "lc_collate": "C", "lc_ctype": "C"}
# First keywords of statements clients send on connect or around queries: acknowledged, nothing changes.
_HARMLESS = {"SET": "SET", "RESET": "RESET", "DISCARD": "DISCARD ALL", "DEALLOCATE": "DEALLOCATE",
             "BEGIN": "BEGIN", "START": "START TRANSACTION", "COMMIT": "COMMIT", "END": "COMMIT",
             "ROLLBACK": "ROLLBACK", "ABORT": "ROLLBACK", "SAVEPOINT": "SAVEPOINT", "RELEASE": "RELEASE",
             "LISTEN": "LISTEN", "UNLISTEN": "UNLISTEN", "CLOSE": "CLOSE CURSOR"}
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# Functions refused in catalog queries even though the catalog database could run them.
_CATALOG_DENIED_PREFIXES = ("read_", "parquet_", "glob", "pg_sleep", "sniff_", "getenv", "query", "duckdb_",
                            "delta_", "iceberg_", "sqlite_", "postgres_", "install", "load")


class PgWireError(MedguardError):
    """A statement or message the endpoint refuses; ``sqlstate`` is the PostgreSQL error code sent with it."""

    def __init__(self, message: str, sqlstate: str = "42000") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class _Closed(Exception):
    """The client went away (or sent Terminate)."""


# statements ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """What one client statement is: ``kind`` is ``empty``, ``command`` (acknowledged with ``tag``), ``show``
    (``name``), ``catalog`` or ``data`` (``tree`` parsed in the PostgreSQL dialect, None when sqlglot could not
    parse it and the gateway will give its own reason), with ``sql`` the text."""

    kind: str
    sql: str
    tag: str = ""
    name: str = ""
    tree: exp.Expression | None = None


def _tokens(sql: str) -> list[Any]:
    try:
        return sqlglot.Tokenizer().tokenize(sql)
    except SqlglotError as exc:
        raise PgWireError("the statement could not be read (unterminated quote or comment?)", "42601") from exc


def classify(sql: str) -> Statement:
    """Sort one simple-query message into the kinds above.

    Raises:
        PgWireError: COPY, several statements in one message, or text that cannot be tokenised.
    """
    tokens = _tokens(sql)
    # A trailing semicolon is allowed; one followed by anything else is a second statement.
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    if not tokens:
        return Statement("empty", sql)
    if any(t.token_type == TokenType.SEMICOLON for t in tokens):
        raise PgWireError("one statement per query: several statements in one message are refused", "0A000")
    first = tokens[0].text.upper()
    if first == "COPY":
        raise PgWireError("COPY is not supported by the governed endpoint: run a SELECT (rows and bytes are "
                          "capped)", "0A000")
    if first == "SHOW":
        name = " ".join(t.text for t in tokens[1:]).strip().lower()
        return Statement("show", sql, name=name)
    if first in _HARMLESS:
        return Statement("command", sql, tag=_HARMLESS[first])
    if first in ("DESCRIBE", "DESC"):
        return Statement("data", sql)
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except SqlglotError:
        return Statement("data", sql)
    if not isinstance(tree, exp.Query):
        return Statement("data", sql, tree=tree)  # the gateway refuses it with its own reason
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    catalog = data = False
    for table in tree.find_all(exp.Table):
        name, db = table.name.lower(), table.db.lower()
        if not db and name in ctes:
            continue
        if db in _CATALOG_SCHEMAS or (not db and (name.startswith("pg_") or not name)):
            catalog = True
        else:
            data = True
    if catalog and data:
        raise PgWireError("a query may not mix catalog tables (pg_catalog, information_schema) with data tables",
                          "0A000")
    return Statement("data" if data else "catalog", sql, tree=tree)


# parameters ------------------------------------------------------------------------------------------------

# PostgreSQL type OIDs.
_BOOL, _BYTEA, _INT8, _INT2, _INT4, _TEXT, _OID = 16, 17, 20, 21, 23, 25, 26
_FLOAT4, _FLOAT8, _UNKNOWN, _VARCHAR, _BPCHAR = 700, 701, 705, 1043, 1042
_DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ, _NUMERIC = 1082, 1083, 1114, 1184, 1700
_INTEGERS = (_INT2, _INT4, _INT8, _OID)


def decode_parameter(raw: bytes | None, oid: int, binary: bool) -> Any:
    """One Bind parameter as a Python value of the type its OID names (text: str).

    Raises:
        PgWireError: a value that is not of its declared type, or a binary format for a type not supported.
    """
    if raw is None:
        return None
    try:
        if binary:
            if oid == _BOOL:
                return raw != b"\x00"
            if oid in (_INT2, _INT4, _INT8, _OID):
                return int.from_bytes(raw, "big", signed=oid != _OID)
            if oid == _FLOAT4:
                return struct.unpack("!f", raw)[0]
            if oid == _FLOAT8:
                return struct.unpack("!d", raw)[0]
            if oid in (_TEXT, _VARCHAR, _BPCHAR, _UNKNOWN, 0):
                return raw.decode("utf-8")
            raise PgWireError(f"binary parameters of type OID {oid} are not supported; send them as text", "0A000")
        text = raw.decode("utf-8")
        if oid == _BOOL:
            lowered = text.strip().lower()
            if lowered in ("t", "true", "on", "yes", "1"):
                return True
            if lowered in ("f", "false", "off", "no", "0"):
                return False
            raise ValueError(text)
        if oid in _INTEGERS:
            return int(text)
        if oid in (_FLOAT4, _FLOAT8):
            return float(text)
        if oid == _NUMERIC:
            return decimal.Decimal(text)
        if oid == _DATE:
            return dt.date.fromisoformat(text)
        if oid in (_TIMESTAMP, _TIMESTAMPTZ):
            return dt.datetime.fromisoformat(text)
        return text
    except (ValueError, UnicodeDecodeError, struct.error, decimal.InvalidOperation) as exc:
        raise PgWireError(f"parameter of type OID {oid} is not a valid value of that type", "22P02") from exc


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PgWireError("parameter is not a finite number", "22P02")
        return exp.Literal.number(repr(value))
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise PgWireError("parameter is not a finite number", "22P02")
        return exp.Literal.number(str(value))
    if isinstance(value, dt.datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP"
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), kind)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    if isinstance(value, str):
        if "\x00" in value:
            raise PgWireError("parameter holds a NUL character", "22021")
        return exp.Literal.string(value)
    raise PgWireError(f"parameter of Python type {type(value).__name__} is not supported", "0A000")


def substitute_parameters(sql: str, values: Sequence[Any]) -> exp.Expression:
    """The statement ``sql`` (PostgreSQL dialect) with each ``$n`` replaced by ``values[n-1]`` as a typed literal.

    The values become sqlglot literal nodes of the parsed tree (strings quoted by the generator), so no value can
    change the statement's structure.

    Raises:
        PgWireError: the statement does not parse, uses a ``$n`` outside ``values``, or a value is not a literal.
    """
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except SqlglotError as exc:
        raise PgWireError("the prepared statement could not be parsed", "42601") from exc
    used: set[int] = set()

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter | exp.Placeholder):
            ref = node.this.name if isinstance(node.this, exp.Expression) else str(node.this or "")
            if not ref.isdigit() or not 1 <= int(ref) <= len(values):
                raise PgWireError(f"parameter ${ref or '?'} has no value (the statement was bound with "
                                  f"{len(values)})", "08P01")
            used.add(int(ref))
            return _literal(values[int(ref) - 1])
        return node

    tree = tree.transform(replace)
    if values and len(used) != len(values):
        raise PgWireError(f"{len(values)} parameters were bound but the statement uses {len(used)}", "08P01")
    return tree


# results -------------------------------------------------------------------------------------------------


@dataclass
class _Column:
    name: str
    oid: int
    text: Callable[[Any], str]
    binary: Callable[[Any], bytes] | None


def _ts_text(value: dt.datetime) -> str:
    return value.isoformat(sep=" ")


def _micros(value: dt.datetime) -> int:
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) if value.tzinfo else dt.datetime(2000, 1, 1)
    delta = value - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _column(name: str, kind: pa.DataType) -> _Column:
    def bool_text(v: Any) -> str:
        return "t" if v else "f"

    if pa.types.is_boolean(kind):
        return _Column(name, _BOOL, bool_text, lambda v: b"\x01" if v else b"\x00")
    if pa.types.is_integer(kind):
        if kind.bit_width <= 32 and pa.types.is_signed_integer(kind):
            return _Column(name, _INT4, str, lambda v: struct.pack("!i", v))
        return _Column(name, _INT8, str, lambda v: struct.pack("!q", v))
    if pa.types.is_floating(kind):
        return _Column(name, _FLOAT8, repr, lambda v: struct.pack("!d", v))
    if pa.types.is_decimal(kind):
        return _Column(name, _NUMERIC, str, None)
    if pa.types.is_date(kind):
        return _Column(name, _DATE, lambda v: v.isoformat(),
                       lambda v: struct.pack("!i", v.toordinal() - dt.date(2000, 1, 1).toordinal()))
    if pa.types.is_timestamp(kind):
        return _Column(name, _TIMESTAMPTZ if kind.tz else _TIMESTAMP, _ts_text,
                       lambda v: struct.pack("!q", _micros(v)))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _Column(name, _BYTEA, lambda v: "\\x" + bytes(v).hex(), bytes)
    return _Column(name, _TEXT, str, lambda v: str(v).encode())


@dataclass
class Answer:
    """What one statement sends back: rows (``columns`` set) or only a command tag."""

    tag: str
    columns: list[_Column] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _answer_from_arrow(table: pa.Table, *, notices: Sequence[str] = (), null_columns: frozenset[str] = frozenset(),
                       ) -> Answer:
    columns = [_column(f.name, pa.string() if f.name in null_columns else f.type) for f in table.schema]
    data = [[None] * table.num_rows if f.name in null_columns else table.column(i).to_pylist()
            for i, f in enumerate(table.schema)]
    rows = [list(r) for r in zip(*data, strict=True)] if data else []
    return Answer(f"SELECT {table.num_rows}", columns, rows, list(notices))


# the principal's catalogue -----------------------------------------------------------------------------

_DUCK_TYPES = (("bool", "BOOLEAN"), ("int8", "TINYINT"), ("int16", "SMALLINT"), ("int32", "INTEGER"),
               ("int64", "BIGINT"), ("uint", "BIGINT"), ("float", "FLOAT"), ("halffloat", "FLOAT"),
               ("double", "DOUBLE"), ("date", "DATE"), ("timestamp", "TIMESTAMP"), ("decimal", "DECIMAL(38,9)"),
               ("binary", "BLOB"), ("large_binary", "BLOB"))


def _duck_type(arrow_type: str, mask: str) -> str:
    if mask not in ("plaintext", ""):
        return "VARCHAR"  # pseudonyms and ``****`` are strings whatever the column held
    lowered = arrow_type.lower()
    if lowered.startswith("timestamp") and "tz=" in lowered:
        return "TIMESTAMPTZ"
    for prefix, duck in _DUCK_TYPES:
        if lowered.startswith(prefix):
            return duck
    return "VARCHAR"


_CATALOG_VIEWS = (
    "pg_class AS SELECT *, false AS relforcerowsecurity FROM pg_catalog.pg_class WHERE relnamespace NOT IN "
    "(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'medguard_pg')",
    "pg_namespace AS SELECT * FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('medguard_pg', 'main')",
    "tables AS SELECT * FROM information_schema.tables WHERE table_schema NOT IN ('medguard_pg', 'main')",
    "columns AS SELECT * FROM information_schema.columns WHERE table_schema NOT IN ('medguard_pg', 'main')",
    "schemata AS SELECT * FROM information_schema.schemata WHERE schema_name NOT IN ('medguard_pg', 'main')",
    "pg_database AS SELECT oid, 'medguard' AS datname, 10 AS datdba, 6 AS encoding, 'c' AS datlocprovider, "
    "datallowconn, datistemplate, 'C' AS datcollate, 'C' AS datctype, NULL AS daticulocale, NULL AS datacl, "
    "-1 AS datconnlimit, 0 AS dattablespace FROM pg_catalog.pg_database WHERE datname = current_database()",
)
_OVERRIDDEN = frozenset(v.split(" ", 1)[0] for v in _CATALOG_VIEWS)
# Functions answered as PostgreSQL would name them, not as the catalog's DuckDB would.
_CONSTANT_FUNCTIONS = {"version": f"PostgreSQL {SERVER_VERSION}, medguard governed endpoint",
                       "current_database": "medguard", "current_catalog": "medguard"}


def _empty_answer(tree: exp.Expression) -> Answer:
    """Zero rows with the query's column names: a catalog query about objects this endpoint does not have
    (policies, triggers, publications, inheritance...)."""
    select = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    names = [e.alias_or_name or e.sql() for e in getattr(select, "expressions", [])] or ["?column?"]
    return Answer("SELECT 0", [_column(n, pa.string()) for n in names], [])


def _quote(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql("duckdb")


class CatalogView:
    """An empty in-memory DuckDB holding only the principal's view of the lake, for catalog queries.

    Args:
        tables: ``{"zone.table": [{"name", "type", "mask"}...]}``: the granted tables and their visible columns.
    """

    def __init__(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        import duckdb

        self._con = duckdb.connect(":memory:", config={"enable_external_access": False,
                                                       "autoinstall_known_extensions": False,
                                                       "autoload_known_extensions": False})
        schemas = sorted({name.split(".", 1)[0] for name in tables})
        for schema in schemas:
            self._con.execute(f"CREATE SCHEMA {_quote(schema)}")
        for name, columns in sorted(tables.items()):
            schema, table = name.split(".", 1)
            cols = ", ".join(f"{_quote(c['name'])} {_duck_type(str(c.get('type', '')), str(c.get('mask', '')))}"
                             for c in columns) or '"(no visible columns)" VARCHAR'
            self._con.execute(f"CREATE TABLE {_quote(schema)}.{_quote(table)} ({cols})")
        for macro in ("pg_get_userbyid(x) AS 'medguard'", "pg_encoding_to_char(x) AS 'UTF8'",
                      "pg_get_partkeydef(x) AS NULL", "pg_relation_is_publishable(x) AS false",
                      "pg_get_statisticsobjdef_columns(x) AS NULL", "array_to_string(a, s) AS NULL"):
            with contextlib.suppress(Exception):
                self._con.execute(f"CREATE MACRO {macro}")
        # DuckDB's pg_catalog lacks columns psql and JDBC read; these views add them (constants: no security
        # features of PostgreSQL apply here, the gateway's policy does).
        self._con.execute("CREATE SCHEMA medguard_pg")
        for view in _CATALOG_VIEWS:
            self._con.execute(f"CREATE VIEW medguard_pg.{view}")
        path = ",".join([*schemas, "main"])
        self._con.execute(f"SET search_path = '{path}'")
        self._con.execute("SET lock_configuration = true")
        self.tables = sorted(tables)

    def __repr__(self) -> str:
        return f"CatalogView(tables={len(self.tables)})"

    def close(self) -> None:
        self._con.close()

    def run(self, tree: exp.Expression) -> Answer:
        """Answer a catalog query (PostgreSQL dialect) from the principal's view.

        Raises:
            PgWireError: a refused function, more than :data:`MAX_CATALOG_ROWS` rows, or an error of the query.
        """
        for func in tree.find_all(exp.Func):
            name = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
            if name.startswith(_CATALOG_DENIED_PREFIXES) or isinstance(func, exp.ReadCSV):
                raise PgWireError(f"function {name} is not available on this endpoint", "42501")
        sql = _to_duckdb(tree)
        timer = threading.Timer(CATALOG_TIMEOUT_SECONDS, self._con.interrupt)
        timer.start()
        try:
            reader = self._con.sql(sql).to_arrow_reader(1024)
            batches, rows = [], 0
            for batch in reader:
                rows += batch.num_rows
                if rows > MAX_CATALOG_ROWS:
                    raise PgWireError(f"catalog query returns more than {MAX_CATALOG_ROWS} rows", "54000")
                batches.append(batch)
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except PgWireError:
            raise
        except Exception as exc:
            if str(exc).startswith(("Catalog Error", "Binder Error")):
                return _empty_answer(tree)  # DuckDB's own message about the catalog query, no data behind it
            raise PgWireError(f"catalog query failed: {str(exc).splitlines()[0][:300]}", "42883") from exc
        finally:
            timer.cancel()
        return _answer_from_arrow(table)


def _to_duckdb(tree: exp.Expression) -> str:
    """PostgreSQL catalog SQL as DuckDB runs it: ``pg_catalog.`` off function names, regex operators and
    ``::regclass`` casts rewritten, ``COLLATE pg_catalog.default`` dropped."""

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and node.name.lower() in _OVERRIDDEN and (
                node.db.lower() in ("pg_catalog", "information_schema", "")):
            moved = node.copy()
            moved.set("db", exp.to_identifier("medguard_pg"))
            moved.set("catalog", None)
            return moved
        if isinstance(node, exp.Func):
            name = "version" if isinstance(node, exp.CurrentVersion) else (
                node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name == "pg_get_expr" and len(node.expressions) > 2:
                node.set("expressions", node.expressions[:2])  # DuckDB's takes no pretty flag
            if name in _CONSTANT_FUNCTIONS and not isinstance(node.parent, exp.Dot):
                value = exp.Literal.string(_CONSTANT_FUNCTIONS[name])
                return exp.alias_(value, name) if isinstance(node.parent, exp.Select) else value
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func) and node.this.name == "pg_catalog":
            return node.expression
        if isinstance(node, exp.Collate):
            return node.this
        if isinstance(node, exp.Cast):
            target = node.to.sql(dialect="postgres").lower().removeprefix("pg_catalog.")
            if isinstance(node.to, exp.ObjectIdentifier) or target.startswith("reg") or target == "oid":
                return node.this  # object identifiers are plain numbers in the catalog database
            if target in ("text", "name", "char", '"char"', "bpchar"):
                node.set("to", exp.DataType.build("VARCHAR"))  # the same node: its operand is still visited
        if isinstance(node, exp.Operator):
            op = str(node.args.get("operator", "")).split(".")[-1]
            regex = {"~": (exp.RegexpLike, False), "!~": (exp.RegexpLike, True), "~*": (exp.RegexpILike, False),
                     "!~*": (exp.RegexpILike, True)}.get(op)
            if regex:
                kind, negate = regex
                matched = kind(this=node.this, expression=node.expression)
                return exp.Not(this=matched) if negate else matched
        return node

    # Twice: a rewritten operator's operands (a COLLATE) are not visited in the pass that built it.
    return tree.copy().transform(rewrite).transform(rewrite).sql(dialect="duckdb")


# the connection ----------------------------------------------------------------------------------------


class _Session(_BVSession):
    """A logged-in connection's state: the medguard session, its catalogue view, prepared statements."""

    def __init__(self) -> None:
        super().__init__()
        self.medguard: Session | None = None
        self.catalog: CatalogView | None = None
        self.statements: dict[str, tuple[str, list[int]]] = {}
        self.portals: dict[str, dict[str, Any]] = {}
        self.transaction = False
        self.failed = False

    def in_transaction(self) -> bool:
        return self.transaction

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog.close()


class _Connection(_BVConnection):
    def new_session(self) -> _Session:
        return _Session()

    def parameters(self) -> dict[str, str]:
        return dict(_PARAMETER_STATUS)


class _Handler(BuenaVistaHandler):
    """One client connection: startup, TLS, login, then simple and extended queries until Terminate."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.tls = False
        self.peer = str(self.client_address[0])

    def handle(self) -> None:
        srv = self.server
        if not srv.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                self.send_error(PgWireError("too many connections", "53300"))
                self.wfile.flush()
            return
        srv.track(self.request, add=True)
        state: _Session | None = None
        try:
            self.request.settimeout(srv.settings.pgwire.login_timeout_seconds)
            state = self._startup()
            if state is None:
                return
            self.connection.settimeout(srv.settings.pgwire.idle_timeout_seconds)
            self._serve(state)
        except (_Closed, OSError, ssl.SSLError, struct.error):
            pass
        except PgWireError as exc:
            with contextlib.suppress(OSError):
                self.send_error(exc)
        except Exception:  # the connection ends; the server stays up
            log.exception("pgwire connection failed")
            with contextlib.suppress(OSError):
                self.send_error(PgWireError("internal error", "XX000"))
        finally:
            if state is not None:
                if state.medguard is not None:
                    with contextlib.suppress(Exception):
                        srv.store.end(state.medguard)
                srv.conn.close_session(state)
            srv.track(self.request, add=False)
            srv.slots.release()

    # low-level I/O ---------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if data is None or len(data) < n:
            raise _Closed
        return data

    def _message(self) -> tuple[bytes, bytes]:
        kind = self.rfile.read(1)
        if not kind:
            raise _Closed
        length = struct.unpack("!i", self._read(4))[0]
        if length < 4 or length - 4 > self.server.settings.pgwire.max_message_bytes:
            raise PgWireError(f"message of {length} bytes refused (setting pgwire.max_message_bytes)", "08P01")
        return kind, self._read(length - 4)

    def _write(self, kind: bytes, body: bytes = b"") -> None:
        self.wfile.write(kind + struct.pack("!i", len(body) + 4) + body)

    def send_error(self, exception: Any, ctx: Any = None) -> None:
        code = getattr(exception, "sqlstate", "XX000")
        buf = BVBuffer()
        for key, value in (("S", "ERROR"), ("V", "ERROR"), ("C", code), ("M", str(exception))):
            buf.write_bytes(key.encode())
            buf.write_string(value)
        buf.write_bytes(b"\x00")
        self._write(ServerResponse.ERROR_RESPONSE, buf.get_value())

    def _notice(self, text: str) -> None:
        buf = BVBuffer()
        for key, value in (("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"), ("M", text)):
            buf.write_bytes(key.encode())
            buf.write_string(value)
        buf.write_bytes(b"\x00")
        self._write(ServerResponse.NOTICE_RESPONSE, buf.get_value())

    def _ready(self, state: _Session) -> None:
        status = (b"E" if state.failed else b"T") if state.transaction else b"I"
        self._write(ServerResponse.READY_FOR_QUERY, status)
        self.wfile.flush()

    # startup and login -----------------------------------------------------------------------------

    def _startup(self) -> _Session | None:
        srv = self.server
        while True:
            length = struct.unpack("!i", self._read(4))[0]
            if not 8 <= length <= _MAX_STARTUP:
                raise PgWireError("malformed startup message", "08P01")
            body = self._read(length - 4)
            code = struct.unpack("!i", body[:4])[0]
            if code == _SSL_REQUEST:
                if srv.tls is None or self.tls:
                    self.wfile.write(b"N")
                    self.wfile.flush()
                    continue
                self.wfile.write(b"S")
                self.wfile.flush()
                self._wrap_tls()
                continue
            if code == _GSSENC_REQUEST:
                self.wfile.write(b"N")
                self.wfile.flush()
                continue
            if code == _CANCEL_REQUEST:
                return None  # not supported: the query runs to its own timeout
            if code != _PROTOCOL_3:
                raise PgWireError("unsupported frontend protocol (version 3.0 only)", "08P01")
            break
        parts = body[4:].split(b"\x00")
        params = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                  for k, v in zip(parts[::2], parts[1::2], strict=False) if k}
        user = params.get("user", "")[:128]
        if srv.tls is not None and not self.tls:
            self._audit_login(user, None, "refused: TLS required")
            raise PgWireError("this server requires TLS (sslmode=require)", "28000")
        self._write(ServerResponse.AUTHENTICATION_REQUEST, struct.pack("!i", 3))  # cleartext password
        self.wfile.flush()
        kind, payload = self._message()
        if kind != b"p":
            raise PgWireError("expected a password message", "08P01")
        password = payload.rstrip(b"\x00").decode("utf-8", "replace")
        token, _, totp = password.partition(":")
        try:
            session = srv.store.authenticate(token, totp=totp or None, endpoint=f"pgwire:{self.peer}")
        except AccessDeniedError as exc:
            self._audit_login(user, None, str(exc))
            raise PgWireError(f'password authentication failed for user "{user}": {exc}', "28P01") from None
        if session.principal.name != user:
            srv.store.end(session)
            self._audit_login(user, None, "token of another principal")
            raise PgWireError(f'password authentication failed for user "{user}": the token is not this '
                              "user's", "28P01")
        self._audit_login(user, session, "")
        state: _Session = srv.conn.create_session()  # type: ignore[assignment]
        state.medguard = session
        self._write(ServerResponse.AUTHENTICATION_REQUEST, struct.pack("!i", 0))
        for name, value in srv.conn.parameters().items():
            buf = BVBuffer()
            buf.write_string(name)
            buf.write_string(value)
            self._write(ServerResponse.PARAMETER_STATUS, buf.get_value())
        self._write(ServerResponse.BACKEND_KEY_DATA, struct.pack("!iI", 0, 0))
        self._ready(state)
        return state

    def _wrap_tls(self) -> None:
        self.wfile.flush()
        conn = self.server.tls.wrap_socket(self.request, server_side=True)  # type: ignore[union-attr]
        self.connection = conn
        self.rfile = conn.makefile("rb", self.rbufsize)
        self.wfile = socketserver._SocketWriter(conn)  # type: ignore[attr-defined]
        self.tls = True

    def _audit_login(self, user: str, session: Session | None, refusal: str) -> None:
        details: dict[str, Any] = {"front": "pgwire", "client": self.peer, "tls": self.tls, "user": user}
        if session is not None:
            details.update(session.audit_details())
        event = AuditEvent(principal=session.principal.qualified if session else f"unauthenticated:{user or '?'}",
                           action=AuditAction.REQUEST, decision=Decision.DENY if refusal else Decision.ALLOW,
                           purpose="unspecified", reason=(refusal or "login")[:300], details=details)
        try:
            self.server.gateway.audit.record(event)
        except Exception:  # an unrecorded login must not go on: fail closed
            log.exception("pgwire: login audit failed")
            raise PgWireError("the audit log is unavailable", "58000") from None

    # queries ---------------------------------------------------------------------------------------

    def _serve(self, state: _Session) -> None:
        skipping = False  # after an error in the extended protocol, messages are ignored until Sync
        while True:
            kind, payload = self._message()
            if kind == b"X":
                return
            if kind == b"S":
                skipping = False
                self._ready(state)
                continue
            if kind == b"H":
                self.wfile.flush()
                continue
            if kind == b"Q":
                self._simple(state, payload.rstrip(b"\x00").decode("utf-8", "replace"))
                continue
            if skipping:
                continue
            try:
                if kind == b"P":
                    self._parse(state, payload)
                elif kind == b"B":
                    self._bind(state, payload)
                elif kind == b"D":
                    self._describe(state, payload)
                elif kind == b"E":
                    self._execute(state, payload)
                elif kind == b"C":
                    target = payload[1:].rstrip(b"\x00").decode("utf-8", "replace")
                    (state.statements if payload[:1] == b"S" else state.portals).pop(target, None)
                    self._write(ServerResponse.CLOSE_COMPLETE)
                else:
                    raise PgWireError(f"unsupported message type {kind!r}", "08P01")
            except PgWireError as exc:
                self.send_error(exc)
                skipping = True
                state.failed = state.transaction

    def _simple(self, state: _Session, sql: str) -> None:
        try:
            answer = self._run(state, sql, None)
            if answer is None:
                self._write(ServerResponse.EMPTY_QUERY_RESPONSE)
            else:
                self._send_answer(answer, describe=True, formats=[])
        except PgWireError as exc:
            self.send_error(exc)
            state.failed = state.transaction
        self._ready(state)

    def _run(self, state: _Session, sql: str, params: list[Any] | None) -> Answer | None:
        statement = classify(sql)
        if statement.kind == "empty":
            return None
        if statement.kind == "command":
            if statement.tag in ("BEGIN", "START TRANSACTION"):
                state.transaction = True
            elif statement.tag in ("COMMIT", "ROLLBACK"):
                state.transaction, state.failed = False, False
            return Answer(statement.tag)
        if statement.kind == "show":
            value = _SHOW.get(statement.name, "")
            return Answer("SHOW", [_column(statement.name or "setting", pa.string())], [[value]])
        tree = statement.tree
        if params or (tree is not None and any(tree.find_all(exp.Parameter, exp.Placeholder))):
            tree = substitute_parameters(sql, params or [])
        if statement.kind == "catalog":
            return self._catalog(state).run(tree)  # type: ignore[arg-type]
        text = tree.sql(dialect="duckdb") if tree is not None and params else sql
        return self._query(state, text)

    def _query(self, state: _Session, sql: str) -> Answer:
        gateway = self.server.gateway
        try:
            result = gateway.query(state.medguard, sql)
        except AccessDeniedError as exc:
            raise PgWireError(str(exc), "42501") from None
        except MedguardError as exc:
            raise PgWireError(str(exc), "XX000") from None
        notices = result.notices() if hasattr(result, "notices") else []
        masks = dict(getattr(result, "column_masks", {}) or {})
        # ``****`` and other non-plaintext, non-pseudonym forms go out as NULL; the notices name those columns.
        hidden = frozenset(c for c, m in masks.items() if str(m) not in ("plaintext", "pseudonym"))
        return _answer_from_arrow(result.table, notices=notices, null_columns=hidden)

    def _catalog(self, state: _Session) -> CatalogView:
        if state.catalog is None:
            gateway, session = self.server.gateway, state.medguard
            tables: dict[str, list[dict[str, Any]]] = {}
            for name in gateway.tables(session):
                try:
                    tables[name] = list(gateway.describe(session, name))
                except AccessDeniedError:
                    continue  # granted for another purpose only: not in this connection's view
            state.catalog = CatalogView(tables)
        return state.catalog

    def _send_answer(self, answer: Answer, *, describe: bool, formats: list[int]) -> None:
        for line in answer.notices:
            self._notice(line)
        if answer.columns is None:
            self._write(ServerResponse.COMMAND_COMPLETE, answer.tag.encode() + b"\x00")
            return
        binary = _binary_flags(formats, len(answer.columns))
        if describe:
            self._row_description(answer.columns, binary)
        for row in answer.rows:
            buf = BVBuffer()
            buf.write_int16(len(answer.columns))
            for value, column, as_binary in zip(row, answer.columns, binary, strict=True):
                if value is None:
                    buf.write_int32(-1)
                    continue
                encoded = column.binary(value) if as_binary and column.binary else column.text(value).encode()
                buf.write_int32(len(encoded))
                buf.write_bytes(encoded)
            self._write(ServerResponse.DATA_ROW, buf.get_value())
        self._write(ServerResponse.COMMAND_COMPLETE, answer.tag.encode() + b"\x00")

    def _row_description(self, columns: list[_Column], binary: list[bool]) -> None:
        buf = BVBuffer()
        buf.write_int16(len(columns))
        for column, as_binary in zip(columns, binary, strict=True):
            if as_binary and column.binary is None:
                raise PgWireError(f"binary results are not supported for column {column.name}; ask for text",
                                  "0A000")
            buf.write_string(column.name)
            buf.write_bytes(struct.pack("!ihihih", 0, 0, column.oid, -1, -1, 1 if as_binary else 0))
        self._write(ServerResponse.ROW_DESCRIPTION, buf.get_value())

    # extended protocol -----------------------------------------------------------------------------

    def _parse(self, state: _Session, payload: bytes) -> None:
        name, rest = _cstring(payload)
        sql, rest = _cstring(rest)
        count = struct.unpack("!h", rest[:2])[0]
        oids = list(struct.unpack(f"!{count}i", rest[2:2 + 4 * count])) if count else []
        classify(sql)  # COPY and several statements are refused at Parse, as PostgreSQL would
        state.statements[name] = (sql, oids)
        self._write(ServerResponse.PARSE_COMPLETE)

    def _bind(self, state: _Session, payload: bytes) -> None:
        portal, rest = _cstring(payload)
        name, rest = _cstring(rest)
        if name not in state.statements:
            raise PgWireError(f"prepared statement {name!r} does not exist", "26000")
        sql, oids = state.statements[name]
        buf = BVBuffer(_Bytes(rest))
        formats = [buf.read_int16() for _ in range(buf.read_int16())]
        count = buf.read_int16()
        values = []
        for i in range(count):
            size = buf.read_int32()
            raw = None if size < 0 else buf.read_bytes(size)
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            values.append(decode_parameter(raw, oids[i] if i < len(oids) else 0, fmt == 1))
        result_formats = [buf.read_int16() for _ in range(buf.read_int16())]
        state.portals[portal] = {"sql": sql, "params": values, "formats": result_formats, "answer": None}
        self._write(ServerResponse.BIND_COMPLETE)

    def _portal_answer(self, state: _Session, portal: dict[str, Any]) -> Answer | None:
        if portal["answer"] is None:
            portal["answer"] = self._run(state, portal["sql"], portal["params"]) or Answer("")
        return portal["answer"]

    def _describe(self, state: _Session, payload: bytes) -> None:
        target = payload[1:].rstrip(b"\x00").decode("utf-8", "replace")
        if payload[:1] == b"S":
            if target not in state.statements:
                raise PgWireError(f"prepared statement {target!r} does not exist", "26000")
            sql, oids = state.statements[target]
            count = _parameter_count(sql)
            types = [oids[i] if i < len(oids) and oids[i] else _TEXT for i in range(count)]
            self._write(ServerResponse.PARAMETER_DESCRIPTION, struct.pack(f"!h{count}i", count, *types))
            # The columns are known only by running the statement; with NULL parameters it is run once here.
            answer = self._run(state, sql, [None] * count) if count else self._run(state, sql, None)
        else:
            if target not in state.portals:
                raise PgWireError(f"portal {target!r} does not exist", "34000")
            portal = state.portals[target]
            answer = self._portal_answer(state, portal)
            if answer is not None and answer.columns is not None:
                self._row_description(answer.columns, _binary_flags(portal["formats"], len(answer.columns)))
                return
        if answer is None or answer.columns is None:
            self._write(ServerResponse.NO_DATA)
        else:
            self._row_description(answer.columns, [False] * len(answer.columns))

    def _execute(self, state: _Session, payload: bytes) -> None:
        target, _ = _cstring(payload)
        if target not in state.portals:
            raise PgWireError(f"portal {target!r} does not exist", "34000")
        portal = state.portals[target]
        answer = self._portal_answer(state, portal)
        if answer is None or not answer.tag:
            self._write(ServerResponse.EMPTY_QUERY_RESPONSE)
            return
        # A row limit (JDBC's fetch size) is not kept as a suspended portal: every row is sent at once, within the
        # gateway's row and byte caps, so no client ever loses the rows past its first fetch.
        self._send_answer(answer, describe=False, formats=portal["formats"])
        portal["answer"] = None if answer.columns is None else Answer(answer.tag, answer.columns, [], [])


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos:self._pos + n]
        if len(chunk) < n:
            raise PgWireError("truncated message", "08P01")
        self._pos += n
        return chunk


def _cstring(data: bytes) -> tuple[str, bytes]:
    end = data.find(b"\x00")
    if end < 0:
        raise PgWireError("malformed message (missing terminator)", "08P01")
    return data[:end].decode("utf-8", "replace"), data[end + 1:]


def _binary_flags(formats: Sequence[int], count: int) -> list[bool]:
    if not formats:
        return [False] * count
    if len(formats) == 1:
        return [formats[0] == 1] * count
    return [f == 1 for f in formats[:count]] + [False] * max(0, count - len(formats))


def _parameter_count(sql: str) -> int:
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except SqlglotError:
        return 0
    refs = [n.this.name if isinstance(n.this, exp.Expression) else str(n.this or "")
            for n in tree.find_all(exp.Parameter, exp.Placeholder)]
    return max((int(r) for r in refs if r.isdigit()), default=0)


# the server --------------------------------------------------------------------------------------------


class _Server(BuenaVistaServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, settings: Settings, gateway: QueryGateway,
                 store: PrincipalStore, tls: ssl.SSLContext | None) -> None:
        super().__init__(address, _Connection())
        self.RequestHandlerClass = _Handler
        self.settings = settings
        self.gateway = gateway
        self.store = store
        self.tls = tls
        self.slots = threading.BoundedSemaphore(settings.pgwire.max_connections)
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True  # who may connect is decided by the listen address, TLS and the login, not by buenavista

    def track(self, sock: Any, *, add: bool) -> None:
        with self._open_lock:
            (self._open.add if add else self._open.discard)(sock)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.pgwire.tls_cert, settings.pgwire.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise SettingsError("pgwire.tls_cert and pgwire.tls_key must be set together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"pgwire.tls_cert/pgwire.tls_key could not be loaded: {exc}") from exc
    return context


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_pg_server(settings: Settings, host: str, port: int, *, stop: threading.Event,
                  ready: threading.Event | None = None, gateway: QueryGateway | None = None,
                  store: PrincipalStore | None = None) -> None:
    """Serve the policy gateway over the PostgreSQL wire protocol on ``host:port`` until ``stop`` is set.

    Args:
        settings: medguard settings (the ``pgwire`` section: TLS, limits, timeouts).
        host: the address to listen on; a non-loopback one needs TLS (or ``pgwire.allow_plaintext_non_loopback``).
        port: the TCP port (0: any free port; ``ready`` is set once it listens, and the bound port is then in
            ``ready.port``).
        stop: set to stop serving; open connections are closed.
        ready: set once the server listens.
        gateway: the query gateway (default :meth:`QueryGateway.from_settings`).
        store: the principal store (default :meth:`PrincipalStore.from_settings`).

    Raises:
        SettingsError: TLS files unusable, or a non-loopback address without TLS.
        MedguardError: the address cannot be bound.
    """
    tls = _tls_context(settings)
    if tls is None and not _is_loopback(host) and not settings.pgwire.allow_plaintext_non_loopback:
        raise SettingsError(f"refusing to serve pgwire on {host} without TLS: set pgwire.tls_cert and "
                            "pgwire.tls_key (or listen on 127.0.0.1)")
    if gateway is None:
        from access.gateway import QueryGateway

        gateway = QueryGateway.from_settings(settings)
    if store is None:
        from access.principals import PrincipalStore

        store = PrincipalStore.from_settings(settings)
    try:
        server = _Server((host, port), settings=settings, gateway=gateway, store=store, tls=tls)
    except OSError as exc:
        raise MedguardError(f"cannot listen for pgwire on {host}:{port}: {exc.strerror or exc}") from exc
    worker = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pgwire",
                              daemon=True)
    worker.start()
    if ready is not None:
        ready.port = server.server_address[1]  # type: ignore[attr-defined]
        ready.set()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        worker.join(timeout=5)

