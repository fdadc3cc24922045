"""The filter language of ``where=``: a tokenizer and a recursive-descent parser into an AST.

Grammar (keywords are case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | predicate
    predicate  := column op literal
                | column ["not"] "in" "(" literal ("," literal)* ")"
                | column "is" ["not"] "null"
    op         := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    column     := name | "quoted name"          (names may contain '-', e.g. marital-status)
    literal    := number | 'string' ('' escapes a quote) | true | false

Nothing here evaluates anything: the AST is compiled by the engine into SQL whose identifiers
come from the dataset schema (quoted) and whose values are all ``?`` parameters. A comparison
with a missing value is false (SQL semantics); select missing values with ``is null``.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

from trustspace.errors import ConfigError
from trustspace.stats._schema import ColumnType, TableSchema

__all__ = [
    "And",
    "Compare",
    "Expr",
    "InList",
    "IsNull",
    "Literal",
    "Not",
    "Or",
    "check_filter",
    "filter_columns",
    "parse_filter",
]

Literal = int | float | str | bool

#: Longest filter accepted: a filter is a short predicate, not a program.
MAX_FILTER_LENGTH = 10_000
#: Deepest nesting accepted, so that a hostile filter cannot exhaust the parser's stack.
MAX_DEPTH = 64

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Compare:
    """``column op value``; ``pos`` is the 1-based character column of ``column`` in the text."""

    column: str
    op: str
    value: Literal
    pos: int


@dataclass(frozen=True)
class InList:
    """``column [not] in (values...)``."""

    column: str
    values: tuple[Literal, ...]
    negate: bool
    pos: int


@dataclass(frozen=True)
class IsNull:
    """``column is [not] null``."""

    column: str
    negate: bool
    pos: int


@dataclass(frozen=True)
class Not:
    """``not item``."""

    item: Expr


@dataclass(frozen=True)
class And:
    """``items[0] and items[1] and ...``."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """``items[0] or items[1] or ...``."""

    items: tuple[Expr, ...]


Expr = Compare | InList | IsNull | Not | And | Or

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qname>"(?:[^"]|"")*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z_][A-Za-z0-9_]*)*
        (?:\.[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z_][A-Za-z0-9_]*)*)?)  # node.column in a view
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, str, name, kw, op, punct, end
    text: str
    value: Literal | None
    pos: int  # 1-based column in the filter text


def _error(text: str, pos: int, message: str, hint: str) -> ConfigError:
    pointer = " " * (pos - 1) + "^"
    return ConfigError(f"filter error at column {pos}: {message}\n  {text}\n  {pointer}\n{hint}")


def _tokens(text: str) -> Iterator[_Tok]:
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise _error(
                text,
                i + 1,
                f"unexpected character {text[i]!r}",
                "hint: the filter language has comparisons (= != < <= > >=), and/or/not, "
                "parentheses, in (...), is [not] null, numbers, 'strings' and true/false; "
                "quote names with double quotes and strings with single quotes",
            )
        kind = m.lastgroup or ""
        raw = m.group()
        pos = i + 1
        i = m.end()
        if kind == "ws":
            continue
        if kind == "num":
            value: Literal = float(raw) if any(c in raw for c in ".eE") else int(raw)
            yield _Tok("num", raw, value, pos)
        elif kind == "str":
            yield _Tok("str", raw, raw[1:-1].replace("''", "'"), pos)
        elif kind == "qname":
            yield _Tok("name", raw, raw[1:-1].replace('""', '"'), pos)
        elif kind == "name" and raw.lower() in _KEYWORDS:
            yield _Tok("kw", raw.lower(), None, pos)
        elif kind == "name":
            yield _Tok("name", raw, raw, pos)
        elif kind == "op":
            op = {"==": "=", "<>": "!="}.get(raw, raw)
            yield _Tok("op", op, None, pos)
        else:
            yield _Tok("punct", raw, None, pos)
    yield _Tok("end", "end of filter", None, len(text) + 1)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, expected: str) -> ConfigError:
        t = self.tok
        shown = t.text if t.kind == "end" else repr(t.text)
        return _error(
            self.text,
            t.pos,
            f"expected {expected}, found {shown}",
            "hint: write e.g. age >= 40 and sex = 'Male', or status in ('a', 'b'), "
            "or income is not null",
        )

    def take(self, kind: str, text: str | None = None) -> _Tok | None:
        t = self.tok
        if t.kind == kind and (text is None or t.text == text):
            self.i += 1
            return t
        return None

    def parse(self) -> Expr:
        if not self.text.strip():
            raise _error(
                self.text, 1, "the filter is empty", "hint: omit where= to select all rows"
            )
        expr = self.expr()
        if self.tok.kind != "end":
            raise self.fail("'and', 'or' or the end of the filter")
        return expr

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.text, self.tok.pos, "nesting too deep", f"hint: at most {MAX_DEPTH}")
        items = [self.and_expr()]
        while self.take("kw", "or"):
            items.append(self.and_expr())
        self.depth -= 1
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Expr:
        items = [self.not_expr()]
        while self.take("kw", "and"):
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Expr:
        if self.take("kw", "not"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _error(
                    self.text, self.tok.pos, "nesting too deep", f"hint: at most {MAX_DEPTH}"
                )
            item = self.not_expr()
            self.depth -= 1
            return Not(item)
        if self.take("punct", "("):
            inner = self.expr()
            if not self.take("punct", ")"):
                raise self.fail("')'")
            return inner
        return self.predicate()

    def literal(self) -> Literal:
        t = self.tok
        if t.kind in ("num", "str"):
            self.i += 1
            assert t.value is not None
            return t.value
        if t.kind == "kw" and t.text in ("true", "false"):
            self.i += 1
            return t.text == "true"
        raise self.fail("a number, a 'string', true or false")

    def predicate(self) -> Expr:
        name = self.take("name")
        if name is None:
            raise self.fail("a column name, 'not' or '('")
        column = str(name.value)
        if op := self.take("op"):
            return Compare(column, op.text, self.literal(), name.pos)
        if self.take("kw", "is"):
            negate = self.take("kw", "not") is not None
            if not self.take("kw", "null"):
                raise self.fail("'null'")
            return IsNull(column, negate, name.pos)
        negate = self.take("kw", "not") is not None
        if self.take("kw", "in"):
            if not self.take("punct", "("):
                raise self.fail("'(' after 'in'")
            values = [self.literal()]
            while self.take("punct", ","):
                values.append(self.literal())
            if not self.take("punct", ")"):
                raise self.fail("',' or ')'")
            return InList(column, tuple(values), negate, name.pos)
        raise self.fail("a comparison (= != < <= > >=), 'in', 'not in' or 'is [not] null'")


def parse_filter(text: str) -> Expr:
    """Parse a filter expression into its AST; ConfigError naming the position and the token.

    >>> parse_filter("age >= 40 and sex = 'Male'")  # doctest: +NORMALIZE_WHITESPACE
    And(items=(Compare(column='age', op='>=', value=40, pos=1),
               Compare(column='sex', op='=', value='Male', pos=15)))
    >>> parse_filter("age = 1; drop table x")
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: filter error at column 8: unexpected character ';'
    ...
    """
    if not isinstance(text, str):
        raise ConfigError(f"filter: expected a string, got {type(text).__name__}")
    if len(text) > MAX_FILTER_LENGTH:
        raise ConfigError(
            f"filter: {len(text)} characters is too long (at most {MAX_FILTER_LENGTH})"
        )
    return _Parser(text).parse()


def _walk(expr: Expr) -> Iterator[Compare | InList | IsNull]:
    if isinstance(expr, And | Or):
        for item in expr.items:
            yield from _walk(item)
    elif isinstance(expr, Not):
        yield from _walk(expr.item)
    else:
        yield expr


def filter_columns(expr: Expr) -> tuple[str, ...]:
    """The distinct column names a filter reads, in order of appearance."""
    return tuple(dict.fromkeys(p.column for p in _walk(expr)))


def _literal_ok(typ: ColumnType, value: Literal) -> bool:
    if typ is ColumnType.BOOL:
        return isinstance(value, bool)
    if typ.is_numeric:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ is ColumnType.STR:
        return isinstance(value, str)
    if isinstance(value, str):  # DATE: an ISO date string
        try:
            _dt.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


_EXAMPLE = {
    ColumnType.INT: "a number, e.g. 40",
    ColumnType.FLOAT: "a number, e.g. 2.5",
    ColumnType.STR: "a 'quoted string'",
    ColumnType.BOOL: "true or false",
    ColumnType.DATE: "an ISO date string, e.g. '2024-01-31'",
}


def check_filter(expr: Expr, schema: TableSchema, text: str = "") -> None:
    """Check that every column of ``expr`` exists in ``schema`` and every value fits its type.

    Raises:
        ConfigError: naming the position, the column and the known columns or expected type.
    """
    for pred in _walk(expr):
        typ = schema.columns.get(pred.column)
        if typ is None:
            raise _error(
                text or pred.column,
                pred.pos if text else 1,
                f"unknown column {pred.column!r}",
                f"hint: known columns: {', '.join(schema.columns)}",
            )
        values: tuple[Literal, ...] = ()
        if isinstance(pred, Compare):
            values = (pred.value,)
            if pred.op not in ("=", "!=") and typ is ColumnType.BOOL:
                raise _error(
                    text or pred.column,
                    pred.pos if text else 1,
                    f"column {pred.column!r} is bool; only = and != compare bools",
                    "hint: write flag = true",
                )
        elif isinstance(pred, InList):
            values = pred.values
        for v in values:
            if not _literal_ok(typ, v):
                raise _error(
                    text or pred.column,
                    pred.pos if text else 1,
                    f"column {pred.column!r} is {typ.value} but is compared with {v!r}",
                    f"hint: compare it with {_EXAMPLE[typ]}",
                )
