"""Accuracy and cost of trustspace's DP statistics, beside OpenDP's central discrete Gaussian.

    python benchmarks/dp.py --quick    # 1,000 noise trials, 20 latency samples (1-2 minutes)
    python benchmarks/dp.py            # 5,000 noise trials, 100 latency samples (3-4 minutes)

Accuracy. The Adult data set (30,162 rows, ``age`` with public bounds [17, 90]) is split in
contiguous blocks over m = 3, 10 and 100 simulated nodes, each a real ``trustspace.engine.Engine``
over its own CSV file. For count, sum(age), mean(age) and a 20-bin histogram of age over its
bounds, at epsilon = 1, delta = 1e-6, each node computes the DP round's local vector once
(``rnd.encode(engine.compute(rnd))``); then, per trial, every node adds fresh noise with the
module's own ``add_noise`` (sized by ``noise_plan`` for threshold t and n = m), the m encoded
vectors are summed modulo 2^64 (what secure aggregation outputs, the masks cancelling) and the
total goes through ``DPComputation.feed`` / ``result`` like a real query. t = m is the run
without dropout tolerance (target RMSE ratio <= 1.10); t = ceil(0.9 m) tolerates 10% dropouts
(target <= 1.30), and every one of the m shares, each sized for t, is in the total. The noise
of all trials is drawn in one ``add_noise`` call per node on the encoded vector tiled ``trials``
times (independent draws either way).

The anchor is OpenDP's central discrete Gaussian (``make_gaussian`` on integer domains, zCDP,
converted with OpenDP's own ``make_zCDP_to_approxDP`` + ``make_fix_delta`` and calibrated by
``binary_search_param`` to (1, 1e-6)), over OpenDP's own transformations on the same data
under add/remove-one-record neighbouring (``symmetric_distance``, d_in = 1): ``make_count``
(sensitivity 1), ``make_clamp`` [17, 90] + ``make_sum`` (90), ``make_count_by_categories``
over the 20 bin indices with L2 output (1). Its mechanism is run the same number of trials on
the exact totals (fresh draws for every row). The mean has two OpenDP constructions, both with
zCDP composition (``make_composition``) giving the count and the sum rho/2 each, value
``clip(sum / max(count, 1), 17, 90)``: (a) OpenDP's usual one, the clamped sum of age; (b) a
centred sum, ``sum(2 age - 107)`` clamped to [-73, 73] (sensitivity 36.5 in years), value
``53.5 + sum / 2 / count``, the same centring trustspace's round uses: the stricter anchor.

RMSE is over trials (and bins, for the histogram); the ratio trustspace / OpenDP has a 95%
interval from the delta method on both RMSEs. Also reported: the analytic noise standard
deviation of both, trustspace's own reported ``Result.dp['std']``, and trustspace's total noise
over the central noise OpenDP would add for the same round sensitivity (the cost of
distributing the noise alone).

Cost. ``Federation.local`` over 3 nodes (Adult in 3 blocks; real gRPC, mutual TLS, in-process):
p50 latency of count, mean(age) and the histogram, exact against ``epsilon=1.0``, interleaved,
after a warm-up. Target: DP p50 <= 1.2x exact p50.

Writes benchmarks/results/dp.json and benchmarks/results/dp.md.
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

from trustspace import _adult
from trustspace.engine import DatasetSpec, Engine
from trustspace.stats import Query, Round, start
from trustspace.stats._dp import DPSpec, add_noise, noise_plan, round_sensitivity, share_variance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATASET = "adult"
EPSILON, DELTA = 1.0, 1e-6
COLUMN = "age"
LO, HI = 17, 90
BINS = 20
NODE_COUNTS = (3, 10, 100)
TARGET_NO_DROPOUT, TARGET_DROPOUT = 1.10, 1.30
LATENCY_TARGET = 1.2
BUDGET_POLICY = {
    "min_group_size": 10,
    "rules": [{"analysts": ["*"], "operations": ["*"]}],
    "dp": {"epsilon": 1e4, "delta": 1e-5},
}
NO_DP_POLICY = {k: v for k, v in BUDGET_POLICY.items() if k != "dp"}
QUERIES = {
    "count": Query("count", DATASET),
    "sum": Query("sum", DATASET, COLUMN),
    "mean": Query("mean", DATASET, COLUMN),
    "histogram": Query(
        "histogram", DATASET, COLUMN, params={"bins": BINS, "range": [float(LO), float(HI)]}
    ),
}
#: OpenDP constructions compared with each trustspace statistic.
ANCHORS = {
    "count": ["count"],
    "sum": ["sum"],
    "mean": ["mean", "mean_centred"],
    "histogram": ["histogram"],
}
ANCHOR_TEXT = {
    "count": "make_count, sensitivity 1",
    "sum": f"make_clamp [{LO}, {HI}] + make_sum, sensitivity {max(abs(LO), abs(HI))}",
    "mean": f"count + clamped sum [{LO}, {HI}], rho/2 each (OpenDP's usual)",
    "mean_centred": (
        f"count + centred sum of 2x-{LO + HI} in [{LO - HI}, {HI - LO}], rho/2 each (stricter)"
    ),
    "histogram": f"make_count_by_categories over {BINS} bins, L2 sensitivity 1",
}


# --- data ------------------------------------------------------------------------------------


def load_adult() -> pd.DataFrame:
    df = pd.read_csv(_adult.CSV, sep=_adult.SEP)
    ages = df[COLUMN]
    if ages.min() < LO or ages.max() > HI:
        raise SystemExit(f"Adult ages outside the declared bounds [{LO}, {HI}]")
    return df


def truths(df: pd.DataFrame) -> dict[str, np.ndarray]:
    x = df[COLUMN].to_numpy()
    hist, _ = np.histogram(x, bins=BINS, range=(LO, HI))  # the round's semantics
    return {
        "count": np.array([float(len(x))]),
        "sum": np.array([float(x.sum())]),
        "mean": np.array([float(x.mean())]),
        "histogram": hist.astype(float),
    }


def make_engines(df: pd.DataFrame, m: int, root: Path) -> list[Engine]:
    engines = []
    for i, idx in enumerate(np.array_split(np.arange(len(df)), m)):
        path = root / f"m{m}-node{i}.csv"
        df.iloc[idx].to_csv(path, sep=_adult.SEP, index=False)
        spec = DatasetSpec(
            DATASET, path, columns=_adult.COLUMNS, delimiter=_adult.SEP, bounds={COLUMN: (LO, HI)}
        )
        engine = Engine({DATASET: spec})
        engine.validate()
        engines.append(engine)
    return engines


# --- error statistics ------------------------------------------------------------------------


def error_stats(values: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """RMSE over trials (rows) and entries (columns), with the spread needed for an interval."""
    err = values - truth[None, :]
    per_trial = (err**2).mean(axis=1)  # squared error of each trial, averaged over bins
    mse = float(per_trial.mean())
    # var(log RMSE) = var(mean squared error) / (4 mse^2) (delta method)
    var_log = float(per_trial.var(ddof=1)) / (len(per_trial) * 4 * mse * mse)
    return {
        "rmse": math.sqrt(mse),
        "bias": float(err.mean()),
        "var_log_rmse": var_log,
        "trials": len(per_trial),
    }


# --- trustspace: the node path, simulated --------------------------------------------------------


class TrustspaceStat:
    """One statistic over m engines: the encoded local vectors, computed once."""

    def __init__(self, q: Query, engines: list[Engine]) -> None:
        self.q = q
        self.schema = engines[0].schema(DATASET)
        self.spec = DPSpec(EPSILON, DELTA)
        self.rnd = start(q, self.schema, 0, self.spec).next_round()
        assert self.rnd is not None
        self.encoded = [self.rnd.encode(np.asarray(e.compute(self.rnd))) for e in engines]
        self.m = len(engines)
        self.rows = 0  # set by the caller: the true row count (for the mean's analytic std)
        self.l2, self.l1 = round_sensitivity(self.rnd, self.schema)
        #: each term's share of the round's rho (the noise is isotropic over the entries)
        self.term_rho_share = {}
        for term in self.rnd.terms:
            one = Round(self.rnd.dataset, self.rnd.where, (term,), None, (), 0)
            s_t = round_sensitivity(one, self.schema)[0]
            label = "count" if term.is_count else f"{term.kind} {','.join(term.columns)}"
            if term.kind == "moment" and not term.is_count:
                label += f" power {term.powers[0]} about {term.centers[0]:g}"
            self.term_rho_share[label] = {
                "sensitivity_encoded": s_t,
                "frac_bits": term.frac_bits,
                "scale": float(getattr(term, "scale", 0.0) or 0.0),
                "rho_share": (s_t / self.l2) ** 2,
            }

    def release(self, total: np.ndarray, variance: float) -> Any:
        comp = start(self.q, self.schema, 0, self.spec)
        if comp.next_round() != self.rnd:
            raise SystemExit("the DP round changed between start() calls")
        comp.feed(self.rnd.decode(total), noise_variance=variance, nodes=self.m)
        return comp.result()

    def exact_total(self) -> np.ndarray:
        total = np.zeros(self.rnd.size, dtype=np.uint64)
        for enc in self.encoded:
            total += enc  # modulo 2^64
        return total

    def trials(self, t: int, trials: int, truth: np.ndarray) -> dict[str, Any]:
        plan = noise_plan(self.rnd, self.schema, self.spec, t=t, n=self.m)
        size = self.rnd.size
        start_s = time.perf_counter()
        total = np.zeros(size * trials, dtype=np.uint64)
        for enc in self.encoded:  # every node: its own fresh noise, every trial
            total += add_noise(np.tile(enc, trials), plan.node_sigma2)
        noise_s = time.perf_counter() - start_s
        variance = self.m * share_variance(plan.node_sigma2)  # all m shares in the total
        values, reported = [], []
        for row in total.reshape(trials, size):
            r = self.release(row, variance)
            values.append(np.atleast_1d(np.asarray(r.value, dtype=float)))
            std = np.atleast_1d(np.asarray(r.dp["std"], dtype=float))
            reported.append(math.sqrt(float((std**2).mean())))
        out = error_stats(np.asarray(values), truth)
        out |= {
            "t": t,
            "n": self.m,
            "node_sigma2": str(plan.node_sigma2),
            "total_noise_std_encoded": math.sqrt(variance),
            "plan_rho": plan.rho,
            "plan_achieved_epsilon": plan.achieved_epsilon,
            "analytic_std": self.analytic_std(variance, truth),
            "reported_std_median": statistics.median(reported),
            "noise_seconds": noise_s,
            "seconds": time.perf_counter() - start_s,
        }
        return out

    def units(self) -> np.ndarray:
        """Encoded units per unit of each entry (``Round.units``, else ``2^frac_bits``)."""
        units = getattr(self.rnd, "units", None)
        if units is not None:
            return np.asarray(units, dtype=float)
        return np.ldexp(1.0, np.asarray(self.rnd.frac_bits))

    def analytic_std(self, variance: float, truth: np.ndarray) -> float:
        """The error's standard deviation from the noise in the encoded entries (delta method
        at the true values for the mean; one bin for the histogram)."""
        u = self.units()
        if self.q.op == "count" or self.q.op == "sum":
            return math.sqrt(variance) / float(u[0])
        if self.q.op == "histogram":  # entries: underflow, the bins, overflow
            return math.sqrt(variance) / float(u[1])
        n = float(self.rows)  # entries: the count of age, then sum(age - centre)
        s1 = (float(truth[0]) - (LO + HI) / 2) * n
        var_n, var_1 = variance / float(u[0]) ** 2, variance / float(u[1]) ** 2
        return math.sqrt(var_1 / n**2 + var_n * s1**2 / n**4)


# --- OpenDP: the central discrete Gaussian -------------------------------------------------------


class OpenDPAnchor:
    """OpenDP's measurements for every anchor, calibrated by OpenDP to (EPSILON, DELTA)."""

    def __init__(self, df: pd.DataFrame) -> None:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        self.dp = dp
        ages = [int(a) for a in df[COLUMN]]
        centred = [2 * a - (LO + HI) for a in ages]
        edges = np.linspace(LO, HI, BINS + 1)
        bin_idx = np.clip(np.searchsorted(edges, np.asarray(ages), side="right") - 1, 0, BINS - 1)
        bins = [int(b) for b in bin_idx]
        space = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.symmetric_distance())
        t_count = dp.t.make_count(*space, TO=dp.i64)
        t_sum = dp.t.make_clamp(*space, bounds=(LO, HI)) >> dp.t.then_sum()
        t_csum = dp.t.make_clamp(*space, bounds=(LO - HI, HI - LO)) >> dp.t.then_sum()
        t_hist = dp.t.make_count_by_categories(
            *space,
            categories=list(range(BINS)),
            null_category=False,
            MO=dp.L2Distance[dp.i64],
            TOA=dp.i64,
        )
        self.n = len(ages)
        #: the exact totals, from OpenDP's own transformations
        self.exact = {
            "count": t_count(ages),
            "sum": t_sum(ages),
            "csum": t_csum(centred),
            "histogram": t_hist(bins),
        }
        self.info: dict[str, dict[str, Any]] = {}
        self.noise: dict[str, list[tuple[str, Any]]] = {}
        for name, tr, data in (
            ("count", t_count, ages),
            ("sum", t_sum, ages),
            ("histogram", t_hist, bins),
        ):
            sens = tr.map(1)
            scale = dp.binary_search_param(
                lambda s, tr=tr: self._approx(tr >> dp.m.then_gaussian(s)),
                d_in=1,
                d_out=(EPSILON, DELTA),
            )
            chain = tr >> dp.m.then_gaussian(scale)
            meas = dp.m.make_gaussian(tr.output_domain, tr.output_metric, scale=scale)
            self.noise[name] = [(name, meas)]
            self.info[name] = self._describe(chain, {name: (sens, scale)}, meas.map(sens), data)
        for name, ts, key, data in (
            ("mean", t_sum, "sum", ages),
            ("mean_centred", t_csum, "csum", centred),
        ):
            sens_c, sens_s = t_count.map(1), ts.map(1)

            def composed(k: float, ts: Any = ts, sens_c: Any = sens_c, sens_s: Any = sens_s) -> Any:
                return dp.c.make_composition(
                    [
                        t_count >> dp.m.then_gaussian(k * sens_c),
                        ts >> dp.m.then_gaussian(k * sens_s),
                    ]
                )

            k = dp.binary_search_param(
                lambda k, composed=composed: self._approx(composed(k)),
                d_in=1,
                d_out=(EPSILON, DELTA),
            )
            m_c = dp.m.make_gaussian(t_count.output_domain, t_count.output_metric, scale=k * sens_c)
            m_s = dp.m.make_gaussian(ts.output_domain, ts.output_metric, scale=k * sens_s)
            self.noise[name] = [("count", m_c), (key, m_s)]
            rho = m_c.map(sens_c) + m_s.map(sens_s)
            scales = {"count": (sens_c, k * sens_c), key: (sens_s, k * sens_s)}
            self.info[name] = self._describe(composed(k), scales, rho, data)

    def _approx(self, meas: Any) -> Any:
        return self.dp.c.make_fix_delta(self.dp.c.make_zCDP_to_approxDP(meas), DELTA)

    def _describe(
        self, chain: Any, scales: dict[str, tuple[Any, float]], rho: float, data: list[int]
    ) -> dict[str, Any]:
        eps, delta = self._approx(chain).map(1)
        one = chain(data)  # the whole OpenDP pipeline once on the data (a sanity check)
        return {
            "sensitivity_and_scale": {k: [float(s), sc] for k, (s, sc) in scales.items()},
            "rho": rho,
            "epsilon": eps,
            "delta": delta,
            "one_release_on_data": one,
        }

    def post(self, name: str, noisy: dict[str, Any]) -> np.ndarray:
        if name == "mean":
            v = noisy["sum"] / max(noisy["count"], 1)
            return np.array([min(max(v, LO), HI)], dtype=float)
        if name == "mean_centred":
            v = (LO + HI) / 2 + noisy["csum"] / 2 / max(noisy["count"], 1)
            return np.array([min(max(v, LO), HI)], dtype=float)
        return np.atleast_1d(np.asarray(noisy[name], dtype=float))

    def trials(self, name: str, trials: int, truth: np.ndarray) -> dict[str, Any]:
        start_s = time.perf_counter()
        values = []
        for _ in range(trials):
            noisy = {key: meas(self.exact[key]) for key, meas in self.noise[name]}
            values.append(self.post(name, noisy))
        out = error_stats(np.asarray(values), truth)
        out |= {
            "analytic_std": self.analytic_std(name, truth),
            "seconds": time.perf_counter() - start_s,
        }
        return out

    def analytic_std(self, name: str, truth: np.ndarray) -> float:
        sc = {k: v[1] for k, v in self.info[name]["sensitivity_and_scale"].items()}
        if name in ("count", "sum", "histogram"):
            return float(sc[name])
        n = float(self.n)
        if name == "mean":  # d(S/N) = dS/N - S dN/N^2
            s = float(self.exact["sum"])
            return math.sqrt(sc["sum"] ** 2 / n**2 + sc["count"] ** 2 * s**2 / n**4)
        s = float(self.exact["csum"]) / 2
        return math.sqrt((sc["csum"] / 2) ** 2 / n**2 + sc["count"] ** 2 * s**2 / n**4)


