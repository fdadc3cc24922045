"""Data sources benchmark (issue 18): ``describe`` through PostgreSQL and Spark beside DuckDB.

    python benchmarks/sources.py --quick   # 1,000,000 rows; out of core over 10,000,000
    python benchmarks/sources.py           # 10,000,000 rows; out of core over 100,000,000

Every node is a real ``trustspace node`` process (``trustspace.testing.LocalSpace``, mutual
TLS on loopback, the aggregator a process too). A node's policy cannot go below
``min_nodes = 2`` (a secure sum over one node is that node's own aggregate), so each
federation is the node under test, holding every generated row, and a small companion node
(1,000 rows of the same generator, DuckDB over Parquet) that is the same in every run.

1. ``describe`` of 5 numeric columns (1-5% nulls) over N generated rows at one node, read
   through PostgreSQL (a throw-away server started here, ``tests/_pg.py``; the node connects
   as a read-only role with SELECT only, its password in a mode-0600 file), through Spark
   ``local[2]`` (the same rows in Parquet) and through the node's embedded DuckDB over the
   same Parquet file (its default, the file loaded once at start-up, and ``snapshot = false``,
   the file read at every round, as PostgreSQL and Spark read theirs). The analyst's end-to-end
   time (median of 3 after one untimed first call; 2 in quick mode) and the node process's peak
   memory (``VmHWM``); for Spark, the JVM the node starts is reported apart. Target: the node
   process stays under 500 MB, since only aggregates come back. Plain DuckDB's describe over
   the Parquet (in this process) is the anchor and gives the figures every engine is checked
   against: counts equal, means and standard deviations within 1e-9 relative.
2. DuckDB out of core: 10N rows of Parquet at one node, ``snapshot = false``, ``[engine]
   memory_limit = "1GB"`` (spilling to a ``temp_directory``): time and the node's ``VmHWM``
   against 1 GiB, beside plain DuckDB's describe of the same file under the same 1GB limit
   (``approx_quantile``, in bounded memory as DuckDB's ``SUMMARIZE``; its exact
   ``quantile_cont`` holds a column's values, and is tried under 1GB once too).

Asserts nothing about time; exits 1 if an engine's figures differ from the anchor's. Writes
benchmarks/results/sources.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/_pg.py: a throw-away PostgreSQL server
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _pg
from _common import machine, versions

import trustspace.testing
from trustspace.api import Credentials, Federation
from trustspace.testing import LocalSpace, NodeSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "sources.json"
COLUMNS = ["income", "age", "hours", "score", "debt"]
NULL_SHARE = {"income": 0.01, "age": 0.02, "hours": 0.03, "score": 0.04, "debt": 0.05}
COMPANION_ROWS = 1_000
TARGET_NODE_MIB = 500e6 / 2**20  # 500 MB: the node process, whatever the row count
TARGET_OOC_MIB = 1024.0  # the out-of-core node, memory_limit = "1GB"
REL_TOL = 1e-9
PG_TABLE = "public.big"
PG_READER = "ts_reader"
POLICY = {"min_group_size": 10, "min_nodes": 2}
RULES = [{"analysts": ["alice"], "operations": ["*"]}]
# a node checks its whole dataset (one scan at its source) before it reports ready, and
# Spark starts a JVM first: more than LocalSpace's 60 s at 100M rows on 2 cores
trustspace.testing.START_TIMEOUT_S = 1800.0
AGGREGATOR = {"call_timeout_s": 900}  # one round over 100M rows out of core


# ------------------------------------------------------------------------ data
def _u(k: int) -> str:
    """A uniform double in (0, 1) from row number i: a hash, the same rows at every engine."""
    return f"(((hash(i * 16 + {k}) >> 11)::DOUBLE + 0.5) / 9007199254740992.0)"


def _select(start: int, rows: int) -> str:
    r1, r2 = f"sqrt(-2 * ln({_u(0)}))", f"sqrt(-2 * ln({_u(2)}))"
    expr = {
        "income": f"round(exp(10.5 + 0.6 * {r1} * cos(2 * pi() * {_u(1)})), 2)",
        "age": f"floor(18 + 73 * {_u(4)})",
        "hours": f"round(least(99.0, greatest(1.0, 40 + 12 * {r1} * sin(2 * pi() * {_u(1)}))), 1)",
        "score": f"round(100 + 15 * {r2} * cos(2 * pi() * {_u(3)}), 3)",
        "debt": f"round(-5000 * ln({_u(5)}), 2)",
    }
    cols = ", ".join(
        f"CAST(CASE WHEN {_u(8 + j)} < {NULL_SHARE[c]} THEN NULL ELSE {expr[c]} END AS DOUBLE) "
        f"AS {c}"
        for j, c in enumerate(COLUMNS)
    )
    return f"SELECT {cols} FROM range({start}, {start + rows}) t(i)"


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _con(tmp: Path, memory_limit: str | None = "2GB") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection of this process (None: DuckDB's default limit, 80% of RAM)."""
    spill = tmp / "duckdb-spill"
    spill.mkdir(exist_ok=True)
    config: dict[str, Any] = {"temp_directory": str(spill), "preserve_insertion_order": False}
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    return duckdb.connect(config=config)


