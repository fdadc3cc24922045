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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.errors import ConfigError, EncodingOverflow, ProtocolError
from trustspace.stats._query import Query
from trustspace.stats._round import (
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    Round,
    Term,
)
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

__all__ = ["GRID_BINS", "Computation", "Result", "replay", "start"]

#: Bins per quantile grid: each refinement narrows a bin 2^10-fold, so the default precision
#: (DEFAULT_REFINEMENTS more grids after the first) is 2^-30 of the data's octave range.
#: Queries may choose another power of two (``params["grid_bins"]``): fewer bins mean shorter
#: vectors (less secure-aggregation traffic; grids are record counts, which the Paillier path
#: does not encrypt) but more rounds to reach the same precision.
GRID_BINS = 1024
DEFAULT_REFINEMENTS = 2
#: Default quantile precision, relative to the first grid's span: 2^-30.
DEFAULT_RELATIVE_PRECISION_BITS = 10 * (1 + DEFAULT_REFINEMENTS)
#: Finest fixed-point scale (Term accepts |frac_bits| <= 1100; float64 ends near 2^-1074).
MAX_FRAC_BITS = 1100
#: Smallest bin width refined further (well above float64's subnormal range).
_TINY = 2.0**-1000
#: Marks a record count withheld upstream (in 1..min_group_size-1, value unknown).
UNKNOWN_SMALL = -1.0

