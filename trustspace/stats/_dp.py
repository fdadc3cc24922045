"""Differentially private statistics: one public round per query, noise added by every node.

A DP query (a statistic with ``epsilon``/``delta`` signed with it) is computed in **one** round
whose terms depend only on the query and the dataset's public schema (declared ``bounds``),
never on the data: no range finding, no centres from an earlier total. Every node

1. computes the round's local vector (``Engine.compute``) and fixed-point encodes it
   (``Round.encode``) on a scale where one record moves every term by at most ``2^DP_BITS``
   encoded units (+1 for rounding): counts carry ``DP_BITS`` fractional bits, a moment of a
   column clamped to ``[lo, hi]`` about centre ``c`` is scaled by ``2^DP_BITS / M``
   (``Term.scale``) with ``M = max(|lo - c|, |hi - c|)^power``;
2. adds ``N_Z(node_sigma2)`` to every entry (``dp.discrete_gaussian_array``: exact, from the
   OS CSPRNG), with ``node_sigma2`` from ``noise_plan`` (``dp.plan``: the total over any
   ``t..n`` surviving shares is ``(epsilon, delta)``-DP by Kairouz, Liu and Steinke, ICML 2021,
   Prop. 14), sized from the signed ``(epsilon, delta)``, the session's threshold ``t`` and size
   ``n``, and the node's own ``colluders`` setting: no driver chooses it;
3. masks the noisy vector for secure aggregation. The aggregator and the analyst only ever see
   the noisy total.

Sensitivity (``round_sensitivity``): under add/remove-one-record neighbouring, a record adds to
each term of the round at most once (to one bin of a histogram, to one block of a grouped
round), so the L2 sensitivity of the encoded vector is ``sqrt(sum_terms s_t^2)`` and its L1
sensitivity ``sum_terms s_t``, with ``s_t = 2^8`` for a count term and ``M scale + 1 = 257``
for a moment. The engine clamps every value of a moment (and of a quantile's bins) to the
term's own bounds (``Term.clamp``: the dataset's, or the query's ``params.bounds``) first.

Everything after the total is post-processing (free under DP): ratios, clipping to the bounds,
quantiles from the noisy histogram. Each figure is reported with the standard deviation of its
error due to the noise (the delta method on the figure's formula; for quantiles, the CDF's
noise over the density at the quantile, and the bin width) and a 95% interval
(``Result.dp``). No figure is suppressed: the noise, not ``min_group_size``, protects a DP
answer.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.dp import (
    MAX_SIGMA2,
    NoisePlan,
    discrete_gaussian_array,
    discrete_gaussian_variance,
    plan,
)
from trustspace.errors import ConfigError, ProtocolError
from trustspace.stats._query import Query
from trustspace.stats._round import Round, Term
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

__all__ = [
    "DP_BITS",
    "DP_OPS",
    "DPComputation",
    "DPSpec",
    "add_noise",
    "glm_dp_bounds",
    "noise_plan",
    "noise_variance",
    "paillier_noise_plan",
    "round_sensitivity",
]

#: Encoded units one record moves a term by (2^8): counts and moments alike, so that one
#: isotropic noise vector fits every entry, and each node's share stays well above the 1/4 the
#: distributed discrete Gaussian's bound needs, even with 1,024 nodes.
DP_BITS = 8
_UNIT = 2**DP_BITS
#: The DP statistics (the others need data-dependent rounds or unbounded products).
DP_OPS = (
    "count",
    "sum",
    "mean",
    "var",
    "std",
    "histogram",
    "quantile",
    "describe",
    "group_by",
    "crosstab",
    "marginals",
    "ols",
)
#: Equal-width bins over the bounds from which quantiles (and describe's) are read.
DP_QUANTILE_BINS = 64
#: Largest epsilon a query may ask for (beyond it a "DP" answer is nearly exact).
MAX_EPSILON = 100.0
_Z95 = 1.959963984540054

Vec = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DPSpec:
    """The privacy a query asks for: ``(epsilon, delta)``-DP for the whole query.

    >>> DPSpec(1.0, 1e-6)
    DPSpec(epsilon=1.0, delta=1e-06)
    >>> DPSpec(0.0, 1e-6)
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: epsilon = 0.0: must be a finite number in (0, 100]; ...
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        e, d = self.epsilon, self.delta
        if isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e <= MAX_EPSILON:
            raise ConfigError(
                f"epsilon = {e!r}: must be a finite number in (0, {MAX_EPSILON:g}]; smaller "
                "is more private (1 is a common choice)"
            )
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d < 1:
            raise ConfigError(
                f"delta = {d!r}: must be a number in (0, 1), well below 1/rows (1e-6 is common)"
            )
        object.__setattr__(self, "epsilon", float(e))
        object.__setattr__(self, "delta", float(d))

    @classmethod
    def of(cls, value: Mapping[str, float] | DPSpec | None) -> DPSpec | None:
        """A spec from a signed query's ``dp`` mapping (None stays None)."""
        if value is None or isinstance(value, DPSpec):
            return value
        return cls(value["epsilon"], value["delta"])

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta}


