"""Quantiles by bin refinement: locate order statistics of a column in ever finer count grids.

``Quantiles`` follows the ranks pandas' linear interpolation needs for each wanted quantile
(``Target``); each round asks for a grid of ``bins`` equal bins over the bin that holds a
rank (``probes``), and ``absorb`` narrows the rank to one of the new bins (``locate``), until
the requested precision or float64's resolution. Disclosure: a bin is refined, and its edge
released, only while it holds at least ``k`` records; below that the narrowest run of bins
holding ``k`` is released instead (``window``). Pure logic: the state machine
(``trustspace.stats._machine``) builds the grid terms and feeds their totals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_RELATIVE_PRECISION_BITS",
    "GRID_BINS",
    "UNKNOWN_SMALL",
    "Quantiles",
    "Target",
    "ValueRange",
    "locate",
    "window",
]

#: Bins per quantile grid: each refinement narrows a bin 2^10-fold, so the default precision
#: (DEFAULT_REFINEMENTS more grids after the first) is 2^-30 of the data's octave range.
#: Queries may choose another power of two (``params["grid_bins"]``): fewer bins mean shorter
#: vectors (less secure-aggregation traffic; grids are record counts, which the Paillier path
#: does not encrypt) but more rounds to reach the same precision.
GRID_BINS = 1024
DEFAULT_REFINEMENTS = 2
#: Default quantile precision, relative to the first grid's span: 2^-30.
DEFAULT_RELATIVE_PRECISION_BITS = 10 * (1 + DEFAULT_REFINEMENTS)
#: Smallest bin width refined further (well above float64's subnormal range).
_TINY = 2.0**-1000
#: Marks a record count withheld upstream (in 1..min_group_size-1, value unknown).
UNKNOWN_SMALL = -1.0

Vec = npt.NDArray[np.float64]
#: A grid by its (start, width); its bins count is the Quantiles' ``bins``.
Probe = tuple[float, float]


@dataclass
class ValueRange:
    """A public range [lo, hi] holding every non-null value (octave histogram or bounds)."""

    lo: float
    hi: float

    @property
    def span(self) -> float:
        return self.hi - self.lo

    @property
    def maxabs(self) -> float:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class Target:
    """One order statistic (0-based rank) being located by bin refinement."""

    rank: int
    value: float
    width: float
    probe: Probe | None  # (start, width) of the next grid, or None when done


def locate(counts: Vec, rank: int, n: int, k: int) -> int | None:
    """The bin (0-based, without the under/overflow entries) certainly holding order
    statistic ``rank``, if it holds at least ``k`` records; else None.

    ``counts`` is [below, bins..., above]; an UNKNOWN_SMALL entry is a count withheld upstream
    (1..k-1). The number of records before each bin is bounded from the bottom (prefix sums)
    and from the top (n minus suffix sums); a bin is chosen only if every consistent
    assignment puts the rank inside it.

    >>> locate(np.array([0, 10, 5, 10, 5, 0.0]), 12, 30, 1)
    1
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


def window(counts: Vec, rank: int, k: int) -> tuple[int, int] | None:
    """The narrowest run of adjacent bins (first, last; 0-based, without the under/overflow
    entries) around the bin holding order statistic ``rank`` that holds at least ``k`` records,
    grown one bin at a time towards the fuller neighbour; None if the grid holds fewer than
    ``k`` records or has withheld (UNKNOWN_SMALL) entries.

    Used where the rank's own bin is too small to release: the run's lower edge is released
    instead, with the run's width as the precision, so the figure still describes >= k records
    (e.g. a ``max`` becomes the lower edge of the top bins holding k records).

    >>> window(np.array([0, 6, 1, 0, 2, 0.0]), 7, 3)
    (1, 3)
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


class Quantiles:
    """Locates order statistics of one column by refining histogram bins.

    Disclosure: a bin is only refined (and its edge only released) while it holds at least
    ``k`` records; a target whose bin would hold fewer takes the narrowest run of bins around
    it that holds ``k`` (``window``) if that is narrower than its last safe bin, and stops;
    its precision is the width of what it released.

    Args:
        column: the column (for messages and the caller's bookkeeping).
        n: its number of non-null values.
        probabilities: the quantiles wanted, in [0, 1].
        value_range: a public range holding every value; the first grid covers it.
        precision: absolute precision to stop at; None: 2^-DEFAULT_RELATIVE_PRECISION_BITS of
            the first grid's span.
        k: min_group_size (0 is treated as 1).
        bins: bins per grid (a power of two).
    """

    def __init__(
        self,
        column: str,
        n: int,
        probabilities: Sequence[float],
        value_range: ValueRange,
        precision: float | None,
        k: int,
        bins: int = GRID_BINS,
    ) -> None:
        self.column, self.n, self.k, self.bins = column, n, max(k, 1), bins
        self.probabilities = list(probabilities)
        span = value_range.span if value_range.span > 0 else 1.0
        m = math.frexp(span / bins)[1]
        while True:
            w = math.ldexp(1.0, m)
            a = math.floor(value_range.lo / w) * w
            if a + bins * w > value_range.hi:
                break
            m += 1
        default = math.ldexp(bins * w, -DEFAULT_RELATIVE_PRECISION_BITS)
        self.precision = precision if precision is not None else default
        self.targets: dict[int, Target] = {}
        for q in self.probabilities:
            h = (n - 1) * q
            for r in {math.floor(h), min(math.floor(h) + 1, n - 1)}:
                self.targets.setdefault(r, Target(r, a, bins * w, (a, w)))

    def probes(self) -> list[Probe]:
        """The grids the next round must hold, (start, width) of ``bins`` bins each, in order."""
        return list(dict.fromkeys(t.probe for t in self.targets.values() if t.probe is not None))

    def absorb(self, grids: Mapping[Probe, Vec]) -> None:
        """Take the totals of the grids ``probes()`` asked for ([below, bins..., above])."""
        for t in self.targets.values():
            if t.probe is None:
                continue
            a, w = t.probe
            t.probe = None
            i = locate(grids[(a, w)], t.rank, self.n, self.k)
            if i is None:
                # the rank's finer bin would describe fewer than k records: release the
                # narrowest run of bins around it that holds k, if narrower than what we have
                run = window(grids[(a, w)], t.rank, self.k)
                if run is not None and (run[1] - run[0] + 1) * w < t.width:
                    t.value, t.width = a + run[0] * w, (run[1] - run[0] + 1) * w
                continue
            t.value, t.width = a + i * w, w
            # Stop at the requested precision, or where float64 cannot split the bin further.
            finest = self.bins * max(math.ulp(t.value), math.ulp(t.value + w), _TINY)
            if w > self.precision and w > finest:
                t.probe = (t.value, w / self.bins)

    def estimate(self, q: float) -> tuple[float, float]:
        """(value, absolute precision) of quantile q with pandas' linear interpolation."""
        h = (self.n - 1) * q
        lo = self.targets[math.floor(h)]
        hi = self.targets[min(math.floor(h) + 1, self.n - 1)]
        frac = h - math.floor(h)
        value = lo.value + frac * (hi.value - lo.value)
        return value, max(lo.width, hi.width if frac > 0 else 0.0)