Vec = npt.NDArray[np.float64]
_Gen = Generator[Round, Vec, Any]


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
            describe's min/percentiles/max), keyed ``"column/label"``.
        rounds: the number of rounds the computation took.
    """

    op: str
    value: Any
    suppressed: Any
    precision: Mapping[str, float] = field(default_factory=dict)
    rounds: int = 0

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


@dataclass
class _Range:
    """A public range [lo, hi] holding every non-null value, from the octave histogram."""

    lo: float
    hi: float

    @property
    def span(self) -> float:
        return self.hi - self.lo

    @property
    def maxabs(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _octave_range(counts: Vec, column: str) -> _Range:
    keys = np.flatnonzero(counts != 0) - OCTAVE_HALF
    if keys.size == 0:
        return _Range(0.0, 0.0)
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
    return _Range(lo, hi)


@dataclass
class _Target:
    """One order statistic (0-based rank) being located by bin refinement."""

    rank: int
    value: float
    width: float
    probe: tuple[float, float] | None  # (start, width) of the next grid, or None when done


def _locate(counts: Vec, rank: int, n: int, k: int) -> int | None:
    """The bin (0-based, without the under/overflow entries) certainly holding order
    statistic ``rank``, if it holds at least ``k`` records; else None.

    ``counts`` is [below, bins..., above]; an UNKNOWN_SMALL entry is a count withheld upstream
    (1..k-1). The number of records before each bin is bounded from the bottom (prefix sums)
    and from the top (n minus suffix sums); a bin is chosen only if every consistent
    assignment puts the rank inside it.
    """
    unknown = counts == UNKNOWN_SMALL
    lo = np.where(unknown, 1.0, counts)
    hi = np.where(unknown, float(max(k - 1, 1)), counts)
    before_lo = np.concatenate([[0.0], np.cumsum(lo)])[:-1]
    before_hi = np.concatenate([[0.0], np.cumsum(hi)])[:-1]
    after_lo = n - (np.cumsum(hi[::-1])[::-1])  # records before entry j, at least
    after_hi = n - (np.cumsum(lo[::-1])[::-1])
    b_lo = np.maximum(before_lo, after_lo)
    b_hi = np.minimum(before_hi, after_hi)
    inside = (~unknown) & (b_hi <= rank) & (rank < b_lo + lo) & (lo >= k)
    inside[0] = inside[-1] = False  # below/above the grid: not a bin
    hits = np.flatnonzero(inside)
    return int(hits[0]) - 1 if hits.size else None


def _window(counts: Vec, rank: int, k: int) -> tuple[int, int] | None:
    """The narrowest run of adjacent bins (first, last; 0-based, without the under/overflow
    entries) around the bin holding order statistic ``rank`` that holds at least ``k`` records,
    grown one bin at a time towards the fuller neighbour; None if the grid holds fewer than
    ``k`` records or has withheld (UNKNOWN_SMALL) entries.

    Used where the rank's own bin is too small to release: the run's lower edge is released
    instead, with the run's width as the precision, so the figure still describes >= k records
    (e.g. a ``max`` becomes the lower edge of the top bins holding k records).
    """
    if bool((counts == UNKNOWN_SMALL).any()):
        return None
    c = np.asarray(counts[1:-1], dtype=np.float64)
    before = float(counts[0]) + np.concatenate([[0.0], np.cumsum(c)])
    hits = np.flatnonzero((before[:-1] <= rank) & (rank < before[1:]))
    if hits.size == 0 or c.sum() < k:
        return None
    i0 = i1 = int(hits[0])
    total = c[i0]
    while total < k:
        left = c[i0 - 1] if i0 > 0 else -1.0
        right = c[i1 + 1] if i1 + 1 < c.size else -1.0
        if right > left:
            i1 += 1
            total += c[i1]
        else:
            i0 -= 1
            total += c[i0]
    return i0, i1


class _Quantiles:
    """Locates order statistics of one column by refining histogram bins.

    Disclosure: a bin is only refined (and its edge only released) while it holds at least
    ``k`` records; a target whose bin would hold fewer takes the narrowest run of bins around
    it that holds ``k`` (``_window``) if that is narrower than its last safe bin, and stops;
    its precision is the width of what it released.
    """

    def __init__(
        self,
        column: str,
        n: int,
        qs: Sequence[float],
        rng: _Range,
        eps: float | None,
        k: int,
        bins: int = GRID_BINS,
    ) -> None:
        self.column, self.n, self.qs, self.k, self.bins = column, n, list(qs), max(k, 1), bins
        span = rng.span if rng.span > 0 else 1.0
        m = math.frexp(span / bins)[1]
        while True:
            w = math.ldexp(1.0, m)
            a = math.floor(rng.lo / w) * w
            if a + bins * w > rng.hi:
                break
            m += 1
        default = math.ldexp(bins * w, -DEFAULT_RELATIVE_PRECISION_BITS)
        self.eps = eps if eps is not None else default
        self.targets: dict[int, _Target] = {}
        for q in self.qs:
            h = (n - 1) * q
            for r in {math.floor(h), min(math.floor(h) + 1, n - 1)}:
                self.targets.setdefault(r, _Target(r, a, bins * w, (a, w)))

    def probes(self) -> list[tuple[float, float]]:
        return list(dict.fromkeys(t.probe for t in self.targets.values() if t.probe is not None))

    def absorb(self, grids: Mapping[tuple[float, float], Vec]) -> None:
        for t in self.targets.values():
            if t.probe is None:
                continue
            a, w = t.probe
            t.probe = None
            i = _locate(grids[(a, w)], t.rank, self.n, self.k)
            if i is None:
                # the rank's finer bin would describe fewer than k records: release the
                # narrowest run of bins around it that holds k, if narrower than what we have
                run = _window(grids[(a, w)], t.rank, self.k)
                if run is not None and (run[1] - run[0] + 1) * w < t.width:
                    t.value, t.width = a + run[0] * w, (run[1] - run[0] + 1) * w
                continue
            t.value, t.width = a + i * w, w
            # Stop at the requested precision, or where float64 cannot split the bin further.
            finest = self.bins * max(math.ulp(t.value), math.ulp(t.value + w), _TINY)
            if w > self.eps and w > finest:
                t.probe = (t.value, w / self.bins)

    def estimate(self, q: float) -> tuple[float, float]:
        """(value, absolute precision) of quantile q with pandas' linear interpolation."""
        h = (self.n - 1) * q
        lo = self.targets[math.floor(h)]
        hi = self.targets[min(math.floor(h) + 1, self.n - 1)]
        frac = h - math.floor(h)
        value = lo.value + frac * (hi.value - lo.value)
        return value, max(lo.width, hi.width if frac > 0 else 0.0)


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


