"""Load: concurrent analyst sessions x mixed queries against three node processes.

A data space of real processes on 127.0.0.1 (``trustspace.testing.LocalSpace``: CA, three
``trustspace node`` processes over partitions of a synthetic table, one ``trustspace
aggregator``). SESSIONS analyst threads each run QUERIES mixed queries (count, sum, mean, var,
histogram, group_by; secure aggregation) and check every answer against pandas on the union.
Records throughput, p50/p95 latency, every process's RSS before, during and after the run,
and whether anything failed or hung.

    python benchmarks/load.py                      # 16 sessions x 50 queries
    python benchmarks/load.py --sessions 4 --queries 5 --out /tmp/load.json

Writes benchmarks/results/load.json (``make soak`` runs the same driver as a test).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions

from trustspace.api import Credentials, Federation
from trustspace.testing import LocalSpace, NodeSpec

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
NODES = ("org-a", "org-b", "org-c")
ROWS_PER_NODE = 2000
QUERY_DEADLINE_S = 300.0  # a session not done by then counts as hung (every wait is bounded)


def make_partitions(root: Path, seed: int = 11) -> dict[str, Path]:
    rng = np.random.default_rng(seed)  # benchmark data only, never for cryptography
    out = {}
    for name in NODES:
        df = pd.DataFrame(
            {
                "age": rng.integers(18, 90, ROWS_PER_NODE),
                "hours": rng.normal(40, 8, ROWS_PER_NODE).round(1),
                "sex": rng.choice(["F", "M"], ROWS_PER_NODE),
            }
        )
        p = root / f"{name}.csv"
        df.to_csv(p, index=False)
        out[name] = p
    return out


def _queries(union: pd.DataFrame) -> list[tuple[str, Any, Any]]:
    """(label, call(fed) -> answer, expected) for the mix of query kinds."""
    f = union[union.sex == "F"]
    old = union[union.age >= 40]
    edges = [18.0, 30.0, 45.0, 60.0, 90.0]
    hist = np.histogram(union.age, bins=edges)[0].astype(float)
    by_sex = union.groupby("sex").hours.mean()
    return [
        ("count", lambda fed: fed.count("default", where="age >= 40"), float(len(old))),
        ("sum", lambda fed: fed.sum("default", "hours", where="sex = 'F'"), float(f.hours.sum())),
        ("mean", lambda fed: fed.mean("default", "age"), float(union.age.mean())),
        ("var", lambda fed: fed.var("default", "hours"), float(union.hours.var())),
        (
            "histogram",
            lambda fed: np.asarray(fed.histogram("default", "age", bins=edges), dtype=float),
            hist,
        ),
        (
            "group_by",
            lambda fed: fed.group_by("default", by="sex", values=["F", "M"]).agg({"hours": "mean"})[
                "hours"
            ]["mean"],
            by_sex,
        ),
    ]


def _correct(answer: Any, expected: Any) -> bool:
    if isinstance(expected, pd.Series):
        got = pd.Series(answer).reindex(expected.index).to_numpy(dtype=float)
        return bool(np.allclose(got, expected.to_numpy(dtype=float), rtol=1e-9, atol=1e-9))
    if isinstance(expected, np.ndarray):
        return bool(np.allclose(answer, expected, rtol=1e-9, atol=1e-9))
    return math.isclose(float(answer), float(expected), rel_tol=1e-9, abs_tol=1e-9)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_load(root: Path, sessions: int, queries: int) -> dict[str, Any]:
    """Start the space under ``root``, run the load, stop it; returns the figures."""
    parts = make_partitions(root)
    union = pd.concat([pd.read_csv(p) for p in parts.values()], ignore_index=True)
    space = LocalSpace(root / "space")
    space.root.mkdir(parents=True, exist_ok=True)
    analysts = [f"analyst{i}" for i in range(sessions)]
    space.init_ca(NODES, analysts)
    specs = [
        NodeSpec(
            name,
            {
                "default": {
                    "path": parts[name],
                    "columns": {"age": "int", "hours": "float", "sex": "str"},
                    "domains": {"sex": ["F", "M"]},
                }
            },
            policy={"min_group_size": 5},
            rules=[{"analysts": ["*"], "operations": ["*"]}],
        )
        for name in NODES
    ]
    mix = _queries(union)
    latencies: list[tuple[str, float]] = []
    wrong: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    rss: dict[str, dict[str, int]] = {}

    def sample(label: str) -> None:
        rss[label] = {n: _rss_kib(p.pid) for n, p in space.procs.items() if p.poll() is None}

    with space:
        agg = space.start_all(specs)
        # warm-up: one of each kind, so that caches and pools exist before the first sample
        with Federation.connect(
            agg, credentials=Credentials.from_dir(space.identity("analyst0"))
        ) as fed:
            for _, call, _ in mix:
                call(fed)
        sample("after warm-up")

        def session(i: int) -> None:
            creds = Credentials.from_dir(space.identity(analysts[i]))
            with Federation.connect(agg, credentials=creds) as fed:
                for j in range(queries):
                    label, call, expected = mix[(i + j) % len(mix)]
                    t0 = time.perf_counter()
                    try:
                        answer = call(fed)
                    except Exception as exc:  # recorded, and the run fails
                        with lock:
                            errors.append(f"session {i} query {j} ({label}): {exc!r}")
                        continue
                    took = time.perf_counter() - t0
                    ok = _correct(answer, expected)
                    with lock:
                        latencies.append((label, took))
                        if not ok:
                            wrong.append(f"session {i} query {j} ({label}): {answer} != {expected}")
                    if i == 0 and j == queries // 2:
                        sample("half-way")

        threads = [
            threading.Thread(target=session, args=(i,), daemon=True) for i in range(sessions)
        ]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=max(1.0, QUERY_DEADLINE_S * queries - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        hung = sum(th.is_alive() for th in threads)
        sample("after the run")
        codes = space.stop()
    lat = np.array([t for _, t in latencies]) if latencies else np.zeros(1)
    by_kind = {
        k: {
            "n": int(sum(1 for lbl, _ in latencies if lbl == k)),
            "p50_ms": round(1000 * float(np.median([t for lbl, t in latencies if lbl == k])), 1),
        }
        for k, _, _ in mix
        if any(lbl == k for lbl, _ in latencies)
    }
    return {
        "sessions": sessions,
        "queries_per_session": queries,
        "answered": len(latencies),
        "correct": len(latencies) - len(wrong),
        "wrong": wrong[:20],
        "errors": errors[:20],
        "hung_sessions": hung,
        "wall_s": round(wall, 2),
        "throughput_qps": round(len(latencies) / wall, 2) if wall else 0.0,
        "latency_ms": {
            "p50": round(1000 * float(np.percentile(lat, 50)), 1),
            "p95": round(1000 * float(np.percentile(lat, 95)), 1),
            "max": round(1000 * float(lat.max()), 1),
        },
        "by_kind": by_kind,
        "rss_kib": rss,
        "exit_codes": codes,
        "rows": ROWS_PER_NODE * len(NODES),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trustspace-load-") as tmp:
        figures = run_load(Path(tmp), args.sessions, args.queries)
    figures["machine"] = machine()
    figures["versions"] = versions("grpcio", "numpy", "duckdb")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: figures[k]
                for k in ("answered", "correct", "throughput_qps", "latency_ms", "hung_sessions")
            }
        )
    )
    print(f"wrote {args.out}")
    ok = figures["correct"] == args.sessions * args.queries and not figures["hung_sessions"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