# --- the round ---------------------------------------------------------------------------------


def _bounds(schema: TableSchema, column: str) -> tuple[float, float]:
    b = schema.bounds.get(column)
    if b is None:
        raise ConfigError(
            f"column {column!r} has no public bounds, which a differentially private query "
            f"needs (its sensitivity); declare them in the dataset spec ([datasets.NAME.bounds] "
            f"{column} = [low, high]), or ask without epsilon"
        )
    return float(b[0]), float(b[1])


def _count_term(*columns: str) -> Term:
    n = len(columns)
    return Term("moment", tuple(columns), (0,) * n, (0.0,) * n, frac_bits=DP_BITS)


def _moment_term(schema: TableSchema, column: str, power: int, centre: float) -> Term:
    lo, hi = _bounds(schema, column)
    m = max(abs(lo - centre), abs(hi - centre)) ** power
    # encoded as round(S * 2^8 / M): one record moves it by at most 2^8 (+1 for rounding),
    # as it moves a count, so that one isotropic noise vector is right for every entry
    t = Term.moment([column], [power], [centre], 0)
    return replace(t, clamp=(lo, hi), scale=_UNIT / m)


def _mid(schema: TableSchema, column: str) -> float:
    lo, hi = _bounds(schema, column)
    return (lo + hi) / 2


def _quantile_bins(schema: TableSchema, column: str, bins: int) -> Term:
    """Equal bins over the bounds, values clamped to them (so every value is in a bin)."""
    lo, hi = _bounds(schema, column)
    return _bins_term(column, np.linspace(lo, hi, bins + 1).tolist(), (lo, hi))


def _bins_term(column: str, edges: Sequence[float], clamp: tuple[float, ...] = ()) -> Term:
    e = tuple(float(x) for x in edges)
    return Term("bins", (column,), edges=e, frac_bits=DP_BITS, clamp=clamp)


def round_sensitivity(rnd: Round, schema: TableSchema) -> tuple[float, float]:
    """The (L2, L1) sensitivity of a DP round's encoded vector (see the module docstring).

    ``schema`` is not consulted for the moments: each carries the bounds its values are
    clamped to (``Term.clamp``), so the sensitivity follows from the round alone.

    Raises:
        ConfigError: a term a DP round cannot hold (a product of columns, an unclamped
            moment, a count not on the DP scale).
    """
    squares, total = Fraction(0), Fraction(0)
    for t in rnd.terms:
        if t.is_count:
            if t.frac_bits != DP_BITS:
                raise ConfigError(f"DP round: count term {t.to_dict()} is not on the DP scale")
            entries = [Fraction(_UNIT)]
        elif t.kind == "glm" and t.mode == "dp":
            # each entry a sum over records of a product of clamped values (indicators 0/1):
            # one record moves entry e by at most m_e (data units), m_e 2^bits_e encoded
            entries = [
                m * Fraction(2) ** b + 1 for m, b in zip(glm_dp_bounds(t), t.bits, strict=True)
            ]
        elif t.kind == "moment" and len(t.columns) == 1 and t.clamp:
            lo, hi = t.clamp  # the node clamps to these: they bound what one record adds
            c, p = Fraction(t.centers[0]), t.powers[0]
            m = max(abs(Fraction(lo) - c), abs(Fraction(hi) - c)) ** p
            unit = Fraction(t.scale) if t.scale else Fraction(2) ** t.frac_bits
            entries = [m * unit + 1]
        else:
            raise ConfigError(f"DP round: term {t.to_dict()} has no bounded sensitivity")
        squares += sum(s * s for s in entries)
        total += sum(entries)
    l2 = math.sqrt(squares) * (1 + 1e-12)  # rounded up
    return l2, float(total)


def glm_dp_bounds(t: Term) -> list[Fraction]:
    """The most one record adds to each entry of a glm ``dp`` term (DP OLS), in data units:
    ``B_i B_j`` for X'X, ``B_j B_y`` for X'y, ``B_y^2`` for y'y and 1 for n, where ``B`` of a
    design column is the product of ``max(|low|, |high|)`` over its numeric factors (an
    indicator of a level is 0 or 1; the intercept is 1)."""
    lows, highs = t.clamp[::2], t.clamp[1::2]
    bound = {
        c: max(abs(Fraction(lo)), abs(Fraction(hi)))
        for c, lo, hi in zip(t.columns, lows, highs, strict=True)
    }
    cols = []
    for design_col in t.design:
        m = Fraction(1)
        for c, level in design_col:
            if level is None:
                m *= bound[c]
        cols.append(m)
    by = bound[t.columns[0]]
    p = len(cols)
    out = [cols[i] * cols[j] for i in range(p) for j in range(i, p)]
    return [*out, *(c * by for c in cols), by * by, Fraction(1)]


