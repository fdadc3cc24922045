"""Globally optimal full-domain generalization: lattice search on a histogram oracle.

The search never sees rows. It asks the oracle for the histogram of generalized
quasi-identifier tuples at the lattice nodes it visits (see ``trustspace.anon.domain``), so the
same code runs on one table (``LocalOracle``) and across nodes (secure aggregation).

**Exactness.** Nodes are visited in increasing order of a lower bound of the objective and the
search stops once the bound reaches the best value found, so the optimum is exact even where
the metric is not monotone along the lattice (with a suppression limit, neither Loss nor
non-uniform entropy is). For the record-separable metrics (Loss, non-uniform entropy) the bound
is the value without suppression, ``sum_j T_j[l_j]``, computed for every node from the
marginals alone; suppressing a record only raises its cost. Discernibility and average class
size have no cheap bound: every candidate is evaluated.

**Pruning** (never changes the optimum, only how many histograms are asked for):

- Flash-style predictive tagging (as in ARX): before evaluating an untagged candidate, climb a
  chain of successors and binary-search it for the anonymity boundary; below a failing node
  every node fails, above a passing node every node passes, and above a node with nothing
  suppressed nothing is suppressed (its objective equals its bound: no histogram needed).
  Where some models are not monotone under suppression (entropy/recursive ℓ-diversity,
  t-closeness), the tags use the monotone models only (k-anonymity, distinct ℓ-diversity).
- Marginals: a record whose generalized value in one column is shared by fewer than ``k``
  records must be suppressed; nodes where such records exceed the limit fail outright.
- An oracle may offer ``undersized(levels, k)``, a cheap lower bound of the records in classes
  smaller than ``k`` (``LocalOracle`` hashes classes into buckets); nodes it rejects need no
  exact histogram.

**Bounded work.** A request names its hierarchies, so the lattice is the analyst's choice: it is
refused over ``MAX_QUASI_IDENTIFIERS`` columns or ``MAX_LATTICE_NODES`` nodes (``check_lattice``,
arithmetic on the heights, before any other work). The search never builds the list of level
vectors: a node is its mixed-radix index, its levels and bound are computed when it is visited,
nodes are enumerated in bound order from a heap seeded with the bottom node, and the tags are one
byte per node whose up- and down-sets are boxes of that array.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trustspace.anon.domain import Domain, HistogramOracle
from trustspace.anon.hierarchy import check_hierarchy_size
from trustspace.anon.models import KAnonymity, PrivacyModel
from trustspace.errors import ConfigError, DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

METRICS = ("loss", "discernibility", "entropy", "aecs")
_SEPARABLE = ("loss", "entropy")
_TIE = 1e-12  # relative slack when comparing a bound with the best objective

#: Most quasi-identifiers of one request: ARX's Adult configuration has 9 and a lattice needs
#: at least 2^q nodes, so more than 16 could not stay under MAX_LATTICE_NODES anyway.
MAX_QUASI_IDENTIFIERS = 16
#: Most lattice nodes (the product of the hierarchy heights) one search may range over: 80x
#: Adult's 12,960 (all 9 quasi-identifiers). The search keeps one byte of tags per node (1 MiB at
#: the cap) and, at worst, visits every node in pure Python (seconds, not minutes).
MAX_LATTICE_NODES = 2**20
#: Most hierarchy cells (rows x levels, all quasi-identifiers together) of one request: twice
#: MAX_HIERARCHY_CELLS, so one request holds at most ~120 MB of hierarchy strings.
MAX_REQUEST_CELLS = 2_000_000
# tag bits, one byte per lattice node (see ``search``)
_FAIL = np.uint8(1)  # the monotone models fail here and below
_PASS = np.uint8(2)  # the monotone models hold here and above
_REJECTED = np.uint8(4)  # evaluated and not anonymous
_NO_SUPPRESSION = np.uint8(8)  # nothing is suppressed here and above (monotone mode)


def check_shape(shapes: Sequence[tuple[str, int, int]]) -> int:
    """Refuse a request over the caps from ``(column, rows, height)`` per quasi-identifier.

    Runs on the sizes alone (no hierarchy need be built), so an oversized request costs nothing
    but this check. Returns the number of lattice nodes.

    Raises:
        ConfigError: naming the column (or the count) and the cap exceeded.

    >>> check_shape([("age", 100, 5), ("sex", 2, 2)])
    10
    """
    if len(shapes) > MAX_QUASI_IDENTIFIERS:
        raise ConfigError(
            f"{len(shapes)} quasi-identifiers, more than the {MAX_QUASI_IDENTIFIERS} allowed "
            "(MAX_QUASI_IDENTIFIERS); anonymize over fewer columns"
        )
    cells = 0
    for name, rows, height in shapes:
        check_hierarchy_size(name, rows, height)
        cells += rows * height
    if cells > MAX_REQUEST_CELLS:
        raise ConfigError(
            f"the hierarchies have {cells} cells (rows x levels) in all, more than the "
            f"{MAX_REQUEST_CELLS} allowed (MAX_REQUEST_CELLS); use smaller hierarchies"
        )
    size = 1
    for name, _, height in shapes:
        size *= max(height, 1)
        if size > MAX_LATTICE_NODES:
            heights = ", ".join(f"{n}: {h}" for n, _, h in shapes)
            raise ConfigError(
                f"the lattice of generalization levels has more than {MAX_LATTICE_NODES} nodes "
                f"(MAX_LATTICE_NODES) once column {name!r} is added (heights {heights}); use "
                "hierarchies with fewer levels or fewer quasi-identifiers"
            )
    return size


def check_lattice(domain: Domain) -> int:
    """``check_shape`` of a domain's hierarchies; returns the number of lattice nodes.

    Raises:
        ConfigError: over ``MAX_QUASI_IDENTIFIERS``, ``MAX_LATTICE_NODES`` or a hierarchy cap.
    """
    return check_shape([(h.name, len(h.rows), h.height) for h in domain.hierarchies])


@dataclass(frozen=True)
class Result:
    """The chosen transformation and its figures.

    ``suppressed_classes`` lists the generalized quasi-identifier tuples whose records are
    suppressed: decided on the global counts, applied identically by every holder of rows.
    ``metrics``: ``loss`` (mean normalized generalization, suppressed = 1, as in SOURCE.md),
    ``discernibility`` (sum of squared class sizes, suppressed records count ``n`` each),
    ``entropy`` (non-uniform entropy in bits, suppressed = fully generalized), ``aecs``
    (average size of the released classes).
    """

    quasi_identifiers: tuple[str, ...]
    levels: tuple[int, ...]
    models: tuple[str, ...]
    suppression_limit: float
    metric: str
    n_records: int
    suppressed_records: int
    n_classes: int
    suppressed_classes: frozenset[tuple[str, ...]]
    metrics: Mapping[str, float]
    nodes_total: int
    nodes_evaluated: int
    nodes_skipped: int = 0
    seconds: float = 0.0
    method: str = "optimal"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The whole result as JSON (e.g. to send the transformation to every node).

        >>> r = Result(("a",), (1,), ("2-anonymity",), 0.1, "loss", 4, 1, 1,
        ...            frozenset({("x",)}), {"loss": 0.5}, 2, 2)
        >>> Result.from_json(r.to_json()) == r
        True
        """
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["suppressed_classes"] = sorted(self.suppressed_classes)
        d["metrics"] = dict(self.metrics)
        d["extra"] = dict(self.extra)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Result:
        """Inverse of ``to_json``.

        Raises:
            ConfigError: the text is not a serialized ``Result``.
        """
        try:
            d = json.loads(text)
            d["quasi_identifiers"] = tuple(d["quasi_identifiers"])
            d["levels"] = tuple(int(x) for x in d["levels"])
            d["models"] = tuple(d["models"])
            d["suppressed_classes"] = frozenset(tuple(c) for c in d["suppressed_classes"])
            return cls(**d)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a serialized anonymization result: {exc}") from exc

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "method": self.method,
            "quasi_identifiers": list(self.quasi_identifiers),
            "levels": (
                dict(zip(self.quasi_identifiers, self.levels, strict=True)) if self.levels else None
            ),
            "models": list(self.models),
            "suppression_limit": self.suppression_limit,
            "metric": self.metric,
            "records": self.n_records,
            "suppressed_records": self.suppressed_records,
            "classes": self.n_classes,
            "suppressed_classes": len(self.suppressed_classes),
            "metrics": dict(self.metrics),
            "lattice_nodes": self.nodes_total,
            "nodes_evaluated": self.nodes_evaluated,
            "nodes_skipped": self.nodes_skipped,
            "seconds": round(self.seconds, 4),
            **dict(self.extra),
        }