# --- accuracy --------------------------------------------------------------------------------


def accuracy(df: pd.DataFrame, trials: int, node_counts: tuple[int, ...]) -> dict[str, Any]:
    truth = truths(df)
    anchor = OpenDPAnchor(df)
    for key, want in (("count", truth["count"][0]), ("sum", truth["sum"][0])):
        if float(anchor.exact[key]) != want:
            raise SystemExit(f"OpenDP's exact {key} {anchor.exact[key]} != {want}")
    if list(anchor.exact["histogram"]) != list(truth["histogram"]):
        raise SystemExit("OpenDP's exact histogram differs from numpy's")
    rows: list[dict[str, Any]] = []
    encoding_error: dict[str, float] = {}  # |noiseless release - truth|: the encoding's rounding
    scale_1 = anchor.info["count"]["sensitivity_and_scale"]["count"][1]  # OpenDP, sensitivity 1
    with tempfile.TemporaryDirectory(prefix="ts-bench-dp-") as tmp:
        for m in node_counts:
            t0 = time.perf_counter()
            engines = make_engines(df, m, Path(tmp))
            stats = {}
            for name, q in QUERIES.items():
                st = TrustspaceStat(q, engines)
                st.rows = len(df)
                # the noiseless total: each entry within the encoding's rounding (half an
                # encoded unit per node) of the sum of the engines' local vectors
                local = sum(np.asarray(e.compute(st.rnd), dtype=float) for e in engines)
                decoded = st.rnd.decode(st.exact_total())
                if np.any(np.abs(decoded - local) > m * (0.5 + 1e-9) / st.units()):
                    raise SystemExit(f"{name} over {m} engines: {decoded} != {local}")
                exact = st.release(st.exact_total(), 1.0).value  # the module's exact answer
                got = np.atleast_1d(np.asarray(exact, dtype=float))
                encoding_error[f"{name}@{m}"] = float(np.abs(got - truth[name]).max())
                stats[name] = st
            print(f"m={m}: {m} engines loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            for t in sorted({m, math.ceil(0.9 * m)}, reverse=True):
                target = TARGET_NO_DROPOUT if t == m else TARGET_DROPOUT
                for name, st in stats.items():
                    ts = st.trials(t, trials, truth[name])
                    # the central noise for the same round sensitivity, OpenDP's calibration
                    central = st.l2 * scale_1
                    overhead = ts["total_noise_std_encoded"]
                    for anc in ANCHORS[name]:
                        od = anchor.trials(anc, trials, truth[name])
                        ratio = ts["rmse"] / od["rmse"]
                        half = 1.959963984540054 * math.sqrt(
                            ts["var_log_rmse"] + od["var_log_rmse"]
                        )
                        row = {
                            "statistic": name,
                            "opendp_construction": anc,
                            "opendp_text": ANCHOR_TEXT[anc],
                            "nodes": m,
                            "t": t,
                            "dropout_tolerance": (m - t) / m,
                            "trustspace": ts,
                            "opendp": od,
                            "rmse_ratio": ratio,
                            "rmse_ratio_ci95": [ratio * math.exp(-half), ratio * math.exp(half)],
                            "analytic_std_ratio": ts["analytic_std"] / od["analytic_std"],
                            "noise_over_central_same_round": overhead / central,
                            "round_sensitivity_l2_encoded": st.l2,
                            "round_terms": st.term_rho_share,
                            "target": target,
                            "met": ratio <= target,
                        }
                        rows.append(row)
                        print(
                            f"m={m:3d} t={t:3d} {name:9s} vs {anc:12s}: RMSE ts "
                            f"{ts['rmse']:.4g} OpenDP {od['rmse']:.4g} ratio {ratio:.3f} "
                            f"(analytic {row['analytic_std_ratio']:.3f}; target <= {target}) "
                            f"{'met' if row['met'] else 'MISSED'}",
                            flush=True,
                        )
            del engines, stats
    return {
        "opendp": anchor.info,
        "truth": {k: v.tolist() for k, v in truth.items()},
        "noiseless_release_abs_error": encoding_error,
        "rows": rows,
    }


# --- cost ------------------------------------------------------------------------------------


def _percentiles(seconds: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in seconds)
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[int(0.95 * (len(ms) - 1))],
        "samples": len(ms),
    }