def _dp_bits(m: Fraction) -> int:
    """The largest f with ``m 2^f <= 2^DP_BITS``: one record then moves the entry by at most
    2^8 encoded units (+1 for rounding), as it moves a count."""
    f = DP_BITS
    while m * Fraction(2) ** f > _UNIT:
        f -= 1
    while m * Fraction(2) ** (f + 1) <= _UNIT:
        f += 1
    return f


def noise_plan(
    rnd: Round, schema: TableSchema, dp: DPSpec, *, t: int, n: int, colluders: int = 0
) -> NoisePlan:
    """Each node's share of the noise for ``rnd`` in a session of ``n`` nodes, threshold ``t``.

    ``colluders`` nodes may side with the analyst and subtract their own noise, so only
    ``t - colluders`` shares are assumed unknown.

    Raises:
        ConfigError: ``t - colluders < 1`` or an invalid round (see ``round_sensitivity``).
    """
    honest = t - colluders
    if honest < 1:
        raise ConfigError(
            f"a DP round over a session with threshold {t} and {colluders} possible colluder(s) "
            "has no share of noise the analyst cannot subtract; lower [policy.dp] colluders or "
            "run with more nodes"
        )
    l2, l1 = round_sensitivity(rnd, schema)
    p = plan(dp.epsilon, dp.delta, l2, t=honest, n=n, dim=rnd.size, sensitivity_l1=l1)
    # the noisy total must not wrap modulo 2^64: values stay below 2^61, noise below 2^61 / 8
    if 8 * math.sqrt(n * float(p.node_sigma2)) > 2.0**61 or p.node_sigma2 > MAX_SIGMA2:
        raise ConfigError(
            f"epsilon = {dp.epsilon:g} is too small: the noise it needs would not fit the "
            "64-bit secure sum; ask with a larger epsilon"
        )
    return p


def paillier_noise_plan(rnd: Round, schema: TableSchema, dp: DPSpec) -> NoisePlan:
    """Each node's noise on the Paillier path: the whole central noise (``t = n = 1``).

    No threshold bounds how many shares a Paillier total holds: the aggregator adds the
    ciphertexts it chooses, and could hand the key holder one node's alone. So every node adds
    enough noise that its own output is ``(epsilon, delta)``-DP; a total over m nodes is a
    post-processing of m such outputs over disjoint records, so it is too, with m times the
    central variance (a count over 3 nodes: sqrt(3) = 1.73 times the central noise). The
    record counts of the round, summed by secure aggregation, carry the same share.
    """
    return noise_plan(rnd, schema, dp, t=1, n=1)


def add_noise(encoded: npt.NDArray[np.uint64], node_sigma2: Fraction) -> npt.NDArray[np.uint64]:
    """``encoded + N_Z(node_sigma2)^size`` modulo 2^64 (exact sampler, OS CSPRNG)."""
    noise = discrete_gaussian_array(node_sigma2, int(encoded.shape[0]))
    return (encoded.view(np.int64) + noise).view(np.uint64)


# --- the computation ---------------------------------------------------------------------------


@dataclass
class _Figure:
    """One released figure: a function of some entries of the decoded total."""

    fn: Callable[[Vec], float]
    entries: tuple[int, ...]
    #: "smooth": delta method; "sum": a sum of entries; "quantile": from the CDF (_quantile)
    kind: str = "smooth"
    extra: Any = None


