"""Federated full-domain anonymization: the spec, the nodes' vectors, the aggregator's oracle.

Pure logic shared by the node (which turns its local rows into vectors) and the aggregator
(which sums them by secure aggregation and runs ``search`` on the totals); no I/O, no grpc.

- ``AnonSpec``: what the analyst asks (hierarchies travel with it; its ``digest`` is checked
  by every node so that all of them answer the same question).
- ``VectorRequest``: one secure-aggregation round's vector: the per-column ``marginals`` or the
  ``histogram`` of generalized tuples at ``levels``, either in the public dense layout of
  ``trustspace.anon.domain`` or as an invertible sketch of it (below).
- ``LocalCounts``: a node's distinct quasi-identifier tuples and their counts; ``vector``.
- ``AggregatedOracle``: the ``HistogramOracle`` the aggregator hands to ``search``; every miss
  is one secure-aggregation round (a callback), everything derivable is rolled up.

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

>>> from trustspace.anon.hierarchy import Hierarchy
>>> h = Hierarchy("a", [("x", "*"), ("y", "*"), ("z", "*")])
>>> spec = AnonSpec("d", (h,), k=2)
>>> nodes = [LocalCounts(spec, [("x",), ("y",)], [3, 1]), LocalCounts(spec, [("y",)], [2])]
>>> total = lambda req: sum(n.vector(req) for n in nodes)
>>> oracle = AggregatedOracle(spec, total)
>>> keys, counts = oracle.histogram((0,))
>>> keys.tolist(), counts.tolist(), oracle.rounds
([0, 1], [3, 3], 2)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from trustspace.anon.domain import Domain, group_sum, sorted_values
from trustspace.anon.hierarchy import Hierarchy
from trustspace.anon.models import PrivacyModel, make_models
from trustspace.anon.search import METRICS, Result, check_lattice, check_shape
from trustspace.errors import ConfigError, DataError, ProtocolError

if TYPE_CHECKING:
    import pandas as pd

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]

#: ``"base"``: one round learns the global histogram of the original (level-0) tuples and every
#: lattice node is rolled up from it; ``"visited"``: one round per visited lattice node that no
#: histogram already learned is finer than (less disclosed, many more rounds).
DISCLOSURES = ("base", "visited")
SUPPRESSED_MODES = ("drop", "mask")
SKETCH_TABLES = 3  # 3 hash functions peel up to ~0.81 keys per cell (threshold 1/1.222)
SKETCH_CELLS_PER_KEY = 0.5  # per table: 1.5 cells per key in all, well below the threshold
# Two keys that share their cell in all three tables never peel: with c cells per table a pair
# does so with probability 1/c^3, so small sketches get enough spare cells to make that rare
# (k=20 keys in 64 cells: 190/64^3 = 0.07%), and a sketch that still fails is retried under
# another public seed (SKETCH_ATTEMPTS), which reveals nothing beyond the same histogram.
SKETCH_MIN_CELLS = 64
SKETCH_ATTEMPTS = 3
_SKETCH_FIELDS = 3
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64 increment (2^64 / golden ratio)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_KEY_BOUND = 2**63  # sum of count*key over the histogram must not wrap modulo 2^64
_CACHE = 512  # rolled-up histograms kept as roll-up sources (fetched ones are always kept)
_HASH_BITS = 16  # buckets of the quick rejection test (as LocalOracle.undersized)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
#: Longest vector a node computes for one round (2^25 uint64 = 256 MiB): the aggregator never
#: asks for a dense vector longer than the sketch, which is ~4.5 entries per record.
MAX_VECTOR_ENTRIES = 2**25


def _mix(x: U64Array, seed: int) -> U64Array:
    """splitmix64's finalizer of ``x + seed * golden`` (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(seed % 2**64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: U64Array = z ^ (z >> np.uint64(31))
    return out


