"""Faults with real processes on 127.0.0.1: nodes killed or stalled at each secure-aggregation
stage, the aggregator killed mid-query, a node killed while writing its audit log.

Three node processes (n1, n2, n3 on fixed loopback ports, so a restarted node keeps its
address) and two aggregator processes over them: ``t2`` (the protocol's threshold, 2 of 3) and
``t3`` (``threshold = 3``: any dropout is below it). The faulty node is always n3, restarted
with the test-only ``TRUSTSPACE_TEST_FAULT`` hook (``trustspace/node/_fault.py``), which makes
it exit (like SIGKILL) or stall at a precise point. ``make test`` runs the masked_input and
unmask stages; ``make soak`` adds advertise and share_keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _reliability import record

from trustspace.api import Credentials, Federation
from trustspace.errors import NodeError, ThresholdError, TrustspaceError
from trustspace.node import _fault
from trustspace.node.audit import verify
from trustspace.testing import LocalSpace, NodeSpec

CALL_TIMEOUT_S = 3.0  # the aggregators' per-stage deadline; the slow node stalls longer
STALL_S = 8.0
WAIT_STEPS = 60  # polls of 0.5 s: every wait below is bounded (30 s)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultSpace:
    """The processes of this module and the helpers to restart n3 with a fault."""

    def __init__(self, root: Path, partitions: dict[str, Path]) -> None:
        self.space = LocalSpace(root)
        self.space.init_ca(["n1", "n2", "n3"], ["alice"])
        self.configs: dict[str, Path] = {}
        for name, data in partitions.items():
            spec = NodeSpec(
                name,
                {
                    "default": {
                        "path": data,
                        "columns": {"age": "int", "income": "float", "sex": "str"},
                    }
                },
                policy={"min_group_size": 5},
                rules=[{"analysts": ["alice"], "operations": ["*"]}],
            )
            cfg = self.space.write_node_config(spec)
            text = cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{_free_port()}")
            cfg.write_text(text)
            self.configs[name] = cfg
            self.space.start(name, "node", cfg)
        self.aggregators: dict[str, str] = {}
        for label, extra in (
            ("t2", {"call_timeout_s": CALL_TIMEOUT_S}),
            ("t3", {"call_timeout_s": CALL_TIMEOUT_S, "threshold": 3}),
        ):
            cfg = self.space.write_aggregator_config(extra)
            mine = cfg.with_name(f"aggregator-{label}.toml")
            shutil.move(cfg, mine)
            self.aggregators[label] = self.space.start(label, "aggregator", mine)
        self.alice = Credentials.from_dir(self.space.identity("alice"))
        self.data = {n: pd.read_csv(p) for n, p in partitions.items()}

    def restart(self, name: str, fault: str = "") -> None:
        """(Re)start node ``name`` with ``fault`` in TRUSTSPACE_TEST_FAULT; waits until both
        aggregators see it again."""
        self.space.kill(name)
        old = os.environ.pop(_fault.ENV, None)
        try:
            if fault:
                os.environ[_fault.ENV] = fault
            self.space.start(name, "node", self.configs[name])
        finally:
            os.environ.pop(_fault.ENV, None)
            if old is not None:
                os.environ[_fault.ENV] = old
        if not fault.startswith("audit:"):  # an audit fault would trip on the status call
            for label in self.aggregators:
                if self.space.procs[label].poll() is None:
                    self.wait_reachable(label, name)

    def wait_reachable(self, label: str, name: str) -> None:
        with self.fed(label) as fed:
            for _ in range(WAIT_STEPS):
                if any(n.name == name and n.reachable for n in fed.status()):
                    return
                time.sleep(0.5)
        raise AssertionError(f"aggregator {label} does not see node {name} again")

    def fed(self, label: str = "t2") -> Federation:
        return Federation.connect(self.aggregators[label], credentials=self.alice)

    def exit_code(self, name: str) -> int | None:
        proc = self.space.procs[name]
        try:
            return proc.wait(timeout=30)
        except Exception:
            return None

    def union(self, *names: str) -> pd.DataFrame:
        return pd.concat([self.data[n] for n in names], ignore_index=True)


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory, partitions: dict[str, Path]) -> Iterator[Any]:
    space = FaultSpace(tmp_path_factory.mktemp("faults"), partitions)
    try:
        yield space
    finally:
        space.space.stop()


def _mean_and_count(fed: Federation) -> tuple[float, int, dict[str, Any]]:
    mean = fed.mean("default", "age", where="sex = 'F'")
    info = dict(fed.last_info)
    return mean, fed.count("default", where="age >= 40"), info


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [
        pytest.param("advertise", marks=pytest.mark.soak),
        pytest.param("share_keys", marks=pytest.mark.soak),
        "masked_input",
        "unmask",
    ],
)
def test_node_killed_at_stage(fs: FaultSpace, stage: str) -> None:
    """Within t: the exact result over the nodes whose masked input is in the sum. Below t:
    a ThresholdError naming the stage, and no partial result."""
    fs.restart("n3", f"secagg:{stage}:exit")
    with fs.fed("t2") as fed, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = fed.count("default", where="age >= 40")  # one secure-aggregation round
        info = dict(fed.last_info)
    assert fs.exit_code("n3") == _fault.FAULT_EXIT_CODE
    # n3 died at `stage`: before masked_input its vector is not in the sum; at unmask it is
    # (its masked input arrived; the survivors' shares remove its masks)
    included = ("n1", "n2", "n3") if stage == "unmask" else ("n1", "n2")
    assert count == int((fs.union(*included).age >= 40).sum())
    assert info["nodes"] == list(included)
    assert info["excluded"] == ([] if stage == "unmask" else ["n3"])
    assert any("n3" in str(w.message) for w in caught) == (stage != "unmask")
    # the next query (two rounds) runs over the survivors at once, with a warning naming n3
    with fs.fed("t2") as fed, pytest.warns(UserWarning, match="n3"):
        u = fs.union("n1", "n2")
        assert fed.mean("default", "age", where="sex = 'F'") == pytest.approx(
            u[u.sex == "F"].age.mean(), rel=1e-12
        )
    record(
        "faults",
        f"node killed at stage {stage}, 3 nodes, t=2",
        f"exact result over {'+'.join(included)}",
    )

    fs.restart("n3", f"secagg:{stage}:exit")
    with fs.fed("t3") as fed, pytest.raises(ThresholdError, match=f"stage {stage}"):
        fed.count("default", where="age >= 40")
    assert fs.exit_code("n3") == _fault.FAULT_EXIT_CODE
    record(
        "faults",
        f"node killed at stage {stage}, 3 nodes, t=3",
        "ThresholdError naming the stage, no result",
    )
    fs.restart("n3")


@pytest.mark.slow
def test_node_lost_between_rounds_aborts_multi_round_query(fs: FaultSpace) -> None:
    """n3 answers round 0 of a mean (range, then sums) and dies at its unmask stage; round 1
    runs without it, so combining the rounds would mix node sets: a clean NodeError."""
    fs.restart("n3", "secagg:unmask:exit")
    with fs.fed("t2") as fed, pytest.raises(NodeError, match=r"n3 dropped out during round 1"):
        fed.mean("default", "age")
    record("faults", "node lost between rounds of a 2-round query", "NodeError naming the node")
    fs.restart("n3")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", [pytest.param("advertise", marks=pytest.mark.soak), "masked_input"]
)
def test_node_slower_than_deadline_is_dropped(fs: FaultSpace, stage: str) -> None:
    fs.restart("n3", f"secagg:{stage}:sleep={STALL_S}")
    t0 = time.monotonic()
    with fs.fed("t2") as fed, pytest.warns(UserWarning, match="n3"):
        count = fed.count("default", where="age >= 40")
        info = dict(fed.last_info)
    took = time.monotonic() - t0
    assert count == int((fs.union("n1", "n2").age >= 40).sum())
    assert info["excluded"] == ["n3"]
    record(
        "faults",
        f"node stalls {STALL_S:g} s at {stage}, deadline {CALL_TIMEOUT_S:g} s",
        f"dropped, exact result over n1+n2 in {took:.1f} s",
    )
    fs.restart("n3")


@pytest.mark.slow
def test_aggregator_killed_mid_query_then_retry(fs: FaultSpace) -> None:
    fs.restart("n3", "secagg:masked_input:sleep=2")  # keeps the query in flight for 2 s
    outcome: dict[str, Any] = {}

    def analyst() -> None:
        t0 = time.monotonic()
        try:
            with fs.fed("t2") as fed:
                outcome["value"] = fed.count("default")
        except TrustspaceError as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - t0

    th = threading.Thread(target=analyst, daemon=True)
    th.start()
    time.sleep(1.0)  # the query is at masked_input, n3 stalls
    fs.space.kill("t2")
    th.join(timeout=60)
    assert not th.is_alive(), "the analyst hangs after the aggregator died"
    assert isinstance(outcome.get("error"), NodeError), outcome
    assert "aggregator" in str(outcome["error"]) and "unavailable" in str(outcome["error"])
    record(
        "faults",
        "aggregator SIGKILLed mid-query",
        f"analyst gets NodeError after {outcome['took']:.1f} s: {str(outcome['error'])[:60]}...",
    )
    # restart the aggregator from the same config (a new port) and retry
    fs.restart("n3")
    cfg = fs.space.root / "aggregator-t2.toml"
    fs.aggregators["t2"] = fs.space.start("t2", "aggregator", cfg)
    with fs.fed("t2") as fed:
        assert fed.count("default") == len(fs.union("n1", "n2", "n3"))
    record("faults", "aggregator restarted, query retried", "exact result over n1+n2+n3")


@pytest.mark.slow
def test_node_killed_while_writing_audit_log(fs: FaultSpace) -> None:
    log = fs.space.root / "audit" / "n3.jsonl"
    before = verify(log)
    assert before.ok
    fs.restart("n3", "audit:append:exit")
    with fs.fed("t2") as fed, pytest.warns(UserWarning, match="n3"):
        assert fed.count("default") == len(fs.union("n1", "n2"))  # n3 died: dropped
    assert fs.exit_code("n3") == _fault.FAULT_EXIT_CODE
    cut = verify(log)
    assert not cut.ok and "cut off" in cut.problem
    # the chain verifies up to the last complete entry
    assert (cut.lines, cut.head) == (before.lines, before.head)
    fs.restart("n3")  # restarts: the partial line is set aside as evidence
    evidence = log.with_name(log.name + ".partial")
    assert evidence.read_bytes().strip()
    after = verify(log)
    assert after.ok and after.lines >= before.lines
    with fs.fed("t2") as fed:
        assert fed.count("default") == len(fs.union("n1", "n2", "n3"))
    assert verify(log).ok
    record(
        "faults",
        "node killed half-way through an audit line",
        f"log verifies up to line {cut.lines}; node restarts, partial line kept in .partial",
    )