class _Tables:
    """Per-column, per-level cost tables of the separable metrics, from the marginals."""

    def __init__(self, domain: Domain, marginals: Sequence[IntArray]) -> None:
        self.n = int(marginals[0].sum()) if marginals else 0
        n = max(self.n, 1)
        q = len(domain.hierarchies)
        self.q = q
        self.base: dict[str, list[FloatArray]] = {"loss": [], "entropy": []}
        self.pen: dict[str, list[list[FloatArray]]] = {"loss": [], "entropy": []}
        for h, m in zip(domain.hierarchies, marginals, strict=True):
            m = np.asarray(m, dtype=np.float64)
            present = m > 0
            d = int(present.sum())
            tl = np.zeros(h.height)
            te = np.zeros(h.height)
            pl: list[FloatArray] = []
            pe: list[FloatArray] = []
            for lv in range(h.height):
                codes = h.codes(lv)
                size = len(h.level_values(lv))
                covered = np.bincount(codes[present], minlength=size).astype(np.float64)
                cnt = np.bincount(codes, weights=m, minlength=size)
                loss_g = (covered - 1) / (d - 1) if d > 1 else np.zeros(size)
                loss_g = np.clip(loss_g, 0.0, 1.0)
                tl[lv] = float((cnt * loss_g).sum())
                pl.append(1.0 - loss_g)
                with np.errstate(divide="ignore", invalid="ignore"):
                    per_value = np.where(present, -np.log2(m / cnt[codes]), 0.0)
                    pe.append(np.where(cnt > 0, np.log2(n / cnt), 0.0))
                te[lv] = float((m * per_value).sum())
            self.base["loss"].append(tl)
            self.base["entropy"].append(te)
            self.pen["loss"].append(pl)
            self.pen["entropy"].append(pe)

    def lower_bounds(self, metric: str, nodes: IntArray) -> FloatArray:
        out = np.zeros(nodes.shape[0])
        for j, t in enumerate(self.base[metric]):
            out += t[nodes[:, j]]
        return out

    def penalty(
        self, metric: str, levels: Sequence[int], codes: IntArray, sizes: IntArray
    ) -> float:
        if sizes.size == 0:
            return 0.0
        per = np.zeros(sizes.shape[0])
        for j, lv in enumerate(levels):
            per += self.pen[metric][j][lv][codes[:, j]]
        return float((per * sizes).sum())


