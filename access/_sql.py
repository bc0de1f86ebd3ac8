"""The analyst SQL surface: parse with sqlglot, allow-list, bind logical tables to views, prove column lineage.

Nothing here uses regular expressions on SQL text. A query is parsed into a tree; the tree must be one
SELECT (or a set operation of SELECTs) made only of allow-listed node types and functions; every table must be
a logical name ``zone.table`` or a CTE of the same query; after binding tables to the gateway's views the tree
is qualified against the views' columns, and every column reference in every scope must resolve to a view or a
derived table of the query. The SQL that runs is generated from the checked tree (comments dropped), never the
caller's text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from pipeline.errors import AccessDeniedError

DIALECT = "duckdb"

_STRUCTURE = (
    "Select", "Union", "Intersect", "Except", "From", "Join", "Where", "Group", "Having", "Order", "Ordered",
    "Limit", "Offset", "With", "CTE", "TableAlias", "Alias", "Subquery", "Column", "Identifier", "Star",
    "Literal", "Boolean", "Null", "Paren", "Table", "Tuple", "Distinct", "Window", "WindowSpec", "Qualify",
    "Values", "DataType", "DataTypeParam", "Var", "Interval", "Case", "If", "Cast", "TryCast", "Between", "In",
    "Is", "Like", "ILike", "Not", "And", "Or", "Add", "Sub", "Mul", "Div", "IntDiv", "Mod", "Neg", "EQ", "NEQ",
    "NullSafeEQ", "NullSafeNEQ", "GT", "GTE", "LT", "LTE", "DPipe", "Exists", "Any", "All", "Filter",
)
_FUNCTIONS = (
    "Count", "Sum", "Avg", "Min", "Max", "Stddev", "StddevPop", "StddevSamp", "Variance", "VariancePop",
    "Median", "Quantile", "PercentileCont", "PercentileDisc", "ApproxDistinct", "CountIf", "AnyValue", "ArgMax",
    "ArgMin", "LogicalOr", "LogicalAnd", "Corr", "CovarSamp", "CovarPop", "Lower", "Upper", "Length",
    "Substring", "Concat", "ConcatWs", "Trim", "Coalesce", "Nullif", "Round", "Abs", "Floor", "Ceil", "Sqrt",
    "Ln", "Log", "Exp", "Pow", "Sign", "Year", "Month", "Day", "Quarter", "DayOfWeek", "DateTrunc",
    "TimestampTrunc", "Extract", "DateDiff", "DateAdd", "DateSub", "CurrentDate", "StrPosition", "Left",
    "Right", "Greatest", "Least", "RowNumber", "Rank", "DenseRank", "Lag", "Lead", "FirstValue", "LastValue",
    "First", "Last", "NTile", "CumeDist", "PercentRank", "TimeToStr", "StrToDate", "StartsWith", "RegexpLike",
    "Pad", "TsOrDsToDate", "Date",
)
ALLOWED_NODES: frozenset[type[exp.Expression]] = frozenset(
    getattr(exp, name) for name in (*_STRUCTURE, *_FUNCTIONS) if hasattr(exp, name))
# DuckDB functions sqlglot does not model: harmless scalar functions only.
ALLOWED_ANONYMOUS = frozenset({"date_part", "datepart", "date_diff", "datediff", "strftime", "starts_with",
                               "ends_with", "contains", "prefix", "suffix"})
_TABLE_ARGS = frozenset({"this", "db", "catalog", "alias"})
# Bounded work: lpad/rpad are the only allow-listed functions that make a long string from a short query (a
# 2 GB value took DuckDB 87 s and 5.8 GB of memory before any result limit could see it), so their length is a
# literal up to MAX_PAD; concatenation grows values multiplicatively through CTEs, so a query holds at most
# MAX_CONCATENATIONS of them (16 bound the growth to a few hundred times the longest stored value).
MAX_PAD = 10_000
MAX_CONCATENATIONS = 16


def refuse(reason: str) -> AccessDeniedError:
    """The one error a refused query raises."""
    return AccessDeniedError(f"query refused: {reason}")


@dataclass(frozen=True)
class Checked:
    """A parsed, allow-listed query and the logical tables it names (lower case ``zone.table``)."""

    tree: exp.Expression
    tables: tuple[str, ...]


def _node_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return f"function {node.name}()"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}()"
    return f"{type(node).__name__} expressions"


def check(sql: str, *, max_chars: int) -> Checked:
    """Parse and allow-list one analyst query.

    Raises:
        AccessDeniedError: anything but one allow-listed SELECT over logical tables and its own CTEs.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise refuse("empty query")
    if len(sql) > max_chars:
        raise refuse(f"query is {len(sql)} characters long; at most {max_chars} are accepted")
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except (SqlglotError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise refuse(f"cannot parse the SQL: {first[:200]}") from exc
    if len(statements) != 1:
        raise refuse(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union | exp.Intersect | exp.Except):
        raise refuse(f"only SELECT queries are allowed, not {tree.key.upper()}")
    if any(w.args.get("recursive") for w in tree.find_all(exp.With)):
        raise refuse("recursive CTEs are not allowed (they can run without end)")
    _check_growth(tree)
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    tables: list[str] = []
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            if node.name.lower() not in ALLOWED_ANONYMOUS:
                raise refuse(f"{_node_name(node)} is not allowed")
            continue
        if type(node) not in ALLOWED_NODES:
            raise refuse(f"{_node_name(node)} are not allowed" if not isinstance(node, exp.Func)
                         else f"{_node_name(node)} is not allowed")
        if isinstance(node, exp.Table):
            tables.append(_logical_table(node, ctes))
    return Checked(tree, tuple(dict.fromkeys(t for t in tables if t)))


def describe_target(sql: str) -> str | None:
    """The logical table of a ``DESCRIBE zone.table`` statement, or None when ``sql`` is something else.

    Raises:
        AccessDeniedError: a DESCRIBE of anything but one logical table (a query, a file, a bare name).
    """
    if not isinstance(sql, str) or not sql.lstrip().lower().startswith(("describe", "desc ")):
        return None
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except (SqlglotError, RecursionError) as exc:
        raise refuse("DESCRIBE takes one table named zone.table") from exc
    if len(statements) != 1 or not isinstance(statements[0], exp.Describe):
        return None
    target = statements[0].this
    if not isinstance(target, exp.Table) or not target.db or target.catalog \
            or not isinstance(target.this, exp.Identifier):
        raise refuse("DESCRIBE takes one table named zone.table (see `medguard access tables`)")
    return f"{target.db.lower()}.{target.name.lower()}"


def _check_growth(tree: exp.Expression) -> None:
    for pad in tree.find_all(exp.Pad):
        length = pad.args.get("expression")
        if not (isinstance(length, exp.Literal) and not length.is_string and length.this.isdigit()
                and int(length.this) <= MAX_PAD):
            raise refuse(f"lpad/rpad take a literal length of at most {MAX_PAD:,} characters")
    joins = sum(1 for _ in tree.find_all(exp.DPipe)) + sum(
        max(len(node.expressions) - 1, 0) for node in tree.find_all(exp.Concat, exp.ConcatWs))
    if joins > MAX_CONCATENATIONS:
        raise refuse(f"the query concatenates strings {joins} times; at most {MAX_CONCATENATIONS} are allowed")


def _logical_table(node: exp.Table, ctes: set[str]) -> str:
    extra = sorted(k for k, v in node.args.items() if v is not None and k not in _TABLE_ARGS)
    if extra or not isinstance(node.this, exp.Identifier):
        what = node.this.sql_name() if isinstance(node.this, exp.Func) else "table options"
        raise refuse(f"table functions and table options are not allowed ({what})")
    if node.catalog:
        raise refuse(f"three-part table names are not allowed ({node.sql(DIALECT)[:80]}); use zone.table")
    name = node.name.lower()
    if not node.db:
        if name in ctes:
            return ""
        raise refuse(f"unknown table {node.name!r}: name tables as zone.table (see `medguard access tables`)")
    return f"{node.db.lower()}.{name}"


def bind(checked: Checked, views: Mapping[str, str], schema: Mapping[str, list[str]]) -> exp.Expression:
    """Replace logical tables by their views, qualify every column, and prove each one comes from a view.

    Args:
        views: logical name -> view name registered in DuckDB.
        schema: view name -> its column names.

    Returns:
        the qualified tree, ready to generate the SQL that runs.

    Raises:
        AccessDeniedError: an unknown column, or a column whose source cannot be proven to be a view or a
            derived table of this query (fail closed).
    """
    tree = checked.tree.copy()
    name_outputs(tree)
    for node in list(tree.find_all(exp.Table)):
        if not node.db:
            continue
        logical = f"{node.db.lower()}.{node.name.lower()}"
        alias = node.alias or node.name.lower()
        node.replace(exp.Table(this=exp.to_identifier(views[logical], quoted=True),
                               alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))))
    try:
        tree = qualify(tree, schema={v: dict.fromkeys(cols, "VARCHAR") for v, cols in schema.items()},
                       dialect=DIALECT, validate_qualify_columns=True, quote_identifiers=True)
    except (SqlglotError, KeyError, ValueError) as exc:
        raise refuse(f"cannot resolve the query's columns: {str(exc).splitlines()[0][:200]}") from exc
    view_names = set(views.values())
    try:
        scopes = traverse_scope(tree)
    except (SqlglotError, KeyError, ValueError) as exc:
        raise refuse(f"cannot prove where the query's columns come from: {exc}") from exc
    for scope in scopes:
        _prove(scope, view_names)
    return tree


