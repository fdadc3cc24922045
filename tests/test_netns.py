"""Across hosts: three nodes and the aggregator in their own network namespaces, each with its
own address, 20 ms one-way latency and 1 % packet loss on every link (``tests/_netns.py``).

Real ``trustspace node`` / ``trustspace aggregator`` processes under ``ip netns exec``, with
certificates issued for their namespace addresses; the analyst (this process, in the root
namespace) connects to the aggregator's address through the router. Checked: secure
aggregation (count, mean, describe, group_by), Paillier and federated anonymization over the
Adult data give exactly what the same federation gives on loopback, and what pandas / the
local anonymizer give on the union; a node whose link goes down mid-query ends in an error
naming it or in the exact result over the nodes that remain, within a bound, never a hang or a
wrong figure; p50/p95 of repeated counts under the impairment are printed and written to JSON
(``TRUSTSPACE_NETNS_RESULTS`` names the file; default: the test's temporary directory).

Skips, with the reason, only when this machine does not allow network namespaces.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w
from _netns import NetnsSpace, NetnsUnavailable

from trustspace import _adult
from trustspace.anon import anonymize
from trustspace.api import Federation
from trustspace.errors import TrustspaceError
from trustspace.testing import READY
from trustspace.transport.ca import Credentials, init_ca, issue

pytestmark = pytest.mark.slow

DELAY_MS = 20.0
LOSS_PCT = 1.0
NODES = ("n1", "n2", "n3")
NODE_PORT = 50051
AGG_PORT = 50050
CALL_TIMEOUT_S = 6.0  # per secure-aggregation stage; a cut-off node is dropped after this
PAILLIER_TIMEOUT_S = 8.0  # per Paillier encryption call
START_TIMEOUT_S = 60.0
KEY_BITS = 2048  # the smallest Paillier key the project allows; 3072 only costs time here
LATENCY_N = 20
QUERY_BOUND_S = 60.0  # no query below may take longer (else: a hang)
DOMAINS = {"sex": ["Female", "Male"]}
POLICY: dict[str, Any] = {
    "min_group_size": 10,
    "min_nodes": 2,
    "release_rows": True,
    "allow_base_histogram": True,
}
RULES = [{"analysts": ["alice"], "operations": ["*"]}]
ANON_QI = ("age", "sex", "race", "education", "marital-status")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the space
@dataclass
class Space:
    net: NetnsSpace
    root: Path
    aggregator: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    fed: Federation = field(init=False)  # the analyst's session, once everything runs

    def audit(self, node: str) -> Path:
        return self.root / "audit" / f"{node}.jsonl"


def _wait_ready(name: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> str:
    """The address in ``proc``'s ready line; raises with the end of its log if none comes."""
    assert proc.stdout is not None
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            m = READY.search(proc.stdout.readline().decode())
            if m:
                return m.group(1)
    raise AssertionError(
        f"{name} printed no ready line (exit {proc.poll()}); {log}:\n{log.read_text()[-2000:]}"
    )