def write_parquet(tmp: Path, path: Path, start: int, rows: int) -> float:
    """N generated rows as Parquet, written by DuckDB (never in Python memory); seconds."""
    t0 = time.perf_counter()
    with _con(tmp) as con:
        con.execute(f"COPY ({_select(start, rows)}) TO {_lit(path)} (FORMAT parquet)")
    return time.perf_counter() - t0


def anchor_describe(
    tmp: Path, files: list[Path], memory_limit: str | None = None, exact: bool = True
) -> pd.DataFrame:
    """Plain DuckDB's describe of the rows of ``files``, as pandas shapes it: exact quantiles
    (``quantile_cont``, which holds a column's values), or ``approx_quantile`` (a t-digest in
    bounded memory, as DuckDB's own ``SUMMARIZE``)."""
    quantile = "quantile_cont" if exact else "approx_quantile"
    aggs = []
    for c in COLUMNS:
        aggs += [
            f"count({c})",
            f"avg({c})",
            f"stddev_samp({c})",
            f"min({c})",
            f"{quantile}({c}, 0.25)",
            f"{quantile}({c}, 0.5)",
            f"{quantile}({c}, 0.75)",
            f"max({c})",
        ]
    src = "read_parquet([" + ", ".join(_lit(f) for f in files) + "])"
    with _con(tmp, memory_limit) as con:
        row = con.execute(f"SELECT {', '.join(aggs)} FROM {src}").fetchone()
    assert row is not None
    index = ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
    return pd.DataFrame(
        {c: [float(v) for v in row[8 * j : 8 * j + 8]] for j, c in enumerate(COLUMNS)},
        index=index,
    )


def check(got: pd.DataFrame, want: pd.DataFrame) -> dict[str, Any]:
    """Counts equal, means and standard deviations within REL_TOL of the anchor's."""
    counts = {c: int(got.loc["count", c]) for c in COLUMNS}
    counts_equal = all(counts[c] == int(want.loc["count", c]) for c in COLUMNS)
    rel = {
        stat: max(
            abs(float(got.loc[stat, c]) - float(want.loc[stat, c])) / abs(float(want.loc[stat, c]))
            for c in COLUMNS
        )
        for stat in ("mean", "std")
    }
    quart = {
        q: max(
            abs(float(got.loc[q, c]) - float(want.loc[q, c])) / float(want.loc["std", c])
            for c in COLUMNS
        )
        for q in ("min", "25%", "50%", "75%", "max")
        if q in got.index
    }
    return {
        "counts": counts,
        "counts_equal": counts_equal,
        "max_rel_error": rel,
        "max_quantile_error_in_std": quart,
        "correct": counts_equal and all(v <= REL_TOL for v in rel.values()),
    }


