"""Vertical rounds: which nodes each term of a statistics round touches, and each node's factor.

On an aligned view (every node holds the same rows in the same order, each its own columns,
named ``node.column`` in the view's union schema) every term of a ``trustspace.stats.Round`` is
a sum over the rows of a product of per-node factors:

- a node's **filter part**: the top-level ``and``-conjuncts of the round's filter that read its
  columns (``split_filter``); a conjunct reading two nodes' columns (an ``or`` across nodes) is
  refused, since no node could evaluate it alone;
- a node's **columns** of the term: for a moment, the product of its columns' ``(x - c)^p``
  and their non-null indicators; for octaves, grid and bins, the one-hot bin of the value; for a
  two-way table (cells), the one-hot level of the column(s) it holds.

A factor is either ``Dense`` (a float64 per row) or ``OneHot`` (an index per row into ``size``
slots, -1 for none); a bare indicator (a filter part, non-null columns of a count) is a one-slot
``OneHot``. A term's entry for a row is the product of the Dense values at the slot
``sum(index * stride)`` of its OneHot factors (``term_strides``). The semantics of every kind are
the engine's (``trustspace.engine``, whose SQL is the reference): nulls, numpy.histogram bins
with the last bin closed, grid under/overflow, octave keys, cells levels, clamping, and SQL's
three-valued logic in filters (a comparison with a null is unknown, ``not unknown`` is unknown).
``clear_round`` computes a round in the clear from every node's factors: the reference that the
secure product (``trustspace.vertical.product``) must reproduce.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.errors import ConfigError, DataError
from trustspace.stats import (
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    And,
    Compare,
    Expr,
    InList,
    IsNull,
    Not,
    Or,
    Round,
    Term,
    filter_columns,
    parse_filter,
)

__all__ = [
    "Dense",
    "Factor",
    "OneHot",
    "RoundPlan",
    "TermPlan",
    "clear_round",
    "factor_shape",
    "local_factors",
    "own_name",
    "plan_round",
    "split_filter",
    "term_strides",
]


@dataclass(frozen=True, eq=False)
class Dense:
    """A float64 factor per row (0 where the row does not count)."""

    values: npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class OneHot:
    """A slot index per row in ``0..size-1``, or -1 where the row does not count."""

    index: npt.NDArray[np.int64]
    size: int


Factor = Dense | OneHot


def own_name(union: str, node: str) -> str:
    """The node's own name of a union column ``node.column``; ConfigError if it is not."""
    prefix = node + "."
    if not union.startswith(prefix) or len(union) == len(prefix):
        raise ConfigError(
            f"column {union!r} is said to belong to node {node!r}, but a vertical view names "
            f"that node's columns {prefix}<column>"
        )
    return union[len(prefix) :]


def _owner(column: str, owners: Mapping[str, str], where: str) -> str:
    try:
        return owners[column]
    except KeyError:
        known = ", ".join(sorted(owners)) or "(none)"
        raise ConfigError(
            f"{where}: unknown column {column!r}; the view's columns are named node.column: {known}"
        ) from None


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, And):
        return [c for item in expr.items for c in _conjuncts(item)]
    return [expr]


def _rename(expr: Expr, node: str) -> Expr:
    if isinstance(expr, And | Or):
        return type(expr)(tuple(_rename(i, node) for i in expr.items))
    if isinstance(expr, Not):
        return Not(_rename(expr.item, node))
    return replace(expr, column=own_name(expr.column, node))


