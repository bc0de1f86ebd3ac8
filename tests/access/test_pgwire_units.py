"""The pgwire endpoint's pieces without a server: statement sorting, parameter substitution and decoding, and the
principal's catalogue view."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest
import sqlglot

from access.pgwire import CatalogView, PgWireError, classify, decode_parameter, substitute_parameters


@pytest.mark.parametrize(("sql", "kind"), [
    ("", "empty"), (" ; ", "empty"), ("SET extra_float_digits = 3", "command"), ("BEGIN", "command"),
    ("COMMIT;", "command"), ("SHOW TimeZone", "show"), ("SELECT sex FROM deidentified.patients", "data"),
    ("DESCRIBE deidentified.patients", "data"), ("SELECT 1", "catalog"), ("SELECT version()", "catalog"),
    ("SELECT relname FROM pg_catalog.pg_class", "catalog"), ("SELECT * FROM information_schema.tables", "catalog"),
    ("WITH t AS (SELECT sex FROM deidentified.patients) SELECT * FROM t", "data"),
])
def test_when_a_statement_is_classified_then_it_goes_to_the_right_place(sql, kind):
    assert classify(sql).kind == kind


@pytest.mark.parametrize(("sql", "message"), [
    ("COPY deidentified.patients TO STDOUT", "COPY"),
    ("copy (select 1) to stdout", "COPY"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT sex FROM deidentified.patients; DROP TABLE x", "one statement"),
    ("SELECT c.relname, p.sex FROM pg_catalog.pg_class c, deidentified.patients p", "mix catalog"),
])
def test_when_a_statement_is_refused_then_the_reason_says_why(sql, message):
    with pytest.raises(PgWireError, match=message):
        classify(sql)


def test_when_parameters_are_substituted_then_they_become_typed_literals():
    tree = substitute_parameters(
        "SELECT a FROM deidentified.t WHERE s = $1 AND n = $2 AND f > $3 AND d = $4 AND b = $5 AND x IS $6 "
        "AND m = $7 AND ts < $8",
        ["O'Brien; DROP TABLE t --", 42, 1.5, dt.date(2024, 2, 29), True, None, decimal.Decimal("3.10"),
         dt.datetime(2024, 1, 1, 12, 0)])
    sql = tree.sql(dialect="duckdb")
    assert "'O''Brien; DROP TABLE t --'" in sql
    assert "n = 42" in sql and "f > 1.5" in sql and "b = TRUE" in sql and "x IS NULL" in sql and "m = 3.10" in sql
    assert "CAST('2024-02-29' AS DATE)" in sql and "CAST('2024-01-01 12:00:00' AS TIMESTAMP)" in sql
    # The value stayed one literal: the statement still has exactly one SELECT and no DROP.
    reparsed = sqlglot.parse(sql, read="duckdb")
    assert len(reparsed) == 1 and isinstance(reparsed[0], sqlglot.exp.Select)


@pytest.mark.parametrize(("sql", "values", "message"), [
    ("SELECT a FROM t WHERE x = $2", ["a"], r"\$2 has no value"),
    ("SELECT a FROM t WHERE x = $1", ["a", "b"], "2 parameters were bound"),
    ("SELECT a FROM t WHERE x = $1", [float("nan")], "finite"),
    ("SELECT a FROM t WHERE x = $1", ["a\x00b"], "NUL"),
])
def test_when_parameters_do_not_fit_the_statement_then_it_is_refused(sql, values, message):
    with pytest.raises(PgWireError, match=message):
        substitute_parameters(sql, values)


@pytest.mark.parametrize(("raw", "oid", "binary", "value"), [
    (b"42", 23, False, 42), (b"\x00\x00\x00\x2a", 23, True, 42), (b"t", 16, False, True),
    (b"2024-02-29", 1082, False, dt.date(2024, 2, 29)), (b"1.25", 701, False, 1.25), (b"abc", 25, False, "abc"),
    (b"abc", 0, False, "abc"), (None, 23, False, None), (b"3.10", 1700, False, decimal.Decimal("3.10")),
])
def test_when_a_bind_parameter_is_decoded_then_its_type_is_its_oids(raw, oid, binary, value):
    assert decode_parameter(raw, oid, binary) == value


@pytest.mark.parametrize(("raw", "oid", "binary"), [(b"4x", 23, False), (b"maybe", 16, False),
                                                    (b"2024-02-30", 1082, False), (b"\x00", 1700, True)])
def test_when_a_bind_parameter_is_not_of_its_type_then_it_is_refused(raw, oid, binary):
    with pytest.raises(PgWireError):
        decode_parameter(raw, oid, binary)


@pytest.fixture
def catalog():
    view = CatalogView({"deidentified.patients": [{"name": "sex", "type": "string", "mask": "plaintext"},
                                                  {"name": "patient_pseudonym", "type": "string",
                                                   "mask": "pseudonym"},
                                                  {"name": "age", "type": "int64", "mask": "plaintext"}],
                        "predictions.diagnoses": [{"name": "flag", "type": "bool", "mask": "plaintext"}]})
    yield view
    view.close()


def _run(view: CatalogView, sql: str) -> list[list]:
    return view.run(sqlglot.parse_one(sql, read="postgres")).rows


def test_when_the_catalog_is_asked_then_it_holds_only_the_view_it_was_given(catalog):
    assert sorted(_run(catalog, "SELECT table_schema, table_name FROM information_schema.tables")) == [
        ["deidentified", "patients"], ["predictions", "diagnoses"]]
    assert _run(catalog, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = "
                         "'patients' ORDER BY ordinal_position") == [
        ["sex", "VARCHAR"], ["patient_pseudonym", "VARCHAR"], ["age", "BIGINT"]]
    assert _run(catalog, "SELECT n.nspname FROM pg_catalog.pg_namespace n ORDER BY 1") == [
        ["deidentified"], ["predictions"]]
    assert _run(catalog, "SELECT current_database(), pg_catalog.version()")[0][0] == "medguard"


@pytest.mark.parametrize("sql", ["SELECT pg_sleep(10)", "SELECT * FROM read_csv('/etc/passwd')",
                                 "SELECT * FROM read_parquet('/x.parquet')", "SELECT getenv('HOME')"])
def test_when_a_catalog_query_reaches_for_files_or_time_then_it_is_refused(catalog, sql):
    with pytest.raises(PgWireError):
        _run(catalog, sql)


def test_when_a_catalog_query_names_objects_the_endpoint_has_not_then_it_gets_no_rows(catalog):
    answer = catalog.run(sqlglot.parse_one("SELECT pol.polname, pol.polcmd FROM pg_catalog.pg_policy pol",
                                           read="postgres"))
    assert answer.rows == [] and [c.name for c in answer.columns] == ["polname", "polcmd"]