def _prove(scope: Scope, view_names: set[str]) -> None:
    for source in scope.selected_sources.values():
        node = source[1] if isinstance(source, tuple) else source
        if isinstance(node, exp.Table) and node.name not in view_names:
            raise refuse(f"cannot prove the lineage of table {node.name!r}: not a policy-enforced view")
    outputs = {s.alias_or_name for s in scope.expression.selects} if isinstance(scope.expression, exp.Select) \
        else set()
    for column in scope.columns:
        if not column.table:
            if column.name in outputs:
                continue  # a reference to an output alias (ORDER BY, HAVING)
            raise refuse(f"cannot prove the lineage of column {column.name!r}")
        current: Scope | None = scope
        while current is not None and column.table not in current.selected_sources:
            current = current.parent
        if current is None:
            raise refuse(f"cannot prove the lineage of column {column.table}.{column.name}")


def referenced_columns(tree: exp.Expression, view_names: set[str]) -> dict[str, set[str]]:
    """View name -> the columns the (qualified) query reads from it."""
    used: dict[str, set[str]] = {v: set() for v in view_names}
    for scope in traverse_scope(tree):
        aliases: dict[str, str] = {}
        for alias, source in scope.selected_sources.items():
            node = source[1] if isinstance(source, tuple) else source
            if isinstance(node, exp.Table) and node.name in view_names:
                aliases[alias] = node.name
        for column in scope.columns:
            if column.table in aliases:
                used[aliases[column.table]].add(column.name)
    return used