def split_filter(where: str | None, owners: Mapping[str, str]) -> dict[str, Expr | None]:
    """The filter's top-level conjuncts grouped per node (node -> the ``and`` of its conjuncts
    under its own column names, or None), for every node of ``owners``.

    >>> owners = {"bank.age": "bank", "telco.region": "telco", "telco.spend": "telco"}
    >>> parts = split_filter('"bank.age" >= 40 and "telco.region" = \\'N\\'', owners)
    >>> parts["bank"], parts["telco"]  # doctest: +NORMALIZE_WHITESPACE
    (Compare(column='age', op='>=', value=40, pos=1),
     Compare(column='region', op='=', value='N', pos=22))
    >>> split_filter('"bank.age" >= 40 or "telco.spend" > 1', owners)
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: filter: a filter may combine nodes' columns only with `and` ...
    """
    nodes = list(dict.fromkeys(owners.values()))
    out: dict[str, Expr | None] = dict.fromkeys(nodes)
    if where is None:
        return out
    groups: dict[str, list[Expr]] = {}
    for conj in _conjuncts(parse_filter(where)):
        cols = filter_columns(conj)
        who = {_owner(c, owners, "filter") for c in cols}
        if len(who) != 1:
            raise ConfigError(
                "filter: a filter may combine nodes' columns only with `and` at its top level; "
                f"one part reads columns of {', '.join(sorted(who))} ({', '.join(cols)}); "
                "rewrite it so that every part separated by `and` reads one node's columns"
            )
        node = who.pop()
        groups.setdefault(node, []).append(_rename(conj, node))
    for node, items in groups.items():
        out[node] = items[0] if len(items) == 1 else And(tuple(items))
    return out


@dataclass(frozen=True)
class TermPlan:
    """Term ``index`` of the round touches ``nodes`` (one or two, in view order); a two-node
    term is computed by a secure product where ``encryptor`` encrypts its factor and
    ``evaluator`` combines it with its own (None for a one-node term)."""

    index: int
    nodes: tuple[str, ...]
    encryptor: str | None
    evaluator: str | None


@dataclass(frozen=True)
class RoundPlan:
    """A round over an aligned view: per term its plan, per node its filter part, and the
    union column -> node map it was planned with."""

    round: Round
    terms: tuple[TermPlan, ...]
    filters: Mapping[str, Expr | None]
    owners: Mapping[str, str] = field(default_factory=dict)


def factor_shape(rnd: Round, owners: Mapping[str, str], term: int, node: str) -> tuple[str, int]:
    """``("dense", 1)`` or ``("onehot", size)``: the public shape of ``node``'s factor of term
    ``term`` (known to every node from the round and the view's owners alone)."""
    t = rnd.terms[term]
    mine = [c for c in t.columns if owners.get(c) == node]
    if t.kind == "moment":
        if any(p for c, p in zip(t.columns, t.powers, strict=True) if owners.get(c) == node):
            return ("dense", 1)
        return ("onehot", 1)
    if not mine:
        return ("onehot", 1)
    if t.kind == "cells":
        if len(mine) == 2:
            return ("onehot", t.size)
        return ("onehot", len(t.levels[t.columns.index(mine[0])]))
    return ("onehot", t.size)


def term_strides(
    rnd: Round, owners: Mapping[str, str], term: int, nodes: Sequence[str]
) -> list[int]:
    """Per node of ``nodes``: the multiplier of its one-hot index in the term's entry."""
    t = rnd.terms[term]
    out = []
    for node in nodes:
        mine = [c for c in t.columns if owners.get(c) == node]
        if t.kind == "cells" and len(mine) == 1:
            out.append(len(t.levels[1]) if mine[0] == t.columns[0] else 1)
        elif t.kind != "moment" and mine:
            out.append(1)
        else:
            out.append(0)
    return out


