"""Compile a filter AST into a parameterised SQL fragment: quoted schema identifiers, ``?``
placeholders for every value. No value is ever formatted into SQL text."""

from __future__ import annotations

from typing import Any

from trustspace.stats import (
    And,
    ColumnType,
    Compare,
    Expr,
    InList,
    IsNull,
    Not,
    Or,
    TableSchema,
    check_filter,
    parse_filter,
    python_value_for,
)

__all__ = ["compile_filter", "quote_ident", "where_clause"]

_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def quote_ident(name: str) -> str:
    """Quote a column name taken from a dataset schema as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def compile_filter(expr: Expr, schema: TableSchema, text: str = "") -> tuple[str, list[Any]]:
    """Compile a parsed filter into ``(sql, params)`` after checking it against ``schema``.

    >>> s = TableSchema({"age": "int", "name": "str"})
    >>> compile_filter(parse_filter("age >= 40 and name in ('a', 'b''c')"), s)
    ('(("age" >= ?) AND ("name" IN (?, ?)))', [40, 'a', "b'c"])
    """
    check_filter(expr, schema, text)
    params: list[Any] = []

    def go(e: Expr) -> str:
        if isinstance(e, And | Or):
            glue = " AND " if isinstance(e, And) else " OR "
            return "(" + glue.join(go(i) for i in e.items) + ")"
        if isinstance(e, Not):
            return f"(NOT {go(e.item)})"
        # Identifiers come from the schema, never from the filter text.
        typ = schema.columns[e.column]
        col = quote_ident(next(c for c in schema.columns if c == e.column))
        if isinstance(e, IsNull):
            return f"({col} IS {'NOT ' if e.negate else ''}NULL)"
        if isinstance(e, Compare):
            params.append(_value(typ, e.value))
            return f"({col} {_SQL_OPS[e.op]} ?)"
        assert isinstance(e, InList)
        params.extend(_value(typ, v) for v in e.values)
        marks = ", ".join("?" for _ in e.values)
        return f"({col} {'NOT ' if e.negate else ''}IN ({marks}))"

    return go(expr), params


def _value(typ: ColumnType, value: Any) -> Any:
    return python_value_for(typ, value)


def where_clause(text: str | None, schema: TableSchema) -> tuple[str, list[Any]]:
    """``("WHERE ...", params)`` for a filter text, or ``("", [])`` when there is none."""
    if text is None:
        return "", []
    sql, params = compile_filter(parse_filter(text), schema, text)
    return f"WHERE {sql}", params
