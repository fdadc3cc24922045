"""Throughput of the exact discrete Gaussian sampler, beside OpenDP's in the same run.

    python benchmarks/dp_sampler.py [--quick]

Both draw N_Z(sigma^2) vectors from the OS CSPRNG with exact arithmetic (CKS20). Reports the
best of several runs (samples/s) and the ratio trustspace / OpenDP, per sigma^2 and length;
writes benchmarks/results/dp_sampler.json with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from fractions import Fraction
from pathlib import Path

from _common import machine, versions

from trustspace.dp import discrete_gaussian_array

HERE = Path(__file__).resolve().parent


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    try:
        import opendp.prelude as dp

        dp.enable_features("contrib")
    except ImportError:  # pragma: no cover - bench extra not installed
        dp = None
    lengths = [10_000] if args.quick else [10_000, 100_000]
    sigma2s = [Fraction(25), Fraction(10**6), Fraction(2**80)]
    repeats = 3 if args.quick else 5
    rows = []
    for n in lengths:
        for s2 in sigma2s:
            ours = best(lambda s2=s2, n=n: discrete_gaussian_array(s2, n), repeats)
            row = {
                "sigma2": str(s2),
                "length": n,
                "trustspace_s": ours,
                "trustspace_per_s": n / ours,
            }
            if dp is not None:
                meas = dp.m.make_gaussian(
                    dp.vector_domain(dp.atom_domain(T=dp.i64), size=n),
                    dp.l2_distance(T=dp.i64),
                    scale=math.sqrt(s2),
                )
                zeros = [0] * n
                theirs = best(lambda meas=meas, zeros=zeros: meas(zeros), repeats)
                row |= {"opendp_s": theirs, "opendp_per_s": n / theirs, "ratio": theirs / ours}
            rows.append(row)
            print(
                f"N_Z({float(s2):.3g}) x {n}: trustspace {ours * 1e3:.1f} ms"
                + (
                    f", OpenDP {row['opendp_s'] * 1e3:.1f} ms, speed-up {row['ratio']:.2f}x"
                    if dp
                    else ""
                ),
                flush=True,
            )
    out = {"machine": machine(), "versions": versions("opendp", "numpy"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dp_sampler.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