def _start(space: Space, host: str, command: str, config: Path) -> subprocess.Popen[bytes]:
    log = space.root / f"{host}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, in every namespace
    with log.open("wb") as err:
        proc = space.net.popen(
            host,
            [sys.executable, "-m", "trustspace.cli.main", command, str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    space.procs[host] = proc
    return proc


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return pd.read_csv(_adult.CSV, sep=_adult.SEP)


@pytest.fixture(scope="module")
def parts(adult: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adult in three unequal parts (the cuts tests/test_stats_federated.py uses)."""
    root = tmp_path_factory.mktemp("netns-parts")
    cuts = [0, 9000, 21000, len(adult)]
    out = {}
    for name, a, b in zip(NODES, cuts, cuts[1:], strict=False):
        out[name] = root / f"{name}.csv"
        adult.iloc[a:b].to_csv(out[name], sep=_adult.SEP, index=False)
    return out


@pytest.fixture(scope="module")
def space(parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root = tmp_path_factory.mktemp("netns")
    net = NetnsSpace([*NODES, "agg"], delay_ms=DELAY_MS, loss_pct=LOSS_PCT)
    try:
        net.__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(f"this machine does not allow network namespaces: {exc}")
    fed: Federation | None = None
    try:
        ca = root / "ca"
        init_ca(ca, name="ts-netns-ca")
        for name in NODES:
            issue(ca, name, "node", hosts=(net.addresses[name],))
        issue(ca, "agg", "aggregator", hosts=(net.addresses["agg"],))
        issue(ca, "alice", "analyst")
        (root / "audit").mkdir()
        sp = Space(net, root, f"{net.addresses['agg']}:{AGG_PORT}")
        addresses = {}
        for name in NODES:
            addresses[name] = f"{net.addresses[name]}:{NODE_PORT}"
            cfg = _write(
                root / f"{name}.toml",
                {
                    "node": {
                        "name": name,
                        "listen": addresses[name],
                        "drain_grace_s": 2,
                        "output_dir": str(root / "output" / name),
                    },
                    "tls": {"dir": str(ca / name)},
                    "audit": {"path": str(sp.audit(name))},
                    "datasets": {
                        "adult": {
                            "path": str(parts[name]),
                            "delimiter": _adult.SEP,
                            "columns": dict(_adult.COLUMNS),
                            "domains": DOMAINS,
                        }
                    },
                    "policy": {**POLICY, "rules": RULES},
                },
            )
            _start(sp, name, "node", cfg)
        deadline = time.monotonic() + START_TIMEOUT_S
        for name in NODES:  # they start in parallel; wait for each
            got = _wait_ready(name, sp.procs[name], root / f"{name}.log", deadline)
            assert got == addresses[name], (name, got)
        agg_cfg = _write(
            root / "aggregator.toml",
            {
                "aggregator": {
                    "name": "agg",
                    "listen": sp.aggregator,
                    "drain_grace_s": 2,
                    "call_timeout_s": CALL_TIMEOUT_S,
                    "paillier_timeout_s": PAILLIER_TIMEOUT_S,
                },
                "tls": {"dir": str(ca / "agg")},
                "nodes": [{"name": n, "address": a} for n, a in addresses.items()],
            },
        )
        _start(sp, "agg", "aggregator", agg_cfg)
        _wait_ready("agg", sp.procs["agg"], root / "agg.log", deadline)
        # no server_name: the aggregator's certificate must name its namespace address
        fed = Federation.connect(
            sp.aggregator, credentials=Credentials.from_dir(ca / "alice"), key_bits=KEY_BITS
        )
        sp.fed = fed
        yield sp
    finally:
        if fed is not None:
            fed.close()
        net.close()
        assert net.leftovers() == [], f"left behind: {net.leftovers()}"


@pytest.fixture(scope="module")
def loopback(parts: dict[str, Path]) -> Iterator[Federation]:
    """The same federation on 127.0.0.1 inside this process: what the results must equal."""
    with Federation.local(
        parts,
        policy={**POLICY, "rules": [{"analysts": ["*"], "operations": ["*"]}]},
        dataset="adult",
        columns=_adult.COLUMNS,
        domains=DOMAINS,
        delimiter=_adult.SEP,
        key_bits=KEY_BITS,
    ) as fed:
        yield fed


def test_a_machine_without_namespaces_is_a_skip_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ip netns add`` failing (no CAP_NET_ADMIN, no netns support) is NetnsUnavailable
    quoting ip's own message (the fixture skips with it); nothing is left behind."""
    fake = tmp_path / "ip"
    fake.write_text(
        '#!/bin/sh\nif [ "$1 $2" = "netns add" ]; then\n'
        '  echo "mount --make-shared /run/netns failed: Operation not permitted" >&2; exit 1\n'
        'fi\n[ "$1" = link ] && exit 1\nexit 0\n'  # and no link of that name exists
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    net = NetnsSpace(["n1"])
    with pytest.raises(NetnsUnavailable, match=r"ip netns add ts-\w+-rt.*Operation not permitted"):
        net.__enter__()
    assert net.leftovers() == [] and net._procs == []


# ---------------------------------------------------------------------------- exactness
def _same(a: Any, b: Any) -> None:
    """Bit-for-bit equal (frames, series and floats)."""
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
    else:
        assert a == b


def _close(a: Any, b: Any, precision: dict[str, float] | None = None) -> None:
    """Equal to pandas within float rounding (pandas sums in another order); a figure with a
    reported precision (``describe``'s min, max and percentiles come from histogram
    refinement, see docs/security.md) within that precision."""
    if isinstance(a, pd.DataFrame):
        assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
        for col in a.columns:
            for row in a.index:
                x, y = float(a.loc[row, col]), float(b.loc[row, col])
                tol = (precision or {}).get(f"{col}/{row}", 0.0)
                assert abs(x - y) <= max(tol, 1e-9 * abs(y)), (row, col, x, y, tol)
    elif isinstance(a, pd.Series):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9)
    else:
        assert a == pytest.approx(float(b), rel=1e-9)


WHITE = "race = 'White'"
BACHELORS = "education = 'Bachelors'"
FEMALE_NON_WHITE = "sex = 'Female' and race != 'White'"
AGG = {"age": ["size", "count", "mean", "std"]}
# (label, the federation call, the pandas figure over a frame)
SECAGG: list[tuple[str, Callable[[Federation], Any], Callable[[pd.DataFrame], Any]]] = [
    ("count", lambda f: f.count("adult", where="age >= 40"), lambda d: int((d.age >= 40).sum())),
    (
        "mean",
        lambda f: f.mean("adult", "age", where=FEMALE_NON_WHITE),
        lambda d: d[(d.sex == "Female") & (d.race != "White")].age.mean(),
    ),
    (
        "describe",
        lambda f: f.describe("adult", ["age"], where=BACHELORS),
        lambda d: d[d.education == "Bachelors"][["age"]].describe(),
    ),
    (
        "group_by",
        lambda f: f.group_by("adult", "sex", agg=AGG, where=WHITE),
        lambda d: d[d.race == "White"].groupby("sex").agg(AGG),
    ),
]
PAILLIER: list[tuple[str, Callable[[Federation], Any], Callable[[pd.DataFrame], Any]]] = [
    (
        "mean",
        lambda f: f.mean("adult", "age", where=BACHELORS, method="paillier"),
        lambda d: d[d.education == "Bachelors"].age.mean(),
    ),
    (
        "var",
        lambda f: f.var("adult", "age", where=FEMALE_NON_WHITE, method="paillier"),
        lambda d: d[(d.sex == "Female") & (d.race != "White")].age.var(),
    ),
]


@pytest.mark.parametrize(("label", "call", "expect"), SECAGG, ids=[s[0] for s in SECAGG])
def test_secure_aggregation_is_exact_across_hosts(
    space: Space, loopback: Federation, adult: pd.DataFrame, label: str, call: Any, expect: Any
) -> None:
    got = call(space.fed)
    assert space.fed.last_info["nodes"] == list(NODES) and not space.fed.last_info["excluded"]
    assert space.fed.last_result is not None
    precision = dict(space.fed.last_result.precision)
    _same(got, call(loopback))
    _close(got, expect(adult), precision)


@pytest.mark.parametrize(("label", "call", "expect"), PAILLIER, ids=[s[0] for s in PAILLIER])
def test_paillier_is_exact_across_hosts(
    space: Space, loopback: Federation, adult: pd.DataFrame, label: str, call: Any, expect: Any
) -> None:
    got = call(space.fed)
    assert space.fed.last_info["nodes"] == len(NODES)
    assert "excluded_count" not in space.fed.last_info
    _same(got, call(loopback))
    _close(got, expect(adult))


def _rows(df: pd.DataFrame) -> Counter[tuple[str, ...]]:
    return Counter(tuple(str(v) for v in r) for r in df.astype(str).itertuples(index=False))


def test_anonymization_is_exact_across_hosts(space: Space, adult: pd.DataFrame) -> None:
    qis = {q: str(_adult.hierarchy_path(q)) for q in ANON_QI}
    res = space.fed.anonymize("adult", qis, k=5, suppression_limit=0.02, disclosure="base")
    local = anonymize(adult, qis, k=5, suppression_limit=0.02)
    assert res.result.levels == local.result.levels
    assert res.result.suppressed_classes == local.result.suppressed_classes
    assert res.suppressed == local.result.suppressed_records
    assert res.classes == local.result.n_classes
    assert res.data is not None and _rows(res.data) == _rows(local.data)
    # each node wrote its own part, in its own output folder
    assert sorted(Path(o.path).parent.name for o in res.outputs) == sorted(NODES)


# ---------------------------------------------------------------------------- latency
def _machine() -> dict[str, Any]:
    path = ROOT / "benchmarks" / "_common.py"
    spec = importlib.util.spec_from_file_location("trustspace_bench_common", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"machine": mod.machine(), "versions": mod.versions("grpcio", "cryptography")}


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "max": round(max(ms), 1),
    }


def _timed(fed: Federation, n: int, expected: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert fed.count("adult", where="age >= 40") == expected
        out.append((time.perf_counter() - t0) * 1000)
    return out


def test_latency_p50_p95(
    space: Space, loopback: Federation, adult: pd.DataFrame, tmp_path: Path
) -> None:
    expected = int((adult.age >= 40).sum())
    across = _percentiles(_timed(space.fed, LATENCY_N, expected))
    local = _percentiles(_timed(loopback, LATENCY_N, expected))
    report = {
        "what": "count queries (one secure-aggregation round, 4 stages) from the analyst",
        "n": LATENCY_N,
        "nodes": len(NODES),
        "rows": len(adult),
        "netem": {"delay_ms_one_way": DELAY_MS, "loss_pct": LOSS_PCT},
        "impairment": space.net.impairment,
        "latency_ms_across_namespaces": across,
        "latency_ms_loopback": local,
        **_machine(),
    }
    target = Path(os.environ.get("TRUSTSPACE_NETNS_RESULTS") or tmp_path / "netns.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ncount latency over {LATENCY_N} queries, {DELAY_MS:g} ms + {LOSS_PCT:g} % loss per "
        f"direction ({space.net.impairment}): p50 {across['p50']} ms, p95 {across['p95']} ms "
        f"(loopback p50 {local['p50']} ms, p95 {local['p95']} ms); written to {target}"
    )


# ---------------------------------------------------------------------------- a link cut
@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cut_after_s: float | None = None
    cut_at: str = ""


def _cut_mid_query(
    space: Space, node: str, call: Callable[[Federation], Any], at_round: int
) -> Outcome:
    """Run ``call`` in a thread; once ``node`` has written its first audit line of round
    ``at_round`` of it, take ``node``'s link down. Returns what the analyst got (bounded)."""
    log = space.audit(node)
    start = log.stat().st_size
    out = Outcome()

    def analyst() -> None:
        t0 = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out.value = call(space.fed)
                out.info = dict(space.fed.last_info)
            except Exception as exc:  # checked below: it must be one of ours, naming the node
                out.error = exc
        out.warned = [str(w.message) for w in caught]
        out.seconds = time.monotonic() - t0

    th = threading.Thread(target=analyst, daemon=True)
    t0 = time.monotonic()
    th.start()
    while th.is_alive() and time.monotonic() - t0 < QUERY_BOUND_S:
        with log.open("rb") as fh:
            fh.seek(start)
            complete = fh.read().split(b"\n")[:-1]  # the last piece may be half written
        lines = [json.loads(x) for x in complete]
        staged = [r for r in lines if r.get("params", {}).get("round") == at_round]
        if staged:
            space.net.link(node, "down")
            out.cut_after_s = time.monotonic() - t0
            out.cut_at = f"{staged[0]['operation']} {staged[0]['params']}"
            break
        time.sleep(0.005)
    th.join(timeout=QUERY_BOUND_S)
    assert not th.is_alive(), f"the analyst still waits {QUERY_BOUND_S:g} s after {node} was cut"
    assert out.cut_after_s is not None, f"{node} wrote no protocol stage before the query ended"
    return out


def _reconnect(space: Space, node: str) -> None:
    space.net.link(node, "up")
    for _ in range(60):
        if any(n.name == node and n.reachable for n in space.fed.status()):
            return
        time.sleep(0.5)
    raise AssertionError(f"the aggregator does not reach {node} again after its link came up")


def _check_cut(out: Outcome, adult: pd.DataFrame, parts: dict[str, Path], expect: Any) -> None:
    """A clear error naming n3, or the exact figure over the nodes in the result."""
    print(
        f"\nn3 cut {out.cut_after_s:.2f} s in (at {out.cut_at}); after {out.seconds:.1f} s: ",
        end="",
    )
    if out.error is not None:
        print(f"{type(out.error).__name__}: {out.error}")
        assert isinstance(out.error, TrustspaceError), f"not a trustspace error: {out.error!r}"
        assert "n3" in str(out.error), out.error
        return
    print(f"{out.value!r} over {out.info.get('nodes')}")
    reported = out.info["nodes"]
    if isinstance(reported, int):  # the Paillier path reports how many nodes, not which
        assert reported in (2, 3), reported
        nodes = list(NODES) if reported == 3 else ["n1", "n2"]
        told = "only 2 of the 3 nodes (n1, n2, n3)"
    else:
        nodes = reported
        assert out.info["excluded"] == [n for n in NODES if n not in nodes], out.info
        told = "n3"
    data = pd.concat([pd.read_csv(parts[n], sep=_adult.SEP) for n in nodes], ignore_index=True)
    _close(out.value, expect(data))
    if "n3" not in nodes:  # and the analyst is told
        assert any(told in w for w in out.warned), out.warned


CUTS = [
    # (method, the round n3 is cut in, what must come of it)
    ("secagg", 0, "dropout"),  # the nodes of a query are fixed in its first round: survivors
    ("secagg", 1, "error"),  # a later round without n3 would mix node sets: abort
    ("paillier", 0, "dropout"),
    ("paillier", 1, "error"),
]


@pytest.mark.parametrize(
    ("method", "at_round", "kind"), CUTS, ids=[f"{m}-round{r}" for m, r, _ in CUTS]
)
def test_node_cut_off_mid_query(
    space: Space,
    adult: pd.DataFrame,
    parts: dict[str, Path],
    method: str,
    at_round: int,
    kind: str,
) -> None:
    """n3's link goes down once it has started round ``at_round`` of a two-round query: the
    analyst gets the exact figure over n1 and n2 (and is told), or an error naming n3, within
    a bound; never a wrong figure, never a hang. Then the link comes back and n3 is in again."""
    _, call, expect = SECAGG[1] if method == "secagg" else PAILLIER[1]
    out = _cut_mid_query(space, "n3", call, at_round)
    try:
        _check_cut(out, adult, parts, expect)
        assert (out.error is None) == (kind == "dropout"), out
        timeout = CALL_TIMEOUT_S + (PAILLIER_TIMEOUT_S if method == "paillier" else 0)
        assert out.seconds < 2 * timeout + 20, out.seconds
    finally:
        _reconnect(space, "n3")
    assert call(space.fed) == pytest.approx(expect(adult), rel=1e-9)
    assert space.fed.last_info["nodes"] in (list(NODES), len(NODES))