_NAME_PART = re.compile(r"[^a-z0-9]+")


def _readable_name(node: exp.Expression) -> str:
    """``avg(probability)`` -> ``avg_probability``, ``count(*)`` -> ``count``, ``round(avg(x), 2)`` ->
    ``round_avg_x``: the functions and columns of an expression, in order, as one identifier."""
    parts: list[str] = []
    for part in node.dfs():
        if isinstance(part, exp.Anonymous):
            parts.append(part.name)
        elif isinstance(part, exp.Func):
            parts.append(part.sql_name())
        elif isinstance(part, exp.Distinct):
            parts.append("distinct")
        elif isinstance(part, exp.Column):
            parts.append(part.name)
    name = "_".join(p for p in (_NAME_PART.sub("_", x.lower()).strip("_") for x in parts) if p)
    return name[:63]


def name_outputs(tree: exp.Expression) -> None:
    """Give each unaliased computed output of every SELECT a readable name (in place), not ``_col_1``.

    A bare column keeps its own name; a literal or an expression without function or column keeps the engine's.
    Names repeated within one SELECT get ``_2``, ``_3``...
    """
    for select in tree.find_all(exp.Select):
        taken = {e.alias_or_name for e in select.expressions if isinstance(e, exp.Alias | exp.Column)}
        for index, projection in enumerate(list(select.expressions)):
            if isinstance(projection, exp.Alias | exp.Column | exp.Star):
                continue
            name = _readable_name(projection)
            if not name:
                continue
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = f"{name}_{n}"
            taken.add(unique)
            select.expressions[index].replace(exp.alias_(projection.copy(), unique, quoted=True))


# Aggregates whose answer over a keyed hash (pseudonym) or a constant "****" of the same nullness stays true.
_COUNTING = (exp.Count, exp.ApproxDistinct)


def _origins(scope: Scope, column: exp.Column, view_names: set[str], depth: int = 0) -> list[tuple[str, str, bool]]:
    """The (view, column, as_is) a column reference comes from, through derived tables and CTEs; ``as_is`` is
    False once an expression (a function, a CASE...) has changed its values on the way."""
    source = scope.sources.get(column.table)
    if isinstance(source, exp.Table):
        return [(source.name, column.name, True)] if source.name in view_names else []
    if not (isinstance(source, Scope) and isinstance(source.expression, exp.Select)) or depth > 32:
        return []
    for projection in source.expression.selects:
        if projection.alias_or_name != column.name:
            continue
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        return [(view, name, as_is and inner is col)
                for col in inner.find_all(exp.Column)
                for view, name, as_is in _origins(source, col, view_names, depth + 1)]
    return []