_MOMENT_NEED = {"count": 0, "sum": 1, "mean": 1, "var": 2, "std": 2, "skew": 3, "kurt": 4}
_GROUP_NEED = {"size": 0, "count": 0, "sum": 1, "mean": 1, "var": 2, "std": 2}


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
    ) -> _Gen:
        rnd = Round(
            self.query.dataset,
            self.query.where,
            tuple(terms),
            group_column,
            group_values,
            index=self.rounds,
        )
        total = yield rnd
        return total

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
        if op == "histogram":
            return (yield from self._histogram())
        if op == "group_by":
            return (yield from self._group_by())
        return (yield from self._moments())

    def _histogram(self) -> _Gen:
        q = self.query
        col = q.columns[0]
        bins = q.params["bins"]
        if isinstance(bins, int):
            lo, hi = q.params["range"]
            edges = np.linspace(float(lo), float(hi), bins + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
        total = yield from self._ask([Term.bins(col, edges.tolist())])
        counts = total[1:-1].copy()
        sup = counts < self.k
        counts[sup] = np.nan
        index = pd.IntervalIndex.from_breaks(edges, closed="left", name=col)
        return self._result_of(
            pd.Series(counts, index=index, name="count"), pd.Series(sup, index=index, name="count")
        )

    def _moments(self) -> _Gen:
        q, op, k = self.query, self.query.op, self.k
        cols = list(q.columns)
        need: dict[str, int] = {}
        pairs: list[tuple[str, str]] = []
        quant: dict[str, list[float]] = {}
        if op in _MOMENT_NEED:
            need = dict.fromkeys(cols, _MOMENT_NEED[op])
        elif op in ("cov", "corr"):
            need = dict.fromkeys(cols, 2)
            pairs = [(a, b) for i, a in enumerate(cols) for b in cols[i + 1 :]]
        elif op == "quantile":
            need = dict.fromkeys(cols, 0)
            qv = q.params["q"]
            quant = {c: list(qv) if isinstance(qv, list) else [qv] for c in cols}
        elif op == "describe":
            need = dict.fromkeys(cols, 2)
            pct = list(q.params.get("percentiles", [0.25, 0.5, 0.75]))
            if 0.5 not in pct:
                pct.append(0.5)
            pct = sorted(set(pct))
            quant = {c: [0.0, *pct, 1.0] for c in cols}
        ranged = [c for c in cols if need.get(c, 0) >= 1 or c in quant]

        # Round 0: record counts and octave ranges.
        terms = [Term.rows()] + [Term.count(c) for c in cols]
        octs = [c for c in ranged if c not in self.schema.bounds]  # declared bounds: no octaves
        terms += [Term.octaves(c) for c in octs]
        terms += [Term.count(a, b) for a, b in pairs]
        t0 = yield from self._ask(terms)
        n_rows = t0[0]
        n = {c: t0[1 + i] for i, c in enumerate(cols)}
        rnd0 = Round(q.dataset, q.where, tuple(terms))
        rng = {
            c: _octave_range(t0[rnd0.term_slice(1 + len(cols) + i)], c) for i, c in enumerate(octs)
        }
        rng.update({c: _Range(*self.schema.bounds[c]) for c in ranged if c not in rng})
        base = 1 + len(cols) + len(octs)
        npair = {p: float(t0[rnd0.term_slice(base + i)][0]) for i, p in enumerate(pairs)}
        live = {c for c in cols if n[c] > 0 and self._safe(n[c])}
        live_pairs = [
            p
            for p in pairs
            if npair[p] > 0 and self._safe(npair[p]) and p[0] in live and p[1] in live
        ]

        eps = q.params.get("precision")
        bins = int(q.params.get("grid_bins", GRID_BINS))
        qs = {
            c: _Quantiles(c, int(n[c]), quant[c], rng[c], eps, k, bins) for c in quant if c in live
        }

        # Round 1: sums -> means (and first quantile grids).
        mean: dict[str, float] = {}
        total: dict[str, float] = {}
        pmean: dict[tuple[str, str], tuple[float, float]] = {}
        sums = [c for c in cols if c in live and need.get(c, 0) >= 1]
        if sums or live_pairs or qs:
            terms = [
                Term.moment([c], [1], [0.0], _frac_bits(n[c] * rng[c].maxabs, c)) for c in sums
            ]
            for a, b in live_pairs:
                for pw, c in (((1, 0), a), ((0, 1), b)):
                    fb = _frac_bits(npair[(a, b)] * rng[c].maxabs, c)
                    terms.append(Term.moment([a, b], pw, [0.0, 0.0], fb))
            t1, grid_keys = yield from self._with_grids(terms, qs)
            for i, c in enumerate(sums):
                total[c] = float(t1[i])
                mean[c] = total[c] / n[c]
            for i, pair in enumerate(live_pairs):
                ia = len(sums) + 2 * i
                pmean[pair] = (t1[ia] / npair[pair], t1[ia + 1] / npair[pair])
            self._absorb(qs, t1, grid_keys, len(terms))

        # Round 2: centred moments (and quantile refinement).
        cm: dict[str, tuple[float, ...]] = {}
        pm: dict[tuple[str, str], tuple[float, float, float]] = {}
        centred = [c for c in sums if need[c] >= 2]
        if centred or live_pairs:
            terms = []
            for c in centred:
                for power in range(1, need[c] + 1):
                    fb = _frac_bits(n[c] * rng[c].span ** power, c)
                    terms.append(Term.moment([c], [power], [mean[c]], fb))
            for a, b in live_pairs:
                ca, cb = pmean[(a, b)]
                m, sa, sb = npair[(a, b)], rng[a].span, rng[b].span
                for pw, bound in (
                    ((1, 0), sa),
                    ((0, 1), sb),
                    ((2, 0), sa * sa),
                    ((0, 2), sb * sb),
                    ((1, 1), sa * sb),
                ):
                    terms.append(Term.moment([a, b], pw, [ca, cb], _frac_bits(m * bound, a)))
            t2, grid_keys = yield from self._with_grids(terms, qs)
            pos = 0
            for c in centred:
                cm[c] = _moments_about(t2[pos : pos + need[c]], n[c])
                pos += need[c]
            for p in live_pairs:
                s_a, s_b, s_aa, s_bb, s_ab = t2[pos : pos + 5]
                pos += 5
                m = npair[p]
                da, db = s_a / m, s_b / m
                pm[p] = (
                    s_ab - m * da * db,
                    max(s_aa - m * da * da, 0.0),
                    max(s_bb - m * db * db, 0.0),
                )
            self._absorb(qs, t2, grid_keys, len(terms))

        # Further rounds: refine quantile bins until the requested precision.
        while any(qc.probes() for qc in qs.values()):
            t, grid_keys = yield from self._with_grids([], qs)
            self._absorb(qs, t, grid_keys, 0)

        return self._finish(op, cols, n_rows, n, total, mean, cm, pm, npair, qs)

    def _with_grids(self, terms: list[Term], qs: Mapping[str, _Quantiles]) -> _Gen:
        grid_keys: list[tuple[str, tuple[float, float]]] = []
        all_terms = list(terms)
        for c, qc in qs.items():
            for probe in qc.probes():
                grid_keys.append((c, probe))
                all_terms.append(Term.grid(c, probe[0], probe[1], qc.bins))
        total = yield from self._ask(all_terms)
        return total, grid_keys

    def _absorb(
        self,
        qs: Mapping[str, _Quantiles],
        total: Vec,
        grid_keys: list[tuple[str, tuple[float, float]]],
        start: int,
    ) -> None:
        per: dict[str, dict[tuple[float, float], Vec]] = {}
        pos = start
        for c, probe in grid_keys:
            size = qs[c].bins + 2
            per.setdefault(c, {})[probe] = total[pos : pos + size]
            pos += size
        for c, grids in per.items():
            qs[c].absorb(grids)

    def _finish(
        self,
        op: str,
        cols: list[str],
        n_rows: float,
        n: Mapping[str, float],
        total: Mapping[str, float],
        mean: Mapping[str, float],
        cm: Mapping[str, tuple[float, ...]],
        pm: Mapping[tuple[str, str], tuple[float, float, float]],
        npair: Mapping[tuple[str, str], float],
        qs: Mapping[str, _Quantiles],
    ) -> Result:
        q, nan = self.query, math.nan
        ddof = int(q.params.get("ddof", 1))

        def scalar_or_series(values: dict[str, float]) -> Result:
            sup = {c: bool(not self._safe(n[c])) for c in cols}
            vals = {c: (nan if sup[c] else float(v)) for c, v in values.items()}
            if len(cols) == 1:
                return self._result_of(vals[cols[0]], sup[cols[0]])
            return self._result_of(pd.Series(vals, dtype="float64"), pd.Series(sup, dtype=bool))

        if op == "count":
            if not cols:
                sup = bool(not self._safe(n_rows))
                return self._result_of(nan if sup else float(n_rows), sup)
            return scalar_or_series({c: float(n[c]) for c in cols})
        if op == "sum":
            return scalar_or_series({c: total.get(c, 0.0) for c in cols})
        if op == "mean":
            return scalar_or_series({c: mean.get(c, nan) for c in cols})
        if op in ("var", "std"):
            v = {c: _var(cm[c][1], n[c], ddof) if c in cm else nan for c in cols}
            if op == "std":
                v = {c: math.sqrt(x) if x == x else nan for c, x in v.items()}
            return scalar_or_series(v)
        if op == "skew":
            return scalar_or_series(
                {c: _skew(cm[c][1], cm[c][2], n[c]) if c in cm else nan for c in cols}
            )
        if op == "kurt":
            return scalar_or_series(
                {c: _kurt(cm[c][1], cm[c][3], n[c]) if c in cm else nan for c in cols}
            )
        if op in ("cov", "corr"):
            return self._matrix(op, cols, n, cm, pm, npair, ddof)
        if op == "quantile":
            return self._quantile(cols, n, qs)
        return self._describe(cols, n, mean, cm, qs)

    def _matrix(
        self,
        op: str,
        cols: list[str],
        n: Mapping[str, float],
        cm: Mapping[str, tuple[float, ...]],
        pm: Mapping[tuple[str, str], tuple[float, float, float]],
        npair: Mapping[tuple[str, str], float],
        ddof: int,
    ) -> Result:
        pos = {c: i for i, c in enumerate(cols)}
        mat = np.full((len(cols), len(cols)), math.nan)
        sup = np.zeros((len(cols), len(cols)), dtype=bool)
        for c, i in pos.items():
            sup[i, i] = not self._safe(n[c])
            if c in cm:
                m2 = cm[c][1]
                if op == "cov":
                    mat[i, i] = _var(m2, n[c], ddof)
                else:
                    mat[i, i] = 1.0 if m2 > 0 else math.nan
        for (a, b), cnt in npair.items():
            i, j = pos[a], pos[b]
            sup[i, j] = sup[j, i] = not self._safe(cnt)
            if (a, b) in pm:
                sab, saa, sbb = pm[(a, b)]
                if op == "cov":
                    val = sab / (cnt - ddof) if cnt - ddof > 0 else math.nan
                else:
                    den = math.sqrt(saa * sbb)
                    val = max(-1.0, min(1.0, sab / den)) if den > 0 else math.nan
                mat[i, j] = mat[j, i] = val
        return self._result_of(
            pd.DataFrame(mat, index=cols, columns=cols),
            pd.DataFrame(sup, index=cols, columns=cols),
        )

    def _quantile(
        self, cols: list[str], n: Mapping[str, float], qs: Mapping[str, _Quantiles]
    ) -> Result:
        qv = self.query.params["q"]
        qlist = [float(x) for x in qv] if isinstance(qv, list) else [float(qv)]
        vals = np.full((len(qlist), len(cols)), math.nan)
        sup = np.zeros((len(qlist), len(cols)), dtype=bool)
        prec: dict[str, float] = {}
        for j, c in enumerate(cols):
            sup[:, j] = not self._safe(n[c])
            if c in qs:
                for i, qq in enumerate(qlist):
                    vals[i, j], prec[f"{c}/{qq:g}"] = qs[c].estimate(qq)
        index = pd.Index(qlist, dtype="float64")
        if isinstance(qv, list):
            if len(cols) == 1:
                return self._result_of(
                    pd.Series(vals[:, 0], index=index, name=cols[0]),
                    pd.Series(sup[:, 0], index=index, name=cols[0]),
                    prec,
                )
            return self._result_of(
                pd.DataFrame(vals, index=index, columns=cols),
                pd.DataFrame(sup, index=index, columns=cols),
                prec,
            )
        if len(cols) == 1:
            return self._result_of(float(vals[0, 0]), bool(sup[0, 0]), prec)
        return self._result_of(
            pd.Series(vals[0], index=cols, name=qlist[0]),
            pd.Series(sup[0], index=cols, name=qlist[0]),
            prec,
        )

    def _describe(
        self,
        cols: list[str],
        n: Mapping[str, float],
        mean: Mapping[str, float],
        cm: Mapping[str, tuple[float, ...]],
        qs: Mapping[str, _Quantiles],
    ) -> Result:
        pct = sorted({*self.query.params.get("percentiles", [0.25, 0.5, 0.75]), 0.5})
        labels = ["count", "mean", "std", "min", *[_percent_label(p) for p in pct], "max"]
        vals = np.full((len(labels), len(cols)), math.nan)
        sup = np.zeros((len(labels), len(cols)), dtype=bool)
        prec: dict[str, float] = {}
        for j, c in enumerate(cols):
            if not self._safe(n[c]):
                sup[:, j] = True
                continue
            vals[0, j] = n[c]
            vals[1, j] = mean.get(c, math.nan)
            if c in cm:
                var = _var(cm[c][1], n[c], 1)
                vals[2, j] = math.sqrt(var) if var == var else math.nan
            if c in qs:
                for i, p in enumerate([0.0, *pct, 1.0]):
                    vals[3 + i, j], prec[f"{c}/{labels[3 + i]}"] = qs[c].estimate(p)
        return self._result_of(
            pd.DataFrame(vals, index=labels, columns=cols),
            pd.DataFrame(sup, index=labels, columns=cols),
            prec,
        )

    def _group_by(self) -> _Gen:
        q, k = self.query, self.k
        by: str = q.params["by"]
        agg: dict[str, list[str]] = {c: list(v) for c, v in q.params["agg"].items()}
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
        rng: dict[str, _Range] = {}
        n_all: dict[str, float] = {}
        if ranged:  # ungrouped scan: public value ranges for the fixed-point bounds
            octs = [c for c in ranged if c not in self.schema.bounds]
            terms = [Term.count(c) for c in ranged] + [Term.octaves(c) for c in octs]
            t0 = yield from self._ask(terms)
            rnd0 = Round(q.dataset, q.where, tuple(terms))
            for i, c in enumerate(ranged):
                n_all[c] = t0[i]
            for i, c in enumerate(octs):
                rng[c] = _octave_range(t0[rnd0.term_slice(len(ranged) + i)], c)
            rng.update({c: _Range(*self.schema.bounds[c]) for c in ranged if c not in rng})
        terms = [Term.rows()] + [Term.count(c) for c in cols]
        for c in ranged:
            terms.append(Term.moment([c], [1], [0.0], _frac_bits(n_all[c] * rng[c].maxabs, c)))
        t1 = yield from self._ask(terms, by, values)
        g = len(values) + 1
        block = t1.reshape(g, len(terms))
        size = block[:, 0]
        cnt = {c: block[:, 1 + i] for i, c in enumerate(cols)}
        s1 = {c: block[:, 1 + len(cols) + i] for i, c in enumerate(ranged)}
        cm2: dict[str, Vec] = {}
        centred = [c for c in ranged if need[c] >= 2]
        if centred:
            terms, centre = [], {}
            for c in centred:
                known = (cnt[c] > 0) & np.isfinite(s1[c])  # skip groups withheld upstream
                tot = float(cnt[c][known].sum())
                centre[c] = float(s1[c][known].sum()) / tot if tot > 0 else 0.0
                for p in (1, 2):
                    fb = _frac_bits(n_all[c] * rng[c].span ** p, c)
                    terms.append(Term.moment([c], [p], [centre[c]], fb))
            t2 = yield from self._ask(terms, by, values)
            b2 = t2.reshape(g, len(terms))
            for i, c in enumerate(centred):
                sa, saa = b2[:, 2 * i], b2[:, 2 * i + 1]
                with np.errstate(divide="ignore", invalid="ignore"):
                    d = np.where(cnt[c] > 0, sa / np.where(cnt[c] > 0, cnt[c], 1), 0.0)
                cm2[c] = np.maximum(saa - cnt[c] * d * d, 0.0)
        # Assemble like df.groupby(by).agg({...}): sorted group values, MultiIndex columns.
        order = list(range(len(values)))
        with contextlib.suppress(TypeError):  # mixed types: keep the declared order
            order.sort(key=lambda i: (values[i],))
        if k == 0:
            order = [i for i in order if size[i] > 0]
        index = pd.Index([values[i] for i in order], name=by)
        pairs = [(c, f) for c in cols for f in agg[c]]
        vals = np.full((len(order), len(pairs)), math.nan)
        sup = np.zeros((len(order), len(pairs)), dtype=bool)
        for row, i in enumerate(order):
            group_ok = self._safe(size[i])
            for col, (c, f) in enumerate(pairs):
                nc = cnt[c][i]
                ok = group_ok and (f == "size" or self._safe(nc))
                sup[row, col] = not ok
                if not ok:
                    continue
                if f == "size":
                    val = size[i]
                elif f == "count":
                    val = nc
                elif f == "sum":
                    val = s1[c][i]
                elif f == "mean":
                    val = s1[c][i] / nc if nc > 0 else math.nan
                else:
                    var = _var(cm2[c][i], nc, 1)
                    val = math.sqrt(var) if f == "std" and var == var else var
                vals[row, col] = val
        columns = pd.MultiIndex.from_tuples(pairs)
        table = pd.DataFrame(vals, index=index, columns=columns)
        mask = pd.DataFrame(sup, index=index, columns=columns)
        return self._result_of(table, mask)


def start(query: Query, schema: TableSchema, min_group_size: int) -> Computation:
    """Start computing ``query`` over a dataset described by ``schema``.

    Args:
        query: the statistic to compute.
        schema: the dataset's public schema (``Engine.schema(name)`` on any node).
        min_group_size: the strictest node's threshold: a figure over fewer records is
            suppressed (0 disables disclosure control, for tests on public data).

    Raises:
        ConfigError: the query does not fit the schema (names the column).
    """
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