class DPComputation:
    """A DP query as a one-round computation (the driver interface of ``Computation``).

    ``next_round()`` gives the round (None once fed); ``feed(total, noise_variance=V)`` takes the
    decoded noisy total and the variance of the noise in each encoded entry (the sum of the
    survivors' discrete Gaussian variances); ``result()`` the Result, with ``Result.dp``.
    """

    def __init__(self, query: Query, schema: TableSchema, dp: DPSpec) -> None:
        if query.op not in DP_OPS:
            raise ConfigError(
                f"{query.op!r} is not available with differential privacy (epsilon=); DP "
                f"supports {', '.join(DP_OPS)}"
            )
        query.check(schema)
        given = {
            c: (float(lo), float(hi)) for c, (lo, hi) in query.params.get("bounds", {}).items()
        }
        if given:  # the query's bounds replace the dataset's for its columns
            schema = TableSchema(
                dict(schema.columns),
                schema.domains,
                {**schema.bounds, **given},
            )
        self.query, self.schema, self.dp = query, schema, dp
        self.rounds = 0
        self._total: Vec | None = None
        self._variance = 0.0
        self.nodes = 0
        self._order: list[int] = []
        self._ols: tuple[Any, Term] | None = None
        self.round, self._layout, self._wants, self._grouped = self._plan()

    # --- driver interface -----------------------------------------------------------------
    def next_round(self) -> Round | None:
        return None if self._total is not None else self.round

    def feed(
        self,
        total: npt.ArrayLike,
        suppressed: Sequence[int] = (),
        *,
        noise_variance: float,
        nodes: int = 0,
    ) -> None:
        if self._total is not None:
            raise ProtocolError("feed(): the DP round was already fed")
        if suppressed:
            raise ProtocolError("feed(): a DP total has no suppressed entries")
        try:
            arr = self.round.check_vector(total, "total").copy()
        except ValueError as e:
            raise ProtocolError(f"feed(): {e}") from None
        if not math.isfinite(noise_variance) or noise_variance <= 0:
            raise ProtocolError(f"feed(): noise variance {noise_variance!r} is not positive")
        self._total, self._variance, self.nodes = arr, float(noise_variance), nodes
        self.rounds = 1

    def result(self) -> Any:
        from trustspace.stats._machine import Result

        if self._total is None:
            raise ProtocolError("result(): the DP round has not been fed")
        x = self._total
        var = self._variance / self.round.units**2  # per entry, in the entry's own units
        if self._ols is not None:
            return _ols_result(self, x, var, Result)
        layout = self._layout
        values, stds = [], []
        for f in self._figures():
            v = float(f.fn(x))
            values.append(v)
            stds.append(_figure_std(f, x, var, v))
        if self.query.op == "describe":  # min <= percentiles <= max (post-processing)
            table = np.asarray(values).reshape(-1, len(self.query.columns))
            table[3:] = np.fmax.accumulate(table[3:], axis=0)
            values = table.ravel().tolist()
        value = layout(np.asarray(values))
        std = layout(np.asarray(stds))
        ci = layout(_Z95 * np.asarray(stds))
        suppressed = layout(np.zeros(len(values), dtype=bool))
        info = {
            "epsilon": self.dp.epsilon,
            "delta": self.dp.delta,
            "mechanism": "distributed discrete Gaussian (KLS21), added by every node",
            "noise_std": math.sqrt(self._variance) / _UNIT,  # in records (a count's noise)
            "nodes": self.nodes,
            "std": std,
            "ci95": ci,
        }
        return Result(self.query.op, value, suppressed, {}, 1, info)

    # --- plans ----------------------------------------------------------------------------
    def _plan(self) -> tuple[Round, Callable[[Any], Any], list[_Want], bool]:
        """The round, the layout of the released value, and each figure it needs (their terms
        make the round); ``grouped``: the figures repeat for every listed group, in order."""
        q, s = self.query, self.schema
        op, cols = q.op, tuple(q.columns)
        ddof = int(q.params.get("ddof", 1))
        group: tuple[str | None, tuple[GroupValue, ...]] = (None, ())
        layout: Callable[[Any], Any] = _per_column(cols)
        if op == "count":
            wants = [
                _entry_want(_count_term(*c)) for c in ([()] if not cols else [(c,) for c in cols])
            ]
        elif op == "sum":
            wants = [_entry_want(_moment_term(s, c, 1, 0.0)) for c in cols]
        elif op == "mean":
            wants = [_mean_want(s, c) for c in cols]
        elif op in ("var", "std"):
            wants = [_var_want(s, c, ddof, op == "std") for c in cols]
        elif op == "histogram":
            bins = q.params["bins"]
            if isinstance(bins, int):
                lo, hi = q.params["range"]
                edges = np.linspace(float(lo), float(hi), bins + 1).tolist()
            else:
                edges = [float(e) for e in bins]
            term = _bins_term(cols[0], edges)
            wants = [_entry_want(term, 1 + i) for i in range(len(edges) - 1)]  # no outer bins
            index = pd.IntervalIndex.from_breaks(edges, closed="left", name=cols[0])
            layout = lambda v: pd.Series(v, index=index, name="count")  # noqa: E731
        elif op == "quantile":
            wanted = q.params["q"]
            ps = [float(p) for p in wanted] if isinstance(wanted, list) else [float(wanted)]
            nb = int(q.params.get("grid_bins", DP_QUANTILE_BINS))
            wants = [_quantile_want(_quantile_bins(s, c, nb), p) for p in ps for c in cols]
            layout = _quantile_layout(wanted, ps, cols)
        elif op == "describe":
            percentiles = sorted({*q.params.get("percentiles", [0.25, 0.5, 0.75]), 0.5})
            from trustspace.stats._machine import _percent_label

            labels = ["count", "mean", "std", "min", *map(_percent_label, percentiles), "max"]
            nb = int(q.params.get("grid_bins", DP_QUANTILE_BINS))
            rows: list[Callable[[str], _Want]] = [
                lambda c: _entry_want(_count_term(c)),
                lambda c: _mean_want(s, c),
                lambda c: _var_want(s, c, 1, True),
                lambda c: _extreme_want(_quantile_bins(s, c, nb), low=True),
                *(
                    (lambda c, p=p: _quantile_want(_quantile_bins(s, c, nb), p))
                    for p in percentiles
                ),
                lambda c: _extreme_want(_quantile_bins(s, c, nb), low=False),
            ]
            wants = [row(c) for row in rows for c in cols]
            layout = _frame(labels, list(cols))
        elif op == "ols":
            self._ols = _ols_plan(q, s)
            rnd = Round(q.dataset, q.where, (self._ols[1],), None, (), 0)
            return rnd, layout, [], False
        elif op == "crosstab":
            wants, layout = _crosstab_plan(q, s)
        elif op == "marginals":
            wants, layout = _marginals_plan(q, s)
        else:  # group_by
            by: str = q.params["by"]
            if "values" in q.params:
                values = tuple(q.params["values"])
            elif by in s.domains:
                values = tuple(s.domains[by])
            else:
                values = (False, True)
            if s.columns[by] is ColumnType.BOOL and not all(isinstance(v, bool) for v in values):
                raise ConfigError(f"query 'params.values': group column {by!r} is bool")
            group = (by, values)
            pairs = [(c, f) for c, fs in q.params["agg"].items() for f in fs]
            wants = [_group_want(s, c, f) for c, f in pairs]
            order = list(range(len(values)))
            with contextlib.suppress(TypeError):  # mixed types: keep the declared order
                order.sort(key=lambda i: (values[i],))
            self._order = order
            index = pd.Index([values[i] for i in order], name=by)
            layout = _frame(index, pd.MultiIndex.from_tuples(pairs))
        terms = tuple(dict.fromkeys(t for w in wants for t in w.terms))
        rnd = Round(q.dataset, q.where, terms, group[0], group[1], 0)
        return rnd, layout, wants, group[0] is not None

    def _figures(self) -> list[_Figure]:
        """The figures, read from the round (for every group block of a grouped round)."""
        blocks = self._order if self._grouped else [0]
        bin_sd = math.sqrt(self._variance) / _UNIT  # a bin's noise, for describe's min/max
        return [w.make(self.round, g, bin_sd) for g in blocks for w in self._wants]


