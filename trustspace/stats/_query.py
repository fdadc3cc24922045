"""The query spec: which statistic, over which dataset, columns and filter, with which options."""

from __future__ import annotations

import difflib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trustspace.errors import ConfigError
from trustspace.stats._filter import check_filter, parse_filter
from trustspace.stats._round import GLM_FAMILIES, MAX_CELLS, Term
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema, _check_group_value

__all__ = ["GROUP_AGGS", "OPS", "TTEST_AGGS", "Query", "levels_of"]

#: The statistics a Query may ask for.
OPS = (
    "count",
    "sum",
    "mean",
    "var",
    "std",
    "skew",
    "kurt",
    "histogram",
    "quantile",
    "cov",
    "corr",
    "describe",
    "group_by",
    "crosstab",
    "ttest",
    "glm",
    "ols",
    "woe_iv",
    "marginals",
)
#: Most marginals one ``marginals`` query measures (a synthesizer's measurement round).
MAX_MARGINALS = 64
#: The aggregations group_by(...).agg({...}) accepts (pandas names).
GROUP_AGGS = ("size", "count", "sum", "mean", "var", "std")
#: Most bins a histogram may ask for, and most values a group-by domain may list.
MAX_BINS = 100_000
MAX_GROUPS = 10_000
#: Bins per quantile refinement grid a query may ask for (powers of two keep bins exact).
GRID_BIN_CHOICES = tuple(2**i for i in range(4, 13))

_PARAMS: dict[str, set[str]] = {
    "count": set(),
    "sum": {"bounds"},
    "mean": {"bounds"},
    "var": {"ddof", "bounds"},
    "std": {"ddof", "bounds"},
    "skew": set(),
    "kurt": set(),
    "histogram": {"bins", "range"},
    "quantile": {"q", "precision", "grid_bins", "bounds"},
    "cov": {"ddof"},
    "corr": set(),
    "describe": {"percentiles", "precision", "grid_bins", "bounds"},
    "group_by": {"by", "agg", "values", "bounds"},
    "crosstab": {"values", "margins"},
    "ttest": {"by", "values"},
    "glm": {"formula", "family", "weights", "offset", "max_iter", "tol"},
    "ols": {"formula", "weights", "bounds"},
    "woe_iv": {"label", "labels", "bins", "values"},
    "marginals": {"marginals", "cuts", "values"},
}
#: The per-group aggregations a t-test is computed from (``group_by``'s machinery).
TTEST_AGGS = ("count", "mean", "var")