def _shape(i: int, h: Any) -> tuple[str, int, int]:
    """``(column, rows, height)`` of a hierarchy as it arrives in a spec (before validation)."""
    if not isinstance(h, Mapping):
        return f"hierarchies[{i}]", 0, 0
    rows = h.get("rows")
    first = rows[0] if isinstance(rows, list) and rows else None
    name = h.get("name")
    return (
        name if isinstance(name, str) else f"hierarchies[{i}]",
        len(rows) if isinstance(rows, list) else 0,
        len(first) if isinstance(first, list) else 0,
    )


@dataclass(frozen=True)
class AnonSpec:
    """A federated anonymization request (validated at construction).

    Args:
        dataset: the dataset every node anonymizes.
        hierarchies: one per quasi-identifier, in lattice order.
        sensitive, sensitive_values: the sensitive attribute and its public value domain (for
            ℓ-diversity / t-closeness; the domain orders the ordered distance).
        k, l, t, diversity, c, ordered: the privacy models (as ``anon.anonymize``).
        suppression_limit, metric: as ``anon.search``.
        suppressed: ``"drop"`` suppressed rows or ``"mask"`` their quasi-identifiers.
        disclosure: ``"base"`` or ``"visited"`` (see ``DISCLOSURES``).
    """

    dataset: str
    hierarchies: tuple[Hierarchy, ...]
    sensitive: str | None = None
    sensitive_values: tuple[str, ...] | None = None
    k: int = 2
    l: float | None = None  # noqa: E741 - ℓ is the literature's name
    t: float | None = None
    diversity: str = "distinct"
    c: float | None = None
    ordered: bool = False
    suppression_limit: float = 0.0
    metric: str = "loss"
    suppressed: str = "drop"
    disclosure: str = "visited"

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("name the dataset to anonymize")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigError(f"k must be a positive integer, got {self.k!r}")
        if not 0.0 <= self.suppression_limit <= 1.0:
            raise ConfigError(
                f"suppression_limit must be in [0, 1], got {self.suppression_limit!r}"
            )
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.suppressed not in SUPPRESSED_MODES:
            raise ConfigError(
                f"suppressed must be one of {SUPPRESSED_MODES}, got {self.suppressed!r}"
            )
        if self.disclosure not in DISCLOSURES:
            raise ConfigError(
                f"disclosure must be one of {DISCLOSURES}, got {self.disclosure!r} (see "
                "docs/security.md (k-anonymization), 'Federated anonymization')"
            )
        models = self.models()  # validates l, t, c, diversity
        if any(m.needs_sensitive for m in models) and self.sensitive is None:
            raise ConfigError("l-diversity and t-closeness need sensitive=<column name>")
        if self.sensitive is not None and not self.sensitive_values:
            raise ConfigError(
                f"the sensitive attribute {self.sensitive!r} needs its public value domain: pass "
                "sensitive_values=[...] or declare a domain for the column in the node configs"
            )
        check_lattice(self.domain)  # validates the hierarchies together (names, sizes, caps)

    @cached_property
    def domain(self) -> Domain:
        """The public layout of generalized tuples."""
        return Domain(list(self.hierarchies), self.sensitive, self.sensitive_values)

    @property
    def quasi_identifiers(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hierarchies)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the histograms read: the quasi-identifiers and the sensitive one."""
        return self.quasi_identifiers + ((self.sensitive,) if self.sensitive else ())

    def models(self) -> list[PrivacyModel]:
        return make_models(
            self.k, self.l, diversity=self.diversity, c=self.c, t=self.t, ordered=self.ordered
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "hierarchies": [
                {"name": h.name, "rows": [list(r) for r in h.rows]} for h in self.hierarchies
            ],
            "sensitive": self.sensitive,
            "sensitive_values": list(self.sensitive_values) if self.sensitive_values else None,
            "k": self.k,
            "l": self.l,
            "t": self.t,
            "diversity": self.diversity,
            "c": self.c,
            "ordered": self.ordered,
            "suppression_limit": self.suppression_limit,
            "metric": self.metric,
            "suppressed": self.suppressed,
            "disclosure": self.disclosure,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnonSpec:
        """Inverse of ``to_dict``.

        Raises:
            ConfigError: a missing or malformed field (named).
        """
        if not isinstance(data, Mapping):
            raise ConfigError("anonymization spec: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"anonymization spec: unknown field(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        raw = data.get("hierarchies")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("anonymization spec: 'hierarchies' must be a non-empty list")
        check_shape([_shape(i, h) for i, h in enumerate(raw)])  # the caps, before building any
        hs = []
        for i, h in enumerate(raw):
            if (
                not isinstance(h, Mapping)
                or not isinstance(h.get("name"), str)
                or not isinstance(h.get("rows"), list)
                or not all(
                    isinstance(r, list) and all(isinstance(v, str) for v in r) for r in h["rows"]
                )
            ):
                raise ConfigError(
                    f"anonymization spec: hierarchies[{i}] must be {{name: str, rows: "
                    "[[str, ...], ...]}"
                )
            hs.append(Hierarchy(h["name"], h["rows"], source="request"))
        kw = {k: v for k, v in data.items() if k != "hierarchies"}
        sv = kw.get("sensitive_values")
        if sv is not None:
            if not isinstance(sv, list) or not all(isinstance(v, str) for v in sv):
                raise ConfigError(
                    "anonymization spec: 'sensitive_values' must be a list of strings"
                )
            kw["sensitive_values"] = tuple(sv)
        try:
            return cls(hierarchies=tuple(hs), **kw)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"anonymization spec: {exc}") from None

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: nodes check they all answer the same spec."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class VectorRequest:
    """What one secure-aggregation round sums (see the module docstring).

    ``cells == 0``: the dense layout (length ``Domain.size(levels)``); else a sketch with
    ``cells`` cells per table under ``seed``.
    """

    kind: str  # "marginals" or "histogram"
    levels: tuple[int, ...] = ()
    cells: int = 0
    seed: int = 0

    def length(self, domain: Domain) -> int:
        if self.kind == "marginals":
            out = sum(len(h.values) for h in domain.hierarchies)
            return out + (domain.n_sensitive if domain.sensitive is not None else 0)
        if self.cells:
            return _SKETCH_FIELDS * SKETCH_TABLES * self.cells
        return domain.size(self.levels)

    def check(self, domain: Domain) -> None:
        """Raise ``ProtocolError`` unless the request fits ``domain``."""
        if self.kind == "marginals":
            return
        if self.kind != "histogram":
            raise ProtocolError(f"unknown vector kind {self.kind!r}")
        if len(self.levels) != len(domain.heights) or any(
            not 0 <= lv < h for lv, h in zip(self.levels, domain.heights, strict=True)
        ):
            raise ProtocolError(
                f"levels {self.levels} do not fit the hierarchies (heights {domain.heights})"
            )
        if self.cells < 0:
            raise ProtocolError(f"sketch cells must be positive, got {self.cells}")
        if self.length(domain) > MAX_VECTOR_ENTRIES:
            raise ProtocolError(
                f"a vector of {self.length(domain)} entries is too long (at most "
                f"{MAX_VECTOR_ENTRIES}); the aggregator should have asked for a sketch"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "levels": list(self.levels),
            "cells": self.cells,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> VectorRequest:
        try:
            return cls(
                str(data["kind"]),
                tuple(int(x) for x in data["levels"]),
                int(data["cells"]),
                int(data["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed anonymization vector request: {exc!r}") from None


# ---------------------------------------------------------------------------- sketches
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
    out = np.zeros(_SKETCH_FIELDS * width, dtype=np.uint64)
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
    if vector.shape != (_SKETCH_FIELDS * width,):
        raise ProtocolError(f"sketch has {vector.shape[0]} entries, expected {3 * width}")
    cnt = vector[:width].copy()
    ksum = vector[width : 2 * width].copy()
    hsum = vector[2 * width :].copy()
    found_k: list[U64Array] = []
    found_c: list[U64Array] = []
    for _ in range(width + 1):  # each pass removes at least one key
        nz = np.flatnonzero((cnt != 0) & (cnt < np.uint64(_KEY_BOUND)))
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


# ---------------------------------------------------------------------------- roll-up
@dataclass
class _Hist:
    """A histogram at ``levels`` as level codes (``m x q``), sensitive codes and counts."""

    levels: tuple[int, ...]
    codes: IntArray
    sens: IntArray | None
    counts: IntArray


def _up_tables(domain: Domain) -> list[list[list[IntArray]]]:
    """``up[j][a][b][code at level a] = code at level b`` (levels nest, so this is defined)."""
    out = []
    for h in domain.hierarchies:
        per_a = []
        for a in range(h.height):
            rep = np.zeros(len(h.level_values(a)), dtype=np.int64)
            rep[h.codes(a)] = np.arange(len(h.values))
            per_a.append([h.codes(b)[rep] for b in range(h.height)])
        out.append(per_a)
    return out


def _keys_at(
    domain: Domain, up: list[list[list[IntArray]]], src: _Hist, levels: tuple[int, ...]
) -> IntArray:
    strides = domain.strides(levels)
    key = np.zeros(src.counts.size, dtype=np.int64)
    for j, lv in enumerate(levels):
        key += up[j][src.levels[j]][lv][src.codes[:, j]] * strides[j]
    if src.sens is not None:
        key += src.sens
    return key


def _from_keys(domain: Domain, levels: tuple[int, ...], keys: IntArray, counts: IntArray) -> _Hist:
    codes, sens = domain.decode(keys, levels)
    return _Hist(levels, codes, sens if domain.sensitive is not None else None, counts)


def _cell_values(value: object) -> str:
    return "" if value is None else str(value)


class LocalCounts:
    """A node's distinct (quasi-identifier, sensitive) tuples and their counts.

    Args:
        spec: the request (its hierarchies define the layout).
        tuples: distinct value tuples in ``spec.columns`` order (as the engine returns them).
        counts: their counts.
        where: appended to coverage errors (e.g. ``" at node org-a"``).

    Raises:
        DataError: a value is not covered by its hierarchy, or a sensitive value is outside
            the declared domain (the message names the column and the values).
    """

    def __init__(
        self,
        spec: AnonSpec,
        tuples: Sequence[Sequence[object]],
        counts: Sequence[int] | IntArray,
        *,
        where: str = "",
    ) -> None:
        self.spec = spec
        self.domain = domain = spec.domain
        q = len(domain.hierarchies)
        cnt = np.asarray(counts, dtype=np.int64)
        cols = list(zip(*tuples, strict=True)) if len(tuples) else [() for _ in spec.columns]
        if len(cols) != len(spec.columns):
            raise DataError(f"expected {len(spec.columns)} columns per tuple, got {len(cols)}")
        codes = np.empty((cnt.size, q), dtype=np.int64)
        for j, h in enumerate(domain.hierarchies):
            codes[:, j] = h.encode([_cell_values(v) for v in cols[j]], where=where)
        sens = None
        if domain.sensitive is not None:
            try:
                sens = domain.encode_sensitive([_cell_values(v) for v in cols[q]], where=where)
            except ConfigError as exc:
                raise DataError(str(exc)) from None
        self.n = int(cnt.sum())
        self._base = _Hist(tuple(0 for _ in range(q)), codes, sens, cnt)
        self._up = _up_tables(domain)

    def histogram(self, levels: Sequence[int]) -> tuple[IntArray, IntArray]:
        """Sorted non-zero keys at ``levels`` and their counts (this node's rows only)."""
        lv = tuple(int(x) for x in levels)
        return group_sum(_keys_at(self.domain, self._up, self._base, lv), self._base.counts)

    def vector(self, req: VectorRequest) -> U64Array:
        """This node's input to the round ``req`` (uint64, summed modulo 2^64)."""
        req.check(self.domain)
        base = self._base
        if req.kind == "marginals":
            parts = [
                np.bincount(base.codes[:, j], weights=base.counts, minlength=len(h.values))
                for j, h in enumerate(self.domain.hierarchies)
            ]
            if base.sens is not None:
                parts.append(
                    np.bincount(base.sens, weights=base.counts, minlength=self.domain.n_sensitive)
                )
            return np.concatenate(parts).astype(np.uint64)
        if req.cells:
            keys, counts = self.histogram(req.levels)
            return sketch_encode(keys, counts, req.cells, req.seed)
        key = _keys_at(self.domain, self._up, base, req.levels)
        size = self.domain.size(req.levels)
        return np.bincount(key, weights=base.counts, minlength=size).astype(np.uint64)


class AggregatedOracle:
    """The aggregator's ``HistogramOracle``: global counts from secure-aggregation rounds.

    Args:
        spec: the request.
        fetch: runs ONE secure-aggregation round of ``VectorRequest`` over the nodes and
            returns the total (uint64).
        seed: the sketch hash seed (public; fresh per anonymization).

    A histogram is rolled up from the smallest histogram already learned at levels at or
    below the requested ones (hierarchies nest, so this is exact); only when there is none is
    a round run: at the requested levels (``disclosure="visited"``) or once at the original
    values (``"base"``). ``learned`` lists the levels of every histogram the rounds revealed.
    """

    def __init__(
        self, spec: AnonSpec, fetch: Callable[[VectorRequest], U64Array], *, seed: int = 0
    ) -> None:
        self.spec = spec
        self.domain = spec.domain
        self._fetch = fetch
        self._seed = seed
        self._up = _up_tables(self.domain)
        self._marginals: list[IntArray] | None = None
        self._sensitive: IntArray | None = None
        self.n = 0
        self.rounds = 0
        self.learned: list[tuple[int, ...]] = []
        self._fetched: list[_Hist] = []
        self._cache: dict[tuple[int, ...], tuple[IntArray, IntArray]] = {}
        self._as_source: dict[tuple[int, ...], _Hist] = {}

    def _round(self, req: VectorRequest) -> U64Array:
        total = np.asarray(self._fetch(req), dtype=np.uint64)
        self.rounds += 1
        if total.shape != (req.length(self.domain),):
            raise ProtocolError(
                f"the aggregated vector has {total.shape} entries, the request needs "
                f"{req.length(self.domain)}"
            )
        return total

    # ---------------------------------------------------------------- HistogramOracle
    def marginals(self) -> list[IntArray]:
        if self._marginals is None:
            total = self._round(VectorRequest("marginals")).astype(np.int64)
            out, off = [], 0
            for h in self.domain.hierarchies:
                out.append(total[off : off + len(h.values)])
                off += len(h.values)
            self._marginals = out
            if self.domain.sensitive is not None:
                self._sensitive = total[off:]
            self.n = int(out[0].sum())
        return [m.copy() for m in self._marginals]

    def sensitive_counts(self) -> IntArray | None:
        self.marginals()
        return None if self._sensitive is None else self._sensitive.copy()

    def histogram(self, levels: Sequence[int]) -> tuple[IntArray, IntArray]:
        lv = tuple(int(x) for x in levels)
        hit = self._cache.get(lv)
        if hit is not None:
            return hit
        src = self._source(lv)
        if src is None:
            src = self._learn(lv)
        keys, counts = group_sum(_keys_at(self.domain, self._up, src, lv), src.counts)
        self._remember(lv, keys, counts)
        return keys, counts

    def undersized(self, levels: Sequence[int], k: int) -> int:
        """A lower bound of the records in classes smaller than ``k`` (as ``LocalOracle``),
        computed without a round when a finer histogram is known (else 0: no bound)."""
        lv = tuple(int(x) for x in levels)
        src = self._source(lv)
        if src is None:
            if self.spec.disclosure != "base":
                return 0
            src = self._learn(lv)
        key = _keys_at(self.domain, self._up, src, lv)
        if self.domain.sensitive is not None:
            key = key // self.domain.n_sensitive
        h = (key.astype(np.uint64) * _HASH_MUL) >> np.uint64(64 - _HASH_BITS)
        b = np.bincount(h.astype(np.int64), weights=src.counts, minlength=1 << _HASH_BITS)
        return int(b[(b > 0) & (b < k)].sum())

    # ---------------------------------------------------------------- internals
    def _source(self, lv: tuple[int, ...]) -> _Hist | None:
        best: _Hist | None = None
        for h in (*self._fetched, *self._as_source.values()):
            if all(a <= b for a, b in zip(h.levels, lv, strict=True)) and (
                best is None or h.counts.size < best.counts.size
            ):
                best = h
        return best

    def _learn(self, lv: tuple[int, ...]) -> _Hist:
        """One round: the histogram at ``lv`` (``visited``) or at the original values."""
        self.marginals()
        target = lv if self.spec.disclosure == "visited" else tuple(0 for _ in lv)
        size = self.domain.size(target)
        if size * max(self.n, 1) >= _KEY_BOUND:
            raise ConfigError(
                f"the generalized domain at levels {target} has {size} tuples: too many to "
                "aggregate; use coarser hierarchies or fewer quasi-identifiers"
            )
        cells = sketch_cells(min(self.n, size))
        if size <= _SKETCH_FIELDS * SKETCH_TABLES * cells:  # the dense layout is shorter
            total = self._round(VectorRequest("histogram", target))
            keys = np.flatnonzero(total).astype(np.int64)
            counts = total[keys].astype(np.int64)
        else:
            keys, counts = self._sketch_round(target, cells, size)
        if int(counts.sum()) != self.n:
            raise ProtocolError(
                f"the aggregated histogram counts {int(counts.sum())} records but the marginals "
                f"{self.n}: the nodes' data changed during the anonymization; re-run it"
            )
        hist = _from_keys(self.domain, target, keys, counts)
        self._fetched.append(hist)
        self.learned.append(target)
        return hist

    def _sketch_round(
        self, target: tuple[int, ...], cells: int, size: int
    ) -> tuple[IntArray, IntArray]:
        """A sketch round, retried under the next public seeds if the sum does not peel."""
        for attempt in range(SKETCH_ATTEMPTS):
            seed = (self._seed + attempt) % 2**62
            req = VectorRequest("histogram", target, cells, seed)
            try:
                return sketch_decode(self._round(req), cells, seed, size)
            except ProtocolError:
                if attempt == SKETCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(self, lv: tuple[int, ...], keys: IntArray, counts: IntArray) -> None:
        self._cache[lv] = (keys, counts)
        if len(self._as_source) >= _CACHE:
            self._as_source.pop(next(iter(self._as_source)))
        self._as_source[lv] = _from_keys(self.domain, lv, keys, counts)


# ---------------------------------------------------------------------------- the release
@dataclass(frozen=True)
class NodeOutput:
    """Where one node wrote its anonymized rows, and how many."""

    node: str
    path: str
    rows_written: int
    rows_suppressed: int
    released: bool = False


@dataclass(frozen=True)
class FederatedRelease:
    """The outcome of ``Federation.anonymize``: the transformation, its figures, the outputs.

    ``data`` is the union of the released rows (a DataFrame) when every node's policy let its
    rows leave, else ``None`` (each node keeps its output at ``outputs[i].path``).
    """

    result: Result
    outputs: tuple[NodeOutput, ...]
    data: pd.DataFrame | None = None
    rounds: int = 0
    disclosure: str = "visited"
    learned: tuple[tuple[int, ...], ...] = ()
    seconds: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> dict[str, int]:
        return dict(zip(self.result.quasi_identifiers, self.result.levels, strict=True))

    @property
    def suppressed(self) -> int:
        return self.result.suppressed_records

    @property
    def classes(self) -> int:
        return self.result.n_classes

    @property
    def metrics(self) -> Mapping[str, float]:
        return self.result.metrics

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary (the result's report, the outputs and the rounds)."""
        return {
            **self.result.report(),
            "outputs": [o.__dict__ for o in self.outputs],
            "released_rows": None if self.data is None else len(self.data),
            "rounds": self.rounds,
            "disclosure": self.disclosure,
            "histograms_learned": [list(lv) for lv in self.learned],
            "federated_seconds": round(self.seconds, 4),
        }

    def __str__(self) -> str:
        r = self.result
        m = r.metrics
        nan = float("nan")
        lv = ", ".join(f"{q}={x}" for q, x in self.levels.items())
        lines = [
            f"{', '.join(r.models)}, suppression limit {r.suppression_limit:.0%}, "
            f"metric {r.metric}",
            f"levels: {lv}",
            f"records {r.n_records}, suppressed {r.suppressed_records}, classes {r.n_classes}",
            f"loss {m.get('loss', nan):.4f}, entropy {m.get('entropy', nan):.1f}, "
            f"discernibility {m.get('discernibility', nan):.4g}, aecs {m.get('aecs', nan):.2f}",
            f"search: {r.nodes_evaluated} of {r.nodes_total} lattice nodes evaluated, "
            f"{self.rounds} secure-aggregation round(s) ({self.disclosure} disclosure), "
            f"{self.seconds:.2f} s",
        ]
        for o in self.outputs:
            rel = ", released" if o.released else ""
            lines.append(
                f"{o.node}: {o.rows_written} rows written to {o.path} "
                f"({o.rows_suppressed} suppressed{rel})"
            )
        if self.data is None:
            lines.append("rows released to the analyst: none (kept at the nodes)")
        else:
            lines.append(f"rows released to the analyst: {len(self.data)}")
        return "\n".join(lines)


def _numeric(values: list[str]) -> bool:
    try:
        for v in values:
            float(v)
    except ValueError:
        return False
    return True


def complete_spec(
    raw: Mapping[str, Any], schema_columns: Mapping[str, Any], domains: Mapping[str, Any]
) -> AnonSpec:
    """The spec, with the sensitive domain taken from the public schema when the analyst gave
    none. Analyst, aggregator and every node complete a signed spec the same way, from the
    same public schema, so they agree on its digest."""
    data = dict(raw)
    sensitive = data.get("sensitive")
    hs = data.get("hierarchies")
    names = [h.get("name") for h in hs if isinstance(h, Mapping)] if isinstance(hs, list) else []
    dataset = data.get("dataset")
    for col in [*names, *([sensitive] if sensitive else [])]:
        if col not in schema_columns:
            raise ConfigError(
                f"column {col!r} is not in dataset {dataset!r} (its columns are "
                f"{', '.join(schema_columns)})"
            )
    if sensitive and not data.get("sensitive_values"):
        declared = domains.get(sensitive)
        if not declared:
            raise ConfigError(
                f"the sensitive attribute {sensitive!r} needs a public value domain: pass "
                f"sensitive_values=[...] or declare datasets.{dataset}.domains.{sensitive} in "
                "every node's config"
            )
        data["sensitive_values"] = sorted_values([str(v) for v in declared])
    if data.get("ordered") is None:
        sv = data.get("sensitive_values") or []
        data["ordered"] = bool(sv) and _numeric([str(v) for v in sv])
    return AnonSpec.from_dict(data)