def plan_round(rnd: Round, owners: Mapping[str, str], nodes: Sequence[str]) -> RoundPlan:
    """Plan ``rnd`` over a view of ``nodes`` whose columns are owned as in ``owners``.

    Encryptor rule for a two-node term: the node with a Dense factor encrypts when the other's
    is OneHot (the evaluator then only multiplies ciphertexts, no exponentiation); of two
    OneHot factors, the one with fewer slots encrypts (fewer packed ciphertexts per row; on a
    tie the first in view order); of two Dense factors, the first in view order.

    Raises:
        ConfigError: a grouped round, a glm term, an unknown column or node, a filter part
            combining nodes, or a term touching more than two nodes (naming it and them).
    """
    order = list(nodes)
    if len(set(order)) != len(order) or not order:
        raise ConfigError("vertical round: the view's nodes must be distinct and non-empty")
    for col, node in owners.items():
        if node not in order:
            raise ConfigError(
                f"vertical round: column {col!r} belongs to {node!r}, not a view node"
            )
        own_name(col, node)
    if rnd.group_column is not None:
        raise ConfigError(
            f"round {rnd.index}: grouped rounds are not computed on vertical views; "
            "ask per group with a filter instead"
        )
    filters = split_filter(rnd.where, owners)
    for node in order:
        filters.setdefault(node, None)
    filtered = {n for n, f in filters.items() if f is not None}
    plans = []
    for i, t in enumerate(rnd.terms):
        what = f"round {rnd.index} term {i} ({t.kind} of {list(t.columns)})"
        if t.kind in ("glm", "marginal"):
            raise ConfigError(f"{what}: {t.kind} terms are not computed on vertical views")
        touched = {_owner(c, owners, what) for c in t.columns} | filtered
        mine = tuple(n for n in order if n in touched) or (order[0],)
        if len(mine) > 2:
            raise ConfigError(
                f"{what} touches {len(mine)} nodes ({', '.join(mine)}); a term (with the filter) "
                "may read the columns of at most two nodes"
            )
        if len(mine) == 1:
            plans.append(TermPlan(i, mine, None, None))
            continue
        (a, ka), (b, kb) = ((n, factor_shape(rnd, owners, i, n)) for n in mine)
        if ka[0] != kb[0]:
            enc = a if ka[0] == "dense" else b
        elif ka[0] == "onehot":
            enc = b if kb[1] < ka[1] else a
        else:
            enc = a
        plans.append(TermPlan(i, mine, enc, b if enc == a else a))
    return RoundPlan(rnd, tuple(plans), filters, dict(owners))


# --------------------------------------------------------------------------- evaluation


def _column(frame: pd.DataFrame, name: str, me: str) -> pd.Series[Any]:
    if name not in frame.columns:
        raise ConfigError(
            f"node {me!r}: the view names column {name!r}, which its aligned rows do not hold "
            f"(they hold: {', '.join(map(str, frame.columns))})"
        )
    return frame[name]


def _numeric(s: pd.Series[Any], clamp: tuple[float, ...], me: str) -> npt.NDArray[np.float64]:
    if s.dtype == bool or pd.api.types.is_bool_dtype(s.dtype):
        raise ConfigError(f"node {me!r}: column {s.name!r} is bool, not numeric")
    try:
        x = np.asarray(
            pd.to_numeric(s, errors="raise").astype("float64").to_numpy(na_value=np.nan),
            dtype=np.float64,
        )
    except (TypeError, ValueError):
        raise ConfigError(f"node {me!r}: column {s.name!r} is not numeric") from None
    if clamp:
        x = np.clip(x, clamp[0], clamp[1]).astype(np.float64)
    return x


def _literal(s: pd.Series[Any], value: Any) -> Any:
    if isinstance(value, str) and (
        pd.api.types.is_datetime64_any_dtype(s.dtype)
        or (len(s.dropna()) and isinstance(s.dropna().iloc[0], _dt.date))
    ):
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            return pd.Timestamp(_dt.date.fromisoformat(value))
        return _dt.date.fromisoformat(value)
    return value


def _equals(s: pd.Series[Any], value: Any) -> npt.NDArray[np.bool_]:
    """``s == value`` for non-null rows, where a bool never equals an int (SQL types)."""
    is_bool = pd.api.types.is_bool_dtype(s.dtype) or (
        s.dtype == object and len(s.dropna()) and isinstance(s.dropna().iloc[0], bool | np.bool_)
    )
    if isinstance(value, bool) != bool(is_bool):
        return np.zeros(len(s), dtype=bool)
    out: npt.NDArray[np.bool_] = (s == value).to_numpy(dtype=bool, na_value=False)
    return out