@dataclass
class _Eval:
    monotone_fail: bool
    anonymous: bool
    suppressed: int
    n_classes: int
    class_keys: IntArray
    sizes: IntArray
    violating: npt.NDArray[np.bool_]


class _Evaluator:
    def __init__(
        self,
        oracle: HistogramOracle,
        domain: Domain,
        models: Sequence[PrivacyModel],
        suppression_limit: float,
    ) -> None:
        self.oracle = oracle
        self.domain = domain
        self.models = list(models)
        self.marginals = oracle.marginals()
        # optional fast rejection: records surely in classes smaller than k
        ks = [m.k for m in models if isinstance(m, KAnonymity)]
        self._k = max(ks, default=1)
        self._quick = getattr(oracle, "undersized", None) if self._k > 1 else None
        self.tables = _Tables(domain, self.marginals)
        self.n = self.tables.n
        self.max_suppressed = math.floor(suppression_limit * self.n + 1e-9)
        self.needs_sensitive = any(m.needs_sensitive for m in self.models)
        self.overall: FloatArray | None = None
        if self.needs_sensitive:
            if domain.sensitive is None:
                raise ConfigError(
                    "l-diversity and t-closeness need a sensitive attribute; name it "
                    "(sensitive=... / --sensitive)"
                )
            sc = oracle.sensitive_counts()
            if sc is None:
                raise ConfigError("the oracle gives no sensitive-value counts")
            self.overall = sc / max(int(sc.sum()), 1)

    def tag_marginal_fails(self, tags: npt.NDArray[np.uint8]) -> None:
        """Tag the nodes that fail k-anonymity on the marginals alone, without any histogram.

        A record whose generalized value of one column is shared by fewer than ``k`` records
        lies in a class smaller than ``k``: it must be suppressed. So the records in such
        values, for the worst column, bound the suppression from below; a node fails when that
        bound exceeds the limit for any column, i.e. ``tags`` (shaped as the lattice) gets
        ``_FAIL`` on every slab of a failing level.
        """
        ks = [m.k for m in self.models if isinstance(m, KAnonymity)]
        if not ks:
            return
        k = max(ks)
        q = len(self.domain.hierarchies)
        for j, (h, m) in enumerate(zip(self.domain.hierarchies, self.marginals, strict=True)):
            small = np.zeros(h.height, dtype=np.int64)
            for lv in range(h.height):
                cnt = np.bincount(h.codes(lv), weights=m, minlength=len(h.level_values(lv)))
                small[lv] = int(cnt[(cnt > 0) & (cnt < k)].sum())
            bad = np.where(small > self.max_suppressed, _FAIL, np.uint8(0)).astype(np.uint8)
            shape = [1] * q
            shape[j] = h.height
            tags |= bad.reshape(shape)

    def evaluate(self, levels: Sequence[int]) -> _Eval:
        if self._quick is not None:
            lower = int(self._quick(levels, self._k))
            if lower > self.max_suppressed:  # rejected without the exact histogram
                empty = np.zeros(0, dtype=np.int64)
                return _Eval(True, False, lower, 0, empty, empty, np.zeros(0, dtype=bool))
        keys, counts = self.oracle.histogram(levels)
        s = self.domain.n_sensitive
        sens: IntArray | None = None
        if s > 1 or self.domain.sensitive is not None:
            ck = keys // s
            starts = np.flatnonzero(np.concatenate(([True], ck[1:] != ck[:-1])))
            class_keys = ck[starts]
            sizes = np.add.reduceat(counts, starts) if counts.size else counts
            if self.needs_sensitive:
                inv = np.cumsum(np.concatenate(([False], ck[1:] != ck[:-1])))
                flat = np.bincount(
                    inv * s + keys % s, weights=counts, minlength=class_keys.size * s
                )
                sens = flat.reshape(class_keys.size, s).astype(np.int64)
        else:
            class_keys, sizes = keys, counts
        viol = np.zeros(class_keys.size, dtype=bool)
        for m in self.models:
            if m.monotone_with_suppression:
                viol |= m.violating(sizes, sens, self.overall)
        # the monotone models alone already exceed the limit: so does every node below
        monotone_fail = int(sizes[viol].sum()) > self.max_suppressed
        for m in self.models:
            if not m.monotone_with_suppression:
                viol |= m.violating(sizes, sens, self.overall)
        suppressed = int(sizes[viol].sum())
        return _Eval(
            monotone_fail=monotone_fail,
            anonymous=suppressed <= self.max_suppressed,
            suppressed=suppressed,
            n_classes=int(class_keys.size - viol.sum()),
            class_keys=class_keys,
            sizes=sizes,
            violating=viol,
        )

    def objective(self, metric: str, levels: Sequence[int], ev: _Eval, bound: float) -> float:
        if metric in _SEPARABLE:
            if ev.suppressed == 0:
                return bound
            codes, _ = self.domain.decode(
                ev.class_keys[ev.violating] * self.domain.n_sensitive, levels
            )
            return bound + self.tables.penalty(metric, levels, codes, ev.sizes[ev.violating])
        kept = ev.sizes[~ev.violating]
        if metric == "discernibility":
            return float((kept.astype(np.float64) ** 2).sum() + ev.suppressed * self.n)
        if metric == "aecs":
            return float(kept.sum() / kept.size) if kept.size else math.inf
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")

    def all_metrics(self, levels: Sequence[int], ev: _Eval) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in METRICS:
            bound = 0.0
            if metric in _SEPARABLE:
                bound = float(self.tables.lower_bounds(metric, np.array([levels]))[0])
            out[metric] = self.objective(metric, levels, ev, bound)
        out["loss"] = out["loss"] / max(self.n * self.tables.q, 1)
        return out


