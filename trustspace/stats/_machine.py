"""The statistics state machine: plan rounds, take the totals, finish into pandas-equal results.

``start(query, schema, min_group_size)`` returns a Computation; the driver loops::

    while (rnd := comp.next_round()) is not None:
        comp.feed(total_over_nodes(rnd))
    result = comp.result()

Plan (each round is one scan of each node's data):

- Round 0, *scan*: record counts (rows, non-null per column, pairwise non-null) and, when
  sums or bins follow, an octave histogram per column (counts by signed binary exponent).
  The octaves give a public power-of-two bound on the values (for the fixed-point ranges) and
  the first quantile grid, without any min/max being computed.
- Round 1, *sums*: sums per column (pairwise sums for cov/corr) -> means; the first quantile
  grid of GRID_BINS bins over the octave range.
- Round 2, *centred moments*: sums of (x - mean)^p, p <= 4 (cross-products for cov/corr),
  corrected for the rounding of the published mean, as pandas' two-pass formulas do;
  the quantile bins holding the wanted order statistics are refined GRID_BINS-fold.
- Further rounds refine quantile bins until the requested precision.

Columns, pairs and groups whose record count is below ``min_group_size`` are suppressed as
soon as the scan shows it, and no further aggregate is computed for them.

Every figure is read from a round's total by its Term (``Round.view``), never by position, so
a plan can add or reorder terms without misreading the others. The rounds themselves (terms,
order, centres, bins, frac_bits) are what nodes recompute to check a request (``replay``);
``tests/test_stats_rounds.py`` pins them. The quantile search is in ``_quantile``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.errors import ConfigError, EncodingOverflow, ProtocolError
from trustspace.stats._dp import DPComputation, DPSpec
from trustspace.stats._quantile import GRID_BINS, UNKNOWN_SMALL, Quantiles, ValueRange
from trustspace.stats._query import TTEST_AGGS, Query, levels_of
from trustspace.stats._round import (
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    Round,
    Term,
    Totals,
)
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

__all__ = ["Computation", "Result", "replay", "start"]

#: Finest fixed-point scale (Term accepts |frac_bits| <= 1100; float64 ends near 2^-1074).
MAX_FRAC_BITS = 1100

Vec = npt.NDArray[np.float64]
_Gen = Generator[Round, Vec, Any]
#: One round: yields it, is sent its total, returns the total to be read by term.
_Ask = Generator[Round, Vec, Totals]
Pair = tuple[str, str]


@dataclass(frozen=True)
class Result:
    """The released answer of a statistics query.

    Attributes:
        op: the query's statistic.
        value: a float, a pandas Series or a pandas DataFrame (laid out as pandas' own
            method returns it); suppressed figures are NaN.
        suppressed: same shape as ``value`` (bool, Series or DataFrame of bools): True where a
            figure was withheld because it would describe fewer than ``min_group_size`` records.
        precision: absolute precision of the figures found by bin refinement (quantiles,
            describe's min/percentiles/max), keyed ``"column/label"``; for ``glm``/``ols``
            the model's scalar figures (deviance, log-likelihood, nobs, ...), keyed
            ``"model/name"`` (``value`` then holds the coefficients and their unscaled
            covariance; ``stats.GLMResults`` reads both).
        rounds: the number of rounds the computation took.
        dp: for a differentially private answer, its privacy and accuracy: ``epsilon``,
            ``delta``, ``mechanism``, ``noise_std`` (of a count, in records), ``nodes`` (noise
            shares in the total), and ``std`` and ``ci95`` (the standard deviation of each
            figure's error due to the noise and half the width of its 95% interval, laid out
            as ``value``); None for an exact answer.
    """

    op: str
    value: Any
    suppressed: Any
    precision: Mapping[str, float] = field(default_factory=dict)
    rounds: int = 0
    dp: Mapping[str, Any] | None = None

    @property
    def any_suppressed(self) -> bool:
        """True if at least one figure was suppressed."""
        s = self.suppressed
        if isinstance(s, pd.DataFrame | pd.Series):
            return bool(np.asarray(s, dtype=bool).any())
        return bool(s)


def _frac_bits(bound: float, what: str) -> int:
    """Fixed-point fractional bits for a total whose magnitude is at most ``bound``."""
    if not math.isfinite(bound):
        raise EncodingOverflow(
            f"{what}: the values are too large for a fixed-point sum (their powers overflow "
            "float64); rescale the column"
        )
    if bound <= 0:
        return 61
    return min(61 - math.frexp(bound)[1], MAX_FRAC_BITS)


def _octave_range(counts: Vec, column: str) -> ValueRange:
    """A public range holding every value counted in an octave histogram (one octave of margin
    each side), or EncodingOverflow if a value is too large for exact statistics."""
    keys = np.flatnonzero(counts != 0) - OCTAVE_HALF
    if keys.size == 0:
        return ValueRange(0.0, 0.0)
    lo, hi = math.inf, -math.inf
    for key in (int(keys[0]), int(keys[-1])):
        if key == 0:
            a = b = 0.0
        else:
            e = abs(key) - OCTAVE_OFFSET  # 2^e <= |x| < 2^(e+1); one octave of margin each side
            if e > OCTAVE_MAX_EXP:
                raise EncodingOverflow(
                    f"column {column!r}: values of magnitude 2^{OCTAVE_MAX_EXP + 1} or more are "
                    "too large for exact statistics; rescale the column"
                )
            a = 0.0 if e <= OCTAVE_MIN_EXP else math.ldexp(1.0, e - 1)
            b = math.ldexp(1.0, e + 2)
            if key < 0:
                a, b = -b, -a
        lo, hi = min(lo, a), max(hi, b)
    return ValueRange(lo, hi)


def _moments_about(sums: Sequence[float], n: float) -> tuple[float, ...]:
    """Central moment sums M1..Mp from sums S_p of (x - c)^p about a public centre c."""
    d = sums[0] / n
    out = [0.0]
    if len(sums) >= 2:
        out.append(max(sums[1] - n * d * d, 0.0))
    if len(sums) >= 3:
        out.append(sums[2] - 3 * d * sums[1] + 2 * n * d**3)
    if len(sums) >= 4:
        out.append(sums[3] - 4 * d * sums[2] + 6 * d * d * sums[1] - 3 * n * d**4)
    return tuple(out)


def _var(m2: float, n: float, ddof: int) -> float:
    return m2 / (n - ddof) if n - ddof > 0 else math.nan


def _skew(m2: float, m3: float, n: float) -> float:
    if n < 3 or m2 == 0:
        return math.nan
    return float((n * (n - 1) ** 0.5 / (n - 2)) * (m3 / m2**1.5))


def _kurt(m2: float, m4: float, n: float) -> float:
    if n < 4 or m2 == 0:
        return math.nan
    adj = 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))
    num = n * (n + 1) * (n - 1) * m4
    den = (n - 2) * (n - 3) * m2**2
    return float(num / den - adj)


def _percent_label(p: float) -> str:
    try:
        from pandas.io.formats import format as fmt

        return str(fmt.format_percentiles([p])[0])  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - pandas internals moved
        return f"{100 * p:g}%"


def _sorted_levels(levels: Sequence[GroupValue]) -> tuple[GroupValue, ...]:
    """Levels in pandas' order (sorted), or as declared when they do not sort (mixed types)."""
    try:
        return tuple(sorted(levels, key=lambda v: (v,)))
    except TypeError:
        return tuple(levels)


_MOMENT_NEED = {"count": 0, "sum": 1, "mean": 1, "var": 2, "std": 2, "skew": 3, "kurt": 4}
_GROUP_NEED = {"size": 0, "count": 0, "sum": 1, "mean": 1, "var": 2, "std": 2}


@dataclass
class _Figures:
    """The figures the moment plan has gathered per column and column pair, for ``_finish``.

    A column or pair missing from a mapping had nothing computed for it (it was suppressed by
    the scan, or the statistic does not need that figure).
    """

    columns: list[str]
    #: Rows that pass the filter (``count(*)``).
    rows: float = 0.0
    #: Non-null values per column.
    counts: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    #: Central moment sums (M1 = 0, M2, ... up to the power the statistic needs).
    central_moments: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: Rows where both columns are non-null.
    pair_counts: dict[Pair, float] = field(default_factory=dict)
    #: (co-moment sum of a and b, M2 of a, M2 of b) over the pair's complete rows.
    pair_moments: dict[Pair, tuple[float, float, float]] = field(default_factory=dict)
    quantiles: dict[str, Quantiles] = field(default_factory=dict)


class Computation:
    """A pure state machine computing one query from per-round totals (no I/O).

    Use ``start()`` to make one. ``next_round()`` returns the pending Round (the same one until
    it is fed) or None when finished; ``feed(total)`` takes the float64 element-wise sum over
    the nodes of ``Engine.compute(round)`` (decoded); ``result()`` returns the Result.
    """

    def __init__(self, query: Query, schema: TableSchema, min_group_size: int) -> None:
        if isinstance(min_group_size, bool) or not isinstance(min_group_size, int):
            raise ConfigError(f"min_group_size: expected an integer, got {min_group_size!r}")
        if min_group_size < 0:
            raise ConfigError(f"min_group_size: must be >= 0, got {min_group_size}")
        query.check(schema)
        self.query, self.schema, self.k = query, schema, min_group_size
        self.rounds = 0
        self._pending: Round | None = None
        self._result: Result | None = None
        self._gen: _Gen = self._run()
        self._started = False
        self._last: Vec | None = None
        #: a glm/ols query: (the model's records, its parameters) once round 0 is fed (a
        #: node checks ``glm_min_records_per_parameter`` against it)
        self.model_size: tuple[float, int] | None = None

    # --- driver interface -----------------------------------------------------------------
    def next_round(self) -> Round | None:
        """The round every node must compute next, or None when the result is ready."""
        if self._pending is not None or self._result is not None:
            return self._pending
        try:
            if not self._started:
                self._started = True
                self._pending = next(self._gen)
            else:
                assert self._last is not None
                self._pending = self._gen.send(self._last)
        except StopIteration as stop:
            self._result = stop.value
            return None
        return self._pending

    def feed(self, total: npt.ArrayLike, suppressed: Sequence[int] = ()) -> None:
        """Give the element-wise sum over all nodes of the pending round's local vectors.

        Args:
            total: the decoded float64 total (``Round.decode`` of the secure sum, or the
                decrypted Paillier total).
            suppressed: indices of entries withheld upstream because their governing record
                count was in (0, min_group_size) (the Paillier path zeroes them); the machine
                treats such a count as "at least 1, fewer than min_group_size" and never
                releases anything derived from it.

        Raises:
            ProtocolError: no round is pending, or the total has the wrong shape, is not
                finite, or holds a negative or fractional record count.
        """
        rnd = self._pending
        if rnd is None:
            raise ProtocolError("feed(): no round is pending; call next_round() first")
        try:
            arr = rnd.check_vector(total, "total").copy()
        except ValueError as e:
            raise ProtocolError(f"feed(): {e}") from None
        mask = rnd.count_mask
        counts = arr[mask]
        snapped = np.round(counts)  # a float path (Paillier decoding) may leave ~1e-9 residue
        if np.any(snapped < 0) or np.any(np.abs(counts - snapped) > 1e-6):
            raise ProtocolError(
                f"feed(): round {rnd.index} total holds negative or fractional record counts"
            )
        arr[mask] = snapped
        idx = np.asarray(list(suppressed), dtype=np.int64)
        if idx.size:
            if idx.min() < 0 or idx.max() >= rnd.size:
                raise ProtocolError(f"feed(): suppressed index out of range 0..{rnd.size - 1}")
            sel = np.zeros(rnd.size, dtype=bool)
            sel[idx] = True
            arr[sel & mask] = UNKNOWN_SMALL
            arr[sel & ~mask] = math.nan
        self._last, self._pending = arr, None
        self.rounds += 1

    def result(self) -> Result:
        """The finished Result; ProtocolError if rounds are still pending."""
        if self._result is None:
            self.next_round()
        if self._result is None:
            raise ProtocolError("result(): the computation needs more rounds (see next_round())")
        return self._result

    # --- helpers --------------------------------------------------------------------------
    def _ask(
        self,
        terms: Sequence[Term],
        group_column: str | None = None,
        group_values: tuple[GroupValue, ...] = (),
    ) -> _Ask:
        """Ask every node for ``terms`` (one round); return the total, to be read by term.

        A term asked twice is asked once: the totals are read by term, so every reader of it
        gets the same entries (``Round`` refuses a repeated term).
        """
        rnd = Round(
            self.query.dataset,
            self.query.where,
            tuple(dict.fromkeys(terms)),
            group_column,
            group_values,
            index=self.rounds,
        )
        total = yield rnd
        return rnd.view(total)

    def _ask_with_grids(self, terms: Sequence[Term], quantiles: Mapping[str, Quantiles]) -> _Ask:
        """``_ask`` for ``terms`` followed by the grids the quantile searches need next."""
        grids = [
            Term.grid(c, start, width, search.bins)
            for c, search in quantiles.items()
            for start, width in search.probes()
        ]
        return (yield from self._ask([*terms, *grids]))

    @staticmethod
    def _absorb(quantiles: Mapping[str, Quantiles], totals: Totals) -> None:
        """Give each quantile search the totals of the grids it asked for."""
        for c, search in quantiles.items():
            grids = {
                (start, width): totals[Term.grid(c, start, width, search.bins)]
                for start, width in search.probes()
            }
            search.absorb(grids)

    def _safe(self, count: float) -> bool:
        """True if a figure over ``count`` records may be released."""
        return count >= self.k

    def _result_of(
        self, value: Any, suppressed: Any, precision: Mapping[str, float] | None = None
    ) -> Result:
        return Result(self.query.op, value, suppressed, dict(precision or {}), self.rounds)

    # --- plans ----------------------------------------------------------------------------
    def _run(self) -> _Gen:
        op = self.query.op
        if op in ("glm", "ols"):
            from trustspace.stats._glm import glm_plan

            return (yield from glm_plan(self))
        if op == "histogram":
            return (yield from self._histogram())
        if op in ("group_by", "ttest"):
            return (yield from self._group_by())
        if op == "crosstab":
            return (yield from self._crosstab())
        if op == "marginals":
            return (yield from self._marginals())
        if op == "woe_iv":
            from trustspace.stats._woe import woe_plan

            return (yield from woe_plan(self))
        return (yield from self._moments())

    def _crosstab(self) -> _Gen:
        """A two-way table of counts in one round (``Term.cells``), laid out like
        ``pd.crosstab(df[rows], df[cols], margins=...)``.

        Disclosure control: a cell under k is suppressed (NaN); a margin is released only if
        every cell it adds up is (a row margin minus the row's other cells would give a
        suppressed cell back), the grand total only if no cell is suppressed. Every released
        margin is then a sum of released cells: nothing suppressed can be recovered from the
        table by differencing (docs/security.md, "Contingency tables").
        """
        q = self.query
        a, b = tuple(q.columns)
        values = q.params.get("values", {})
        la = _sorted_levels(levels_of(self.schema, a, values.get(a), "values", "crosstab"))
        lb = _sorted_levels(levels_of(self.schema, b, values.get(b), "values", "crosstab"))
        term = Term.cells(a, b, la, lb)
        totals = yield from self._ask([term])
        cells = totals[term].reshape(len(la), len(lb)).copy()
        small = ~(cells >= self.k) | (cells < 0)  # UNKNOWN_SMALL: withheld upstream
        cells[small] = math.nan
        table, mask = cells, small
        if q.params.get("margins", False):
            rows_ok, cols_ok = ~small.any(axis=1), ~small.any(axis=0)
            row_sums = np.where(rows_ok, np.nansum(cells, axis=1), math.nan)
            col_sums = np.where(cols_ok, np.nansum(cells, axis=0), math.nan)
            grand = float(np.nansum(cells)) if not small.any() else math.nan
            table = np.block([[cells, row_sums[:, None]], [col_sums[None, :], np.array([[grand]])]])
            mask = np.isnan(table)
            la, lb = (*la, "All"), (*lb, "All")
        index = pd.Index(list(la), name=a)
        columns = pd.Index(list(lb), name=b)
        return self._result_of(
            pd.DataFrame(table, index=index, columns=columns),
            pd.DataFrame(mask, index=index, columns=columns),
        )

    def _marginals(self) -> _Gen:
        """The listed 1- to 3-way marginals in one round (one ``marginal`` term each): a
        Series of counts indexed by (marginal, cell), the marginal named by its columns joined
        with "|", the cell row-major (``marginal_index`` turns it into labels). A cell under
        k is suppressed (NaN), as a crosstab's."""
        from trustspace.stats._query import marginal_terms

        terms = marginal_terms(self.query, self.schema)
        totals = yield from self._ask(terms)
        values, keys = [], []
        for t in terms:
            cells = totals[t].copy()
            values.append(cells)
            keys += [("|".join(t.columns), i) for i in range(t.size)]
        counts = np.concatenate(values)
        small = ~(counts >= self.k) | (counts < 0)
        counts[small] = math.nan
        index = pd.MultiIndex.from_tuples(keys, names=["marginal", "cell"])
        return self._result_of(
            pd.Series(counts, index=index, name="count"),
            pd.Series(small, index=index, name="count"),
        )

    def _histogram(self) -> _Gen:
        q = self.query
        col = q.columns[0]
        bins = q.params["bins"]
        if isinstance(bins, int):
            lo, hi = q.params["range"]
            edges = np.linspace(float(lo), float(hi), bins + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
        term = Term.bins(col, edges.tolist())
        totals = yield from self._ask([term])
        counts = totals[term][1:-1].copy()  # without the under- and overflow entries
        suppressed = counts < self.k
        counts[suppressed] = np.nan
        index = pd.IntervalIndex.from_breaks(edges, closed="left", name=col)
        return self._result_of(
            pd.Series(counts, index=index, name="count"),
            pd.Series(suppressed, index=index, name="count"),
        )

    def _moments(self) -> _Gen:
        q, op, k = self.query, self.query.op, self.k
        cols = list(q.columns)
        need: dict[str, int] = {}
        pairs: list[Pair] = []
        probabilities: dict[str, list[float]] = {}  # the quantiles wanted, per column
        if op in _MOMENT_NEED:
            need = dict.fromkeys(cols, _MOMENT_NEED[op])
        elif op in ("cov", "corr"):
            need = dict.fromkeys(cols, 2)
            pairs = [(a, b) for i, a in enumerate(cols) for b in cols[i + 1 :]]
        elif op == "quantile":
            need = dict.fromkeys(cols, 0)
            wanted = q.params["q"]
            probabilities = {
                c: list(wanted) if isinstance(wanted, list) else [wanted] for c in cols
            }
        elif op == "describe":
            need = dict.fromkeys(cols, 2)
            percentiles = list(q.params.get("percentiles", [0.25, 0.5, 0.75]))
            if 0.5 not in percentiles:
                percentiles.append(0.5)
            percentiles = sorted(set(percentiles))
            probabilities = {c: [0.0, *percentiles, 1.0] for c in cols}
        ranged = [c for c in cols if need.get(c, 0) >= 1 or c in probabilities]
        fig = _Figures(cols)

        # Round 0: record counts and octave ranges.
        octave_cols = [c for c in ranged if c not in self.schema.bounds]  # bounds: no octaves
        scan = yield from self._ask(
            [
                Term.rows(),
                *(Term.count(c) for c in cols),
                *(Term.octaves(c) for c in octave_cols),
                *(Term.count(a, b) for a, b in pairs),
            ]
        )
        fig.rows = scan.scalar(Term.rows())
        fig.counts = {c: scan.scalar(Term.count(c)) for c in cols}
        ranges = {c: _octave_range(scan[Term.octaves(c)], c) for c in octave_cols}
        ranges.update({c: ValueRange(*self.schema.bounds[c]) for c in ranged if c not in ranges})
        fig.pair_counts = {p: scan.scalar(Term.count(*p)) for p in pairs}
        counts, pair_counts = fig.counts, fig.pair_counts
        live = {c for c in cols if counts[c] > 0 and self._safe(counts[c])}
        live_pairs = [
            p
            for p in pairs
            if pair_counts[p] > 0 and self._safe(pair_counts[p]) and p[0] in live and p[1] in live
        ]

        precision = q.params.get("precision")
        bins = int(q.params.get("grid_bins", GRID_BINS))
        quantiles = fig.quantiles = {
            c: Quantiles(c, int(counts[c]), probabilities[c], ranges[c], precision, k, bins)
            for c in probabilities
            if c in live
        }

        # Round 1: sums -> means (and first quantile grids).
        summed = [c for c in cols if c in live and need.get(c, 0) >= 1]
        pair_means: dict[Pair, tuple[float, float]] = {}
        if summed or live_pairs or quantiles:
            sum_terms = {
                c: Term.moment([c], [1], [0.0], _frac_bits(counts[c] * ranges[c].maxabs, c))
                for c in summed
            }
            pair_sum_terms = {
                (a, b): tuple(
                    Term.moment(
                        [a, b],
                        powers,
                        [0.0, 0.0],
                        _frac_bits(pair_counts[(a, b)] * ranges[c].maxabs, c),
                    )
                    for powers, c in (((1, 0), a), ((0, 1), b))
                )
                for a, b in live_pairs
            }
            totals = yield from self._ask_with_grids(
                [*sum_terms.values(), *(t for ts in pair_sum_terms.values() for t in ts)],
                quantiles,
            )
            for c, term in sum_terms.items():
                fig.sums[c] = totals.scalar(term)
                fig.means[c] = fig.sums[c] / counts[c]
            for pair, (sum_a, sum_b) in pair_sum_terms.items():
                m = pair_counts[pair]
                pair_means[pair] = (totals.scalar(sum_a) / m, totals.scalar(sum_b) / m)
            self._absorb(quantiles, totals)

        # Round 2: centred moments (and quantile refinement).
        centred = [c for c in summed if need[c] >= 2]
        if centred or live_pairs:
            centred_terms = {
                c: [
                    Term.moment(
                        [c],
                        [power],
                        [fig.means[c]],
                        _frac_bits(counts[c] * ranges[c].span ** power, c),
                    )
                    for power in range(1, need[c] + 1)
                ]
                for c in centred
            }
            pair_terms: dict[Pair, dict[str, Term]] = {}
            for a, b in live_pairs:
                centres = list(pair_means[(a, b)])
                m, span_a, span_b = pair_counts[(a, b)], ranges[a].span, ranges[b].span
                pair_terms[(a, b)] = {
                    name: Term.moment([a, b], powers, centres, _frac_bits(m * bound, a))
                    for name, powers, bound in (
                        ("a", (1, 0), span_a),
                        ("b", (0, 1), span_b),
                        ("aa", (2, 0), span_a * span_a),
                        ("bb", (0, 2), span_b * span_b),
                        ("ab", (1, 1), span_a * span_b),
                    )
                }
            totals = yield from self._ask_with_grids(
                [
                    *(t for ts in centred_terms.values() for t in ts),
                    *(t for ts in pair_terms.values() for t in ts.values()),
                ],
                quantiles,
            )
            for c, terms in centred_terms.items():
                fig.central_moments[c] = _moments_about(
                    [totals.scalar(t) for t in terms], counts[c]
                )
            for pair, terms_by_name in pair_terms.items():
                s = {name: totals.scalar(t) for name, t in terms_by_name.items()}
                m = pair_counts[pair]
                da, db = s["a"] / m, s["b"] / m
                fig.pair_moments[pair] = (
                    s["ab"] - m * da * db,
                    max(s["aa"] - m * da * da, 0.0),
                    max(s["bb"] - m * db * db, 0.0),
                )
            self._absorb(quantiles, totals)

        # Further rounds: refine quantile bins until the requested precision.
        while any(search.probes() for search in quantiles.values()):
            totals = yield from self._ask_with_grids([], quantiles)
            self._absorb(quantiles, totals)

        return self._finish(fig)

    def _finish(self, fig: _Figures) -> Result:
        op, cols, counts, nan = self.query.op, fig.columns, fig.counts, math.nan
        ddof = int(self.query.params.get("ddof", 1))
        moments = fig.central_moments

        def scalar_or_series(values: dict[str, float]) -> Result:
            suppressed = {c: bool(not self._safe(counts[c])) for c in cols}
            vals = {c: (nan if suppressed[c] else float(v)) for c, v in values.items()}
            if len(cols) == 1:
                return self._result_of(vals[cols[0]], suppressed[cols[0]])
            return self._result_of(
                pd.Series(vals, dtype="float64"), pd.Series(suppressed, dtype=bool)
            )

        if op == "count":
            if not cols:
                withheld = bool(not self._safe(fig.rows))
                return self._result_of(nan if withheld else float(fig.rows), withheld)
            return scalar_or_series({c: float(counts[c]) for c in cols})
        if op == "sum":
            return scalar_or_series({c: fig.sums.get(c, 0.0) for c in cols})
        if op == "mean":
            return scalar_or_series({c: fig.means.get(c, nan) for c in cols})
        if op in ("var", "std"):
            v = {c: _var(moments[c][1], counts[c], ddof) if c in moments else nan for c in cols}
            if op == "std":
                v = {c: math.sqrt(x) if x == x else nan for c, x in v.items()}
            return scalar_or_series(v)
        if op == "skew":
            return scalar_or_series(
                {
                    c: _skew(moments[c][1], moments[c][2], counts[c]) if c in moments else nan
                    for c in cols
                }
            )
        if op == "kurt":
            return scalar_or_series(
                {
                    c: _kurt(moments[c][1], moments[c][3], counts[c]) if c in moments else nan
                    for c in cols
                }
            )
        if op in ("cov", "corr"):
            return self._matrix(op, fig, ddof)
        if op == "quantile":
            return self._quantile(fig)
        return self._describe(fig)

    def _matrix(self, op: str, fig: _Figures, ddof: int) -> Result:
        cols = fig.columns
        pos = {c: i for i, c in enumerate(cols)}
        mat = np.full((len(cols), len(cols)), math.nan)
        suppressed = np.zeros((len(cols), len(cols)), dtype=bool)
        for c, i in pos.items():
            suppressed[i, i] = not self._safe(fig.counts[c])
            if c in fig.central_moments:
                m2 = fig.central_moments[c][1]
                if op == "cov":
                    mat[i, i] = _var(m2, fig.counts[c], ddof)
                else:
                    mat[i, i] = 1.0 if m2 > 0 else math.nan
        for (a, b), cnt in fig.pair_counts.items():
            i, j = pos[a], pos[b]
            suppressed[i, j] = suppressed[j, i] = not self._safe(cnt)
            if (a, b) in fig.pair_moments:
                sab, saa, sbb = fig.pair_moments[(a, b)]
                if op == "cov":
                    val = sab / (cnt - ddof) if cnt - ddof > 0 else math.nan
                else:
                    den = math.sqrt(saa * sbb)
                    val = max(-1.0, min(1.0, sab / den)) if den > 0 else math.nan
                mat[i, j] = mat[j, i] = val
        return self._result_of(
            pd.DataFrame(mat, index=cols, columns=cols),
            pd.DataFrame(suppressed, index=cols, columns=cols),
        )

    def _quantile(self, fig: _Figures) -> Result:
        cols = fig.columns
        wanted = self.query.params["q"]
        probabilities = [float(x) for x in wanted] if isinstance(wanted, list) else [float(wanted)]
        vals = np.full((len(probabilities), len(cols)), math.nan)
        suppressed = np.zeros((len(probabilities), len(cols)), dtype=bool)
        prec: dict[str, float] = {}
        for j, c in enumerate(cols):
            suppressed[:, j] = not self._safe(fig.counts[c])
            if c in fig.quantiles:
                for i, p in enumerate(probabilities):
                    vals[i, j], prec[f"{c}/{p:g}"] = fig.quantiles[c].estimate(p)
        index = pd.Index(probabilities, dtype="float64")
        if isinstance(wanted, list):
            if len(cols) == 1:
                return self._result_of(
                    pd.Series(vals[:, 0], index=index, name=cols[0]),
                    pd.Series(suppressed[:, 0], index=index, name=cols[0]),
                    prec,
                )
            return self._result_of(
                pd.DataFrame(vals, index=index, columns=cols),
                pd.DataFrame(suppressed, index=index, columns=cols),
                prec,
            )
        if len(cols) == 1:
            return self._result_of(float(vals[0, 0]), bool(suppressed[0, 0]), prec)
        return self._result_of(
            pd.Series(vals[0], index=cols, name=probabilities[0]),
            pd.Series(suppressed[0], index=cols, name=probabilities[0]),
            prec,
        )

    def _describe(self, fig: _Figures) -> Result:
        cols = fig.columns
        percentiles = sorted({*self.query.params.get("percentiles", [0.25, 0.5, 0.75]), 0.5})
        labels = ["count", "mean", "std", "min", *[_percent_label(p) for p in percentiles], "max"]
        vals = np.full((len(labels), len(cols)), math.nan)
        suppressed = np.zeros((len(labels), len(cols)), dtype=bool)
        prec: dict[str, float] = {}
        for j, c in enumerate(cols):
            if not self._safe(fig.counts[c]):
                suppressed[:, j] = True
                continue
            vals[0, j] = fig.counts[c]
            vals[1, j] = fig.means.get(c, math.nan)
            if c in fig.central_moments:
                var = _var(fig.central_moments[c][1], fig.counts[c], 1)
                vals[2, j] = math.sqrt(var) if var == var else math.nan
            if c in fig.quantiles:
                for i, p in enumerate([0.0, *percentiles, 1.0]):
                    vals[3 + i, j], prec[f"{c}/{labels[3 + i]}"] = fig.quantiles[c].estimate(p)
        return self._result_of(
            pd.DataFrame(vals, index=labels, columns=cols),
            pd.DataFrame(suppressed, index=labels, columns=cols),
            prec,
        )

    def _group_by(self) -> _Gen:
        q, k = self.query, self.k
        by: str = q.params["by"]
        if q.op == "ttest":  # a t-test's figures: count, mean and variance of the two groups
            agg = {q.columns[0]: list(TTEST_AGGS)}
        else:
            agg = {c: list(v) for c, v in q.params["agg"].items()}
        if "values" in q.params:
            values = tuple(q.params["values"])
        elif by in self.schema.domains:
            values = tuple(self.schema.domains[by])
        else:
            values = (False, True)
        if self.schema.columns[by] is ColumnType.BOOL and not all(
            isinstance(v, bool) for v in values
        ):
            raise ValueError(f"query 'params.values': group column {by!r} is bool; list true/false")
        cols = list(agg)
        need = {c: max(_GROUP_NEED[f] for f in fs) for c, fs in agg.items()}
        ranged = [c for c in cols if need[c] >= 1]
        ranges: dict[str, ValueRange] = {}
        counts_all: dict[str, float] = {}  # non-null values per column over all groups
        if ranged:  # ungrouped scan: public value ranges for the fixed-point bounds
            octave_cols = [c for c in ranged if c not in self.schema.bounds]
            scan = yield from self._ask(
                [*(Term.count(c) for c in ranged), *(Term.octaves(c) for c in octave_cols)]
            )
            counts_all = {c: scan.scalar(Term.count(c)) for c in ranged}
            ranges = {c: _octave_range(scan[Term.octaves(c)], c) for c in octave_cols}
            ranges.update(
                {c: ValueRange(*self.schema.bounds[c]) for c in ranged if c not in ranges}
            )
        sum_terms = {
            c: Term.moment([c], [1], [0.0], _frac_bits(counts_all[c] * ranges[c].maxabs, c))
            for c in ranged
        }
        totals = yield from self._ask(
            [Term.rows(), *(Term.count(c) for c in cols), *sum_terms.values()], by, values
        )
        # per group block (the last one: the values not listed)
        size = totals.per_group(Term.rows())
        group_counts = {c: totals.per_group(Term.count(c)) for c in cols}
        group_sums = {c: totals.per_group(t) for c, t in sum_terms.items()}
        group_m2: dict[str, Vec] = {}
        centred = [c for c in ranged if need[c] >= 2]
        if centred:
            centred_terms: dict[str, tuple[Term, Term]] = {}
            for c in centred:
                cnt, s1 = group_counts[c], group_sums[c]
                known = (cnt > 0) & np.isfinite(s1)  # skip groups withheld upstream
                n_known = float(cnt[known].sum())
                centre = float(s1[known].sum()) / n_known if n_known > 0 else 0.0
                first, second = (
                    Term.moment(
                        [c], [p], [centre], _frac_bits(counts_all[c] * ranges[c].span ** p, c)
                    )
                    for p in (1, 2)
                )
                centred_terms[c] = (first, second)
            totals = yield from self._ask(
                [t for pair in centred_terms.values() for t in pair], by, values
            )
            for c, (first, second) in centred_terms.items():
                cnt = group_counts[c]
                sa, saa = totals.per_group(first), totals.per_group(second)
                with np.errstate(divide="ignore", invalid="ignore"):
                    d = np.where(cnt > 0, sa / np.where(cnt > 0, cnt, 1), 0.0)
                group_m2[c] = np.maximum(saa - cnt * d * d, 0.0)
        # Assemble like df.groupby(by).agg({...}): sorted group values, MultiIndex columns.
        order = list(range(len(values)))
        with contextlib.suppress(TypeError):  # mixed types: keep the declared order
            order.sort(key=lambda i: (values[i],))
        if k == 0:
            order = [i for i in order if size[i] > 0]
        index = pd.Index([values[i] for i in order], name=by)
        pairs = [(c, f) for c in cols for f in agg[c]]
        vals = np.full((len(order), len(pairs)), math.nan)
        suppressed = np.zeros((len(order), len(pairs)), dtype=bool)
        for row, i in enumerate(order):
            group_ok = self._safe(size[i])
            for col, (c, f) in enumerate(pairs):
                nc = group_counts[c][i]
                ok = group_ok and (f == "size" or self._safe(nc))
                suppressed[row, col] = not ok
                if not ok:
                    continue
                if f == "size":
                    val = size[i]
                elif f == "count":
                    val = nc
                elif f == "sum":
                    val = group_sums[c][i]
                elif f == "mean":
                    val = group_sums[c][i] / nc if nc > 0 else math.nan
                else:
                    var = _var(group_m2[c][i], nc, 1)
                    val = math.sqrt(var) if f == "std" and var == var else var
                vals[row, col] = val
        columns = pd.MultiIndex.from_tuples(pairs)
        table = pd.DataFrame(vals, index=index, columns=columns)
        mask = pd.DataFrame(suppressed, index=index, columns=columns)
        return self._result_of(table, mask)


@overload
def start(
    query: Query, schema: TableSchema, min_group_size: int, dp: None = None
) -> Computation: ...


@overload
def start(
    query: Query, schema: TableSchema, min_group_size: int, dp: Mapping[str, float] | DPSpec
) -> Computation | DPComputation: ...


def start(
    query: Query,
    schema: TableSchema,
    min_group_size: int,
    dp: Mapping[str, float] | DPSpec | None = None,
) -> Computation | DPComputation:
    """Start computing ``query`` over a dataset described by ``schema``.

    Args:
        query: the statistic to compute.
        schema: the dataset's public schema (``Engine.schema(name)`` on any node).
        min_group_size: the strictest node's threshold: a figure over fewer records is
            suppressed (0 disables disclosure control, for tests on public data).
        dp: ``{epsilon, delta}`` for a differentially private answer (``stats._dp``: one
            public round, noise added by the nodes, nothing suppressed); None for exact.
            Only a DP query may give ``params.bounds`` (the nodes clamp to them).

    Raises:
        ConfigError: the query does not fit the schema (names the column), or a DP query
            that DP does not support or whose columns have no public bounds.
    """
    spec = DPSpec.of(dp)
    if spec is not None:
        return DPComputation(query, schema, spec)
    if "bounds" in query.params:
        raise ConfigError(
            "query 'params.bounds': bounds in a query clamp the values of a differentially "
            "private query; pass epsilon=, or declare the dataset's bounds (which an exact "
            "answer uses to skip its range-finding round)"
        )
    return Computation(query, schema, min_group_size)


def replay(
    query: Query,
    schema: TableSchema,
    min_group_size: int,
    totals: Sequence[npt.ArrayLike],
    suppressed: Sequence[Sequence[int]] = (),
) -> Round | None:
    """The round an honest driver asks for after feeding ``totals`` (None if finished).

    The state machine is deterministic, so a node that is given the earlier rounds' totals
    can check that a requested Round is exactly the one the query calls for (same terms,
    centres, bins, group values), rather than one crafted to isolate records. It cannot
    check the totals themselves; see docs/security.md (federated-statistics).

    >>> schema = TableSchema({"x": "float"})
    >>> first = replay(Query("mean", "d", "x"), schema, 0, [])
    >>> [t.kind for t in first.terms]
    ['moment', 'moment', 'octaves']
    """
    comp = start(query, schema, min_group_size)
    for i, total in enumerate(totals):
        if comp.next_round() is None:
            raise ProtocolError(f"replay: the computation finished after {i} rounds")
        comp.feed(total, suppressed[i] if i < len(suppressed) else ())
    return comp.next_round()
