"""Weight of evidence and information value of binned features against a binary label.

FATE's (hetero) feature binning as a statistic: for every bin i of a feature, with ``pos_i``
and ``neg_i`` the records of the bin whose label is the positive and the negative level,

    woe_i = ln( (pos_i / pos_total) / (neg_i / neg_total) )
    iv_i  = (pos_i / pos_total - neg_i / neg_total) * woe_i,     IV = sum_i iv_i

with FATE's adjustment of 0.5 added to both counts of a bin where either is 0. Numeric
features are binned on public edges (``params.bins``: values below the first edge and above
the last are bins of their own, the last inner bin is closed, as ``numpy.histogram``); a
categorical feature has one bin per public level (``params.values`` or its domain). Records
with a null feature or label are in no bin.

Rounds: one ``cells`` round (label x level) for the categorical features, and two ``bins``
rounds for the numeric ones, over the query's filter and ``label = positive``, then ``label =
negative``. On a vertical view the label is one node's column and the features another's,
so each bin's two counts are secure products (``trustspace.vertical``).

Disclosure control: a cell (a bin's positive or negative count) under ``min_group_size`` is
suppressed, and so is its bin; ``pos_total`` and ``neg_total`` add up the *released* bins only,
so no suppressed count can be recovered from the released rates (as crosstab margins).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.errors import ConfigError
from trustspace.stats._query import Query, levels_of
from trustspace.stats._round import Round, Term
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

if TYPE_CHECKING:
    from trustspace.stats._machine import Computation

__all__ = ["ADJUSTMENT", "woe_plan", "woe_plan_check", "woe_table"]

#: Added to both counts of a bin where one is 0 (FATE's ``adjustment_factor``).
ADJUSTMENT = 0.5

Vec = npt.NDArray[np.float64]


def _labels(q: Query, schema: TableSchema) -> tuple[GroupValue, GroupValue]:
    """(negative, positive) levels of the label: ``params.labels`` in that order, else the
    column's declared domain of two levels (sorted: the higher is positive), else (False,
    True) for a bool and (0, 1) for an int column."""
    label = q.params["label"]
    given = q.params.get("labels")
    typ = schema.column_type(label, "query 'params.label'")
    if given is None and label not in schema.domains and typ is ColumnType.INT:
        given = [0, 1]
    levels = levels_of(schema, label, given, "query 'params.labels'", "woe_iv")
    if len(levels) != 2:
        raise ConfigError(
            f"query 'params.labels': the label {label!r} must have exactly two levels "
            f"(negative, positive), it has {len(levels)}; pass labels=[negative, positive]"
        )
    if given is None:
        levels = tuple(sorted(levels, key=lambda v: (str(type(v)), v)))
    return levels[0], levels[1]


def _features(
    q: Query, schema: TableSchema
) -> list[tuple[str, list[float] | None, tuple[Any, ...]]]:
    """(feature, edges or None, levels) per feature, checked against the schema."""
    bins = q.params.get("bins", {})
    values = q.params.get("values", {})
    out: list[tuple[str, list[float] | None, tuple[Any, ...]]] = []
    for f in q.columns:
        typ = schema.column_type(f, "query 'columns'")
        if f in bins:
            if not typ.is_numeric:
                raise ConfigError(
                    f"query 'params.bins.{f}': {f!r} is {typ.value}; bin edges apply to int "
                    "and float features (give a categorical feature's levels as values)"
                )
            out.append((f, [float(e) for e in bins[f]], ()))
        elif typ is ColumnType.FLOAT or (
            typ is ColumnType.INT and f not in values and f not in schema.domains
        ):
            raise ConfigError(
                f"query 'params.bins': the numeric feature {f!r} needs bin edges "
                "(VerticalView.woe_iv and Federation.woe_iv find quantile edges for you)"
            )
        else:
            out.append(
                (
                    f,
                    None,
                    levels_of(schema, f, values.get(f), f"query 'params.values.{f}'", "woe_iv"),
                )
            )
    return out


def woe_plan_check(q: Query, schema: TableSchema) -> None:
    """Check a woe_iv query against the schema (``Query.check``)."""
    _labels(q, schema)
    _features(q, schema)


def _literal(v: GroupValue) -> str:
    """``v`` in the filter language."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def _bin_labels(edges: Sequence[float]) -> list[str]:
    e = [f"{x:g}" for x in edges]
    inner = [f"[{a}, {b})" for a, b in itertools.pairwise(e)]
    inner[-1] = inner[-1][:-1] + "]"
    return [f"(-inf, {e[0]})", *inner, f"({e[-1]}, inf)"]