# --- what each figure reads ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Want:
    """A figure before the round exists: the terms it reads, and how to make it from the round
    (``make(round, group block, a bin's noise std)``)."""

    terms: tuple[Term, ...]
    make: Callable[[Round, int, float], _Figure]


def _at(rnd: Round, term: Term, group: int) -> int:
    return int(rnd.term_slice(term, group).start)


def _entry_want(term: Term, offset: int = 0) -> _Want:
    def make(rnd: Round, g: int, _: float) -> _Figure:
        i = _at(rnd, term, g) + offset
        return _Figure(_entry(i), (i,))

    return _Want((term,), make)


def _mean_want(s: TableSchema, c: str) -> _Want:
    lo, hi = _bounds(s, c)
    m = (lo + hi) / 2
    n, s1 = _count_term(c), _moment_term(s, c, 1, m)

    def make(rnd: Round, g: int, _: float) -> _Figure:
        i_n, i_1 = _at(rnd, n, g), _at(rnd, s1, g)
        return _Figure(_mean_fn(i_n, i_1, m, lo, hi), (i_n, i_1))

    return _Want((n, s1), make)


def _var_want(s: TableSchema, c: str, ddof: int, root: bool) -> _Want:
    lo, hi = _bounds(s, c)
    m = (lo + hi) / 2
    n, s1, s2 = _count_term(c), _moment_term(s, c, 1, m), _moment_term(s, c, 2, m)

    def make(rnd: Round, g: int, _: float) -> _Figure:
        i_n, i_1, i_2 = _at(rnd, n, g), _at(rnd, s1, g), _at(rnd, s2, g)
        return _Figure(_var_fn(i_n, i_1, i_2, ddof, (hi - lo) ** 2 / 4, root), (i_n, i_1, i_2))

    return _Want((n, s1, s2), make)


def _centred_sum_want(s: TableSchema, c: str) -> _Want:
    m = _mid(s, c)
    n, s1 = _count_term(c), _moment_term(s, c, 1, m)

    def make(rnd: Round, g: int, _: float) -> _Figure:
        i_n, i_1 = _at(rnd, n, g), _at(rnd, s1, g)
        return _Figure(_sum_fn(i_n, i_1, m), (i_n, i_1))

    return _Want((n, s1), make)


def _group_want(s: TableSchema, c: str, f: str) -> _Want:
    """One ``group_by`` aggregation of column ``c`` (in every group block)."""
    if f == "size":
        return _entry_want(_count_term())
    if f == "count":
        return _entry_want(_count_term(c))
    if f == "sum":
        return _centred_sum_want(s, c)
    if f == "mean":
        return _mean_want(s, c)
    return _var_want(s, c, 1, f == "std")


def _quantile_want(term: Term, p: float) -> _Want:
    return _Want((term,), lambda rnd, g, _: _quantile_figure(rnd, term, p))


def _extreme_want(term: Term, *, low: bool) -> _Want:
    return _Want((term,), lambda rnd, g, sd: _extreme_figure(rnd, term, low=low, sd=sd))


