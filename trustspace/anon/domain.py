"""The public layout of generalized quasi-identifier tuples, and the local histogram oracle.

**Layout** (fixed and public, so that every node's histogram vector has the same shape): for a
lattice node ``levels = (l_1, ..., l_q)`` the generalized tuple ``(g_1, ..., g_q)`` - each
``g_j`` the code of a value of ``hierarchies[j].level_values(l_j)`` - and, when a sensitive
attribute is declared, the sensitive code ``s`` (index in ``sensitive_values``) have the
mixed-radix index::

    key = ((g_1 * r_2 + g_2) * r_3 + ... + g_q) * r_s + s      r_j = len(level_values(l_j))

i.e. the last quasi-identifier varies fastest and the sensitive value is the least significant
digit (``r_s = 1`` without a sensitive attribute). ``Domain.size(levels)`` is the length of the
dense vector ``counts[key]``. It depends only on the hierarchies, never on the data.

A **histogram oracle** answers ``histogram(levels) -> (keys, counts)``: the sorted non-zero keys
of the dense vector and their counts. Locally (``LocalOracle``) it rolls up the compressed
histogram of distinct tuples; a federated driver computes the same vector by secure aggregation
of the nodes' local dense vectors (see ``docs/security.md``, k-anonymization) and returns its
non-zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from trustspace.anon._sketch import bucket
from trustspace.anon.hierarchy import Hierarchy
from trustspace.errors import ConfigError

IntArray = npt.NDArray[np.int64]
_KEY_LIMIT = 2**62  # mixed-radix keys must fit int64 with headroom
_HASH_BITS = 16  # buckets of the quick rejection test (few collisions for ~10^4 classes)
_CACHE_NODES = 512  # histograms kept for roll-up (ARX also rolls up from cached nodes)


class HistogramOracle(Protocol):
    """What the search needs to know about the data: counts only, never rows.

    - ``marginals()``: per quasi-identifier, the count of each original value (length
      ``len(hierarchy.values)``, in hierarchy row order); gives ``n`` and the metrics' tables.
    - ``sensitive_counts()``: the count of each sensitive value (``None`` without one).
    - ``histogram(levels)``: sorted keys (layout above) with non-zero count, and the counts.
    """

    def marginals(self) -> list[IntArray]: ...

    def sensitive_counts(self) -> IntArray | None: ...

    def histogram(self, levels: Sequence[int]) -> tuple[IntArray, IntArray]: ...


def group_sum(keys: IntArray, counts: IntArray) -> tuple[IntArray, IntArray]:
    """Sum ``counts`` per distinct key; returns the sorted distinct keys and their sums.

    >>> k, c = group_sum(np.array([5, 1, 5]), np.array([1, 2, 3]))
    >>> k.tolist(), c.tolist()
    ([1, 5], [2, 4])
    """
    if keys.size == 0:
        return keys.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(keys)  # any order within equal keys will do: we only sum them
    sk = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
    sums = np.add.reduceat(counts[order], starts)
    return sk[starts], sums.astype(np.int64)


class Domain:
    """The quasi-identifiers' hierarchies (in order) and the optional sensitive attribute.

    Args:
        hierarchies: one per quasi-identifier, in the order of the level vectors.
        sensitive: name of the sensitive attribute, or ``None``.
        sensitive_values: its public value domain, in the order used by ordered distance
            (t-closeness); required when ``sensitive`` is given.

    >>> d = Domain([Hierarchy("a", [("x", "*"), ("y", "*")]),
    ...             Hierarchy("b", [("1", "*"), ("2", "*"), ("3", "*")])])
    >>> d.size((0, 0)), d.size((1, 0)), d.lattice_size
    (6, 3, 4)
    """

    def __init__(
        self,
        hierarchies: Sequence[Hierarchy],
        sensitive: str | None = None,
        sensitive_values: Sequence[str] | None = None,
    ) -> None:
        if not hierarchies:
            raise ConfigError("at least one quasi-identifier (with its hierarchy) is needed")
        names = [h.name for h in hierarchies]
        if len(set(names)) != len(names):
            raise ConfigError(f"quasi-identifiers listed twice: {names}")
        if sensitive is not None and sensitive in names:
            raise ConfigError(
                f"column {sensitive!r} is both a quasi-identifier and the sensitive attribute"
            )
        if (sensitive is None) != (sensitive_values is None):
            raise ConfigError("give both the sensitive attribute and its values, or neither")
        self.hierarchies = tuple(hierarchies)
        self.quasi_identifiers = tuple(names)
        self.sensitive = sensitive
        self.sensitive_values = tuple(sensitive_values) if sensitive_values is not None else ()
        self.heights = tuple(h.height for h in hierarchies)
        self.radix = [
            np.array([len(h.level_values(lv)) for lv in range(h.height)], dtype=np.int64)
            for h in hierarchies
        ]
        self.n_sensitive = len(self.sensitive_values) if sensitive is not None else 1
        if self.n_sensitive == 0:
            raise ConfigError(f"sensitive attribute {sensitive!r} has no values")
        self._sens_index = {v: i for i, v in enumerate(self.sensitive_values)}

    @property
    def lattice_size(self) -> int:
        """Number of lattice nodes (product of the hierarchy heights)."""
        return int(np.prod(self.heights, dtype=np.int64))

    def sizes(self, levels: Sequence[int]) -> list[int]:
        """Radix of each quasi-identifier digit at ``levels``."""
        return [int(self.radix[j][lv]) for j, lv in enumerate(levels)]

    def size(self, levels: Sequence[int]) -> int:
        """Length of the dense histogram vector at ``levels`` (layout in the module doc)."""
        out = self.n_sensitive
        for r in self.sizes(levels):
            out *= r
        return out

    def strides(self, levels: Sequence[int]) -> IntArray:
        """Multiplier of each quasi-identifier digit in the key at ``levels``."""
        sizes = self.sizes(levels)
        out = np.empty(len(sizes), dtype=np.int64)
        acc = self.n_sensitive
        for j in range(len(sizes) - 1, -1, -1):
            out[j] = acc
            acc *= sizes[j]
        if acc >= _KEY_LIMIT:
            raise ConfigError(
                f"the generalized domain at levels {tuple(levels)} has {acc} tuples, too many "
                "for 64-bit keys; use coarser hierarchies or fewer quasi-identifiers"
            )
        return out

    def keys(
        self, base_codes: IntArray, levels: Sequence[int], sensitive: IntArray | None = None
    ) -> IntArray:
        """Keys at ``levels`` of tuples given as original-value codes (``m x q`` matrix)."""
        return self.rollup(tuple(0 for _ in self.hierarchies), base_codes, levels, sensitive)

    @cached_property
    def rollup_tables(self) -> list[list[list[IntArray]]]:
        """``up[j][a][b][code at level a] = code at level b`` of quasi-identifier ``j``.

        Each level-``a`` code is mapped through one representative original value: the first
        one with that code. Levels nest (``Hierarchy`` refuses any that do not), so for
        ``b >= a`` every representative gives the same code and the table is the exact
        roll-up; the entries with ``b < a`` are that representative's finer codes, which no
        roll-up reads (a histogram is only ever rolled up from levels at or below).
        """
        out = []
        for h in self.hierarchies:
            per_a = []
            for a in range(h.height):
                # codes are numbered in first-appearance order, so this lists every code
                _, rep = np.unique(h.codes(a), return_index=True)
                per_a.append([h.codes(b)[rep] for b in range(h.height)])
            out.append(per_a)
        return out

    def rollup(
        self,
        src_levels: Sequence[int],
        codes: IntArray,
        levels: Sequence[int],
        sensitive: IntArray | None = None,
    ) -> IntArray:
        """Keys at ``levels`` of tuples given as level codes at ``src_levels`` (``m x q``
        matrix; every source level at or below its target), plus their sensitive codes.

        >>> d = Domain([Hierarchy.intervals("a", range(20), widths=(5, 10))])
        >>> d.rollup((1,), np.array([[0], [1], [3]]), (2,)).tolist()
        [0, 0, 1]
        """
        up = self.rollup_tables
        strides = self.strides(levels)
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for j, lv in enumerate(levels):
            key += up[j][src_levels[j]][lv][codes[:, j]] * strides[j]
        if sensitive is not None and self.sensitive is not None:
            key += sensitive
        return key

    def undersized(self, keys: IntArray, counts: IntArray, k: int) -> int:
        """A lower bound of the records in classes smaller than ``k``, in O(m), from the keys
        of a histogram at some levels (repeated keys allowed) and their counts.

        The sensitive digit is dropped, and the keys hashed into ``2^16`` buckets: hashing
        only merges classes, so a bucket with fewer than ``k`` records holds classes that are
        all smaller than ``k``. Lets the search reject most non-anonymous lattice nodes
        without sorting (the oracles' optional ``undersized`` method).
        """
        if self.sensitive is not None:
            keys = keys // self.n_sensitive
        b = np.bincount(bucket(keys, _HASH_BITS), weights=counts, minlength=1 << _HASH_BITS)
        return int(b[(b > 0) & (b < k)].sum())

    def decode(self, keys: IntArray, levels: Sequence[int]) -> tuple[IntArray, IntArray]:
        """Split keys into the ``m x q`` matrix of level codes and the sensitive codes."""
        strides = self.strides(levels)
        sizes = self.sizes(levels)
        out = np.empty((keys.shape[0], len(sizes)), dtype=np.int64)
        for j in range(len(sizes)):
            out[:, j] = (keys // strides[j]) % sizes[j]
        return out, keys % self.n_sensitive

    def labels(self, keys: IntArray, levels: Sequence[int]) -> list[tuple[str, ...]]:
        """The generalized quasi-identifier tuples (strings) of ``keys`` (sensitive dropped)."""
        codes, _ = self.decode(keys, levels)
        names = [h.level_values(lv) for h, lv in zip(self.hierarchies, levels, strict=True)]
        return [tuple(names[j][c] for j, c in enumerate(row)) for row in codes.tolist()]

    def encode_sensitive(
        self, column: Sequence[object], *, where: str = "", reveal: bool = True
    ) -> IntArray:
        """Codes of a sensitive column's values in ``sensitive_values`` (``reveal=False``: an
        error names how many values are outside the domain, not which)."""
        idx = self._sens_index
        bad = {str(v) for v in column if str(v) not in idx}
        if bad:
            which = f": {sorted(bad)[:8]}" if reveal else " (not shown: they are local data)"
            raise ConfigError(
                f"sensitive column {self.sensitive!r}{where}: {len(bad)} value(s) not in its "
                f"declared domain{which}; add them to the sensitive values"
            )
        return np.fromiter((idx[str(v)] for v in column), dtype=np.int64, count=len(column))


def sorted_values(values: Sequence[object]) -> list[str]:
    """Distinct values as strings, numerically ordered when all are numbers.

    >>> sorted_values(["10", "9", "10"])
    ['9', '10']
    """
    uniq = {str(v) for v in values}
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return sorted(uniq)


class LocalOracle:
    """The histogram oracle over one table's rows, via the compressed histogram.

    The rows are reduced once to the distinct (quasi-identifier, sensitive) tuples and their
    counts; every ``histogram(levels)`` call rolls these up (a code lookup per column, a
    mixed-radix key, a sort), never touching the raw rows again.

    Args:
        domain: the layout.
        columns: the quasi-identifier columns (same order as the domain), and the sensitive
            column last when the domain has one.
    """

    def __init__(self, domain: Domain, columns: Sequence[Sequence[object]]) -> None:
        q = len(domain.hierarchies)
        want = q + (1 if domain.sensitive is not None else 0)
        if len(columns) != want:
            raise ConfigError(f"expected {want} columns, got {len(columns)}")
        n = len(columns[0]) if columns else 0
        base = np.empty((n, q), dtype=np.int64)
        for j, h in enumerate(domain.hierarchies):
            base[:, j] = h.encode(columns[j])
        sens = domain.encode_sensitive(columns[q]) if domain.sensitive is not None else None
        self.domain = domain
        self.n = n
        # compress: bottom keys over the base domain (or a lexicographic unique if too large)
        radix = [len(h.values) for h in domain.hierarchies] + [domain.n_sensitive]
        total = 1
        for r in radix:
            total *= r
        cols = base if sens is None else np.column_stack([base, sens])
        if total < _KEY_LIMIT:
            key = np.zeros(n, dtype=np.int64)
            for j in range(cols.shape[1]):
                key = key * radix[j] + cols[:, j]
            uk, cnt = np.unique(key, return_counts=True)
            tup = np.empty((uk.size, cols.shape[1]), dtype=np.int64)
            rem = uk.copy()
            for j in range(cols.shape[1] - 1, -1, -1):
                tup[:, j] = rem % radix[j]
                rem //= radix[j]
        else:  # pragma: no cover - only with very large base domains
            tup, cnt = np.unique(cols, axis=0, return_counts=True)
        self.tuples = tup[:, :q]
        self.sensitive = tup[:, q] if sens is not None else None
        self.counts = cnt.astype(np.int64)
        bottom_levels = tuple(0 for _ in domain.hierarchies)
        self._bottom = (bottom_levels, tup, self.counts)
        # cache of rolled-up histograms: fixed slots, least recently used replaced first
        q_ = len(domain.hierarchies)
        self._slot_levels = np.full((_CACHE_NODES, q_), np.iinfo(np.int64).max, dtype=np.int64)
        self._slot_size = np.zeros(_CACHE_NODES, dtype=np.int64)
        self._slot_used = np.zeros(_CACHE_NODES, dtype=np.int64)
        self._slots: list[list[Any] | None] = [None] * _CACHE_NODES
        self._tick = 0

    @property
    def n_distinct(self) -> int:
        """Number of distinct (quasi-identifier, sensitive) tuples in the compressed histogram."""
        return int(self.counts.size)

    def marginals(self) -> list[IntArray]:
        return [
            np.bincount(self.tuples[:, j], weights=self.counts, minlength=len(h.values)).astype(
                np.int64
            )
            for j, h in enumerate(self.domain.hierarchies)
        ]

    def sensitive_counts(self) -> IntArray | None:
        if self.sensitive is None:
            return None
        return np.bincount(
            self.sensitive, weights=self.counts, minlength=self.domain.n_sensitive
        ).astype(np.int64)

    def dense(self, levels: Sequence[int]) -> IntArray:
        """The dense histogram vector at ``levels`` (length ``domain.size(levels)``): what a
        node contributes to the secure aggregation for this lattice node.

        >>> d = Domain([Hierarchy("a", [("x", "*"), ("y", "*")])])
        >>> LocalOracle(d, [["y", "y", "x"]]).dense((0,)).tolist()
        [1, 2]
        """
        keys, counts = self.histogram(levels)
        return np.bincount(keys, weights=counts, minlength=self.domain.size(levels)).astype(
            np.int64
        )

    def _rollup(self, lv: tuple[int, ...]) -> tuple[IntArray, IntArray]:
        """Keys at ``lv`` of the entries of the best source histogram, and their counts."""
        src_levels, src_codes, src_counts = self._source(lv)
        q = len(lv)
        sens = src_codes[:, q] if self.domain.sensitive is not None else None
        return self.domain.rollup(src_levels, src_codes, lv, sens), src_counts

    def undersized(self, levels: Sequence[int], k: int) -> int:
        """A lower bound of the records in classes smaller than ``k`` at ``levels``
        (``Domain.undersized`` of the roll-up)."""
        key, counts = self._rollup(tuple(int(x) for x in levels))
        return self.domain.undersized(key, counts, k)

    def histogram(self, levels: Sequence[int]) -> tuple[IntArray, IntArray]:
        lv = tuple(int(x) for x in levels)
        key, src_counts = self._rollup(lv)
        size = self.domain.size(lv)
        if size <= 8 * key.size + 4096:  # dense bincount beats a sort on small domains
            dense = np.bincount(key, weights=src_counts, minlength=size)
            keys = np.flatnonzero(dense)
            counts = dense[keys].astype(np.int64)
        else:
            keys, counts = group_sum(key, src_counts)
        if keys.size < src_counts.size:
            self._remember(lv, keys, counts)
        return keys, counts

    def _source(self, lv: tuple[int, ...]) -> tuple[tuple[int, ...], IntArray, IntArray]:
        """The smallest cached histogram of a node at or below ``lv`` (else the tuples)."""
        below = (self._slot_levels <= np.array(lv)).all(axis=1)
        if not below.any():
            return self._bottom
        sizes = np.where(below, self._slot_size, np.iinfo(np.int64).max)
        i = int(np.argmin(sizes))
        if sizes[i] >= self._bottom[2].size:
            return self._bottom
        self._tick += 1
        self._slot_used[i] = self._tick
        entry = self._slots[i]
        assert entry is not None
        if entry[3] is None:  # decode lazily: most cached nodes never serve as a source
            codes, sens = self.domain.decode(entry[1], entry[0])
            if self.domain.sensitive is not None:
                codes = np.column_stack([codes, sens])
            entry[3] = codes
        return entry[0], entry[3], entry[2]

    def _remember(self, lv: tuple[int, ...], keys: IntArray, counts: IntArray) -> None:
        i = int(np.argmin(self._slot_used))  # an empty slot (0) or the least recently used
        self._tick += 1
        self._slots[i] = [lv, keys, counts, None]
        self._slot_levels[i] = lv
        self._slot_size[i] = counts.size
        self._slot_used[i] = self._tick
