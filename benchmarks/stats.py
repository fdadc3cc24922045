"""Federated statistics benchmark: `describe` end to end over nodes as separate processes.

    python benchmarks/stats.py --quick    # 3 nodes x 200,000 rows, 20 latency samples
    python benchmarks/stats.py            # 3 nodes x 1,000,000 rows, 100 latency samples

1. ``describe`` of 5 numeric columns (with nulls) over 3 nodes, each a real ``trustspace node``
   process over its own CSV file, the aggregator a real process, mutual TLS on loopback: the
   analyst's end-to-end time for ``method="secagg"`` and ``method="paillier"`` (3072-bit key,
   made before timing), side by side with pandas' ``describe()`` on the concatenated rows
   (already in memory) in the same run. Target: <= 3x pandas. Also: pandas including reading
   the three CSV files, for context.
2. Protocol overhead: p50 / p95 latency of a ``count`` over 3 small nodes (1,000 rows each).
   Targets: p50 <= 50 ms (secagg), <= 100 ms (paillier, 3072-bit). A count holds record counts
   only, which the Paillier path sums by secure aggregation without encrypting them, so the
   latency of a ``mean`` (whose sum the nodes encrypt) is reported as well.

Writes benchmarks/results/stats.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions

from trustspace.api import Credentials, Federation
from trustspace.testing import LocalSpace, NodeSpec

RESULTS = Path(__file__).resolve().parent / "results" / "stats.json"
COLUMNS = ["income", "age", "hours", "score", "debt"]
NODES = ["org-a", "org-b", "org-c"]


def make_partition(path: Path, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)  # benchmark data only; not cryptographic
    df = pd.DataFrame(
        {
            "income": np.round(rng.lognormal(10.5, 0.6, rows), 2),
            "age": rng.integers(18, 91, rows).astype(float),
            "hours": np.round(rng.normal(40, 12, rows).clip(1, 99), 1),
            "score": np.round(rng.normal(0, 1, rows), 4),
            "debt": np.round(rng.exponential(5000, rows), 2),
        }
    )
    for i, col in enumerate(COLUMNS):  # about 1% nulls per column
        df.loc[rng.random(rows) < 0.01 * (i + 1) / 3, col] = np.nan
    df.to_csv(path, index=False)
    return df


def spec(name: str, path: Path) -> NodeSpec:
    return NodeSpec(
        name=name,
        datasets={"t": {"path": path, "columns": dict.fromkeys(COLUMNS, "float")}},
        policy={"min_group_size": 10},
        rules=[{"analysts": ["alice"], "operations": ["*"]}],
    )


def timed(fn: Any, reps: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def run_space(root: Path, parts: dict[str, Path]) -> tuple[LocalSpace, Federation]:
    space = LocalSpace(root)
    space.init_ca(list(parts), analysts=["alice"])
    target = space.start_all([spec(n, p) for n, p in parts.items()])
    fed = Federation.connect(
        target, credentials=Credentials.from_dir(space.identity("alice")), key_bits=3072
    )
    return space, fed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = 200_000 if args.quick else 1_000_000
    samples = 20 if args.quick else 100
    reps = 2 if args.quick else 3
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {
        "benchmark": "stats",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions("numpy", "pandas", "duckdb", "grpcio", "gmpy2"),
        "parameters": {
            "nodes": len(NODES),
            "rows_per_node": rows,
            "columns": COLUMNS,
            "paillier_key_bits": 3072,
            "transport": "gRPC, mutual TLS, loopback, one process per node and aggregator",
            "repetitions": reps,
            "latency_samples": samples,
        },
    }
    with tempfile.TemporaryDirectory(prefix="ts-bench-stats-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        print(f"generating {len(NODES)} x {rows:,} rows ...", flush=True)
        frames, parts = [], {}
        for i, name in enumerate(NODES):
            parts[name] = root / "data" / f"{name}.csv"
            frames.append(make_partition(parts[name], rows, seed=i))
        union = pd.concat(frames, ignore_index=True)
        pd_best, _, want = timed(lambda: union.describe(), reps)
        read_best, _, _ = timed(
            lambda: pd.concat([pd.read_csv(p) for p in parts.values()]).describe(), 1
        )
        print(f"pandas describe: {pd_best:.3f} s (with reading the CSVs: {read_best:.2f} s)")
        space, fed = run_space(root / "big", parts)
        try:
            fed.mean("t", "age", method="paillier")  # makes the key pair, warms the nodes' tables
            sec_best, _, got_s = timed(lambda: fed.describe("t", COLUMNS), reps)
            print(f"trustspace describe (secagg): {sec_best:.3f} s", flush=True)
            pai_best, _, got_p = timed(lambda: fed.describe("t", COLUMNS, method="paillier"), reps)
            print(f"trustspace describe (paillier): {pai_best:.3f} s", flush=True)
        finally:
            fed.close()
            space.stop()
        err_s = float(
            (got_s.loc[["count", "mean", "std"]] - want.loc[["count", "mean", "std"]])
            .abs()
            .max()
            .max()
        )
        err_p = float(
            (got_p.loc[["count", "mean", "std"]] - want.loc[["count", "mean", "std"]])
            .abs()
            .max()
            .max()
        )
        out["describe"] = {
            "pandas_describe_s": pd_best,
            "pandas_read_csv_and_describe_s": read_best,
            "secagg_s": sec_best,
            "paillier_s": pai_best,
            "secagg_ratio_to_pandas": sec_best / pd_best,
            "paillier_ratio_to_pandas": pai_best / pd_best,
            "target_ratio": 3.0,
            "max_abs_error_count_mean_std": {"secagg": err_s, "paillier": err_p},
        }
        # protocol overhead on small nodes
        small = {}
        for i, name in enumerate(NODES):
            small[name] = root / "data" / f"small-{name}.csv"
            make_partition(small[name], 1000, seed=100 + i)
        space, fed = run_space(root / "small", small)
        try:
            fed.count("t")
            fed.count("t", method="paillier")  # key pair and tables
            lat: dict[str, Any] = {}
            for method, target in (("secagg", 0.050), ("paillier", 0.100)):
                _, times, _ = timed(lambda m=method: fed.count("t", method=m), samples)
                ms = sorted(t * 1000 for t in times)
                lat[method] = {
                    "p50_ms": statistics.median(ms),
                    "p95_ms": ms[int(0.95 * (len(ms) - 1))],
                    "target_p50_ms": target * 1000,
                    "samples": samples,
                }
                print(
                    f"count latency {method}: p50 {lat[method]['p50_ms']:.1f} ms, "
                    f"p95 {lat[method]['p95_ms']:.1f} ms",
                    flush=True,
                )
            out["count_latency"] = lat
            # a count's rounds hold record counts only, which the Paillier path sums by secure
            # aggregation alone; a mean also has a round whose sum the nodes encrypt
            mean_lat: dict[str, Any] = {}
            for method in ("secagg", "paillier"):
                _, times, _ = timed(lambda m=method: fed.mean("t", "income", method=m), samples)
                ms = sorted(t * 1000 for t in times)
                mean_lat[method] = {
                    "p50_ms": statistics.median(ms),
                    "p95_ms": ms[int(0.95 * (len(ms) - 1))],
                    "samples": samples,
                }
                print(
                    f"mean latency {method}: p50 {mean_lat[method]['p50_ms']:.1f} ms, "
                    f"p95 {mean_lat[method]['p95_ms']:.1f} ms",
                    flush=True,
                )
            out["mean_latency"] = mean_lat
        finally:
            fed.close()
            space.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    d = out["describe"]
    print(f"\n| describe 5 cols x {len(NODES)} x {rows:,} rows | seconds | ratio to pandas |")
    print("|---|---|---|")
    print(f"| pandas describe() | {d['pandas_describe_s']:.3f} | 1.0 |")
    for method in ("secagg", "paillier"):
        seconds, ratio = d[f"{method}_s"], d[f"{method}_ratio_to_pandas"]
        print(f"| trustspace {method} | {seconds:.3f} | {ratio:.2f} (target <= 3) |")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