def latency(df: pd.DataFrame, reps: int, warmup: int) -> dict[str, Any]:
    from trustspace import Federation
    from trustspace.api import DEFAULT_DATASET

    ds = DEFAULT_DATASET
    parts = {
        f"node-{i}": df.iloc[idx] for i, idx in enumerate(np.array_split(np.arange(len(df)), 3))
    }
    rng = (float(LO), float(HI))
    ops: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
        "count": (
            lambda f: f.count(),
            lambda f: f.count(epsilon=EPSILON, delta=DELTA),
        ),
        "mean": (
            lambda f: f.mean(ds, COLUMN),
            lambda f: f.mean(ds, COLUMN, epsilon=EPSILON, delta=DELTA),
        ),
        "histogram": (
            lambda f: f.histogram(ds, COLUMN, BINS, rng),
            lambda f: f.histogram(ds, COLUMN, BINS, rng, epsilon=EPSILON, delta=DELTA),
        ),
    }
    kw: dict[str, Any] = {"columns": _adult.COLUMNS, "bounds": {COLUMN: (LO, HI)}}
    times: dict[str, dict[str, list[float]]] = {
        op: {"exact": [], "dp": [], "exact_no_dp_policy": []} for op in ops
    }
    with Federation.local(parts, BUDGET_POLICY, **kw) as fed:
        for _ in range(warmup):
            for exact, noisy in ops.values():
                exact(fed)
                if fed.last_result.dp is not None:
                    raise SystemExit("an exact query came back with DP noise")
                noisy(fed)
                info = fed.last_result.dp
                if info is None:
                    raise SystemExit("a query with epsilon came back without DP noise")
        dp_info = {  # what the federation reports for its last DP query (the histogram)
            k: info[k] for k in ("epsilon", "delta", "mechanism", "noise_std", "nodes") if k in info
        }
        for rep in range(reps):
            for op, (exact, noisy) in ops.items():
                order = [("exact", exact), ("dp", noisy)]
                if rep % 2:
                    order.reverse()
                for kind, fn in order:
                    t0 = time.perf_counter()
                    fn(fed)
                    times[op][kind].append(time.perf_counter() - t0)
        budget = fed.budget()
    # context: the same exact queries where the nodes have no [policy.dp] at all
    with Federation.local(parts, NO_DP_POLICY, **kw) as fed:
        for _ in range(warmup):
            for exact, _noisy in ops.values():
                exact(fed)
        for _ in range(reps):
            for op, (exact, _noisy) in ops.items():
                t0 = time.perf_counter()
                exact(fed)
                times[op]["exact_no_dp_policy"].append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for op, kinds in times.items():
        res: dict[str, Any] = {kind: _percentiles(ts) for kind, ts in kinds.items()}
        ratio = res["dp"]["p50_ms"] / res["exact"]["p50_ms"]
        res |= {
            "p50_ratio": ratio,
            "p50_ratio_to_exact_no_dp_policy": res["dp"]["p50_ms"]
            / res["exact_no_dp_policy"]["p50_ms"],
            "target_ratio": LATENCY_TARGET,
            "met": ratio <= LATENCY_TARGET,
        }
        out[op] = res
        print(
            f"latency {op}: exact p50 {res['exact']['p50_ms']:.1f} ms, DP p50 "
            f"{res['dp']['p50_ms']:.1f} ms, ratio {ratio:.2f} (target <= {LATENCY_TARGET}); "
            f"exact without [policy.dp] {res['exact_no_dp_policy']['p50_ms']:.1f} ms",
            flush=True,
        )
    if hasattr(budget, "to_dict"):
        budget = budget.to_dict(orient="index")
    return {"ops": out, "last_dp_result": dp_info, "budget_after": _jsonable(budget)}


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