def _crosstab_plan(q: Query, s: TableSchema) -> tuple[list[_Want], Callable[[Any], Any]]:
    """A noisy two-way table: one cells term (a record adds 1 to one cell: sensitivity one
    count); the margins are sums of the noisy cells (post-processing), with their own error."""
    from trustspace.stats._machine import _sorted_levels
    from trustspace.stats._query import levels_of

    a, b = tuple(q.columns)
    values = q.params.get("values", {})
    la = _sorted_levels(levels_of(s, a, values.get(a), "values", "crosstab"))
    lb = _sorted_levels(levels_of(s, b, values.get(b), "values", "crosstab"))
    term = replace(Term.cells(a, b, la, lb), frac_bits=DP_BITS)
    nb = len(lb)
    cell = [[i * nb + j for j in range(nb)] for i in range(len(la))]
    margins = bool(q.params.get("margins", False))
    groups: list[list[list[int]]] = [[[e] for e in row] for row in cell]
    if margins:
        for i, row in enumerate(cell):
            groups[i].append(list(row))
        groups.append(
            [[row[j] for row in cell] for j in range(nb)] + [[e for r in cell for e in r]]
        )
        la, lb = (*la, "All"), (*lb, "All")
    flat = [entries for row in groups for entries in row]
    wants = [_sum_of_want(term, entries) for entries in flat]
    index, columns = pd.Index(list(la), name=a), pd.Index(list(lb), name=b)
    return wants, _frame(index, columns)


def _marginals_plan(q: Query, s: TableSchema) -> tuple[list[_Want], Callable[[Any], Any]]:
    """Noisy marginals: one marginal term each (a record adds 1 to one cell of each: the
    round's L2 sensitivity is sqrt(m) counts for m marginals), every cell its own figure."""
    from trustspace.stats._query import marginal_terms

    terms = [replace(t, frac_bits=DP_BITS) for t in marginal_terms(q, s)]
    wants = [_entry_want(t, i) for t in terms for i in range(t.size)]
    keys = [("|".join(t.columns), i) for t in terms for i in range(t.size)]
    index = pd.MultiIndex.from_tuples(keys, names=["marginal", "cell"])

    def series(v: Any) -> pd.Series:
        return pd.Series(np.asarray(v, dtype=np.float64), index=index, name="count")

    return wants, series


