"""Federated MST: a differentially private synthetic table from the nodes' noisy marginals.

MST (McKenna, Miklau and Sheldon, "Winning the NIST Contest", JPC 2021) measures every 1-way
marginal, picks a maximum spanning tree of 2-way marginals that the 1-way model explains
worst, measures those, fits a graphical model to all measurements (Private-PGM, ``mbi``) and
samples rows from it. Here every measurement is a ``marginals`` query: the nodes add the
distributed discrete Gaussian inside secure aggregation and charge each step to their own
ledgers, so nobody sees a real marginal. Each step costs a third of the zCDP budget
``rho = rho_for(epsilon, delta)``:

1. **1-way**: all d 1-way marginals in one query (rho/3);
2. **selection**: central MST chooses each edge with the exponential mechanism on the exact
   L1 error of the independence model, which no party here could compute; instead all
   d(d-1)/2 2-way marginals are measured in one query (rho/3; split in chunks of at most 64
   tables, each with its share), each pair is scored by the L1 distance between its noisy
   table and the independence model of the 1-way estimates less the noise's expected share,
   and Kruskal's algorithm takes the maximum spanning tree: post-processing of DP output;
3. **2-way**: the d - 1 tree edges measured again (rho/3).

The fit uses the 1-way measurements, both measurements of each tree edge (each with its
noise std), by ``mbi.estimation.mirror_descent``; rows are drawn i.i.d. from the fitted tree
model (the root's marginal, then each child given its parent), with a generator seeded from
the OS CSPRNG; a binned numeric value is drawn uniformly within its bin.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trustspace.dp import epsilon_of, rho_for
from trustspace.errors import ConfigError, PolicyError
from trustspace.stats import ColumnType, Query
from trustspace.synth._domain import DEFAULT_BINS, SynthDomain, synth_domain

if TYPE_CHECKING:
    from trustspace.api import Federation

__all__ = ["synthesize"]

#: Most tables one measurement query holds (``stats._query.MAX_MARGINALS``).
_CHUNK = 64
#: Mirror-descent iterations of the fit.
FIT_ITERS = 2000


def synthesize(
    fed: Federation,
    dataset: str,
    columns: Sequence[str],
    *,
    epsilon: float,
    delta: float = 1e-9,
    rows: int | None = None,
    method: str = "mst",
    bins: int | Mapping[str, int | Sequence[float]] = DEFAULT_BINS,
    where: str | None = None,
) -> pd.DataFrame:
    """See ``Federation.synthesize``."""
    if method != "mst":
        raise ConfigError(
            f"synthesize: method {method!r}: only 'mst' is available (AIM is not implemented yet)"
        )
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0):
        raise ConfigError(f"synthesize: rows must be a positive integer, got {rows!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
        raise ConfigError(f"synthesize: epsilon must be > 0, got {epsilon!r}")
    schema, _ = fed._schema(dataset)
    dom = synth_domain(schema, columns, bins)
    rho = rho_for(float(epsilon), float(delta))
    _check_budget(fed, dataset, rho, epsilon, delta)
    started = time.perf_counter()
    steps: list[dict[str, Any]] = []
    names = dom.names

    def measure(tables: Sequence[tuple[str, ...]], step_rho: float, step: str) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for i in range(0, len(tables), _CHUNK):
            chunk = tables[i : i + _CHUNK]
            r = step_rho * len(chunk) / len(tables)
            eps = epsilon_of(r, delta)
            used = {c for t in chunk for c in t}
            params: dict[str, Any] = {"marginals": [list(t) for t in chunk]}
            cuts = {k: v for k, v in dom.cuts().items() if k in used}
            values = {k: v for k, v in dom.values().items() if k in used}
            if cuts:
                params["cuts"] = cuts
            if values:
                params["values"] = values
            cols = tuple(dict.fromkeys(c for t in chunk for c in t))
            query = Query("marginals", dataset, cols, where, params)
            got = fed._marginals(query, "secagg", eps, delta, schema)
            out.update(got)
            steps.append(
                {"step": step, "tables": len(chunk), "rho": r, "epsilon": eps, "delta": delta,
                 "noise_std": float(next(iter(got.values())).attrs["std"])}
            )  # fmt: skip
        return out

    one = measure([(c,) for c in names], rho / 3, "1-way marginals")
    pairs = list(itertools.combinations(names, 2))
    sel = measure(pairs, rho / 3, "selection (all 2-way marginals)")
    tree = _max_spanning_tree(dom, one, sel)
    two = measure(tree, rho / 3, "2-way marginals of the tree")
    model, total = _fit(dom, one, [(e, sel[e]) for e in tree] + [(e, two[e]) for e in tree])
    n = rows if rows is not None else max(1, round(total))
    codes = _sample(dom, model, tree, n)
    frame = _decode(dom, codes)
    spent = sum(s["rho"] for s in steps)
    frame.attrs["provenance"] = {
        "dataset": dataset,
        "columns": list(names),
        "where": where,
        "epsilon": float(epsilon),
        "delta": float(delta),
        "rho": spent,
        "method": "mst (federated: noisy selection)",
        "rows": n,
        "tree": [list(e) for e in tree],
        "steps": steps,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "bins": {c.name: list(c.edges) for c in dom.columns if c.edges},
    }
    frame.attrs["report"] = utility_report(dom, codes, one, sel)
    return frame


def _check_budget(fed: Federation, dataset: str, rho: float, epsilon: float, delta: float) -> None:
    budget = fed.budget(dataset)
    left = budget["rho_remaining"]
    if left.isna().any():
        raise PolicyError(
            f"synthesize: node(s) {', '.join(left[left.isna()].index)} answer no DP query on "
            f"{dataset!r} (no [policy.dp])"
        )
    short = left[left < rho * (1 - 1e-9)]
    if not short.empty:
        rem = ", ".join(
            f"{n}: epsilon {budget.loc[n, 'epsilon_remaining']:.4g} (rho {left[n]:.4g})"
            for n in short.index
        )
        raise PolicyError(
            f"synthesize: epsilon {epsilon:g} at delta {delta:g} (rho {rho:.4g}) is beyond the "
            f"remaining budget at {rem}; ask for less, nothing was spent"
        )


def _prob(table: np.ndarray) -> np.ndarray:
    t = np.clip(np.asarray(table, dtype=np.float64), 0.0, None)
    s = t.sum()
    return t / s if s > 0 else np.full(t.shape, 1.0 / t.size)


def _max_spanning_tree(
    dom: SynthDomain, one: Mapping[Any, pd.Series], sel: Mapping[Any, pd.Series]
) -> list[tuple[str, str]]:
    """Kruskal over the pairs scored by how badly independence explains their noisy table
    (L1, less the part the noise alone contributes): post-processing only."""
    total = float(np.mean([np.clip(s.to_numpy(), 0, None).sum() for s in one.values()]))
    scores = {}
    for (a, b), table in sel.items():
        pa, pb = _prob(one[(a,)].to_numpy()), _prob(one[(b,)].to_numpy())
        xhat = np.outer(pa, pb).ravel() * total
        y = table.to_numpy(dtype=np.float64)
        noise = float(table.attrs["std"]) * math.sqrt(2 / math.pi) * y.size
        scores[(a, b)] = float(np.abs(y - xhat).sum()) - noise
    parent = {c: c for c in dom.names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tree = []
    for (a, b), _ in sorted(scores.items(), key=lambda kv: -kv[1]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            tree.append((a, b))
    return tree


def _fit(
    dom: SynthDomain,
    one: Mapping[Any, pd.Series],
    two: Sequence[tuple[tuple[str, str], pd.Series]],
) -> tuple[Any, float]:
    """The graphical model of all measurements (mbi's mirror descent) and its total."""
    try:
        from mbi import Domain, LinearMeasurement, estimation
    except ImportError:  # pragma: no cover - a dependency
        raise ConfigError(
            "synthesize needs mbi (Private-PGM): pip install 'trustspace[synth]'"
        ) from None
    domain = Domain(list(dom.names), list(dom.shape))
    ms = [
        LinearMeasurement(s.to_numpy(dtype=np.float64), (c,), float(s.attrs["std"]))
        for (c,), s in one.items()
    ]
    ms += [
        LinearMeasurement(s.to_numpy(dtype=np.float64), clique, float(s.attrs["std"]))
        for clique, s in two
    ]
    total = float(np.mean([max(1.0, s.to_numpy().sum()) for s in one.values()]))
    model = estimation.mirror_descent(domain, ms, known_total=total, iters=FIT_ITERS)
    return model, total


def _sample(dom: SynthDomain, model: Any, tree: list[tuple[str, str]], n: int) -> pd.DataFrame:
    """``n`` rows drawn i.i.d. from the fitted tree model: a root, then each child given its
    parent (the model's 2-way marginals), breadth first."""
    rng = np.random.default_rng(secrets.randbits(128))
    names = dom.names
    adj: dict[str, list[str]] = {c: [] for c in names}
    for a, b in tree:
        adj[a].append(b)
        adj[b].append(a)
    codes: dict[str, np.ndarray] = {}
    for root in names:
        if root in codes:
            continue
        p = _prob(np.asarray(model.project((root,)).datavector(flatten=False)))
        codes[root] = rng.choice(p.size, size=n, p=p)
        queue = [root]
        while queue:
            u = queue.pop(0)
            for v in adj[u]:
                if v in codes:
                    continue
                pair = tuple(c for c in names if c in (u, v))
                joint = np.clip(np.asarray(model.project(pair).datavector(flatten=False)), 0, None)
                if pair[0] != u:
                    joint = joint.T  # rows: the parent u
                cond = joint / np.where(
                    joint.sum(axis=1, keepdims=True) > 0, joint.sum(axis=1, keepdims=True), 1
                )
                cond[joint.sum(axis=1) == 0] = 1.0 / joint.shape[1]
                cdf = np.cumsum(cond, axis=1)
                u01 = rng.random(n)
                child = (u01[:, None] > cdf[codes[u]]).sum(axis=1)
                codes[v] = np.minimum(child, joint.shape[1] - 1)
                queue.append(v)
    return pd.DataFrame({c: codes[c] for c in names})


def _decode(dom: SynthDomain, codes: pd.DataFrame) -> pd.DataFrame:
    """Codes to values: a level, or a value drawn uniformly within its bin (an integer one
    for an int column)."""
    rng = np.random.default_rng(secrets.randbits(128))
    out = {}
    for col in dom.columns:
        k = codes[col.name].to_numpy()
        if col.levels:
            levels = np.array(col.levels, dtype=object)
            vals: Any = levels[k]
            if col.type is ColumnType.INT:
                vals = vals.astype(np.int64)
            elif col.type is ColumnType.BOOL:
                vals = vals.astype(bool)
            out[col.name] = vals
            continue
        lo = np.asarray(col.edges[:-1])[k]
        hi = np.asarray(col.edges[1:])[k]
        if col.bounds is not None:  # within the declared bounds, as every real value is
            lo, hi = np.maximum(lo, col.bounds[0]), np.minimum(hi, col.bounds[1])
            hi = np.maximum(lo, hi)
        if col.type is ColumnType.INT:
            a = np.ceil(lo).astype(np.int64)
            closed = (k == len(col.edges) - 2) | (hi < np.asarray(col.edges[1:])[k])
            b = np.where(closed, np.floor(hi), np.ceil(hi) - 1).astype(np.int64)
            b = np.maximum(a, b)
            out[col.name] = rng.integers(a, b + 1)
        else:
            out[col.name] = rng.uniform(lo, hi)
    return pd.DataFrame(out)


def utility_report(
    dom: SynthDomain,
    codes: pd.DataFrame,
    one: Mapping[Any, pd.Series],
    pairs: Mapping[Any, pd.Series],
) -> pd.DataFrame:
    """Per column and per pair: the TVD between the synthetic table's marginal and the DP
    estimate of the real one (the real marginals are never released), with the noise std of
    the estimate's cells: a TVD near the noise's own share says nothing worse than noise."""
    rows = []
    shape = dict(zip(dom.names, dom.shape, strict=True))
    for cols, est in [*one.items(), *pairs.items()]:
        flat = np.zeros(math.prod(shape[c] for c in cols))
        idx = np.zeros(len(codes), dtype=np.int64)
        for c in cols:
            idx = idx * shape[c] + codes[c].to_numpy()
        np.add.at(flat, idx, 1)
        syn = flat / max(1, flat.sum())
        real = _prob(est.to_numpy())
        total = max(1.0, float(np.clip(est.to_numpy(), 0, None).sum()))
        rows.append(
            {
                "marginal": " x ".join(cols),
                "tvd_vs_dp_estimate": 0.5 * float(np.abs(syn - real).sum()),
                "noise_std_cells": float(est.attrs["std"]),
                "noise_share": 0.5
                * float(est.attrs["std"])
                * math.sqrt(2 / math.pi)
                * est.size
                / total,
            }
        )
    return pd.DataFrame(rows).set_index("marginal")
