"""Federated regression benchmark: ``fed.glm`` / ``fed.ols`` against statsmodels, in one run.

    python benchmarks/regression.py --quick   # Adult + 3 nodes x 100,000 generated rows
    python benchmarks/regression.py           # Adult + 3 nodes x 1,000,000 generated rows

1. Adult logistic regression (P(salary > 50K) by age, sex, race, marital status, workclass; 18
   parameters) over 3 node processes (``trustspace node``, mutual TLS on loopback, the
   aggregator a process too): the analyst's end-to-end time of ``fed.glm(...,
   family="binomial")`` and ``fed.ols(...)``, side by side with statsmodels' GLM / OLS fit on
   the union (already in memory, formula parsing included). Target: <= 5x statsmodels.
2. 3 nodes x N generated rows, 10 numeric features: ``fed.ols`` and a gaussian ``fed.glm``
   (nodes computing in parallel) against statsmodels on the 3N-row union. Target: <= 1.0x.

Reports the times, ratios, iterations and the largest relative difference of the
coefficients and standard errors; asserts nothing about time. Writes
benchmarks/results/regression.json.
"""

from __future__ import annotations

import argparse
import json
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

from trustspace._adult import CSV, SEP
from trustspace.api import Credentials, Federation
from trustspace.testing import LocalSpace, NodeSpec

RESULTS = Path(__file__).resolve().parent / "results" / "regression.json"
NODES = ["org-a", "org-b", "org-c"]
ADULT_FORMULA = "high ~ age + C(sex) + C(race) + C(marital_status) + C(workclass)"
OLS_ADULT = "age ~ C(sex) + C(race) + high"
FEATURES = [f"x{i}" for i in range(10)]
WIDE = "y ~ " + " + ".join(FEATURES)
WIDE_LOGIT = "hit ~ " + " + ".join(FEATURES)