# ------------------------------------------------------------------------ processes
def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def peak_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    return round(int(_status(pid)["VmHWM"].split()[0]) / 1024, 1)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from each process's parent in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_node(
    root: Path, label: str, dataset: dict[str, Any], companion: Path, reps: int,
    engine: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:  # fmt: skip
    """Start the node under test (``dataset``) and the companion, time ``describe``."""
    cols = dict.fromkeys(COLUMNS, "float")
    specs = [
        NodeSpec(label, {"t": {**dataset, "columns": cols}}, POLICY, RULES, engine=engine),
        NodeSpec(
            "companion",
            {"t": {"path": companion, "format": "parquet", "columns": cols}},
            POLICY,
            RULES,
        ),
    ]
    space = LocalSpace(root / label)
    space.init_ca([s.name for s in specs], analysts=["alice"])
    res: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        target = space.start_all(specs, AGGREGATOR)
        res["start_s"] = time.perf_counter() - t0  # both nodes' start-up checks included
        with Federation.connect(
            target, credentials=Credentials.from_dir(space.identity("alice"))
        ) as fed:
            t0 = time.perf_counter()
            got = fed.describe("t", COLUMNS)
            res["first_s"] = time.perf_counter() - t0
            runs = []
            for _ in range(reps):
                t0 = time.perf_counter()
                got = fed.describe("t", COLUMNS)
                runs.append(time.perf_counter() - t0)
        res["runs_s"] = runs
        res["median_s"] = _median(runs)
        res["best_s"] = min(runs)
        pid = space.procs[label].pid
        res["peak_rss_mib"] = {name: peak_mib(p.pid) for name, p in space.procs.items()}
        kids = []
        for child in descendants(pid):
            try:
                st = _status(child)
                kids.append({"pid": child, "name": st["Name"], "peak_rss_mib": peak_mib(child)})
            except (OSError, KeyError):
                continue
        res["child_processes"] = kids
        jvm = [k["peak_rss_mib"] for k in kids if k["name"] == "java"]
        if jvm:
            res["jvm_peak_rss_mib"] = max(jvm)
        print(
            f"  {label}: start {res['start_s']:.1f} s, first {res['first_s']:.2f} s, "
            f"median {res['median_s']:.2f} s (runs {', '.join(f'{t:.2f}' for t in runs)}); "
            f"node peak {res['peak_rss_mib'][label]:.0f} MiB"
            + (f", JVM {res['jvm_peak_rss_mib']:.0f} MiB" if jvm else ""),
            flush=True,
        )
    finally:
        space.stop()
    return res, got


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], Any]:
    runs, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return _median(runs), runs, out