_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _eval(
    expr: Expr, frame: pd.DataFrame, me: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(true, unknown) row masks of ``expr`` under SQL's three-valued logic."""
    n = len(frame)
    if isinstance(expr, And | Or):
        parts = [_eval(i, frame, me) for i in expr.items]
        trues = np.array([p[0] for p in parts])
        unks = np.array([p[1] for p in parts])
        if isinstance(expr, And):
            false = np.asarray((~trues & ~unks).any(axis=0), dtype=bool)
            t = np.asarray(trues.all(axis=0), dtype=bool)
            return t, ~t & ~false
        t = np.asarray(trues.any(axis=0), dtype=bool)
        return t, ~t & np.asarray(unks.any(axis=0), dtype=bool)
    if isinstance(expr, Not):
        t, u = _eval(expr.item, frame, me)
        return ~t & ~u, u
    s = _column(frame, expr.column, me)
    null = s.isna().to_numpy(dtype=bool)
    if isinstance(expr, IsNull):
        return (~null if expr.negate else null), np.zeros(n, dtype=bool)
    if isinstance(expr, InList):
        hit = np.zeros(n, dtype=bool)
        for v in expr.values:
            hit |= _equals(s, _literal(s, v))
        return (~hit if expr.negate else hit) & ~null, null
    assert isinstance(expr, Compare)
    value = _literal(s, expr.value)
    if expr.op in ("=", "!="):
        eq = _equals(s, value)
        return (~eq if expr.op == "!=" else eq) & ~null, null
    try:
        res = _OPS[expr.op](s, value).to_numpy(dtype=bool, na_value=False)
    except TypeError:
        raise ConfigError(
            f"node {me!r}: column {expr.column!r} cannot be compared with {expr.op} to a "
            f"{type(expr.value).__name__}"
        ) from None
    return res & ~null, null


def _filter_mask(expr: Expr | None, frame: pd.DataFrame, me: str) -> npt.NDArray[np.bool_]:
    if expr is None:
        return np.ones(len(frame), dtype=bool)
    return _eval(expr, frame, me)[0]


def _onehot_value(t: Term, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The slot of every value for octaves, grid and bins (-1 for a null), as the engine."""
    idx = np.full(x.shape, -1, dtype=np.int64)
    ok = ~np.isnan(x)
    v = x[ok]
    if t.kind == "octaves":
        with np.errstate(divide="ignore"):
            e = np.floor(np.log2(np.abs(v)))
        e = np.clip(np.nan_to_num(e, neginf=OCTAVE_MIN_EXP), OCTAVE_MIN_EXP, OCTAVE_MAX_EXP + 1)
        k = (np.sign(v) * (e + OCTAVE_OFFSET)).astype(np.int64)
        idx[ok] = OCTAVE_HALF + np.where(v == 0, 0, k)
    elif t.kind == "grid":
        a, w, nb = t.start, t.width, t.nbins
        b = a + nb * w
        inner = 1 + np.clip(np.floor((v - a) * (1.0 / w)), 0, nb - 1)
        idx[ok] = np.where(v < a, 0, np.where(v >= b, nb + 1, np.nan_to_num(inner))).astype(
            np.int64
        )
    else:  # bins: numpy.histogram semantics by exact comparisons, last bin closed
        edges = np.asarray(t.edges, dtype=np.float64)
        nb = len(edges) - 1
        k = np.searchsorted(edges[1:-1], v, side="right")  # interior edges <= v
        inner = 1 + np.minimum(k, nb - 1)
        idx[ok] = np.where(v < edges[0], 0, np.where(v > edges[-1], nb + 1, inner))
    return idx


def _level_index(s: pd.Series[Any], levels: Sequence[Any]) -> npt.NDArray[np.int64]:
    idx = np.full(len(s), -1, dtype=np.int64)
    for i, lv in enumerate(levels):
        idx[(idx < 0) & _equals(s, lv)] = i
    return idx


def local_factors(plan: RoundPlan, me: str, frame: pd.DataFrame) -> list[Factor | None]:
    """This node's factor of every term touching it (None for the others).

    ``frame``: this node's aligned rows in view order, columns under its own names.

    Raises:
        ConfigError: a column the node does not hold, or of the wrong type (naming node and
            column; never a value).
    """
    rnd, owners = plan.round, plan.owners
    keep = _filter_mask(plan.filters.get(me), frame, me)
    out: list[Factor | None] = []
    for tp in plan.terms:
        if me not in tp.nodes:
            out.append(None)
            continue
        t = rnd.terms[tp.index]
        ok = keep.copy()
        mine = [(j, c) for j, c in enumerate(t.columns) if owners.get(c) == me]
        cols = {c: _column(frame, own_name(c, me), me) for _, c in mine}
        for s in cols.values():
            ok &= ~s.isna().to_numpy(dtype=bool)
        kind, size = factor_shape(rnd, owners, tp.index, me)
        if t.kind == "moment":
            if kind == "onehot":
                out.append(OneHot(np.where(ok, 0, -1).astype(np.int64), 1))
                continue
            val = np.ones(len(frame), dtype=np.float64)
            for j, c in mine:
                p = t.powers[j]
                if p:
                    x = _numeric(cols[c], t.clamp, me)
                    with np.errstate(invalid="ignore"):
                        val = val * (x - t.centers[j]) ** p
            out.append(Dense(np.where(ok, val, 0.0)))
            continue
        if not mine:
            out.append(OneHot(np.where(ok, 0, -1).astype(np.int64), 1))
            continue
        if t.kind == "cells":
            idxs = [_level_index(cols[c], t.levels[j]) for j, c in mine]
            if len(idxs) == 2:
                idx = np.where(
                    (idxs[0] >= 0) & (idxs[1] >= 0), idxs[0] * len(t.levels[1]) + idxs[1], -1
                )
            else:
                idx = idxs[0]
        else:
            idx = _onehot_value(t, _numeric(cols[mine[0][1]], t.clamp, me))
        out.append(OneHot(np.where(ok & (idx >= 0), idx, -1).astype(np.int64), size))
    return out


def _check_factor(f: Factor | None, shape: tuple[str, int], n: int, where: str) -> Factor:
    if shape[0] == "dense":
        if not isinstance(f, Dense) or f.values.shape != (n,):
            raise DataError(f"{where}: expected a dense factor of {n} rows")
        if not np.all(np.isfinite(f.values)):
            raise DataError(f"{where}: a factor value is not finite")
        return f
    if not isinstance(f, OneHot) or f.index.shape != (n,) or f.size != shape[1]:
        raise DataError(f"{where}: expected a one-hot factor of {n} rows and {shape[1]} slots")
    if f.index.size and (f.index.min() < -1 or f.index.max() >= f.size):
        raise DataError(f"{where}: a one-hot index is out of range")
    return f


def combine(
    rnd: Round, owners: Mapping[str, str], tp: TermPlan, factors: Sequence[Factor], n: int
) -> npt.NDArray[np.float64]:
    """A term's entries from all its nodes' factors, in the clear (the reference)."""
    t = rnd.terms[tp.index]
    strides = term_strides(rnd, owners, tp.index, tp.nodes)
    ok = np.ones(n, dtype=bool)
    entry = np.zeros(n, dtype=np.int64)
    weight: npt.NDArray[np.float64] | None = None
    for f, s in zip(factors, strides, strict=True):
        if isinstance(f, OneHot):
            ok &= f.index >= 0
            entry += np.maximum(f.index, 0) * s
        else:
            weight = f.values if weight is None else weight * f.values
    if weight is None:
        return np.bincount(entry[ok], minlength=t.size).astype(np.float64)
    out = np.zeros(t.size, dtype=np.float64)
    for k in np.unique(entry[ok]):
        out[k] = math.fsum(weight[ok & (entry == k)].tolist())
    return out


def clear_round(
    rnd: Round, owners: Mapping[str, str], frames: Mapping[str, pd.DataFrame]
) -> npt.NDArray[np.float64]:
    """The round's float vector from every node's aligned rows, in the clear (the reference
    for tests: equals ``Engine.compute(rnd)`` over the joined table)."""
    nodes = list(frames)
    sizes = {len(f) for f in frames.values()}
    if len(sizes) != 1:
        raise DataError("clear_round: the nodes' aligned rows differ in number")
    n = sizes.pop()
    plan = plan_round(rnd, owners, nodes)
    facs = {node: local_factors(plan, node, frames[node]) for node in nodes}
    out = np.zeros(rnd.size, dtype=np.float64)
    for tp in plan.terms:
        fs = [facs[node][tp.index] for node in tp.nodes]
        shapes = [factor_shape(rnd, owners, tp.index, node) for node in tp.nodes]
        checked = [_check_factor(f, s, n, "clear_round") for f, s in zip(fs, shapes, strict=True)]
        out[rnd.term_slice(tp.index)] = combine(rnd, owners, tp, checked, n)
    return out