def lattice(domain: Domain) -> Iterator[tuple[int, ...]]:
    """All level vectors in lexicographic order, one at a time (never as a list).

    >>> from trustspace.anon.hierarchy import Hierarchy
    >>> d = Domain([Hierarchy("a", [("x", "*")]), Hierarchy("b", [("1", "1", "*")])])
    >>> list(lattice(d))
    [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    """
    heights = domain.heights
    levels = [0] * len(heights)
    if any(h < 1 for h in heights):
        return
    while True:
        yield tuple(levels)
        j = len(heights) - 1
        while j >= 0 and levels[j] + 1 == heights[j]:
            levels[j] = 0
            j -= 1
        if j < 0:
            return
        levels[j] += 1


def _by_bound(tables: Sequence[FloatArray], mult: Sequence[int]) -> Iterator[tuple[float, int]]:
    """Every node as ``(bound, index)`` in increasing ``(bound, index)`` order, lazily.

    ``bound = sum_j tables[j][l_j]``. Per column the levels are ranked by their table value
    (stable: equal values by level); a node's rank vector has one parent (its last non-zero
    rank lowered by one) whose bound and index are no larger, so a heap seeded with the all-zero
    ranks and growing each popped node by its children yields the order of a stable sort of all
    bounds while holding only the frontier. (Floating-point addition is monotone, so a child's
    bound is never below its parent's; the one way the orders could differ is a strictly larger
    term absorbed by rounding into an equal sum at a lower level, which reorders equal bounds.)
    """
    q = len(tables)
    perm = [np.argsort(t, kind="stable").tolist() for t in tables]
    vals = [t.tolist() for t in tables]

    def key(ranks: tuple[int, ...]) -> tuple[float, int]:
        b, i = 0.0, 0
        for j in range(q):  # the same additions, in the same order, as _Tables.lower_bounds
            lv = perm[j][ranks[j]]
            b += vals[j][lv]
            i += lv * mult[j]
        return b, i

    root = (0,) * q
    heap: list[tuple[float, int, tuple[int, ...], int]] = [(*key(root), root, 0)]
    while heap:
        b, i, ranks, last = heapq.heappop(heap)
        yield b, i
        for j in range(last, q):
            if ranks[j] + 1 < len(perm[j]):
                child = (*ranks[:j], ranks[j] + 1, *ranks[j + 1 :])
                heapq.heappush(heap, (*key(child), child, j))


