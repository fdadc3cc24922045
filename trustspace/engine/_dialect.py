"""One query compiler for every engine: the node's statements are built once, in DuckDB's SQL
(the embedded engine's), and translated by sqlglot for PostgreSQL and Spark SQL.

sqlglot (a well-kept SQL parser and transpiler with generators for 30 dialects) turns the
statement into its syntax tree and writes it back in the target dialect: ``count_if`` becomes
``SUM(CASE ...)`` in PostgreSQL, ``list`` becomes ``ARRAY_AGG`` / ``COLLECT_LIST``, quoted
identifiers become PostgreSQL's ``"..."`` or Spark's backticks, and the ``?`` placeholders
become psycopg's ``%s`` (Spark keeps ``?``: ``SparkSession.sql(text, args=[...])``). The
parameters stay parameters in every dialect: no value is ever written into the text.

On top of sqlglot's own translation, a few rewrites that keep the answers *identical* across
engines rather than merely close:

- ``fsum`` (DuckDB's compensated sum) is ``SUM`` elsewhere;
- ``log2(a)`` (exact at powers of two in DuckDB) is ``ln(a) / ln(2)`` corrected by one at
  either side with exact comparisons against ``power(2, e)``: PostgreSQL's ``log(2, x)``
  takes numerics and Spark's ``log2`` is not exact, and an octave off by one would move a
  value to the neighbouring bin of a quantile's histogram;
- ``isfinite(x)`` (DuckDB's) is ``x - x = 0`` (false for infinities and NaN everywhere);
- every subquery in a FROM gets an alias (PostgreSQL 15 requires one);
- a comparison cast to a float goes through an integer (PostgreSQL casts a boolean to an
  integer only).

Why sqlglot rather than ibis: the node already builds its statements as SQL, tuned for DuckDB
(one scan per round, compensated sums, keyed counts); sqlglot keeps those statements and only
translates them, whereas ibis would mean re-expressing every round as an ibis expression and
a backend dependency per engine, with less control over the statement each source runs.

``lgamma`` (the Poisson GLM's log-likelihood) exists neither in PostgreSQL 15 nor in Spark;
``translate`` refuses it with a clear error rather than sending a statement that would fail.
"""

from __future__ import annotations

import functools
import itertools

import sqlglot
from sqlglot import exp

from trustspace.errors import ConfigError

__all__ = ["DIALECTS", "translate"]

#: a dataset's ``source`` -> the sqlglot dialect its statements are written in
DIALECTS = {"file": "duckdb", "postgresql": "postgres", "spark": "spark"}

#: functions of the canonical (DuckDB) SQL that the other engines lack
_UNSUPPORTED = {"lgamma": "the Poisson GLM's log-likelihood (lgamma)"}


def _log2(arg: exp.Expr) -> exp.Expr:
    """floor(log2(a)) exactly, for a > 0, as sqlglot expressions (no dialect's log2)."""
    a = exp.paren(arg.copy())
    e0 = exp.Floor(
        this=exp.Div(this=exp.Ln(this=a.copy()), expression=exp.Ln(this=exp.Literal.number(2)))
    )

    def pow2(e: exp.Expr) -> exp.Expr:
        return exp.Pow(this=exp.Literal.number(2.0), expression=e)

    def as_int(cond: exp.Expr) -> exp.Expr:
        return exp.Cast(this=exp.paren(cond), to=exp.DataType.build("INT"))

    too_big = as_int(exp.GT(this=pow2(e0.copy()), expression=a.copy()))
    too_small = as_int(
        exp.LTE(
            this=pow2(exp.Add(this=e0.copy(), expression=exp.Literal.number(1))),
            expression=a.copy(),
        )
    )
    return exp.paren(exp.Add(this=exp.Sub(this=e0, expression=too_big), expression=too_small))


def _rewrite(tree: exp.Expr, dialect: str) -> exp.Expr:
    names = (f"_q{i}" for i in itertools.count())

    def go(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Anonymous):
            name = str(node.name).lower()
            if name == "fsum":
                return exp.Sum(this=node.expressions[0])
            if name == "isfinite":
                x = exp.paren(node.expressions[0].copy())
                return exp.paren(
                    exp.EQ(
                        this=exp.Sub(this=x, expression=x.copy()), expression=exp.Literal.number(0)
                    )
                )
            if name in _UNSUPPORTED:
                raise ConfigError(
                    f"{_UNSUPPORTED[name]} has no function in {dialect} (only in the "
                    "embedded DuckDB engine); use a file source for this dataset"
                )
        if (
            isinstance(node, exp.Cast)
            and node.to.this in _FLOATS
            and isinstance(_unparen(node.this), _PREDICATES)
        ):  # PostgreSQL casts a boolean to an integer only
            as_int = exp.Cast(this=node.this.copy(), to=exp.DataType.build("INT"))
            return exp.Cast(this=as_int, to=node.to.copy())
        if (
            isinstance(node, exp.Subquery)
            and not node.alias
            and isinstance(node.parent, exp.From | exp.Join)
        ):
            node.set("alias", exp.TableAlias(this=exp.to_identifier(next(names))))
        return node

    tree = tree.transform(go)
    for fl in list(tree.find_all(exp.Floor)):
        inner = fl.this
        if isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.Log) and _is_log2(inner):
            fl.replace(_log2(inner.expression))
    return tree


_FLOATS = (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT)
_PREDICATES = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not, exp.Is, exp.In,
)  # fmt: skip


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _is_log2(node: exp.Log) -> bool:
    base = node.this
    return node.expression is not None and isinstance(base, exp.Literal) and base.this == "2"


@functools.lru_cache(maxsize=1024)
def translate(sql: str, source: str) -> str:
    """``sql`` (DuckDB's dialect, ``?`` placeholders) written for dataset source ``source``.

    >>> translate("SELECT count_if(\\"a\\" >= ?) FROM \\"t\\" AS t", "postgresql")
    'SELECT SUM(CASE WHEN "a" >= %s THEN 1 ELSE 0 END) FROM "t" AS t'
    >>> translate("SELECT fsum(\\"a\\") FROM (SELECT 1 AS \\"a\\")", "spark")
    'SELECT SUM(`a`) FROM (SELECT 1 AS `a`) AS _q0'
    """
    dialect = DIALECTS[source]
    if dialect == "duckdb":
        return sql
    tree: exp.Expr = sqlglot.parse_one(sql, read="duckdb")
    return _rewrite(tree, dialect).sql(dialect=dialect)
