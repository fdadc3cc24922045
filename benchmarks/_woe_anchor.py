"""WOE/IV secure-product figures for the vertical benchmark (issue 17), in process.

``measure_product``: the Paillier secure product of one round holding ``features`` binned
features of node "telco" under node "bank"'s label filter (what WOE/IV needs beyond the local
totals), over ``rows`` aligned rows with 2048-bit keys, driven by ``run_local``; it checks the
shares against the clear counts. ``measure_phe``: the same computation with ``phe`` (per-row
encryption of the label, per-bin homomorphic sums), measured on ``sample`` rows and scaled.
The lead's benchmark puts both side by side; ``python benchmarks/_woe_anchor.py [rows]`` prints
them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from trustspace.stats import Round, Term
from trustspace.vertical._party import run_local
from trustspace.vertical.product import ProductParty
from trustspace.vertical.terms import clear_round, local_factors, plan_round


def _inputs(rows: int, features: int, bins: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(7)
    frames = {
        "bank": pd.DataFrame({"label": rng.integers(0, 2, rows)}),
        "telco": pd.DataFrame({f"f{j}": rng.normal(0, 1, rows) for j in range(features)}),
    }
    owners = {"bank.label": "bank", **{f"telco.f{j}": "telco" for j in range(features)}}
    edges = [float(e) for e in np.linspace(-2.5, 2.5, bins + 1)]
    terms = tuple(Term.bins(f"telco.f{j}", edges) for j in range(features))
    return frames, owners, edges, Round("view", '"bank.label" = 1', terms)


def measure_product(rows: int = 100_000, features: int = 10, bins: int = 10) -> dict[str, Any]:
    """Seconds for the secure product (planning, factors, keys, encryption, evaluation,
    decryption) and whether the shares sum exactly to the clear counts."""
    frames, owners, _, rnd = _inputs(rows, features, bins)
    t0 = time.perf_counter()
    plan = plan_round(rnd, owners, ["bank", "telco"])
    parties = {k: ProductParty(k, plan, local_factors(plan, k, frames[k])) for k in frames}
    run_local(parties)
    seconds = time.perf_counter() - t0
    total = parties["bank"].share + parties["telco"].share
    exact = bool(np.array_equal(total, rnd.encode(clear_round(rnd, owners, frames))))
    return {"rows": rows, "features": features, "bins": bins, "seconds": seconds, "exact": exact}


def measure_phe(
    rows: int = 100_000, features: int = 10, bins: int = 10, sample: int = 300
) -> dict[str, Any]:
    """phe at 2048 bits: encryptions and additions per second on a sample, scaled to
    ``rows`` encryptions plus ``features * rows`` additions."""
    import phe  # the reference implementation (test extra)

    frames, _, edges, _ = _inputs(max(rows, sample), features, bins)
    pk, _ = phe.generate_paillier_keypair(n_length=2048)
    labels = frames["bank"]["label"].to_numpy()[:sample]
    t = time.perf_counter()
    cts = [pk.encrypt(int(v)) for v in labels]
    enc = (time.perf_counter() - t) / sample
    slot = np.searchsorted(edges[1:-1], frames["telco"]["f0"].to_numpy()[:sample], side="right")
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        acc = [pk.encrypt(0, r_value=1)] * (bins + 2)
        for c, b in zip(cts, slot, strict=True):
            acc[b] = acc[b] + c
    add = (time.perf_counter() - t) / (sample * reps)
    return {
        "encrypt_per_s": 1 / enc,
        "add_per_s": 1 / add,
        "seconds": rows * enc + features * rows * add,
        "sample": sample,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    ours = measure_product(n)
    ref = measure_phe(n)
    print(ours)
    print(ref)
    print(f"ratio {ref['seconds'] / ours['seconds']:.1f}x")
