"""Local recoding: Mondrian-style top-down specialization within the hierarchies.

All records start fully generalized (top level of every hierarchy). A partition is split on one
quasi-identifier by specializing its value one level down the hierarchy: each child value with
enough records (a class that satisfies every privacy model) becomes its own partition, and the
children too small to stand alone are pooled into a remainder that keeps the parent value (if
the pool itself violates a model, the smallest valid children join it). Each partition is split
on the attribute with the best score: the Loss of its current value times the share of records
that the split specializes (chosen among four heuristics by the Loss it gives on Adult).
The released values are always values of the hierarchies, so the result reads like ARX's local
recoding; unlike full-domain generalization, classes may be generalized to different levels.

Works on the compressed histogram of distinct tuples (never on raw rows): a partition is a set
of distinct tuples with their counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from trustspace.anon.domain import Domain, LocalOracle
from trustspace.anon.models import KAnonymity, PrivacyModel
from trustspace.anon.search import Result, _Tables
from trustspace.errors import DataError

IntArray = npt.NDArray[np.int64]


def mondrian(
    oracle: LocalOracle, domain: Domain, models: Sequence[PrivacyModel]
) -> tuple[IntArray, IntArray, Result]:
    """Partition the distinct tuples of ``oracle``; returns per-tuple levels and codes.

    Returns:
        ``(levels, codes, result)``: for each distinct tuple of the oracle (``m x q``), the
        level of each released value and its code at that level, and the summary ``Result``
        (``levels`` empty: the levels differ by class).

    Raises:
        DataError: even the fully generalized table violates the models.
    """
    t0 = time.perf_counter()
    tables = _Tables(domain, oracle.marginals())
    q = len(domain.hierarchies)
    tuples = oracle.tuples
    counts = oracle.counts
    sens = oracle.sensitive
    n = int(counts.sum())
    s = domain.n_sensitive
    need_sens = any(m.needs_sensitive for m in models)
    overall = None
    if need_sens:
        sc = oracle.sensitive_counts()
        assert sc is not None
        overall = sc / max(n, 1)
    codes_at = [[h.codes(lv) for lv in range(h.height)] for h in domain.hierarchies]
    loss_at = [[1.0 - p for p in pl] for pl in tables.pen["loss"]]

    def stats(groups: IntArray, n_groups: int, idx: IntArray) -> tuple[IntArray, IntArray | None]:
        w = counts[idx]
        sizes = np.bincount(groups, weights=w, minlength=n_groups).astype(np.int64)
        sm = None
        if need_sens:
            assert sens is not None
            flat = np.bincount(groups * s + sens[idx], weights=w, minlength=n_groups * s)
            sm = flat.reshape(n_groups, s).astype(np.int64)
        return sizes, sm

    def bad(sizes: IntArray, sm: IntArray | None) -> npt.NDArray[np.bool_]:
        viol = sizes == 0
        for m in models:
            viol = viol | m.violating(sizes, sm, overall)
        return np.asarray(viol)

    def violating(groups: IntArray, n_groups: int, idx: IntArray) -> npt.NDArray[np.bool_]:
        return bad(*stats(groups, n_groups, idx))

    top = np.array([h.height - 1 for h in domain.hierarchies], dtype=np.int64)
    top_codes = np.column_stack([codes_at[j][top[j]][tuples[:, j]] for j in range(q)])
    roots, root_of = np.unique(top_codes, axis=0, return_inverse=True)
    root_of = root_of.ravel()
    root_viol = violating(root_of, roots.shape[0], np.arange(counts.size))
    if root_viol.any():
        raise DataError(
            f"the fully generalized table violates {', '.join(m.describe() for m in models)}; "
            "Mondrian cannot release it: lower k/l or raise t"
        )
    out_levels = np.empty((counts.size, q), dtype=np.int64)
    out_codes = np.empty((counts.size, q), dtype=np.int64)
    # partition: (tuple indices, levels, codes, attributes still splittable)
    stack: list[tuple[IntArray, IntArray, IntArray, frozenset[int]]] = [
        (np.flatnonzero(root_of == r), top.copy(), roots[r].astype(np.int64), frozenset(range(q)))
        for r in range(roots.shape[0])
    ]
    n_parts = 0

    def plan(
        idx: IntArray, lv: IntArray, cd: IntArray, j: int
    ) -> tuple[float, IntArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None:
        """Split on ``j``: (score, child codes, children kept, children pooled)."""
        child_lv = int(lv[j]) - 1
        child = codes_at[j][child_lv][tuples[idx, j]]
        n_child = len(domain.hierarchies[j].level_values(child_lv))
        sizes, sm = stats(child, n_child, idx)
        keep = ~bad(sizes, sm)
        if not keep.any():
            return None
        pool = ~keep & (sizes > 0)
        if pool.any():
            # the pooled remainder keeps the parent value; it must be a valid class too,
            # else the smallest valid children join it
            by_size = np.flatnonzero(keep)[np.argsort(sizes[keep], kind="stable")]
            ok = False
            for extra in [-1, *by_size.tolist()]:
                if extra >= 0:
                    pool[extra] = True
                    keep[extra] = False
                psm = None if sm is None else sm[pool].sum(axis=0, keepdims=True)
                if not bad(np.array([sizes[pool].sum()]), psm)[0]:
                    ok = True
                    break
            if not ok or not keep.any():
                return None
        # score: the width (Loss) of the value being refined, times the share of the
        # partition's records that get the finer value (pooled records keep the wide one)
        parent_loss = float(loss_at[j][int(lv[j])][int(cd[j])])
        score = parent_loss * float(sizes[keep].sum()) / float(sizes.sum())
        return score, child, keep, pool

    k_min = max((m.k for m in models if isinstance(m, KAnonymity)), default=1)
    while stack:
        idx, lv, cd, open_attrs = stack.pop()
        if int(counts[idx].sum()) < 2 * k_min:
            # no split into two valid classes exists: only specializations that keep every
            # record together, i.e. each attribute down to its lowest value shared by all
            lv = lv.copy()
            cd = cd.copy()
            for j in range(q):
                while lv[j] > 0:
                    child = codes_at[j][int(lv[j]) - 1][tuples[idx, j]]
                    if child.min() != child.max():
                        break
                    lv[j] -= 1
                    cd[j] = int(child[0])
            out_levels[idx] = lv
            out_codes[idx] = cd
            n_parts += 1
            continue
        best: tuple[float, int, IntArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None
        best = None
        for j in open_attrs:
            if lv[j] == 0:
                continue
            p = plan(idx, lv, cd, j)
            if p is not None and (best is None or p[0] > best[0]):
                best = (p[0], j, p[1], p[2], p[3])
        done = best is not None
        if best is not None:
            _, j, child, keep, pool = best
            if pool.any():
                stack.append((idx[pool[child]], lv, cd, open_attrs - {j}))
            order_c = np.argsort(child, kind="stable")
            sorted_c = child[order_c]
            for g in np.flatnonzero(keep).tolist():
                lo, hi = np.searchsorted(sorted_c, [g, g + 1])
                nlv = lv.copy()
                ncd = cd.copy()
                nlv[j] = int(lv[j]) - 1
                ncd[j] = g
                stack.append((idx[order_c[lo:hi]], nlv, ncd, open_attrs))
        if not done:
            out_levels[idx] = lv
            out_codes[idx] = cd
            n_parts += 1
    result = _summarize(domain, tables, oracle, models, out_levels, out_codes, n)
    return (
        out_levels,
        out_codes,
        Result(
            quasi_identifiers=domain.quasi_identifiers,
            levels=(),
            models=tuple(m.describe() for m in models),
            suppression_limit=0.0,
            metric="loss",
            n_records=n,
            suppressed_records=0,
            n_classes=result[0],
            suppressed_classes=frozenset(),
            metrics=result[1],
            nodes_total=0,
            nodes_evaluated=n_parts,
            seconds=time.perf_counter() - t0,
            method="mondrian",
        ),
    )


def _summarize(
    domain: Domain,
    tables: _Tables,
    oracle: LocalOracle,
    models: Sequence[PrivacyModel],
    levels: IntArray,
    codes: IntArray,
    n: int,
) -> tuple[int, dict[str, float]]:
    """Class count and metrics of a local recoding (per distinct tuple levels/codes)."""
    counts = oracle.counts.astype(np.float64)
    q = len(domain.hierarchies)
    loss = 0.0
    ent = 0.0
    marg = oracle.marginals()
    for j, h in enumerate(domain.hierarchies):
        m = marg[j].astype(np.float64)
        for lv in range(h.height):
            sel = levels[:, j] == lv
            if not sel.any():
                continue
            lg = 1.0 - tables.pen["loss"][j][lv]
            loss += float((counts[sel] * lg[codes[sel, j]]).sum())
            cnt = np.bincount(h.codes(lv), weights=m, minlength=len(h.level_values(lv)))
            mv = m[oracle.tuples[sel, j]]
            ent += float((counts[sel] * -np.log2(mv / cnt[codes[sel, j]])).sum())
    # classes: identical released tuples form one class
    _, inv = np.unique(np.column_stack([levels, codes]), axis=0, return_inverse=True)
    sizes = np.bincount(inv.ravel(), weights=counts)
    return int(sizes.size), {
        "loss": loss / max(n * q, 1),
        "discernibility": float((sizes**2).sum()),
        "entropy": ent,
        "aecs": float(n / sizes.size) if sizes.size else math.inf,
    }
