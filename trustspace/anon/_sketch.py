"""The invertible sketch of a histogram (IBLT) and the hashing it and the oracles share.

**Sketch layout** (for histograms whose dense layout is longer than the data can fill): an
invertible Bloom lookup table (Goodrich & Mitzenmacher 2011) with ``SKETCH_TABLES`` tables of
``cells`` cells; every non-zero key ``x`` with count ``c`` adds ``c``, ``c*x`` and
``c*H(x) mod 2^64`` to one cell of each table (``H``: splitmix64 under the public seed). The
three fields are laid out one after the other: ``[count(3c) | key*count(3c) | hash*count(3c)]``.
A sketch is *linear*: the sum of the nodes' sketches is the sketch of the global histogram, so
secure aggregation of sketches reveals exactly what secure aggregation of the dense vectors
would (a function of the global histogram and public parameters only), at a length
proportional to the number of records instead of the domain size. The aggregator peels it:
a cell holding one key has ``key = keysum / count`` and a matching hash field.

``bucket`` (Fibonacci hashing) serves the oracles' quick rejection test
(``Domain.undersized``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from trustspace.errors import ProtocolError

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]

SKETCH_TABLES = 3  # 3 hash functions peel up to ~0.81 keys per cell (threshold 1/1.222)
SKETCH_CELLS_PER_KEY = 0.5  # per table: 1.5 cells per key in all, well below the threshold
# Two keys that share their cell in all three tables never peel: with c cells per table a pair
# does so with probability 1/c^3, so small sketches get enough spare cells to make that rare
# (k=20 keys in 64 cells: 190/64^3 = 0.07%), and a sketch that still fails is retried under
# another public seed (SKETCH_ATTEMPTS), which reveals nothing beyond the same histogram.
SKETCH_MIN_CELLS = 64
SKETCH_ATTEMPTS = 3
SKETCH_FIELDS = 3  # count, key*count, hash*count
#: 2^64 / golden ratio: splitmix64's increment and the multiplier of Fibonacci hashing, whose
#: consecutive keys land far apart.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
KEY_BOUND = 2**63  # sum of count*key over the histogram must not wrap modulo 2^64


def _mix(x: U64Array, seed: int) -> U64Array:
    """splitmix64's finalizer of ``x + seed * golden`` (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(seed % 2**64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: U64Array = z ^ (z >> np.uint64(31))
    return out


def bucket(keys: IntArray, bits: int) -> IntArray:
    """Fibonacci hashing of ``keys`` into ``2^bits`` buckets (the top bits of ``key * GOLDEN``).

    >>> bucket(np.array([0, 1, 2]), 4).tolist()
    [0, 9, 3]
    """
    with np.errstate(over="ignore"):
        h = (keys.astype(np.uint64) * GOLDEN) >> np.uint64(64 - bits)
    out: IntArray = h.astype(np.int64)
    return out


def sketch_cells(capacity: int) -> int:
    """Cells per table for a sketch that peels ``capacity`` distinct keys."""
    return max(SKETCH_MIN_CELLS, math.ceil(SKETCH_CELLS_PER_KEY * capacity) + SKETCH_MIN_CELLS)


def _cells_of(keys: U64Array, cells: int, seed: int) -> list[IntArray]:
    return [
        i * cells + (_mix(keys, 4 * seed + i) % np.uint64(cells)).astype(np.int64)
        for i in range(SKETCH_TABLES)
    ]


def sketch_encode(keys: IntArray, counts: IntArray, cells: int, seed: int) -> U64Array:
    """The sketch of the histogram ``keys -> counts`` (see the module docstring).

    >>> v = sketch_encode(np.array([3, 90]), np.array([2, 5]), 8, 7)
    >>> k, c = sketch_decode(v, 8, 7, 100)
    >>> k.tolist(), c.tolist()
    ([3, 90], [2, 5])
    """
    width = SKETCH_TABLES * cells
    out = np.zeros(SKETCH_FIELDS * width, dtype=np.uint64)
    k = keys.astype(np.uint64)
    c = counts.astype(np.uint64)
    with np.errstate(over="ignore"):
        kc = k * c
        hc = _mix(k, 4 * seed + 3) * c
    for idx in _cells_of(k, cells, seed):
        np.add.at(out, idx, c)
        np.add.at(out, width + idx, kc)
        np.add.at(out, 2 * width + idx, hc)
    return out


def sketch_decode(vector: U64Array, cells: int, seed: int, size: int) -> tuple[IntArray, IntArray]:
    """Peel a (summed) sketch back into its sorted keys and counts.

    Raises:
        ProtocolError: the sketch does not peel completely (more distinct keys than it was
            sized for, or inconsistent inputs).
    """
    width = SKETCH_TABLES * cells
    if vector.shape != (SKETCH_FIELDS * width,):
        raise ProtocolError(f"sketch has {vector.shape[0]} entries, expected {3 * width}")
    cnt = vector[:width].copy()
    ksum = vector[width : 2 * width].copy()
    hsum = vector[2 * width :].copy()
    found_k: list[U64Array] = []
    found_c: list[U64Array] = []
    for _ in range(width + 1):  # each pass removes at least one key
        nz = np.flatnonzero((cnt != 0) & (cnt < np.uint64(KEY_BOUND)))
        if nz.size == 0:
            break
        c = cnt[nz]
        ks = ksum[nz]
        whole = ks % c == 0
        nz, c, ks = nz[whole], c[whole], ks[whole]
        key = ks // c
        inside = key < np.uint64(size)
        nz, c, key = nz[inside], c[inside], key[inside]
        with np.errstate(over="ignore"):
            pure = _mix(key, 4 * seed + 3) * c == hsum[nz]
        key, c = key[pure], c[pure]
        if key.size == 0:
            break
        key, first = np.unique(key, return_index=True)
        c = c[first]
        found_k.append(key)
        found_c.append(c)
        with np.errstate(over="ignore"):
            kc = key * c
            hc = _mix(key, 4 * seed + 3) * c
        for idx in _cells_of(key, cells, seed):
            np.subtract.at(cnt, idx, c)
            np.subtract.at(ksum, idx, kc)
            np.subtract.at(hsum, idx, hc)
    if cnt.any() or ksum.any() or hsum.any():
        raise ProtocolError(
            "the aggregated histogram sketch did not decode (more distinct tuples than records, "
            "or a node sent an inconsistent vector); re-run the anonymization"
        )
    if not found_k:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.concatenate(found_k).astype(np.int64)
    counts = np.concatenate(found_c).astype(np.int64)
    order = np.argsort(keys)
    return keys[order], counts[order]