def anchor(
    tmp: Path, files: list[Path], reps: int, memory_limit: str | None = None, exact: bool = True
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Plain DuckDB in this process: time and this process's peak memory over the runs
    (``VmHWM``, reset first through /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")
    med, runs, want = timed(lambda: anchor_describe(tmp, files, memory_limit, exact), reps)
    res = {
        "median_s": med,
        "runs_s": runs,
        "memory_limit": memory_limit or "DuckDB's default (80% of RAM)",
        "quantiles": "exact (quantile_cont)" if exact else "approx_quantile (t-digest)",
        "process_peak_rss_mib": peak_mib(os.getpid()),
    }
    print(
        f"  plain DuckDB describe (in process, {res['quantiles']}, memory limit "
        f"{res['memory_limit']}): {med:.2f} s, peak {res['process_peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return res, want


# ------------------------------------------------------------------------ PostgreSQL
def load_postgres(tmp: Path, dsn: str, parquet: Path) -> dict[str, Any]:
    """``public.big`` from the Parquet file (DuckDB writes CSV, psycopg COPYs it in), and a
    read-only role with SELECT on it only; returns the node's connection keys."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    csv = tmp / "big.csv"
    t0 = time.perf_counter()
    with _con(tmp) as con:
        con.execute(
            f"COPY (SELECT {', '.join(COLUMNS)} FROM read_parquet({_lit(parquet)})) "
            f"TO {_lit(csv)} (FORMAT csv, HEADER false)"
        )
    password = secrets.token_urlsafe(18)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {PG_TABLE} ({', '.join(f'{c} double precision' for c in COLUMNS)})"
        )
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {PG_TABLE} FROM STDIN (FORMAT csv)") as cp,
            csv.open("rb") as fh,
        ):
            while chunk := fh.read(1 << 20):
                cp.write(chunk)
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {PG_TABLE}")
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(PG_READER), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(PG_READER))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(PG_TABLE), sql.Identifier(PG_READER))
        )
        size = conn.execute(f"SELECT pg_total_relation_size('{PG_TABLE}')").fetchone()
        server = {
            k: str(conn.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
            for k in ("server_version", "shared_buffers", "max_parallel_workers_per_gather", "jit")
        }
    csv.unlink()
    pwfile = tmp / "reader.pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    info = conninfo_to_dict(dsn)
    # the role may read, not write
    reader = {k: str(info[k]) for k in ("host", "port", "dbname")} | {"user": PG_READER}
    with psycopg.connect(**reader, password=password, autocommit=True) as conn:
        try:
            conn.execute(f"INSERT INTO {PG_TABLE} (income) VALUES (1)")
            writes = True
        except psycopg.errors.InsufficientPrivilege:
            writes = False
    if writes:
        raise RuntimeError(f"{PG_READER} may write to {PG_TABLE}; it must have SELECT only")
    return {
        "connection": reader,
        "password_file": pwfile,
        "load_s": time.perf_counter() - t0,
        "table_bytes": int(size[0]) if size else None,
        "server": server,
    }


# ------------------------------------------------------------------------ main
def free_gib(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, help="rows of part 1 (default 1M quick, 10M full)")
    ap.add_argument("--ooc-rows", type=int, help="rows out of core (default 10x --rows)")
    ap.add_argument("--tmp", type=Path, help="where to put the data (default: the temp dir)")
    args = ap.parse_args()
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    ooc_rows = args.ooc_rows or 10 * rows
    reps = 2 if args.quick else 3
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {
        "benchmark": "sources",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions("duckdb", "psycopg", "pyspark", "sqlglot", "pandas"),
        "parameters": {
            "rows": rows,
            "out_of_core_rows": ooc_rows,
            "companion_rows": COMPANION_ROWS,
            "nodes": "the node under test (every row) + a companion node (min_nodes >= 2)",
            "columns": COLUMNS,
            "null_share": NULL_SHARE,
            "repetitions": reps,
            "timing": "median of the repetitions after one untimed first call",
            "spark_master": "local[2]",
            "out_of_core_engine": {"memory_limit": "1GB", "snapshot": False},
            "method": "secagg",
            "transport": "gRPC, mutual TLS, loopback, one process per node and aggregator",
            "postgresql_server": "tests/_pg.py (shared_buffers 64MB, fsync off), local",
            "tolerance_rel": REL_TOL,
            "load_average_at_start": os.getloadavg(),
        },
    }
    base = args.tmp or Path(tempfile.gettempdir())
    need = 2 * ooc_rows * len(COLUMNS) * 8 / 2**30 + 2  # the Parquet file and any spill
    print(f"{base}: {free_gib(base):.1f} GiB free, about {need:.1f} GiB needed", flush=True)
    if free_gib(base) < need:
        print(f"not enough space under {base}; pass --tmp DIR", file=sys.stderr)
        return 2
    out["parameters"]["data_dir_free_gib"] = round(free_gib(base), 1)
    results: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-sources-", dir=base))
    try:
        big, small = tmp / "big.parquet", tmp / "companion.parquet"
        print(f"generating {rows:,} rows (+ {COMPANION_ROWS:,} at the companion) ...", flush=True)
        out["parameters"]["generate_s"] = write_parquet(tmp, big, 0, rows)
        write_parquet(tmp, small, 10**12, COMPANION_ROWS)
        out["parameters"]["parquet_bytes"] = big.stat().st_size
        results["duckdb_in_process"], want = anchor(tmp, [big, small], reps)

        # PostgreSQL
        pg_root = Path(tempfile.mkdtemp(prefix="ts-bench-pg-"))
        try:
            dsn = _pg.start(pg_root)
            pg = load_postgres(tmp, dsn, big)
            print(f"  PostgreSQL loaded in {pg['load_s']:.1f} s", flush=True)
            res, got = run_node(
                tmp,
                "postgresql",
                {
                    "source": "postgresql",
                    "table": PG_TABLE,
                    "connection": pg["connection"],
                    "password_file": pg["password_file"],
                    "statement_timeout_s": 600,
                },
                small,
                reps,
            )
            res["load_s"], res["table_bytes"] = pg["load_s"], pg["table_bytes"]
            res["server"] = pg["server"]
            results["postgresql"], checks["postgresql"] = res, check(got, want)
        finally:
            _pg.stop(pg_root)

        # Spark local[2], the Parquet file
        spark = {"source": "spark", "path": big, "format": "parquet", "master": "local[2]"}
        res, got = run_node(tmp, "spark", spark, small, reps)
        results["spark"], checks["spark"] = res, check(got, want)

        # the node's embedded DuckDB, the same Parquet file: loaded at start, or every round
        duck = {"path": big, "format": "parquet"}
        res, got = run_node(tmp, "duckdb", duck, small, reps)
        results["duckdb"], checks["duckdb"] = res, check(got, want)
        res, got = run_node(tmp, "duckdb-streaming", {**duck, "snapshot": False}, small, reps)
        results["duckdb_streaming"], checks["duckdb_streaming"] = res, check(got, want)
        counts = {k: c["counts"] for k, c in checks.items()}
        out["engines_agree"] = all(c == counts["duckdb"] for c in counts.values())
        big.unlink()

        # DuckDB out of core
        print(f"generating {ooc_rows:,} rows (free {free_gib(tmp):.1f} GiB) ...", flush=True)
        ooc = tmp / "ooc.parquet"
        out["parameters"]["out_of_core_generate_s"] = write_parquet(tmp, ooc, 0, ooc_rows)
        out["parameters"]["out_of_core_parquet_bytes"] = ooc.stat().st_size
        # plain DuckDB under the node's limit: exact quantiles hold a column's values
        # (about 4 bytes of memory per value byte), so the anchor is approx_quantile's
        results["out_of_core_duckdb_in_process"], want = anchor(
            tmp, [ooc, small], reps, "1GB", exact=False
        )
        Path("/proc/self/clear_refs").write_text("5")
        t0 = time.perf_counter()
        try:
            anchor_describe(tmp, [ooc, small], "1GB", exact=True)
            at_1gb: dict[str, Any] = {"seconds": time.perf_counter() - t0}
        except duckdb.Error as exc:
            at_1gb = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        at_1gb["process_peak_rss_mib"] = peak_mib(os.getpid())
        results["out_of_core_duckdb_in_process"]["exact_quantiles_memory_limit_1GB"] = at_1gb
        print(f"  plain DuckDB describe, exact quantiles, memory_limit 1GB: {at_1gb}", flush=True)
        spill = tmp / "node-spill"
        spill.mkdir()
        res, got = run_node(
            tmp,
            "duckdb-out-of-core",
            {"path": ooc, "format": "parquet", "snapshot": False},
            small,
            reps,
            engine={"memory_limit": "1GB", "temp_directory": spill},
        )
        results["out_of_core"], checks["out_of_core"] = res, check(got, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    d, pg, sp = results["duckdb"], results["postgresql"], results["spark"]
    ds, oc = results["duckdb_streaming"], results["out_of_core"]
    out["results"] = results
    out["checks"] = checks
    out["ratios"] = {
        "postgresql_to_duckdb": pg["median_s"] / d["median_s"],
        "spark_to_duckdb": sp["median_s"] / d["median_s"],
        "postgresql_to_duckdb_streaming": pg["median_s"] / ds["median_s"],
        "spark_to_duckdb_streaming": sp["median_s"] / ds["median_s"],
        "duckdb_node_to_in_process": d["median_s"] / results["duckdb_in_process"]["median_s"],
        "out_of_core_node_to_in_process": oc["median_s"]
        / results["out_of_core_duckdb_in_process"]["median_s"],
    }
    node_peak = {
        k: results[k]["peak_rss_mib"][name]
        for k, name in (
            ("postgresql", "postgresql"),
            ("spark", "spark"),
            ("duckdb", "duckdb"),
            ("duckdb_streaming", "duckdb-streaming"),
        )
    }
    out["memory"] = {
        "node_peak_rss_mib": node_peak,
        "spark_jvm_peak_rss_mib": sp.get("jvm_peak_rss_mib"),
        "target_node_mib": TARGET_NODE_MIB,
        "met_node_target": {k: v < TARGET_NODE_MIB for k, v in node_peak.items()},
        "out_of_core_node_peak_rss_mib": oc["peak_rss_mib"]["duckdb-out-of-core"],
        "target_out_of_core_mib": TARGET_OOC_MIB,
        "met_out_of_core_target": oc["peak_rss_mib"]["duckdb-out-of-core"] < TARGET_OOC_MIB,
    }
    out["parameters"]["load_average_at_end"] = os.getloadavg()
    out["correct"] = all(c["correct"] for c in checks.values()) and out["engines_agree"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str) + "\n")

    print(f"\n| describe 5 cols, {rows:,} rows at one node | median s | ratio | node peak MiB |")
    print("|---|---|---|---|")
    plain = results["duckdb_in_process"]["median_s"]
    print(f"| plain DuckDB, in process | {plain:.2f} | | |")
    for key, label in (
        ("duckdb", "node: DuckDB over Parquet (snapshot)"),
        ("duckdb_streaming", "node: DuckDB over Parquet (snapshot = false)"),
        ("postgresql", "node: PostgreSQL"),
        ("spark", "node: Spark local[2]"),
    ):
        r = results[key]
        extra = f" (+ JVM {r['jvm_peak_rss_mib']:.0f})" if "jvm_peak_rss_mib" in r else ""
        print(
            f"| {label} | {r['median_s']:.2f} | {r['median_s'] / d['median_s']:.2f}x DuckDB | "
            f"{node_peak[key]:.0f}{extra} |"
        )
    m = out["memory"]
    print(
        f"out of core, {ooc_rows:,} rows, memory_limit 1GB: {oc['median_s']:.2f} s "
        f"(plain DuckDB {results['out_of_core_duckdb_in_process']['median_s']:.2f} s), "
        f"node peak {m['out_of_core_node_peak_rss_mib']:.0f} MiB "
        f"({'met' if m['met_out_of_core_target'] else 'MISSED'} < 1 GiB)"
    )
    for k, c in checks.items():
        print(f"  check {k}: {'ok' if c['correct'] else 'WRONG'} {c['max_rel_error']}")
    print(f"wrote {RESULTS}")
    if not out["correct"]:
        print("wrong results: an engine's figures differ from the anchor's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