def _number(x: object, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ConfigError(f"{where}: expected a finite number, got {x!r}")
    return float(x)


def _probabilities(x: object, where: str) -> list[float]:
    items = x if isinstance(x, list | tuple) else [x]
    if not items:
        raise ConfigError(f"{where}: expected at least one value")
    out = [_number(v, where) for v in items]
    if any(not 0.0 <= v <= 1.0 for v in out):
        raise ConfigError(f"{where}: values must lie in [0, 1], got {x!r}")
    return out


def _check_params(op: str, params: Mapping[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    allowed = _PARAMS[op]
    extra = set(params) - allowed
    if extra:
        hint = f"allowed: {', '.join(sorted(allowed))}" if allowed else "it takes no parameters"
        raise ConfigError(f"query 'params': unknown key(s) {sorted(extra)} for {op!r}; {hint}")
    p: dict[str, Any] = json.loads(json.dumps(dict(params)))  # deep copy, JSON-able or fail
    if "ddof" in p and (
        isinstance(p["ddof"], bool) or not isinstance(p["ddof"], int) or p["ddof"] < 0
    ):
        raise ConfigError(f"query 'params.ddof': expected an integer >= 0, got {p['ddof']!r}")
    if "bounds" in p:
        b = p["bounds"]
        if not isinstance(b, dict) or not b:
            raise ConfigError("query 'params.bounds': expected {column: [low, high]}")
        for col, pair in b.items():
            where = f"query 'params.bounds.{col}'"
            if col not in columns:
                raise ConfigError(f"{where}: {col!r} is not a column of the query")
            if not isinstance(pair, list) or len(pair) != 2:
                raise ConfigError(f"{where}: expected [low, high], got {pair!r}")
            lo, hi = (_number(v, where) for v in pair)
            if not lo < hi:
                raise ConfigError(f"{where}: low must be below high, got {pair!r}")
            b[col] = [lo, hi]
    if op == "histogram":
        if len(columns) != 1:
            raise ConfigError("query 'columns': histogram takes exactly one column")
        bins = p.get("bins")
        if isinstance(bins, int) and not isinstance(bins, bool):
            if not 1 <= bins <= MAX_BINS:
                raise ConfigError(f"query 'params.bins': {bins} not in 1..{MAX_BINS}")
            rng = p.get("range")
            if not isinstance(rng, list) or len(rng) != 2:
                raise ConfigError(
                    "query 'params.range': bins=<int> needs range=[low, high] (a public range; "
                    "the exact data minimum and maximum are never released), or give bins as "
                    "a list of edges"
                )
            lo, hi = (_number(v, "query 'params.range'") for v in rng)
            if not hi > lo:
                raise ConfigError(f"query 'params.range': high must exceed low, got {rng!r}")
        elif isinstance(bins, list):
            if "range" in p:
                raise ConfigError("query 'params.range': not used when bins is a list of edges")
            edges = [_number(v, "query 'params.bins'") for v in bins]
            if len(edges) < 2 or len(edges) > MAX_BINS + 1:
                raise ConfigError(f"query 'params.bins': need 2..{MAX_BINS + 1} edges")
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ConfigError("query 'params.bins': edges must be strictly increasing")
        else:
            raise ConfigError(
                "query 'params.bins': expected a number of bins (with range=[low, high]) or a "
                f"list of edges, got {bins!r}"
            )
    if op == "quantile":
        if "q" not in p:
            raise ConfigError("query 'params.q': quantile needs q (a probability or a list)")
        _probabilities(p["q"], "query 'params.q'")
    if op == "describe" and "percentiles" in p:
        _probabilities(p["percentiles"], "query 'params.percentiles'")
    if "precision" in p and _number(p["precision"], "query 'params.precision'") <= 0:
        raise ConfigError("query 'params.precision': must be > 0")
    if "grid_bins" in p:
        gb = p["grid_bins"]
        if isinstance(gb, bool) or not isinstance(gb, int) or gb not in GRID_BIN_CHOICES:
            raise ConfigError(f"query 'params.grid_bins': {gb!r} is not a power of two in 16..4096")
    if op in ("glm", "ols"):
        _check_model_params(p)
    if op == "group_by":
        by = p.get("by")
        if not isinstance(by, str) or not by:
            raise ConfigError("query 'params.by': group_by needs the name of the group column")
        agg = p.get("agg")
        if not isinstance(agg, dict) or not agg:
            raise ConfigError("query 'params.agg': expected {column: [aggregations]}")
        for col, fns in agg.items():
            fl = [fns] if isinstance(fns, str) else fns
            if not isinstance(fl, list) or not fl:
                raise ConfigError(f"query 'params.agg.{col}': expected a list of aggregations")
            for f in fl:
                if f not in GROUP_AGGS:
                    raise ConfigError(
                        f"query 'params.agg.{col}': unknown aggregation {f!r}; "
                        f"use one of {', '.join(GROUP_AGGS)}"
                    )
            p["agg"][col] = list(dict.fromkeys(fl))
        if sorted(agg) != sorted(columns) or len(set(columns)) != len(columns):
            raise ConfigError("query 'columns': for group_by, the columns are the keys of 'agg'")
        # in the columns' order: a signed body's JSON sorts the keys of 'agg'
        p["agg"] = {c: p["agg"][c] for c in columns}
        if "values" in p:
            vals = p["values"]
            if not isinstance(vals, list) or not vals or len(vals) > MAX_GROUPS:
                raise ConfigError(
                    f"query 'params.values': expected a list of 1..{MAX_GROUPS} values"
                )
            for i, v in enumerate(vals):
                _check_group_value(v, f"query 'params.values[{i}]'")
            if len(set(vals)) != len(vals):
                raise ConfigError("query 'params.values': values must be distinct")
    if op == "crosstab":
        _check_crosstab(p, columns)
    if op == "marginals":
        _check_marginals(p, columns)
    if op == "woe_iv":
        _check_woe(p, columns)
    if op == "ttest":
        if len(columns) != 1:
            raise ConfigError("query 'columns': ttest takes exactly one (numeric) column")
        by = p.get("by")
        if not isinstance(by, str) or not by:
            raise ConfigError("query 'params.by': ttest needs the name of the group column")
        if by == columns[0]:
            raise ConfigError("query 'params.by': the group column is the tested column")
        if "values" in p:
            _check_levels(p["values"], "query 'params.values'", exactly=2)
    return p


def _check_levels(vals: object, where: str, exactly: int | None = None) -> list[Any]:
    """A JSON list of distinct public levels (group values)."""
    if exactly is not None and (not isinstance(vals, list) or len(vals) != exactly):
        raise ConfigError(f"{where}: expected a list of exactly {exactly} values, got {vals!r}")
    if not isinstance(vals, list) or not vals or len(vals) > MAX_GROUPS:
        raise ConfigError(f"{where}: expected a list of 1..{MAX_GROUPS} values")
    for i, v in enumerate(vals):
        _check_group_value(v, f"{where}[{i}]")
    if len({(type(v), v) for v in vals}) != len(vals):
        raise ConfigError(f"{where}: values must be distinct")
    return vals


def _check_woe(p: dict[str, Any], columns: tuple[str, ...]) -> None:
    """woe_iv: features (columns), a binary ``label`` with its two ``labels`` (negative,
    positive), ``bins`` (numeric feature -> edges) and ``values`` (categorical -> levels)."""
    if not columns:
        raise ConfigError("query 'columns': woe_iv needs one or more feature columns")
    label = p.get("label")
    if not isinstance(label, str) or not label:
        raise ConfigError("query 'params.label': woe_iv needs the binary label column")
    if label in columns:
        raise ConfigError(f"query 'params.label': {label!r} is also a feature")
    if "labels" in p:
        _check_levels(p["labels"], "query 'params.labels'", exactly=2)
    bins = p.get("bins", {})
    values = p.get("values", {})
    if not isinstance(bins, dict) or not isinstance(values, dict):
        raise ConfigError("query 'params.bins'/'values': expected {feature: [...]}")
    for f, edges in bins.items():
        if f not in columns:
            raise ConfigError(f"query 'params.bins.{f}': {f!r} is not a feature")
        if f in values:
            raise ConfigError(f"query 'params.bins.{f}': give bins or values, not both")
        e = (
            [_number(v, f"query 'params.bins.{f}'") for v in edges]
            if isinstance(edges, list)
            else []
        )
        if len(e) < 2 or len(e) > MAX_BINS + 1 or any(b <= a for a, b in itertools.pairwise(e)):
            raise ConfigError(
                f"query 'params.bins.{f}': expected 2..{MAX_BINS + 1} strictly increasing edges"
            )
    for f, vals in values.items():
        if f not in columns:
            raise ConfigError(f"query 'params.values.{f}': {f!r} is not a feature")
        _check_levels(vals, f"query 'params.values.{f}'")


def _check_crosstab(p: dict[str, Any], columns: tuple[str, ...]) -> None:
    if len(columns) != 2:
        raise ConfigError(
            "query 'columns': crosstab takes exactly two columns (the rows' and the columns')"
        )
    if "margins" in p and not isinstance(p["margins"], bool):
        raise ConfigError(f"query 'params.margins': expected true or false, got {p['margins']!r}")
    values = p.get("values", {})
    if not isinstance(values, dict):
        raise ConfigError("query 'params.values': expected {column: [levels]}")
    for col, vals in values.items():
        if col not in columns:
            raise ConfigError(
                f"query 'params.values.{col}': {col!r} is not one of the table's columns "
                f"{list(columns)}"
            )
        _check_levels(vals, f"query 'params.values.{col}'")


def _check_marginals(p: dict[str, Any], columns: tuple[str, ...]) -> None:
    """``params.marginals``: lists of 1..3 distinct query columns; every query column in one;
    ``params.cuts``: {numeric column: strictly increasing edges}; ``params.values``: levels."""
    from trustspace.stats._round import MAX_MARGINAL_COLUMNS

    ms = p.get("marginals")
    if not isinstance(ms, list) or not 1 <= len(ms) <= MAX_MARGINALS:
        raise ConfigError(
            f"query 'params.marginals': expected a list of 1..{MAX_MARGINALS} column lists"
        )
    seen: set[tuple[str, ...]] = set()
    used: set[str] = set()
    for i, m in enumerate(ms):
        where = f"query 'params.marginals[{i}]'"
        if (
            not isinstance(m, list)
            or not 1 <= len(m) <= MAX_MARGINAL_COLUMNS
            or len(set(m)) != len(m)
            or not all(isinstance(c, str) and c in columns for c in m)
        ):
            raise ConfigError(
                f"{where}: expected 1..{MAX_MARGINAL_COLUMNS} distinct columns of the query "
                f"({list(columns)}), got {m!r}"
            )
        if tuple(m) in seen:
            raise ConfigError(f"{where}: {m!r} is listed twice")
        seen.add(tuple(m))
        used.update(m)
    if used != set(columns):
        raise ConfigError("query 'columns': every column must be in a marginal, and only those")
    cuts = p.get("cuts", {})
    if not isinstance(cuts, dict):
        raise ConfigError("query 'params.cuts': expected {column: [edges]}")
    for col, edges in cuts.items():
        where = f"query 'params.cuts.{col}'"
        if col not in columns:
            raise ConfigError(f"{where}: {col!r} is not one of the query's columns")
        if not isinstance(edges, list) or not 2 <= len(edges) <= MAX_CELLS + 1:
            raise ConfigError(f"{where}: expected a list of 2..{MAX_CELLS + 1} edges")
        e = [_number(x, where) for x in edges]
        if any(b <= a for a, b in itertools.pairwise(e)):
            raise ConfigError(f"{where}: edges must be strictly increasing")
    values = p.get("values", {})
    if not isinstance(values, dict):
        raise ConfigError("query 'params.values': expected {column: [levels]}")
    for col, vals in values.items():
        if col not in columns or col in cuts:
            raise ConfigError(
                f"query 'params.values.{col}': {col!r} is not a categorical column of the query"
            )
        _check_levels(vals, f"query 'params.values.{col}'")


def marginal_terms(q: Query, schema: TableSchema) -> list[Term]:
    """The ``marginal`` terms of a ``marginals`` query, one per listed marginal (the levels of
    a categorical column: ``params.values``, else its domain; a numeric column: its cuts)."""
    cuts = q.params.get("cuts", {})
    values = q.params.get("values", {})
    axes: dict[str, tuple[tuple[Any, ...], tuple[float, ...]]] = {}
    for c in q.columns:
        where = f"query 'params.values.{c}'"
        typ = schema.column_type(c, "query 'columns'")
        if c in cuts:
            if not typ.is_numeric or typ is ColumnType.DATE:
                raise ConfigError(
                    f"query 'params.cuts.{c}': {c!r} is {typ.value}; only a numeric column is "
                    "binned (give a categorical one its levels)"
                )
            axes[c] = ((), tuple(float(e) for e in cuts[c]))
        elif typ is ColumnType.FLOAT:
            raise ConfigError(
                f"query 'params.cuts': numeric column {c!r} needs its bin edges (cuts) for a "
                "marginal: public ones, e.g. over its declared bounds"
            )
        else:
            axes[c] = (levels_of(schema, c, values.get(c), where, "marginals"), ())
    return [
        Term.marginal(m, [axes[c][0] for c in m], [axes[c][1] for c in m])
        for m in q.params["marginals"]
    ]


def levels_of(
    schema: TableSchema, column: str, given: Any, where: str, op: str
) -> tuple[GroupValue, ...]:
    """The public levels of a categorical ``column``: ``given`` (a query's values), else the
    schema's declared domain, else (False, True) for a bool column; ConfigError otherwise or
    when a level is not of the column's type."""
    typ = schema.column_type(column, where)
    if typ in (ColumnType.FLOAT, ColumnType.DATE):
        raise ConfigError(
            f"{where}: {op} cannot use {column!r} of type {typ.value} as a category; use a "
            "str, int or bool column"
        )
    if given is not None:
        values = tuple(given)
    elif column in schema.domains:
        values = tuple(schema.domains[column])
    elif typ is ColumnType.BOOL:
        values = (False, True)
    else:
        raise ConfigError(
            f"{where}: {op} needs the public levels of {column!r}: declare a domain for "
            f"{column!r} in the dataset spec ([datasets.NAME.domains]) or pass values="
        )
    kinds = {ColumnType.STR: (str,), ColumnType.INT: (int,), ColumnType.BOOL: (bool,)}
    for i, v in enumerate(values):
        if not isinstance(v, kinds[typ]) or (typ is ColumnType.INT and isinstance(v, bool)):
            raise ConfigError(
                f"{where}[{i}]: {v!r} cannot be a level of {column!r}, which is {typ.value}"
            )
    domain = schema.domains.get(column)
    if given is not None and domain is not None:
        known = {(type(d), d) for d in domain}
        unknown = [v for v in values if (type(v), v) not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), [str(d) for d in domain], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(map(repr, domain[:10])) + (", ..." if len(domain) > 10 else "")
            raise ConfigError(
                f"{where}: {unknown[0]!r} is not a level of {column!r}{hint}; its declared "
                f"domain is {shown}"
            )
    return values


def _check_model_params(p: Mapping[str, Any]) -> None:
    """The parameters of a glm/ols query (the formula itself is parsed against the schema)."""
    if not isinstance(p.get("formula"), str) or "~" not in p["formula"]:
        raise ConfigError("query 'params.formula': expected a formula 'y ~ x1 + C(x2)'")
    fam = p.get("family", "gaussian")
    if fam not in GLM_FAMILIES:
        raise ConfigError(
            f"query 'params.family': {fam!r}; use 'gaussian', 'binomial' or 'poisson'"
        )
    for key in ("weights", "offset"):
        if key in p and p[key] is not None and (not isinstance(p[key], str) or not p[key]):
            raise ConfigError(f"query 'params.{key}': expected a column name")
    mi = p.get("max_iter", 100)
    if isinstance(mi, bool) or not isinstance(mi, int) or not 1 <= mi <= 10_000:
        raise ConfigError(f"query 'params.max_iter': expected an integer 1..10000, got {mi!r}")
    tol = p.get("tol", 1e-8)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ConfigError(f"query 'params.tol': expected a number in (0, 1), got {tol!r}")


@dataclass(frozen=True)
class Query:
    """A statistics query: ``op`` over ``columns`` of ``dataset`` restricted by ``where``.

    Args:
        op: one of OPS.
        dataset: the dataset name every node serves.
        columns: the columns (a str is one column); ``count`` with no columns counts rows.
        where: an optional filter in the filter language (see ``parse_filter``).
        params: op options, JSON-able: ``ddof`` (var, std, cov; default 1; note pandas'
            ``DataFrame.cov`` ignores ddof when the frame holds NaN, we never do), ``bins`` and
            ``range`` (histogram), ``q``, ``precision`` and ``grid_bins`` (quantile),
            ``percentiles``, ``precision`` and ``grid_bins`` (describe), ``by``, ``agg`` and
            ``values`` (group_by), ``values`` ({column: [levels]}) and ``margins`` (crosstab),
            ``by`` and ``values`` (two levels; ttest). ``grid_bins`` (a power of two, 16..4096,
            default 1024) trades vector length against rounds.

    >>> q = Query("mean", "adult", "age", where="sex = 'Male'")
    >>> q.columns
    ('age',)
    >>> Query.from_dict(q.to_dict()) == q
    True
    >>> Query("median", "adult", "age")
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: query 'op': unknown statistic 'median'; use one of ...
    """

    op: str
    dataset: str
    columns: tuple[str, ...] | str = ()
    where: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(
                f"query 'op': unknown statistic {self.op!r}; use one of {', '.join(OPS[:3])}, "
                f"... ({', '.join(OPS)})"
            )
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("query 'dataset': expected a non-empty dataset name")
        cols = (self.columns,) if isinstance(self.columns, str) else self.columns
        if not isinstance(cols, Sequence) or not all(isinstance(c, str) and c for c in cols):
            raise ConfigError(f"query 'columns': expected column names, got {self.columns!r}")
        cols = tuple(cols)
        if len(set(cols)) != len(cols):
            raise ConfigError(f"query 'columns': duplicate column in {list(cols)}")
        if not cols and self.op != "count":
            raise ConfigError(f"query 'columns': {self.op!r} needs at least one column")
        object.__setattr__(self, "columns", cols)
        if self.where is not None:
            if not isinstance(self.where, str):
                raise ConfigError("query 'where': expected a filter string or None")
            parse_filter(self.where)  # syntax errors name the position now, not on the nodes
        if not isinstance(self.params, Mapping):
            raise ConfigError("query 'params': expected a dict")
        object.__setattr__(
            self, "params", MappingProxyType(_check_params(self.op, self.params, cols))
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Query):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def check(self, schema: TableSchema) -> None:
        """Check the query against a dataset schema (columns exist, types fit, filter valid).

        Raises:
            ConfigError: naming the column and the known columns, or the filter's position.
        """
        if self.op == "marginals":
            marginal_terms(self, schema)  # every table's size is checked by its Term
            if self.where is not None:
                check_filter(parse_filter(self.where), schema, self.where)
            return
        if self.op == "crosstab":
            values = self.params.get("values", {})
            cells = 1
            for c in self.columns:
                cells *= len(
                    levels_of(schema, c, values.get(c), f"query 'params.values.{c}'", "crosstab")
                )
            if cells > MAX_CELLS:
                a, b = tuple(self.columns)
                raise ConfigError(
                    f"query 'columns': crosstab({a!r}, {b!r}) would have {cells} cells, more "
                    f"than the limit of {MAX_CELLS}; coarsen the levels or list fewer (values=)"
                )
            if self.where is not None:
                check_filter(parse_filter(self.where), schema, self.where)
            return
        if self.op == "woe_iv":
            from trustspace.stats._woe import woe_plan_check

            woe_plan_check(self, schema)
            if self.where is not None:
                check_filter(parse_filter(self.where), schema, self.where)
            return
        if self.op == "ttest":
            by = self.params["by"]
            levels = levels_of(
                schema, by, self.params.get("values"), "query 'params.values'", "ttest"
            )
            if len(levels) != 2:
                raise ConfigError(
                    f"query 'params.values': ttest compares two groups, but {by!r} has "
                    f"{len(levels)} levels ({', '.join(map(repr, levels[:5]))}"
                    f"{', ...' if len(levels) > 5 else ''}); pass values=(a, b)"
                )
        if self.op in ("glm", "ols"):
            from trustspace.stats._glm import query_design

            query_design(self, schema)
            if self.where is not None:
                check_filter(parse_filter(self.where), schema, self.where)
            return
        numeric = self.op not in ("count",)
        for c in self.columns:
            typ = schema.column_type(c, "query 'columns'")
            if numeric and not typ.is_numeric:
                aggs = self.params.get("agg", {}).get(c, []) if self.op == "group_by" else []
                if not (self.op == "group_by" and set(aggs) <= {"count", "size"}):
                    raise ConfigError(
                        f"query 'columns': {self.op} needs numeric columns; {c!r} is "
                        f"{typ.value} (only int and float columns are numeric)"
                    )
        if self.op == "group_by":
            by = self.params["by"]
            typ = schema.column_type(by, "query 'params.by'")
            if typ in (ColumnType.FLOAT, ColumnType.DATE):
                raise ConfigError(
                    f"query 'params.by': cannot group by {by!r} of type {typ.value}; "
                    "group by a str, int or bool column"
                )
            values = self.params.get("values", schema.domains.get(by, ()))
            kinds = {ColumnType.STR: (str,), ColumnType.INT: (int,), ColumnType.BOOL: (bool,)}
            for i, v in enumerate(values):
                is_bool_as_int = typ is ColumnType.INT and isinstance(v, bool)
                if not isinstance(v, kinds[typ]) or is_bool_as_int:
                    raise ConfigError(
                        f"query 'params.values[{i}]': {v!r} cannot be a value of {by!r}, "
                        f"which is {typ.value}"
                    )
            if (
                "values" not in self.params
                and by not in schema.domains
                and typ is not ColumnType.BOOL
            ):
                raise ConfigError(
                    f"query 'params.values': group_by({by!r}) needs the public list of group "
                    f"values: pass values=[...] or declare a domain for {by!r} in the dataset "
                    "spec"
                )
        if self.where is not None:
            check_filter(parse_filter(self.where), schema, self.where)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``from_dict`` reverses it)."""
        return {
            "op": self.op,
            "dataset": self.dataset,
            "columns": list(self.columns),
            "where": self.where,
            "params": json.loads(json.dumps(dict(self.params))),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Query:
        """Rebuild a query; ConfigError naming an unknown, missing or bad key."""
        if not isinstance(data, Mapping):
            raise ConfigError("query: expected a dict")
        keys = {"op", "dataset", "columns", "where", "params"}
        extra = set(data) - keys
        if extra:
            raise ConfigError(f"query: unknown key(s) {sorted(extra)}; allowed: {sorted(keys)}")
        for k in ("op", "dataset"):
            if k not in data:
                raise ConfigError(f"query: missing key {k!r}")
        cols = data.get("columns", [])
        if not isinstance(cols, list | tuple):
            raise ConfigError("query 'columns': expected a list")
        return cls(
            op=data["op"],
            dataset=data["dataset"],
            columns=tuple(cols),
            where=data.get("where"),
            params=data.get("params", {}),
        )