def search(
    oracle: HistogramOracle,
    domain: Domain,
    models: Sequence[PrivacyModel],
    *,
    suppression_limit: float = 0.0,
    metric: str = "loss",
    max_domain: int | None = None,
) -> Result:
    """Find the full-domain generalization with the least information loss.

    Args:
        oracle: answers ``histogram(levels)`` (and the marginals) for the data.
        domain: the quasi-identifiers' hierarchies and the sensitive attribute (the layout).
        models: privacy models that every released class must satisfy.
        suppression_limit: the fraction of records that may be suppressed (0 to 1).
        metric: objective to minimize: ``loss`` (default), ``entropy``, ``discernibility``
            or ``aecs``.
        max_domain: when set, nodes whose dense histogram (``domain.size(levels)``) is longer
            are not asked of the oracle (a federated driver's bound on vector length); the
            optimum is then exact among the other nodes and ``nodes_skipped`` says how many.

    Returns:
        The optimal ``Result``. Ties are broken towards the node visited first (lower bound,
        then lexicographically smaller levels).

    Raises:
        ConfigError: a bad metric or suppression limit, or a lattice over the caps
            (``check_lattice``: refused before the oracle is asked anything).
        DataError: no node of the lattice satisfies the models within the limit.

    Memory: one byte per lattice node (at most ``MAX_LATTICE_NODES``) plus what the visited
    nodes need; the level vectors are never materialised.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not 0.0 <= suppression_limit <= 1.0:
        raise ConfigError(f"suppression limit must be in [0, 1], got {suppression_limit!r}")
    if not models:
        raise ConfigError("give at least one privacy model (e.g. KAnonymity(5))")
    total = check_lattice(domain)
    t0 = time.perf_counter()
    ev_ = _Evaluator(oracle, domain, models, suppression_limit)
    separable = metric in _SEPARABLE
    monotone = ev_.max_suppressed == 0 or all(m.monotone_with_suppression for m in models)
    heights = [int(h) for h in domain.heights]
    q = len(heights)
    mult = [1] * q  # index of a node = levels . mult (lexicographic, last column fastest)
    for j in range(q - 2, -1, -1):
        mult[j] = mult[j + 1] * heights[j + 1]
    tables = [t.astype(np.float64) for t in ev_.tables.base[metric]] if separable else []
    tvals = [t.tolist() for t in tables]

    def levels_of(i: int) -> tuple[int, ...]:
        return tuple((i // mult[j]) % heights[j] for j in range(q))

    def bound_of(i: int) -> float:
        if not separable:
            return 0.0
        b = 0.0
        for j in range(q):  # as _Tables.lower_bounds: same additions, same order
            b += tvals[j][(i // mult[j]) % heights[j]]
        return b

    # tags, one byte per node: the monotone models fail here (and below) / hold here (and
    # above); evaluated and not anonymous; nothing to suppress here (and above). In monotone
    # mode "the monotone models" are all of them, so passes/fails mean anonymous/not anonymous.
    # Up- and down-sets are boxes of the array shaped as the lattice.
    tags = np.zeros(total, dtype=np.uint8)
    box = tags.reshape(heights)
    ev_.tag_marginal_fails(box)
    values: dict[int, float] = {}
    skipped: set[int] = set()
    best = math.inf
    best_idx = -1
    evaluated = 0

    def better(i: int, value: float) -> None:
        nonlocal best, best_idx
        values[i] = value
        if value < best or (value == best and bound_of(i) < bound_of(best_idx)):
            best, best_idx = value, i

    def check(i: int) -> bool | None:
        """Evaluate node ``i`` and tag what follows from it. Returns whether the monotone
        models hold (in monotone mode: whether it is anonymous); None when skipped."""
        nonlocal evaluated
        if i in skipped:
            return None
        levels = levels_of(i)
        if max_domain is not None and domain.size(levels) > max_domain:
            skipped.add(i)
            return None
        ev = ev_.evaluate(levels)
        evaluated += 1
        fails_down = not ev.anonymous if monotone else ev.monotone_fail
        if fails_down:
            box[tuple(slice(0, lv + 1) for lv in levels)] |= _FAIL
        else:
            up = box[tuple(slice(lv, None) for lv in levels)]
            up |= _PASS
            if monotone and ev.suppressed == 0:
                up |= _NO_SUPPRESSION
        if ev.anonymous:
            better(i, ev_.objective(metric, levels, ev, bound_of(i)))
        else:
            tags[i] |= _REJECTED
        return not fails_down

    def cut(i: int) -> bool:
        return separable and bound_of(i) >= best - _TIE * max(1.0, abs(best))

    order: Iterator[int] = (
        (i for _, i in _by_bound(tables, mult)) if separable else iter(range(total))
    )
    for idx in order:
        if cut(idx):
            break
        if tags[idx] & (_FAIL | _REJECTED) or idx in values or idx in skipped:
            continue
        if separable and monotone and tags[idx] & _NO_SUPPRESSION:
            better(idx, bound_of(idx))  # nothing suppressed: objective = bound
            continue
        if not tags[idx] & _PASS:
            # Flash-style: climb a chain of untagged candidates and binary-search it for the
            # boundary of the (monotone) models; a failing node high on the chain prunes
            # everything below it.
            chain = [idx]
            cur = idx
            while not tags[cur] & _PASS:
                lv = levels_of(cur)
                nxt = [cur + mult[j] for j in range(q) if lv[j] + 1 < heights[j]]
                nxt = [i for i in nxt if not tags[i] & _FAIL and not cut(i)]
                if not nxt:
                    break
                cur = min(nxt, key=lambda i: (bound_of(i), i))
                chain.append(cur)
            lo, hi = 0, len(chain) - 1
            while lo <= hi:
                mid = (lo + hi) // 2
                c = chain[mid]
                t = tags[c]
                ok = True if t & _PASS else False if t & _FAIL else check(c)
                if ok is None:
                    break
                if ok:
                    hi = mid - 1
                else:
                    lo = mid + 1
            if tags[idx] & (_FAIL | _REJECTED) or idx in values:
                continue
        if separable and monotone and tags[idx] & _NO_SUPPRESSION:
            better(idx, bound_of(idx))
        else:
            check(idx)
    if best_idx < 0:
        raise DataError(
            f"no generalization satisfies {', '.join(m.describe() for m in models)} with at most "
            f"{ev_.max_suppressed} suppressed records (of {ev_.n}); lower k/l, raise t or the "
            "suppression limit, or use hierarchies with a fully generalized top level"
        )
    levels = levels_of(best_idx)
    final = ev_.evaluate(levels)
    suppressed_keys = final.class_keys[final.violating] * domain.n_sensitive
    return Result(
        quasi_identifiers=domain.quasi_identifiers,
        levels=levels,
        models=tuple(m.describe() for m in models),
        suppression_limit=suppression_limit,
        metric=metric,
        n_records=ev_.n,
        suppressed_records=final.suppressed,
        n_classes=final.n_classes,
        suppressed_classes=frozenset(domain.labels(suppressed_keys, levels)),
        metrics=ev_.all_metrics(levels, final),
        nodes_total=total,
        nodes_evaluated=evaluated,
        nodes_skipped=len(skipped),
        seconds=time.perf_counter() - t0,
    )