def timed(fn: Any, reps: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def space_for(
    root: Path, parts: dict[str, Path], columns: dict[str, str], domains: dict[str, Any]
) -> tuple[LocalSpace, Federation]:
    space = LocalSpace(root)
    space.init_ca(list(parts), analysts=["alice"])
    specs = [
        NodeSpec(
            name=n,
            datasets={"t": {"path": p, "columns": columns, "domains": domains}},
            policy={"min_group_size": 10},
            rules=[{"analysts": ["alice"], "operations": ["*"]}],
        )
        for n, p in parts.items()
    ]
    target = space.start_all(specs)
    fed = Federation.connect(
        target, credentials=Credentials.from_dir(space.identity("alice")), key_bits=2048
    )
    return space, fed


def adult(root: Path, reps: int) -> dict[str, Any]:
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df = pd.read_csv(CSV, sep=SEP).rename(columns=lambda c: c.replace("-", "_"))
    df = df[df.workclass != "Without-pay"]  # 14 records that separate the outcome
    df["high"] = (df.salary_class == ">50K").astype(int)
    cols = ["high", "age", "sex", "race", "marital_status", "workclass"]
    df = df[cols]
    parts = {}
    (root / "adult").mkdir()
    for i, n in enumerate(NODES):
        parts[n] = root / "adult" / f"{n}.csv"
        df.iloc[i::3].to_csv(parts[n], index=False)
    types = {c: "int" if c in ("high", "age") else "str" for c in cols}
    domains = {c: sorted(df[c].unique().tolist()) for c in cols if types[c] == "str"}
    sm_glm, ref = timed(
        lambda: smf.glm(ADULT_FORMULA, df, family=sm.families.Binomial()).fit(), reps
    )
    sm_ols, ref_ols = timed(lambda: smf.ols(OLS_ADULT, df).fit(), reps)
    space, fed = space_for(root / "adult-space", parts, types, domains)
    try:
        fed.count("t")  # warm the connections
        t_glm, res = timed(lambda: fed.glm("t", ADULT_FORMULA, family="binomial"), reps)
        t_ols, res_ols = timed(lambda: fed.ols("t", OLS_ADULT), reps)
        t_pai, res_pai = timed(
            lambda: fed.glm("t", ADULT_FORMULA, "binomial", method="paillier"), 1
        )
    finally:
        fed.close()
        space.stop()
    out = {
        "rows": len(df),
        "parameters": len(res.params),
        "glm_binomial": {
            "secagg_s": t_glm,
            "paillier_s": t_pai,
            "statsmodels_s": sm_glm,
            "ratio_secagg": t_glm / sm_glm,
            "ratio_paillier": t_pai / sm_glm,
            "target_ratio": 5.0,
            "iterations": res.iterations,
            "statsmodels_iterations": int(ref.fit_history["iteration"]),
            "rounds": res.rounds,
            "max_rel_diff_params": rel(res.params, ref.params),
            "max_rel_diff_bse": rel(res.bse, ref.bse),
            "max_rel_diff_params_paillier": rel(res_pai.params, ref.params),
        },
        "ols": {
            "secagg_s": t_ols,
            "statsmodels_s": sm_ols,
            "ratio": t_ols / sm_ols,
            "target_ratio": 5.0,
            "max_rel_diff_params": rel(res_ols.params, ref_ols.params),
            "max_rel_diff_rsquared": rel(res_ols.rsquared, ref_ols.rsquared),
        },
    }
    print(json.dumps(out, indent=1), flush=True)
    return out


def generated(root: Path, rows: int, reps: int) -> dict[str, Any]:
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    (root / "gen").mkdir()
    frames, parts = [], {}
    beta = np.linspace(-1, 1, len(FEATURES))
    for i, n in enumerate(NODES):
        rng = np.random.default_rng(100 + i)  # benchmark data only
        x = rng.normal(0, 1, (rows, len(FEATURES))).round(4)
        y = (x @ beta + 2 + rng.normal(0, 1, rows)).round(4)
        hit = (rng.random(rows) < 1 / (1 + np.exp(-(x @ beta - 0.5)))).astype(int)
        f = pd.DataFrame(x, columns=FEATURES).assign(y=y, hit=hit)
        parts[n] = root / "gen" / f"{n}.csv"
        f.to_csv(parts[n], index=False)
        frames.append(f)
    union = pd.concat(frames, ignore_index=True)
    types = {**dict.fromkeys([*FEATURES, "y"], "float"), "hit": "int"}
    sm_ols, ref_ols = timed(lambda: smf.ols(WIDE, union).fit(), reps)
    xmat = sm.add_constant(union[FEATURES].to_numpy())
    sm_arr, _ = timed(lambda: sm.OLS(union.y.to_numpy(), xmat).fit(), reps)
    sm_glm, ref_glm = timed(lambda: smf.glm(WIDE, union).fit(), reps)
    binomial = sm.families.Binomial()
    sm_logit, ref_logit = timed(lambda: smf.glm(WIDE_LOGIT, union, family=binomial).fit(), reps)
    space, fed = space_for(root / "gen-space", parts, types, {})
    try:
        fed.count("t")
        t_ols, res_ols = timed(lambda: fed.ols("t", WIDE), reps)
        t_glm, res_glm = timed(lambda: fed.glm("t", WIDE), reps)
        t_logit, res_logit = timed(lambda: fed.glm("t", WIDE_LOGIT, family="binomial"), reps)
    finally:
        fed.close()
        space.stop()
    out = {
        "rows_per_node": rows,
        "union_rows": 3 * rows,
        "features": len(FEATURES),
        "ols": {
            "secagg_s": t_ols,
            "statsmodels_formula_s": sm_ols,
            "statsmodels_arrays_s": sm_arr,
            "ratio_to_formula": t_ols / sm_ols,
            "ratio_to_arrays": t_ols / sm_arr,
            "target_ratio": 1.0,
            "max_rel_diff_params": rel(res_ols.params, ref_ols.params),
        },
        "glm_gaussian": {
            "secagg_s": t_glm,
            "statsmodels_s": sm_glm,
            "ratio": t_glm / sm_glm,
            "target_ratio": 1.0,
            "iterations": res_glm.iterations,
            "statsmodels_iterations": int(ref_glm.fit_history["iteration"]),
            "max_rel_diff_params": rel(res_glm.params, ref_glm.params),
        },
        "glm_binomial": {
            "secagg_s": t_logit,
            "statsmodels_s": sm_logit,
            "ratio": t_logit / sm_logit,
            "target_ratio": 1.0,
            "iterations": res_logit.iterations,
            "statsmodels_iterations": int(ref_logit.fit_history["iteration"]),
            "max_rel_diff_params": rel(res_logit.params, ref_logit.params),
            "max_rel_diff_bse": rel(res_logit.bse, ref_logit.bse),
        },
    }
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None, help="generated rows per node")
    args = ap.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    reps = 2 if args.quick else 3
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {
        "benchmark": "regression",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions("numpy", "pandas", "duckdb", "statsmodels", "formulaic"),
        "parameters": {
            "nodes": len(NODES),
            "transport": "gRPC, mutual TLS, loopback, one process per node and aggregator",
            "repetitions": reps,
            "paillier_key_bits": 2048,
        },
    }
    with tempfile.TemporaryDirectory(prefix="ts-bench-regression-") as tmp:
        root = Path(tmp)
        out["adult"] = adult(root, reps)
        out["generated"] = generated(root, rows, reps)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
