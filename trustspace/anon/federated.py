"""Federated full-domain anonymization: the nodes' vectors and the aggregator's oracle.

Pure logic shared by the node (which turns its local rows into vectors) and the aggregator
(which sums them by secure aggregation and runs ``search`` on the totals); no I/O, no grpc.
The request is a ``trustspace.anon.spec.AnonSpec`` (hierarchies travel with it; its
``digest`` is checked by every node so that all of them answer the same question).

- ``VectorRequest``: one secure-aggregation round's vector: the per-column ``marginals`` or the
  ``histogram`` of generalized tuples at ``levels``, either in the public dense layout of
  ``trustspace.anon.domain`` or as an invertible sketch of it (``trustspace.anon._sketch``,
  for histograms whose dense layout is longer than the data can fill).
- ``LocalCounts``: a node's distinct quasi-identifier tuples and their counts; ``vector``.
- ``AggregatedOracle``: the ``HistogramOracle`` the aggregator hands to ``search``; every miss
  is one secure-aggregation round (a callback), everything derivable is rolled up
  (``Domain.rollup``, as ``LocalOracle`` does).

>>> from trustspace.anon.hierarchy import Hierarchy
>>> h = Hierarchy("a", [("x", "*"), ("y", "*"), ("z", "*")])
>>> spec = AnonSpec((h,), dataset="d", k=2)
>>> nodes = [LocalCounts(spec, [("x",), ("y",)], [3, 1]), LocalCounts(spec, [("y",)], [2])]
>>> total = lambda req: sum(n.vector(req) for n in nodes)
>>> oracle = AggregatedOracle(spec, total)
>>> keys, counts = oracle.histogram((0,))
>>> keys.tolist(), counts.tolist(), oracle.rounds
([0, 1], [3, 3], 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from trustspace.anon._sketch import (
    KEY_BOUND,
    SKETCH_ATTEMPTS,
    SKETCH_FIELDS,
    SKETCH_TABLES,
    sketch_cells,
    sketch_decode,
    sketch_encode,
)
from trustspace.anon.domain import Domain, group_sum
from trustspace.anon.search import Result
from trustspace.anon.spec import AnonSpec
from trustspace.errors import ConfigError, DataError, ProtocolError

if TYPE_CHECKING:
    import pandas as pd

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]

_CACHE = 512  # rolled-up histograms kept as roll-up sources (fetched ones are always kept)
#: Longest vector a node computes for one round (2^25 uint64 = 256 MiB): the aggregator never
#: asks for a dense vector longer than the sketch, which is ~4.5 entries per record.
MAX_VECTOR_ENTRIES = 2**25


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
            return SKETCH_FIELDS * SKETCH_TABLES * self.cells
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


# ---------------------------------------------------------------------------- roll-up
@dataclass
class _Hist:
    """A histogram at ``levels`` as level codes (``m x q``), sensitive codes and counts."""

    levels: tuple[int, ...]
    codes: IntArray
    sens: IntArray | None
    counts: IntArray

    def keys_at(self, domain: Domain, levels: Sequence[int]) -> IntArray:
        """The entries' keys at ``levels`` (at or above ``self.levels``)."""
        return domain.rollup(self.levels, self.codes, levels, self.sens)


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
        reveal: name the uncovered values in errors (a node passes False: its errors leave it).

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
        reveal: bool = True,
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
            codes[:, j] = h.encode([_cell_values(v) for v in cols[j]], where=where, reveal=reveal)
        sens = None
        if domain.sensitive is not None:
            try:
                sens = domain.encode_sensitive(
                    [_cell_values(v) for v in cols[q]], where=where, reveal=reveal
                )
            except ConfigError as exc:
                raise DataError(str(exc)) from None
        self.n = int(cnt.sum())
        self._base = _Hist(tuple(0 for _ in range(q)), codes, sens, cnt)

    def histogram(self, levels: Sequence[int]) -> tuple[IntArray, IntArray]:
        """Sorted non-zero keys at ``levels`` and their counts (this node's rows only)."""
        lv = tuple(int(x) for x in levels)
        return group_sum(self._base.keys_at(self.domain, lv), self._base.counts)

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
        key = base.keys_at(self.domain, req.levels)
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
        keys, counts = group_sum(src.keys_at(self.domain, lv), src.counts)
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
        return self.domain.undersized(src.keys_at(self.domain, lv), src.counts, k)

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
        if size * max(self.n, 1) >= KEY_BOUND:
            raise ConfigError(
                f"the generalized domain at levels {target} has {size} tuples: too many to "
                "aggregate; use coarser hierarchies or fewer quasi-identifiers"
            )
        cells = sketch_cells(min(self.n, size))
        if size <= SKETCH_FIELDS * SKETCH_TABLES * cells:  # the dense layout is shorter
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


def complete_spec(
    raw: Mapping[str, Any], schema_columns: Mapping[str, Any], domains: Mapping[str, Any]
) -> AnonSpec:
    """The signed spec ``raw`` (``AnonSpec.to_dict()``; ``sensitive_values``/``ordered`` may be
    null) parsed strictly, checked for federated use and completed from the public schema:
    the sensitive domain from the dataset's declared domains when the analyst gave none.
    Aggregator and every node complete a signed spec the same way, from the same public
    schema, so they agree on its digest.

    Raises:
        ConfigError: a bad key or value, a column the dataset lacks, no sensitive domain.
    """
    spec = AnonSpec.from_dict(raw)
    spec.check_federated()
    for col in spec.columns:
        if col not in schema_columns:
            raise ConfigError(
                f"column {col!r} is not in dataset {spec.dataset!r} (its columns are "
                f"{', '.join(schema_columns)})"
            )
    declared: list[Any] = []
    if spec.sensitive and spec.sensitive_values is None:
        declared = list(domains.get(spec.sensitive) or [])
        if not declared:
            raise ConfigError(
                f"the sensitive attribute {spec.sensitive!r} needs a public value domain: pass "
                f"sensitive_values=[...] or declare datasets.{spec.dataset}.domains."
                f"{spec.sensitive} in every node's config"
            )
    return spec.complete(declared)