# --- report ----------------------------------------------------------------------------------


def markdown(out: dict[str, Any]) -> str:
    p, m = out["parameters"], out["machine"]
    v = ", ".join(f"{k} {val}" for k, val in out["versions"].items())
    lines = [
        "# DP statistics: accuracy against OpenDP and cost",
        "",
        f"Mode: {out['mode']}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, "
        f"{m['platform']}. Versions: {v}.",
        "",
        f"Adult ({p['rows']:,} rows), `{COLUMN}` bounds [{LO}, {HI}], epsilon = {EPSILON:g}, "
        f"delta = {DELTA:g}, {p['trials']} noise trials per row, nodes simulated with real "
        "engines, totals summed modulo 2^64. RMSE ratio = trustspace / OpenDP (95% interval);"
        " analytic = ratio of the analytic noise standard deviations; dist. = trustspace's "
        "total noise over the central noise for the same round sensitivity. t = m: no dropout "
        "tolerated (target 1.10); t = ceil(0.9 m): 10% tolerated, all m shares in the total "
        "(target 1.30)"
        + "".join(
            f"; m = {n}: ceil(0.9 m) = {n}, no separate dropout row"
            for n in p["node_counts"]
            if math.ceil(0.9 * n) == n
        )
        + ".",
        "",
        "| statistic | OpenDP construction | nodes | t | RMSE trustspace | RMSE OpenDP | ratio "
        "(95% CI) | analytic std ts / OpenDP | reported std | dist. | target | |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["accuracy"]["rows"]:
        ts, od = r["trustspace"], r["opendp"]
        lo, hi = r["rmse_ratio_ci95"]
        lines.append(
            f"| {r['statistic']} | {r['opendp_text']} | {r['nodes']} | {r['t']} | "
            f"{ts['rmse']:.4g} | {od['rmse']:.4g} | {r['rmse_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{ts['analytic_std']:.4g} / {od['analytic_std']:.4g} = "
            f"{r['analytic_std_ratio']:.3f} | {ts['reported_std_median']:.4g} | "
            f"{r['noise_over_central_same_round']:.3f} | <= {r['target']:.2f} | "
            f"{'met' if r['met'] else '**missed**'} |"
        )
    lines += [
        "",
        "OpenDP calibration (its own zCDP -> (epsilon, delta) conversion, binary search):",
        "",
        "| construction | sensitivity, scale | rho | (epsilon, delta) |",
        "|---|---|---|---|",
    ]
    for name, info in out["accuracy"]["opendp"].items():
        ss = "; ".join(
            f"{k}: {s:g}, {sc:.4f}" for k, (s, sc) in info["sensitivity_and_scale"].items()
        )
        lines.append(
            f"| {name} | {ss} | {info['rho']:.6g} | ({info['epsilon']:.6f}, {info['delta']:g}) |"
        )
    lat = out["latency"]["ops"]
    lines += [
        "",
        f"Cost: Federation.local, 3 nodes (gRPC, mutual TLS, in-process), {p['latency_samples']} "
        "samples each, interleaved, after a warm-up.",
        "",
        "| query | exact p50 / p95 ms | DP p50 / p95 ms | p50 ratio | target | | exact, nodes "
        "without [policy.dp], p50 / p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, r in lat.items():
        e, d, x = r["exact"], r["dp"], r["exact_no_dp_policy"]
        lines.append(
            f"| {op} | {e['p50_ms']:.1f} / {e['p95_ms']:.1f} | {d['p50_ms']:.1f} / "
            f"{d['p95_ms']:.1f} | {r['p50_ratio']:.2f} | <= {r['target_ratio']:g} | "
            f"{'met' if r['met'] else '**missed**'} | {x['p50_ms']:.1f} / {x['p95_ms']:.1f} |"
        )
    info = out["latency"].get("last_dp_result", {})
    if "noise_std_over_opendp_central" in info:
        lines += [
            "",
            f"The federation's DP answers carry noise of standard deviation {info['noise_std']:.4g}"
            f" records per count over {info.get('nodes')} nodes (its secure-aggregation threshold "
            f"sizes the shares): {info['noise_std_over_opendp_central']:.3f}x OpenDP's central "
            "count noise.",
        ]
    lines += ["", "Terms of the DP rounds (encoded sensitivity, share of the round's rho):", ""]
    seen = set()
    for r in out["accuracy"]["rows"]:
        if r["statistic"] in seen:
            continue
        seen.add(r["statistic"])
        terms = "; ".join(
            f"{k}: {v['sensitivity_encoded']:.6g}, {v['rho_share']:.1%}"
            for k, v in r["round_terms"].items()
        )
        lines.append(f"- {r['statistic']}: {terms}")
    err = out["accuracy"]["noiseless_release_abs_error"]
    lines += [
        "",
        "Noiseless release minus the truth (the encoding's rounding), largest: "
        + ", ".join(f"{k} {v:.3g}" for k, v in err.items()),
        "",
        f"trustspace source: {out['source']}"
        + (
            f" **(changed during the run, to {out['source_at_end']}: re-run)**"
            if "source_at_end" in out
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, help="noise trials per row (1,000 quick, 5,000 full)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    trials = args.trials or (1000 if args.quick else 5000)
    samples = 20 if args.quick else 100
    warmup = 3
    started = time.perf_counter()
    df = load_adult()
    out: dict[str, Any] = {
        "benchmark": "dp",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions("opendp", "numpy", "pandas", "duckdb", "grpcio"),
        "parameters": {
            "dataset": "Adult (demos/data/adult/adult.csv)",
            "rows": len(df),
            "column": COLUMN,
            "bounds": [LO, HI],
            "histogram_bins": BINS,
            "epsilon": EPSILON,
            "delta": DELTA,
            "neighbouring": "add/remove one record",
            "node_counts": list(NODE_COUNTS),
            "thresholds": "t = m (target 1.10) and t = ceil(0.9 m) (target 1.30), all m shares "
            "in the total",
            "partitioning": "contiguous blocks (numpy.array_split)",
            "trials": trials,
            "latency_nodes": 3,
            "latency_samples": samples,
            "latency_warmup": warmup,
            "policy": BUDGET_POLICY,
        },
    }
    out["source"] = source_state()
    out["accuracy"] = accuracy(df, trials, NODE_COUNTS)
    out["latency"] = latency(df, samples, warmup)
    # the federation's own DP noise (a count's, in records) against OpenDP's central count noise
    info = out["latency"]["last_dp_result"]
    scale_1 = out["accuracy"]["opendp"]["count"]["sensitivity_and_scale"]["count"][1]
    if "noise_std" in info:
        info["noise_std_over_opendp_central"] = info["noise_std"] / scale_1
    out["seconds"] = time.perf_counter() - started
    end_state = source_state()
    if end_state != out["source"]:  # trustspace changed on disk during the run
        out["source_at_end"] = end_state
        print(f"warning: trustspace changed during the run: {out['source']} -> {end_state}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp.json").write_text(json.dumps(out, indent=2, default=_default) + "\n")
    md = markdown(out)
    (RESULTS / "dp.md").write_text(md)
    print("\n" + md)
    print(f"wrote {RESULTS / 'dp.json'} and dp.md in {out['seconds']:.0f} s")
    return 0


def source_state() -> dict[str, Any]:
    """The commit measured, and whether trustspace/ had uncommitted changes (read-only git)."""
    import subprocess

    root = HERE.parent

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=root, capture_output=True, text=True, timeout=30, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    dirty = git("status", "--porcelain", "--", "trustspace")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_trustspace_files": [ln[3:] for ln in dirty.splitlines() if ln.strip()]
        if dirty != "unknown"
        else "unknown",
    }


def _default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


if __name__ == "__main__":
    sys.exit(main())
