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
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trustspace.anon.domain import Domain, HistogramOracle
from trustspace.anon.models import KAnonymity, PrivacyModel
from trustspace.errors import ConfigError, DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

METRICS = ("loss", "discernibility", "entropy", "aecs")
_SEPARABLE = ("loss", "entropy")
_TIE = 1e-12  # relative slack when comparing a bound with the best objective


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

    def marginal_fails(self, nodes: IntArray) -> npt.NDArray[np.bool_]:
        """Nodes that fail k-anonymity on the marginals alone, without any histogram.

        A record whose generalized value of one column is shared by fewer than ``k`` records
        lies in a class smaller than ``k``: it must be suppressed. So the records in such
        values, for the worst column, bound the suppression from below.
        """
        ks = [m.k for m in self.models if isinstance(m, KAnonymity)]
        out = np.zeros(nodes.shape[0], dtype=bool)
        if not ks:
            return out
        k = max(ks)
        lower = np.zeros(nodes.shape[0], dtype=np.int64)
        for j, (h, m) in enumerate(zip(self.domain.hierarchies, self.marginals, strict=True)):
            small = np.zeros(h.height, dtype=np.int64)
            for lv in range(h.height):
                cnt = np.bincount(h.codes(lv), weights=m, minlength=len(h.level_values(lv)))
                small[lv] = int(cnt[(cnt > 0) & (cnt < k)].sum())
            lower = np.maximum(lower, small[nodes[:, j]])
        return np.asarray(lower > self.max_suppressed)

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


def lattice(domain: Domain) -> IntArray:
    """All level vectors, one per row, in lexicographic order."""
    return np.array(list(itertools.product(*(range(h) for h in domain.heights))), dtype=np.int64)


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
        ConfigError: a bad metric or suppression limit.
        DataError: no node of the lattice satisfies the models within the limit.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not 0.0 <= suppression_limit <= 1.0:
        raise ConfigError(f"suppression limit must be in [0, 1], got {suppression_limit!r}")
    if not models:
        raise ConfigError("give at least one privacy model (e.g. KAnonymity(5))")
    t0 = time.perf_counter()
    ev_ = _Evaluator(oracle, domain, models, suppression_limit)
    nodes = lattice(domain)
    total = nodes.shape[0]
    separable = metric in _SEPARABLE
    bounds = ev_.tables.lower_bounds(metric, nodes) if separable else np.zeros(total)
    order = np.argsort(bounds, kind="stable")
    monotone = ev_.max_suppressed == 0 or all(m.monotone_with_suppression for m in models)
    heights = np.array(domain.heights, dtype=np.int64)
    mult = np.ones(len(heights), dtype=np.int64)  # index of a node = levels . mult
    for j in range(len(heights) - 2, -1, -1):
        mult[j] = mult[j + 1] * heights[j + 1]
    # tags: the monotone models fail here (and below) / hold here (and above); evaluated and
    # not anonymous; nothing to suppress here (and above). In monotone mode "the monotone
    # models" are all of them, so passes/fails mean anonymous/not anonymous.
    fails = ev_.marginal_fails(nodes)
    passes = np.zeros(total, dtype=bool)
    rejected = np.zeros(total, dtype=bool)
    no_suppression = np.zeros(total, dtype=bool)
    values: dict[int, float] = {}
    skipped: set[int] = set()
    best = math.inf
    best_idx = -1
    evaluated = 0

    def better(i: int, value: float) -> None:
        nonlocal best, best_idx
        values[i] = value
        if value < best or (value == best and bounds[i] < bounds[best_idx]):
            best, best_idx = value, i

    def check(i: int) -> bool | None:
        """Evaluate node ``i`` and tag what follows from it. Returns whether the monotone
        models hold (in monotone mode: whether it is anonymous); None when skipped."""
        nonlocal evaluated
        if i in skipped:
            return None
        levels = tuple(int(x) for x in nodes[i])
        if max_domain is not None and domain.size(levels) > max_domain:
            skipped.add(i)
            return None
        ev = ev_.evaluate(levels)
        evaluated += 1
        fails_down = not ev.anonymous if monotone else ev.monotone_fail
        if fails_down:
            fails[(nodes <= nodes[i]).all(axis=1)] = True
        else:
            up = (nodes >= nodes[i]).all(axis=1)
            passes[up] = True
            if monotone and ev.suppressed == 0:
                no_suppression[up] = True
        if ev.anonymous:
            better(i, ev_.objective(metric, levels, ev, float(bounds[i])))
        else:
            rejected[i] = True
        return not fails_down

    def cut(i: int) -> bool:
        return separable and bounds[i] >= best - _TIE * max(1.0, abs(best))

    for idx in order.tolist():
        if cut(idx):
            break
        if fails[idx] or rejected[idx] or idx in values or idx in skipped:
            continue
        if separable and monotone and no_suppression[idx]:
            better(idx, float(bounds[idx]))  # nothing suppressed: objective = bound
            continue
        if not passes[idx]:
            # Flash-style: climb a chain of untagged candidates and binary-search it for the
            # boundary of the (monotone) models; a failing node high on the chain prunes
            # everything below it.
            chain = [idx]
            cur = idx
            while not passes[cur]:
                lv = nodes[cur]
                nxt = [cur + int(mult[j]) for j in range(len(lv)) if lv[j] + 1 < heights[j]]
                nxt = [i for i in nxt if not fails[i] and not cut(i)]
                if not nxt:
                    break
                cur = min(nxt, key=lambda i: (bounds[i], i))
                chain.append(cur)
            lo, hi = 0, len(chain) - 1
            while lo <= hi:
                mid = (lo + hi) // 2
                c = chain[mid]
                ok = True if passes[c] else False if fails[c] else check(c)
                if ok is None:
                    break
                if ok:
                    hi = mid - 1
                else:
                    lo = mid + 1
            if fails[idx] or rejected[idx] or idx in values:
                continue
        if separable and monotone and no_suppression[idx]:
            better(idx, float(bounds[idx]))
        else:
            check(idx)
    if best_idx < 0:
        raise DataError(
            f"no generalization satisfies {', '.join(m.describe() for m in models)} with at most "
            f"{ev_.max_suppressed} suppressed records (of {ev_.n}); lower k/l, raise t or the "
            "suppression limit, or use hierarchies with a fully generalized top level"
        )
    levels = tuple(int(x) for x in nodes[best_idx])
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