def woe_table(
    feature: str, bins: Sequence[str], pos: Vec, neg: Vec, k: int
) -> tuple[pd.DataFrame, float]:
    """The bins of one feature (count, pos, neg, woe, iv; NaN where suppressed) and its IV.

    ``pos``/``neg`` below 0 mean "withheld upstream" (suppressed). A bin is released only when
    both of its counts reach ``k``; the totals add up released bins only.
    """
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    ok = (pos >= max(k, 0)) & (neg >= max(k, 0)) & (pos >= 0) & (neg >= 0)
    p_tot, n_tot = float(pos[ok].sum()), float(neg[ok].sum())
    woe = np.full(len(pos), math.nan)
    iv = np.full(len(pos), math.nan)
    if p_tot > 0 and n_tot > 0:
        adj = ok & ((pos == 0) | (neg == 0))
        pr = np.where(adj, pos + ADJUSTMENT, pos) / p_tot
        nr = np.where(adj, neg + ADJUSTMENT, neg) / n_tot
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.log(pr / nr)
        woe = np.where(ok, w, math.nan)
        iv = np.where(ok, (pr - nr) * w, math.nan)
    index = pd.MultiIndex.from_arrays([[feature] * len(bins), list(bins)], names=["feature", "bin"])
    frame = pd.DataFrame(
        {
            "count": np.where(ok, pos + neg, math.nan),
            "pos": np.where(ok, pos, math.nan),
            "neg": np.where(ok, neg, math.nan),
            "woe": woe,
            "iv": iv,
        },
        index=index,
    )
    return frame, float(np.nansum(iv)) if ok.any() else math.nan


def woe_plan(m: Computation) -> Generator[Round, Vec, Any]:
    """The rounds of a woe_iv query and its Result (see the module docstring)."""
    q, schema = m.query, m.schema
    label = q.params["label"]
    neg_v, pos_v = _labels(q, schema)
    feats = _features(q, schema)
    cats = [(f, lv) for f, e, lv in feats if e is None]
    nums = [(f, e) for f, e, _ in feats if e is not None]
    counts: dict[str, tuple[Vec, Vec]] = {}

    def ask(where: str | None, terms: list[Term]) -> Generator[Round, Vec, Any]:
        rnd = Round(q.dataset, where, tuple(terms), index=m.rounds)
        total = yield rnd
        return rnd.view(total)

    if cats:
        terms = [Term.cells(label, f, (neg_v, pos_v), tuple(lv)) for f, lv in cats]
        totals = yield from ask(q.where, terms)
        for (f, lv), t in zip(cats, terms, strict=True):
            cells = totals[t].reshape(2, len(lv))
            counts[f] = (cells[1].copy(), cells[0].copy())
    if nums:
        terms = [Term.bins(f, e) for f, e in nums]
        by_level: list[Any] = []
        for level in (pos_v, neg_v):
            cond = f"{label} = {_literal(level)}"
            where = cond if q.where is None else f"({q.where}) and {cond}"
            by_level.append((yield from ask(where, terms)))
        for (f, _), t in zip(nums, terms, strict=True):
            counts[f] = (by_level[0][t].copy(), by_level[1][t].copy())
    frames, ivs = [], {}
    for f, e, lv in feats:
        bins = _bin_labels(e) if e is not None else [str(v) for v in lv]
        pos, neg = counts[f]
        frame, iv = woe_table(f, bins, pos, neg, m.k)
        frames.append(frame)
        ivs[f"iv/{f}"] = iv
    table = pd.concat(frames)
    return m._result_of(table, table.isna(), ivs)