def _ols_plan(q: Query, s: TableSchema) -> tuple[Any, Term]:
    """DP OLS: one glm ``dp`` term, X'X, X'y, y'y and n over the rows with every numeric
    column clamped to its public bounds, each entry on the scale where one record moves it by
    at most 2^8 encoded units (``glm_dp_bounds``, ``_dp_bits``)."""
    from trustspace.stats._glm import query_design

    design = query_design(q, s)
    if design.weights:
        raise ConfigError(
            "ols: weights= with epsilon= is not supported (a weight has no public bound on "
            "what one record adds); fit without weights, or without epsilon"
        )
    numeric = {design.response, *design.numeric}
    clamp: list[float] = []
    for c in design.used:  # response first, as a glm term reads it
        clamp.extend(_bounds(s, c) if c in numeric else (0.0, 1.0))  # indicators are 0/1
    term = Term(
        "glm",
        design.used,
        family="gaussian",
        design=design.columns,
        mode="dp",
        clamp=tuple(clamp),
        bits=tuple(1 for _ in range(len(design.columns) * (len(design.columns) + 3) // 2 + 2)),
    )
    term = replace(term, bits=tuple(_dp_bits(m) for m in glm_dp_bounds(term)))
    return design, term


def _ols_result(comp: DPComputation, x: Vec, var: Vec, result_cls: Any) -> Any:
    """The OLS fit from the noisy sufficient statistics (post-processing), with standard errors
    from them plus the noise's contribution (the delta method on ``beta = A^-1 b``)."""
    from trustspace.errors import DataError

    assert comp._ols is not None
    design, _ = comp._ols
    names = list(design.names)
    p = len(names)
    iu = np.triu_indices(p)
    k = len(iu[0])
    a = np.zeros((p, p))
    a[iu] = x[:k]
    a = a + np.triu(a, 1).T
    b, yy, n = x[k : k + p], float(x[k + p]), float(x[k + p + 1])
    d = np.diag(a)
    w = np.linalg.eigvalsh(a / np.sqrt(np.outer(np.abs(d), np.abs(d)))) if np.all(d > 0) else None
    if w is None or w[0] <= 1e-8 or n <= p + 1:
        raise DataError(
            "ols with epsilon: the noisy X'X is not positive definite (the noise outweighs "
            "the variation of some design column); raise epsilon, or coarsen the model (fewer "
            "terms, merged levels, narrower bounds)"
        )
    sd = np.sqrt(d)
    beta = np.linalg.solve(a / np.outer(sd, sd), b / sd) / sd
    inv = np.asarray(np.linalg.inv(a), dtype=np.float64)
    ssr = yy - 2 * float(beta @ b) + float(beta @ a @ beta)
    if not ssr > 0:
        raise DataError(
            "ols with epsilon: the noisy residual sum of squares is not positive; raise epsilon "
            "or coarsen the model"
        )
    # d beta / d entry: A^-1 (d b - d A beta); the noise of the entries is independent
    jac = np.zeros((p, x.size))
    for e, (i, j) in enumerate(zip(*iu, strict=True)):
        da = np.zeros(p)
        da[i] += beta[j]
        if i != j:
            da[j] += beta[i]
        jac[:, e] = -inv @ da
    jac[:, k : k + p] = inv
    noise_cov = (jac * var) @ jac.T
    scale = ssr / (n - p)
    i0 = [c for c in design.columns].index(()) if design.intercept else -1
    centered = yy - float(b[i0]) ** 2 / n if i0 >= 0 else yy
    figures = {
        "ssr": ssr,
        "centered_tss": max(centered, ssr),
        "uncentered_tss": max(yy, ssr),
        "sum_log_w": 0.0,
        "nobs": n,
        "df_resid": n - p,
        "df_model": p - 1 if design.intercept else p,
        "scale": scale,
        "iterations": 0.0,
        "converged": 1.0,
    }
    cov = inv + noise_cov / scale  # bse = sqrt(diag(scale A^-1 + noise covariance))
    value = pd.DataFrame(np.column_stack([beta, cov]), index=names, columns=["coef", *names])
    suppressed = pd.DataFrame(False, index=names, columns=["coef", *names])
    labels = [f"X'X[{names[i]}, {names[j]}]" for i, j in zip(*iu, strict=True)]
    labels += [f"X'y[{nm}]" for nm in names] + ["y'y", "n"]
    std = pd.Series(np.sqrt(np.diag(noise_cov)), index=names)
    info = {
        "epsilon": comp.dp.epsilon,
        "delta": comp.dp.delta,
        "mechanism": "distributed discrete Gaussian (KLS21), added by every node",
        "noise_std": math.sqrt(comp._variance) / _UNIT,
        "nodes": comp.nodes,
        "std": std,
        "ci95": _Z95 * std,
        "statistics_std": pd.Series(np.sqrt(var), index=labels),
    }
    precision = {f"model/{key}": float(v) for key, v in figures.items()}
    return result_cls("ols", value, suppressed, precision, 1, info)


def _sum_of_want(term: Term, offsets: list[int]) -> _Want:
    """The sum of some entries of ``term`` (a cell, or a margin of cells)."""

    def make(rnd: Round, g: int, _: float) -> _Figure:
        start = _at(rnd, term, g)
        entries = tuple(start + o for o in offsets)
        idx = np.asarray(entries, dtype=np.int64)
        return _Figure(lambda x: float(np.sum(x[idx])), entries, "sum")

    return _Want((term,), make)


def _per_column(cols: tuple[str, ...]) -> Callable[[Any], Any]:
    """A scalar for one column (or ``count(*)``), else a Series by column."""
    if len(cols) <= 1:
        return lambda v: float(v[0])
    return lambda v: pd.Series(list(v), index=list(cols), dtype=v.dtype)


def _frame(index: Any, columns: Any) -> Callable[[Any], pd.DataFrame]:
    def frame(v: Any) -> pd.DataFrame:
        return pd.DataFrame(np.asarray(v).reshape(len(index), len(columns)), index, columns)

    return frame


# --- figures and their error -------------------------------------------------------------------


def _entry(i: int) -> Callable[[Vec], float]:
    return lambda x: float(x[i])


def _sum_fn(i_n: int, i_1: int, centre: float) -> Callable[[Vec], float]:
    return lambda x: float(x[i_1] + centre * x[i_n])


def _mean_fn(i_n: int, i_1: int, centre: float, lo: float, hi: float) -> Callable[[Vec], float]:
    def fn(x: Vec) -> float:
        n = max(float(x[i_n]), 1.0)
        return min(max(centre + float(x[i_1]) / n, lo), hi)

    return fn


def _var_fn(
    i_n: int, i_1: int, i_2: int, ddof: int, cap: float, root: bool
) -> Callable[[Vec], float]:
    def fn(x: Vec) -> float:
        n = max(float(x[i_n]), ddof + 1.0)
        v = (float(x[i_2]) - float(x[i_1]) ** 2 / n) / (n - ddof)
        v = min(max(v, 0.0), cap)
        return math.sqrt(v) if root else v

    return fn


def _cdf(rnd: Round, term: Term, x: Vec) -> tuple[Vec, Vec]:
    """The bin edges and the noisy, monotone cumulative counts at them (0 at the first)."""
    sl = rnd.term_slice(term)
    counts = x[sl][1:-1]  # values are within the bounds: the outer entries hold only noise
    cdf = np.maximum.accumulate(np.concatenate([[0.0], np.cumsum(counts)]))
    return np.asarray(term.edges), np.maximum(cdf, 0.0)


def _quantile_figure(rnd: Round, term: Term, p: float) -> _Figure:
    def fn(x: Vec) -> float:
        edges, cdf = _cdf(rnd, term, x)
        total = cdf[-1]
        if total <= 0:
            return math.nan
        target = p * total
        j = int(np.searchsorted(cdf, target, side="left"))
        if j == 0:
            return float(edges[0])
        j = min(j, len(edges) - 1)
        lo_c, hi_c = cdf[j - 1], cdf[j]
        frac = 0.0 if hi_c <= lo_c else (target - lo_c) / (hi_c - lo_c)
        return float(edges[j - 1] + frac * (edges[j] - edges[j - 1]))

    sl = rnd.term_slice(term)
    return _Figure(fn, tuple(range(sl.start, sl.stop)), "quantile", (term, p))


def _extreme_figure(rnd: Round, term: Term, *, low: bool, sd: float) -> _Figure:
    """describe's min (max): the lower (upper) edge of the first (last) bin at which the noisy
    count cumulated from that end exceeds twice its noise (``sd`` per bin): the first place
    the data is seen, not the bound (which says nothing about the data)."""

    def fn(x: Vec) -> float:
        sl = rnd.term_slice(term)
        counts = x[sl][1:-1]
        run = counts if low else counts[::-1]
        cum = np.cumsum(run)
        noise = 2 * sd * np.sqrt(np.arange(1, run.size + 1))
        hit = np.flatnonzero(cum > noise)
        if hit.size == 0:
            return math.nan
        j = int(hit[0])
        edges = term.edges
        return float(edges[j] if low else edges[len(edges) - 1 - j])

    sl = rnd.term_slice(term)
    return _Figure(fn, tuple(range(sl.start, sl.stop)), "extreme", (term,))


def _figure_std(f: _Figure, x: Vec, var: Vec, value: float) -> float:
    """The standard deviation of a figure's error due to the noise (an accuracy statement)."""
    if not math.isfinite(value):
        return math.nan
    if f.kind == "sum":  # a sum of entries with independent noise
        return math.sqrt(float(np.sum(var[np.asarray(f.entries, dtype=np.int64)])))
    if f.kind == "smooth":
        grad2 = 0.0
        for i in f.entries:
            sd = math.sqrt(var[i])
            h = max(sd, 1e-12)
            up, down = x.copy(), x.copy()
            up[i] += h
            down[i] -= h
            g = (f.fn(up) - f.fn(down)) / (2 * h)
            grad2 += g * g * var[i]
        return math.sqrt(grad2)
    term = f.extra[0]
    edges = np.asarray(term.edges)
    width = float(np.max(np.diff(edges)))
    start = f.entries[0]
    bin_var = float(var[start])
    if f.kind == "extreme":
        return width  # located to a bin
    counts = x[start + 1 : f.entries[-1]]
    j = min(int(np.searchsorted(edges, value, side="right")) - 1, counts.size - 1)
    j = max(j, 0)
    density = max(float(counts[j]), 1.0) / width
    cdf_sd = math.sqrt(bin_var * (j + 1))
    return math.sqrt((cdf_sd / density) ** 2 + width**2 / 12)


def _quantile_layout(wanted: Any, ps: list[float], cols: tuple[str, ...]) -> Callable[[Any], Any]:
    index = pd.Index(ps, dtype="float64")

    def layout(v: Any) -> Any:
        arr = np.asarray(v).reshape(len(ps), len(cols))
        if isinstance(wanted, list):
            if len(cols) == 1:
                return pd.Series(arr[:, 0], index=index, name=cols[0])
            return pd.DataFrame(arr, index=index, columns=list(cols))
        if len(cols) == 1:
            return arr.dtype.type(arr[0, 0]).item()
        return pd.Series(arr[0], index=list(cols), name=ps[0])

    return layout


def share_variance(node_sigma2: Fraction) -> float:
    """The true variance of one node's noise share (``dp.discrete_gaussian_variance``)."""
    return discrete_gaussian_variance(node_sigma2)


def noise_variance(bindings: Mapping[str, bytes]) -> float:
    """The variance of the noise in each encoded entry of a DP total: the sum of the shares the
    contributing nodes declared in their signed session bindings (``{"dp": {"sigma2": "p/q"}}``).

    Raises:
        ProtocolError: a binding without a valid share (naming the node).
    """
    total = 0.0
    for node, raw in sorted(bindings.items()):
        try:
            s2 = Fraction(json.loads(raw)["dp"]["sigma2"])
        except (ValueError, TypeError, KeyError, ZeroDivisionError):
            raise ProtocolError(
                f"node {node} declared no noise share for a differentially private round"
            ) from None
        if s2 <= 0:
            raise ProtocolError(f"node {node} declared a noise share that is not positive")
        total += share_variance(s2)
    if total <= 0:
        raise ProtocolError("a differentially private total without noise shares")
    return total
