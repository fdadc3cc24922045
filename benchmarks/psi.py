"""Vertical partitions benchmark (issue 17): PSI and WOE/IV across two node processes.

    python benchmarks/psi.py --quick    # PSI 20k x 20k, WOE/IV over 5,000 rows (a few minutes)
    python benchmarks/psi.py            # PSI 100k x 100k and 1M x 1M, WOE/IV over 100,000 rows

1. PSI. Two ``trustspace node`` processes ("bank", "telco") and an aggregator, mutual TLS on
   loopback (``trustspace.testing.LocalSpace``), each node over a CSV of ``n`` 16-byte random
   ids (hex) of which half are the other's. ``fed.intersect(mode="cardinality")`` and
   ``mode="align"``: the analyst's wall time (median of 3 at 100k and below, one run at 1M),
   bytes on the wire (the loopback interface's counter over the run: every hop, TLS and gRPC
   framing included, so a node-to-node message relayed by the aggregator counts twice) and
   each node's peak memory (``VmHWM``, over a space started for that size). Side by side in
   the same run: SecretFlow libpsi's ECDH-PSI over Curve25519 (``spu``, two in-process
   parties over a memory link, CSV in and out), openmined-psi 2.0.6 (ECDH P-256, client and
   server in one process) and a pandas merge (no privacy). Targets: <= 1.5x spu's ECDH time,
   >= 5x faster than openmined-psi. The anchors pin protobuf/numpy below ours, so they run
   in ``.venv-anchors`` (``make anchors-venv``; see ``_psi_anchors.py``) when they do not
   import here.
2. WOE/IV of 10 numeric features at "telco" against the binary label at "bank", 10 bins
   (public edges, then 10-quantile bins found by the federation), over a view of 100,000
   aligned rows: time of ``view.woe_iv`` end to end (its secure products are Paillier,
   2048-bit keys), checked against pandas on the joined rows (every bin's counts and each IV),
   and the same computation with ``phe`` (the label encrypted row by row, homomorphic sums per
   bin: measured on a sample in the same run and scaled; ``_woe_anchor.measure_phe``).
   Target: >= 10x faster than phe.

Writes benchmarks/results/psi.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions
from _psi_anchors import make_sets, openmined, spu_ecdh
from _woe_anchor import measure_phe

from trustspace.api import Credentials, Federation
from trustspace.testing import LocalSpace, NodeSpec

RESULTS = Path(__file__).resolve().parent / "results" / "psi.json"
NODES = ("bank", "telco")
LO = Path("/sys/class/net/lo/statistics/tx_bytes")
TARGET_SPU = 1.5
TARGET_OPENMINED = 5.0
TARGET_PHE = 10.0
FEATURES = 10
BINS = 10


def _lo_bytes() -> int | None:
    try:
        return int(LO.read_text())
    except OSError:
        return None


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _spec(name: str, path: Path, columns: dict[str, str]) -> NodeSpec:
    return NodeSpec(
        name=name,
        datasets={"d": {"path": path, "columns": columns, "id_column": "cid"}},
        policy={"min_group_size": 10},
        rules=[{"analysts": ["alice"], "operations": ["*"]}],
    )


def _space(root: Path, specs: list[NodeSpec]) -> tuple[LocalSpace, Federation]:
    space = LocalSpace(root)
    space.init_ca([s.name for s in specs], analysts=["alice"])
    target = space.start_all(specs)
    fed = Federation.connect(target, credentials=Credentials.from_dir(space.identity("alice")))
    return space, fed


def _timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], int | None, Any]:
    """(median seconds, every run's, loopback bytes of the last run, the last result)."""
    times, out, wire = [], None, None
    for _ in range(reps):
        before = _lo_bytes()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        after = _lo_bytes()
        wire = None if before is None or after is None else after - before
    return statistics.median(times), times, wire, out


def psi_size(root: Path, n: int, reps: int, anchor_reps: int) -> dict[str, Any]:
    a, b = make_sets(n, 0.5)
    common = len(set(a) & set(b))
    paths = {}
    for name, ids in zip(NODES, (a, b), strict=True):
        paths[name] = root / f"{name}.csv"
        pd.DataFrame({"cid": ids, "x": np.arange(n) % 7}).to_csv(paths[name], index=False)
    res: dict[str, Any] = {"n": n, "overlap": 0.5, "intersection": common}
    t0 = time.perf_counter()
    merged = pd.DataFrame({"cid": a}).merge(pd.DataFrame({"cid": b}), on="cid")
    res["pandas_merge_s"] = time.perf_counter() - t0
    assert len(merged) == common
    cols = {"cid": "str", "x": "int"}
    space, fed = _space(root / "space", [_spec(k, paths[k], cols) for k in NODES])
    try:
        for mode in ("cardinality", "align"):
            print(f"  trustspace {mode} {n:,} x {n:,} ...", flush=True)

            def run(mode: str = mode) -> Any:
                return fed.intersect("d", on="cid", nodes=list(NODES), mode=mode)

            med, times, wire, got = _timed(run, reps)
            size = got if mode == "cardinality" else got.size
            ok = size == common
            res[mode] = {"seconds": med, "runs": times, "wire_bytes": wire, "correct": ok}
            print(f"    {med:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), "
                  f"{(wire or 0) / 1e6:.1f} MB on the wire, size {size} == {common}: "
                  f"{size == common}", flush=True)  # fmt: skip
        res["peak_rss_mib"] = {
            k: round(_peak_kib(p.pid) / 1024, 1) for k, p in space.procs.items() if p.poll() is None
        }
    finally:
        fed.close()
        space.stop()
    print(f"  spu ECDH {n:,} ...", flush=True)
    runs = [spu_ecdh(n) for _ in range(anchor_reps)]
    ok = [r for r in runs if "seconds" in r]
    res["spu_ecdh"] = (
        {**ok[-1], "seconds": statistics.median(r["seconds"] for r in ok),
         "runs": [r["seconds"] for r in ok]}
        if ok else runs[-1]
    )  # fmt: skip
    print(f"    {res['spu_ecdh']}", flush=True)
    print(f"  openmined-psi {n:,} ...", flush=True)
    res["openmined"] = openmined(n)
    print(f"    {res['openmined']}", flush=True)
    for mode in ("cardinality", "align"):
        ours = res[mode]["seconds"]
        spu = res["spu_ecdh"].get("seconds")
        om = res["openmined"].get("seconds")
        res[mode]["ratio_spu"] = ours / spu if spu else None
        res[mode]["openmined_speedup"] = om / ours if om else None
        res[mode]["met_spu"] = None if spu is None else ours / spu <= TARGET_SPU
        res[mode]["met_openmined"] = None if om is None else om / ours >= TARGET_OPENMINED
    return res


def _pandas_woe(joined: pd.DataFrame, feature: str, edges: list[float]) -> pd.DataFrame:
    """pos/neg counts per bin, written here independently of trustspace.stats._woe: a bin
    below the first edge, the inner bins (the last one closed), one above the last edge."""
    x = joined[feature].to_numpy()
    at = np.searchsorted(edges, x, side="right")  # 0: below; len(edges): at or above the last
    at[x == edges[-1]] = len(edges) - 1
    label = joined["label"].to_numpy()
    rows = [
        (int(((at == b) & (label == 1)).sum()), int(((at == b) & (label == 0)).sum()))
        for b in range(len(edges) + 1)
    ]
    return pd.DataFrame(rows, columns=["pos", "neg"])


def _iv(pos: pd.Series, neg: pd.Series) -> float:
    """IV over the given bins, FATE's 0.5 added to both counts of a bin with a zero."""
    zero = (pos == 0) | (neg == 0)
    p, q = pos + 0.5 * zero, neg + 0.5 * zero
    pr, nr = p / pos.sum(), q / neg.sum()
    return float(((pr - nr) * np.log(pr / nr)).sum())


def woe(root: Path, rows: int, sample: int) -> dict[str, Any]:
    rng = np.random.default_rng(17)  # benchmark data only
    ids = make_sets(rows, 1.0)[0]
    feats = {f"f{j}": np.round(rng.normal(0, 1, rows), 4) for j in range(FEATURES)}
    score = sum(feats[f"f{j}"] * (j + 1) / FEATURES for j in range(FEATURES))
    label = (score + rng.normal(0, 1.5, rows) > 1.0).astype(int)
    bank = pd.DataFrame({"cid": ids, "label": label})
    telco = pd.DataFrame({"cid": ids, **feats}).sample(frac=1, random_state=3)
    joined = bank.merge(telco, on="cid")
    bank.to_csv(root / "bank.csv", index=False)
    telco.to_csv(root / "telco.csv", index=False)
    specs = [
        _spec("bank", root / "bank.csv", {"cid": "str", "label": "int"}),
        _spec("telco", root / "telco.csv", {"cid": "str", **dict.fromkeys(feats, "float")}),
    ]
    edges = [float(e) for e in np.linspace(-2.5, 2.5, BINS + 1)]
    features = [f"telco.{f}" for f in feats]
    space, fed = _space(root / "space", specs)
    out: dict[str, Any] = {"rows": rows, "features": FEATURES, "bins": BINS}
    try:
        view = fed.intersect("d", on="cid", nodes=list(NODES))
        assert view.size == rows
        for kind, kw in (("edges", {"edges": dict.fromkeys(features, edges)}), ("quantile", {})):
            print(f"  trustspace woe_iv ({kind}) over {rows:,} rows ...", flush=True)
            before = _lo_bytes()
            t0 = time.perf_counter()
            table = view.woe_iv(label="bank.label", features=features, bins=BINS, **kw)
            seconds = time.perf_counter() - t0
            after = _lo_bytes()
            out[kind] = {
                "seconds": seconds,
                "wire_bytes": None if before is None or after is None else after - before,
                "bins_released": len(table),
            }
            if kind == "edges":
                diffs = []
                for f in feats:
                    ours = table.xs(f"telco.{f}", level=0)
                    ref = _pandas_woe(joined, f, edges)
                    shown = ours["pos"].notna().to_numpy()  # suppressed bins are NaN
                    same = len(ours) == len(ref) and bool(
                        np.array_equal(ours["pos"].to_numpy()[shown], ref["pos"].to_numpy()[shown])
                        and np.array_equal(
                            ours["neg"].to_numpy()[shown], ref["neg"].to_numpy()[shown]
                        )
                    )
                    want = _iv(ref["pos"][shown], ref["neg"][shown])
                    diffs.append((same, abs(float(table.attrs["iv"][f"telco.{f}"]) - want)))
                out[kind]["counts_equal_pandas"] = all(s for s, _ in diffs)
                out[kind]["max_abs_iv_diff"] = max(d for _, d in diffs)
            print(f"    {seconds:.1f} s, {out[kind]}", flush=True)
    finally:
        fed.close()
        space.stop()
    print(f"  phe on {sample} rows, scaled to {rows:,} ...", flush=True)
    phe = measure_phe(rows, FEATURES, BINS, sample=sample)
    out["phe"] = phe
    out["phe_speedup"] = phe["seconds"] / out["edges"]["seconds"]
    out["met_phe"] = out["phe_speedup"] >= TARGET_PHE
    print(f"    phe {phe['seconds']:.1f} s -> {out['phe_speedup']:.1f}x", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    woe_rows = 5_000 if args.quick else 100_000
    out: dict[str, Any] = {
        "benchmark": "psi",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions("cryptography", "ipp-crypto", "grpcio", "gmpy2", "phe", "pandas"),
        "parameters": {
            "nodes": list(NODES),
            "ids": "16-byte random, hex; half of each side's in the other's",
            "psi": "ECDH over X25519 (RFC 7748), hash-to-curve elligator2 (RFC 9380)",
            "transport": "gRPC, mutual TLS, loopback; node-to-node messages end-to-end sealed "
            "(AES-GCM) and relayed by the aggregator; one process per node and aggregator",
            "wire_bytes": "loopback tx_bytes over a run: every hop, TLS included",
            "repetitions": "median of 3 below 1M, one run at 1M",
            "woe": f"{FEATURES} features x {BINS} bins, Paillier 2048-bit secure products",
        },
        "psi": [],
    }
    with tempfile.TemporaryDirectory(prefix="ts-bench-psi-") as tmp:
        root = Path(tmp)
        for n in sizes:
            (root / str(n)).mkdir()
            reps = 3 if n < 1_000_000 else 1
            print(f"PSI {n:,} x {n:,}", flush=True)
            out["psi"].append(psi_size(root / str(n), n, reps, reps))
        (root / "woe").mkdir()
        print(f"WOE/IV over {woe_rows:,} aligned rows", flush=True)
        out["woe"] = woe(root / "woe", woe_rows, sample=100 if args.quick else 300)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=_json_default) + "\n")
    print(f"wrote {RESULTS}")
    bad = [r["n"] for r in out["psi"] for m in ("cardinality", "align") if not r[m]["correct"]]
    if bad or not out["woe"]["edges"].get("counts_equal_pandas"):
        print(f"WRONG RESULTS: psi sizes {bad}; woe {out['woe']['edges']}", file=sys.stderr)
        return 1
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        v = x.item()
        return None if isinstance(v, float) and math.isnan(v) else v
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    sys.exit(main())