def aggregates_over(tree: exp.Expression, view_names: set[str]) -> list[tuple[str, str, str, str]]:
    """Every (aggregate, view, column, how) where an aggregate's argument or FILTER reads a view's column, directly
    or through derived tables and CTEs.

    ``how`` is ``count`` when the aggregate counts the column's non-null values (``count(col)``), ``distinct``
    when it counts its distinct values (``count(DISTINCT col)``, ``approx_count_distinct``), else ``value`` (the
    aggregate uses the values themselves, or an expression of them; a FILTER predicate always does).
    """
    found: list[tuple[str, str, str, str]] = []
    for scope in traverse_scope(tree):
        for column in scope.columns:
            agg = column.find_ancestor(exp.AggFunc, exp.Filter, exp.Select)
            how = "value"
            if isinstance(agg, exp.Filter):
                agg = agg.this
            elif isinstance(agg, _COUNTING):
                argument = agg.this.expressions[0] if isinstance(agg.this, exp.Distinct) and \
                    len(agg.this.expressions) == 1 else agg.this
                if argument is column:
                    distinct = isinstance(agg, exp.ApproxDistinct) or isinstance(agg.this, exp.Distinct)
                    how = "distinct" if distinct else "count"
            if not isinstance(agg, exp.AggFunc):
                continue
            for view, name, as_is in _origins(scope, column, view_names):
                found.append((agg.sql_name().lower(), view, name, how if as_is else "value"))
    return found


def row_level_views(tree: exp.Expression, view_names: set[str]) -> set[str]:
    """The views some SELECT of the query reads directly without aggregating (its rows would be returned)."""
    found: set[str] = set()
    for scope in traverse_scope(tree):
        select = scope.expression
        if not isinstance(select, exp.Select):
            continue
        read = {(s[1] if isinstance(s, tuple) else s).name for s in scope.selected_sources.values()
                if isinstance(s[1] if isinstance(s, tuple) else s, exp.Table)}
        if not _aggregates(select) or any(True for _ in select.find_all(exp.Window)):
            found |= read & view_names
    return found


def output_sources(tree: exp.Expression, view_names: set[str]) -> dict[str, tuple[str, str]]:
    """Output column -> (view, column) for each output of the top SELECT that is a view's column as it is."""
    if not isinstance(tree, exp.Select):
        return {}
    root = traverse_scope(tree)[-1]
    aliases: dict[str, str] = {}
    for alias, source in root.selected_sources.items():
        node = source[1] if isinstance(source, tuple) else source
        if isinstance(node, exp.Table) and node.name in view_names:
            aliases[alias] = node.name
    found = {}
    for projection in tree.expressions:
        node = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(node, exp.Column) and node.table in aliases:
            found[projection.alias_or_name] = (aliases[node.table], node.name)
    return found


def render(tree: exp.Expression) -> str:
    """The SQL to run, generated from the checked tree, without comments."""
    return tree.sql(dialect=DIALECT, comments=False)


def _aggregates(select: exp.Select) -> bool:
    """Whether ``select`` groups rows: a GROUP BY, or an aggregate function of its own (not a subquery's)."""
    if select.args.get("group"):
        return True
    return any(agg.parent_select is select and not agg.find_ancestor(exp.Window)
               for projection in select.expressions for agg in projection.find_all(exp.AggFunc))


def suppress_small_cells(tree: exp.Expression, patient_columns: Mapping[str, str], k: int) -> exp.Expression:
    """``tree`` with every aggregating SELECT made to drop groups of fewer than ``k`` patients.

    Each SELECT that groups (GROUP BY, or an aggregate over the whole input) gets ``HAVING count(DISTINCT
    <patient>) >= k`` added to its own HAVING, where ``<patient>`` is the hidden patient column of the first view it
    reads (``patient_columns``: view name -> column); a SELECT over a view without one (a flat research table, one
    individual per row) or over a derived table counts rows instead. Nested aggregates are each held to k, so an
    inner ``HAVING count(*) = 1`` yields nothing for an outer query to read either. Window functions would give
    each row its group's size: a query over de-identified data using one is refused.

    Raises:
        AccessDeniedError: the query uses a window function.
    """
    if any(True for _ in tree.find_all(exp.Window)):
        raise refuse("window functions are not allowed over de-identified data (they would show each row its "
                     "group's size); aggregate with GROUP BY instead")
    for scope in traverse_scope(tree):
        select = scope.expression
        if not isinstance(select, exp.Select) or not _aggregates(select):
            continue
        counted: exp.Expression = exp.Count(this=exp.Star())
        for alias, source in scope.selected_sources.items():
            node = source[1] if isinstance(source, tuple) else source
            if isinstance(node, exp.Table) and node.name in patient_columns:
                column = exp.column(patient_columns[node.name], table=alias, quoted=True)
                counted = exp.Count(this=exp.Distinct(expressions=[column]))
                break
        floor = exp.GTE(this=counted, expression=exp.Literal.number(k))
        having = select.args.get("having")
        select.set("having", exp.Having(this=exp.and_(having.this, floor) if having else floor))
    return tree
