"""Observability (issue 15): ``[logging]`` files, Prometheus metrics, the aggregator's refusals.

The attacks: an analyst inventing label values (datasets, operations) to grow a server's
memory; a refused caller leaving no trace at the aggregator; a secret key or a data value
reaching a log file; a log file readable by everyone.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import write_node_config
from prometheus_client.parser import text_string_to_metric_families

from trustspace import Federation
from trustspace._config import LoggingConfig
from trustspace.aggregator.config import AggregatorConfig, NodeAddress
from trustspace.aggregator.server import Aggregator
from trustspace.errors import AuthenticationError, ConfigError, PolicyError
from trustspace.node.config import TlsConfig, load_node_config
from trustspace.obs import metrics as obs_metrics
from trustspace.obs.logs import configure
from trustspace.proto.v1 import aggregator_pb2, node_pb2
from trustspace.secagg.stage import ROUND_STAGES
from trustspace.testing import LocalSpace, NodeSpec
from trustspace.transport.ca import Credentials, issue
from trustspace.transport.clients import AggregatorClient
from trustspace.transport.signing import new_query

Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]

POLICY: dict[str, Any] = {
    "min_group_size": 5,
    "dp": {"epsilon": 4.0, "delta": 1e-6},
    "rules": [{"analysts": ["*"], "operations": ["count", "mean"], "exact": True}],
}


def _parts(n: int = 60) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(15)  # test data only
    return {
        f"n{i}": pd.DataFrame(
            {"age": rng.integers(18, 90, n), "income": rng.normal(50_000, 9_000, n).round(2)}
        )
        for i in range(3)
    }


def snapshot(m: obs_metrics.NodeMetrics | obs_metrics.AggregatorMetrics) -> Snapshot:
    """Every sample of the host's exposition, parsed as Prometheus parses it."""
    out: Snapshot = {}
    for fam in text_string_to_metric_families(m.exposition()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(snap: Snapshot, name: str, **labels: str) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Snapshot, before: Snapshot, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


# ---------------------------------------------------------------------------------- config
def _node_toml(tmp_path: Path, pki: Path, partitions: dict[str, Path], extra: str) -> Path:
    path = write_node_config(
        tmp_path / "node.toml",
        name="n1",
        identity=pki / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "audit.jsonl",
    )
    path.write_text(path.read_text() + "\n" + extra)
    return path


def test_logging_table_parsed_relative_to_the_config(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    cfg = load_node_config(_node_toml(tmp_path, pki, partitions, ""))
    assert cfg.logging == LoggingConfig()  # absent: stderr only
    assert cfg.logging.file is None
    extra = '[logging]\nfile = "logs/node.log"\nlevel = "debug"\nmax_bytes = 65536\nbackups = 2\n'
    cfg = load_node_config(_node_toml(tmp_path, pki, partitions, extra))
    assert cfg.logging.file == tmp_path / "logs" / "node.log"
    assert (cfg.logging.format, cfg.logging.level) == ("json", "DEBUG")
    assert (cfg.logging.max_bytes, cfg.logging.backups, cfg.logging.rotate) == (65536, 2, "size")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('file = "n.log"\nformat = "xml"', r"logging\.format = 'xml': expected one of"),
        ('file = "n.log"\nlevel = "LOUD"', r"logging\.level = 'LOUD'"),
        ('file = "n.log"\nmax_bytes = 10', r"logging\.max_bytes = 10: must be at least 4096"),
        ('file = "n.log"\nbackups = 0', r"logging\.backups = 0: must be at least 1"),
        ('file = "n.log"\nrotate = "daily"', r"logging\.rotate = 'daily'"),
        ('file = "n.log"\nrotate = "external"\nbackups = 3', r"logging\.backups: not used with"),
        ('file = "n.log"\nflie = "x"', r"logging\.flie: unknown key"),
        ('format = "text"', r"logging\.file is missing"),
        ("file = 3", r"logging\.file = 3: expected str"),
    ],
)
def test_logging_table_bad_values_name_the_key(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: key " + message):
        load_node_config(_node_toml(tmp_path, pki, partitions, "[logging]\n" + extra + "\n"))


# ---------------------------------------------------------------------------------- log files
@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_json_log_file_rotates_with_mode_0640(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "logs" / "node.log"
    old = os.umask(0o022)  # a usual umask would leave 0644; the file must still be 0640
    try:
        configure(
            "ERROR",
            LoggingConfig(file=path, max_bytes=4096, backups=2),
            role="node",
            name="org-a",
        )
    finally:
        os.umask(old)
    log = logging.getLogger("trustspace.node")
    for i in range(200):
        log.info("request %d handled", i, extra={"request_id": f"r{i}", "duration_ms": 1.5})
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]  # backups = 2, the rest dropped
    for p in path.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
        assert p.stat().st_size <= 4096 + 300
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    last = lines[-1]
    assert last["message"] == "request 199 handled"
    assert last["level"] == "INFO" and last["logger"] == "trustspace.node"
    assert last["node"] == "org-a" and last["request_id"] == "r199"
    assert last["duration_ms"] == 1.5
    assert last["time"].endswith("+00:00") and "T" in last["time"]  # ISO 8601, UTC


def test_external_rotation_reopens_the_file(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "agg.log"
    configure(
        "ERROR",
        LoggingConfig(file=path, format="text", rotate="external"),
        role="aggregator",
        name="op",
    )
    log = logging.getLogger("trustspace.aggregator")
    log.warning("before")
    path.rename(tmp_path / "agg.log.1")  # what logrotate does
    log.warning("after")
    assert "before" in (tmp_path / "agg.log.1").read_text()
    text = path.read_text()
    assert "after" in text and "WARNING trustspace.aggregator: after" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_unwritable_log_file_is_a_clear_error(tmp_path: Path, restore_logging: None) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"x\.toml: key logging\.file = .*cannot open"):
        configure("INFO", LoggingConfig(file=tmp_path / "afile" / "n.log"), where="x.toml")


# ---------------------------------------------------------------------------------- metrics
def test_metrics_move_by_exactly_what_the_queries_did(tmp_path: Path) -> None:
    with Federation.local(_parts(), POLICY, workdir=tmp_path, bounds={"age": (0, 120)}) as fed:
        nodes, agg = fed.nodes, fed.aggregator
        assert nodes["n0"].metrics.registry is not nodes["n1"].metrics.registry  # one per host
        b_nodes = {n: snapshot(x.metrics) for n, x in nodes.items()}
        b_agg = snapshot(agg.metrics)
        assert fed.count() == 180
        a_nodes = {n: snapshot(x.metrics) for n, x in nodes.items()}
        a_agg = snapshot(agg.metrics)
        for name in nodes:
            a, b = a_nodes[name], b_nodes[name]
            req = "trustspace_node_requests_total"
            assert delta(a, b, req, operation="describe_datasets", decision="allow") == 1
            assert delta(a, b, req, operation="count", decision="allow") == len(ROUND_STAGES)
            for stage in ROUND_STAGES:
                h = "trustspace_node_secagg_stage_duration_seconds_count"
                assert delta(a, b, h, stage=str(stage)) == 1
            h = "trustspace_node_request_duration_seconds_count"
            assert delta(a, b, h, operation="count") == len(ROUND_STAGES)
            assert sum(v for (n, _), v in a.items() if n == "trustspace_node_refusals_total") == 0
        rq = "trustspace_aggregator_requests_total"
        assert delta(a_agg, b_agg, rq, method="RunQuery", operation="count", outcome="ok") == 1
        assert delta(a_agg, b_agg, "trustspace_aggregator_secagg_rounds_total", outcome="ok") == 1
        assert delta(a_agg, b_agg, "trustspace_aggregator_secagg_round_nodes_sum") == 3
        for name in nodes:  # one describe and one call per stage
            calls = delta(
                a_agg, b_agg, "trustspace_aggregator_node_calls_total", node=name, outcome="ok"
            )
            assert calls == 1 + len(ROUND_STAGES)
            assert val(a_agg, "trustspace_aggregator_node_reachable", node=name) == 1

        # a policy refusal: every node refuses the advertise stage, by the rule it names
        with pytest.raises(PolicyError, match="policy rule 'operations'"):
            fed.sum("default", "age")
        c_nodes = {n: snapshot(x.metrics) for n, x in nodes.items()}
        c_agg = snapshot(agg.metrics)
        for name in nodes:
            c, a = c_nodes[name], a_nodes[name]
            assert delta(c, a, "trustspace_node_requests_total", operation="sum", decision="deny")
            assert delta(c, a, "trustspace_node_refusals_total", reason="operations") == 1
        assert delta(c_agg, a_agg, rq, method="RunQuery", operation="sum", outcome="denied") == 1
        ref = "trustspace_aggregator_refusals_total"
        assert (
            delta(
                c_agg, a_agg, ref, method="RunQuery", code="PERMISSION_DENIED", reason="operations"
            )
            == 1
        )
        assert delta(c_agg, a_agg, "trustspace_aggregator_secagg_rounds_total", outcome="failed")

        # differential privacy: the budget figures are the ledger's, to the last digit
        fed.mean("default", "age", epsilon=0.5)
        for name, node in nodes.items():
            snap = snapshot(node.metrics)
            ledger = node.service.ledger
            assert ledger is not None
            b = ledger.budget("analyst", "default")
            key = {"analyst": "analyst", "dataset": "default"}
            assert val(snap, "trustspace_node_dp_epsilon_limit", **key) == 4.0
            assert val(snap, "trustspace_node_dp_epsilon_spent", **key) == pytest.approx(
                b.epsilon_spent, rel=1e-12
            )
            assert val(snap, "trustspace_node_dp_rho_spent", **key) == pytest.approx(
                b.rho_spent, rel=1e-12
            )
            assert 0 < val(snap, "trustspace_node_dp_epsilon_remaining", **key) < 4.0
            # every audit line is one counted request, and the audit counter is the log's
            audit = node.service.audit
            lines = len((tmp_path / "audit" / f"{name}.jsonl").read_text().splitlines())
            assert val(snap, "trustspace_node_audit_lines_total") == audit.lines == lines
            counted = sum(v for (n, _), v in snap.items() if n == "trustspace_node_requests_total")
            assert counted == lines


def test_metrics_labels_stay_bounded_under_invented_names(tmp_path: Path) -> None:
    """200 requests naming random datasets and random operations: no new label values."""
    with Federation.local(_parts(20), POLICY, workdir=tmp_path) as fed:
        creds = fed._client.credentials
        hosts = [*fed.nodes.values(), fed.aggregator]
        bogus: list[str] = []

        def attack(i: int) -> None:
            name = f"x{secrets.token_hex(8)}"
            bogus.append(name)
            if i % 2:
                with pytest.raises(ConfigError):
                    fed.count(name)  # a dataset no node serves
            else:
                signed = new_query(creds, name, "default")  # an operation nobody knows
                with pytest.raises(ConfigError):
                    fed._client.run_query(signed)

        for i in range(10):
            attack(i)
        keys = [set(snapshot(h.metrics)) for h in hosts]
        for i in range(10, 200):
            attack(i)
        after = [snapshot(h.metrics) for h in hosts]
        for before_keys, snap in zip(keys, after, strict=True):
            assert set(snap) == before_keys  # the same series, only their values moved
            values = {v for _, labels in snap for _, v in labels}
            assert not any(b in v for b in bogus for v in values)
        agg = after[-1]
        rq = "trustspace_aggregator_requests_total"
        assert val(agg, rq, method="RunQuery", operation="other", outcome="invalid") == 100
        assert val(agg, rq, method="RunQuery", operation="count", outcome="invalid") == 100
        assert len(agg) < 400  # a fixed set: no series per request


def test_bounded_labels() -> None:
    op = obs_metrics.Bounded(obs_metrics.NODE_OPERATIONS)
    assert op("mean") == "mean" and op("rpc.SecAggStep") == "rpc.SecAggStep"
    assert op("mean\n") == op("") == op(None) == "other"
    who = obs_metrics.Bounded(cap=2)
    assert [who(x) for x in ("a", "b", "c", "a", "x" * 200)] == ["a", "b", "other", "a", "other"]


def test_the_metric_lists_name_every_rpc() -> None:
    node = {m.name for m in node_pb2.DESCRIPTOR.services_by_name["NodeService"].methods}
    agg = {m.name for m in aggregator_pb2.DESCRIPTOR.services_by_name["AggregatorService"].methods}
    assert set(obs_metrics.NODE_METHODS) == node
    assert set(obs_metrics.AGGREGATOR_METHODS) == agg


# ---------------------------------------------------------------------------------- refusals
def test_aggregator_logs_and_counts_every_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Federation.local(_parts(20), POLICY, workdir=tmp_path) as fed:
        ca = tmp_path / "ca"
        ident = issue(ca, "gatekeeper", "aggregator")
        cfg = AggregatorConfig(
            name="gatekeeper",
            listen="127.0.0.1:0",
            tls=TlsConfig(
                ident / "ca.pem", ident / "cert.pem", ident / "key.pem", revoked=("mallory",)
            ),
            nodes=tuple(NodeAddress(n, x.address) for n, x in fed.nodes.items()),
            witness_log=None,
        )
        agg = Aggregator(cfg).start()
        mallory = Credentials.from_dir(issue(ca, "mallory", "analyst"))
        alice = Credentials.from_dir(issue(ca, "alice", "analyst"))
        try:
            bad = AggregatorClient(agg.address, mallory, server_name="gatekeeper")
            good = AggregatorClient(agg.address, alice, server_name="gatekeeper")
            with caplog.at_level(logging.INFO, logger="trustspace"):
                with pytest.raises(AuthenticationError, match="revoked"):
                    bad.run_query(new_query(mallory, "count", "default"))
                with pytest.raises(PolicyError):
                    good.run_query(new_query(alice, "sum", "default", ["age"]))
                with pytest.raises(ConfigError):
                    good.run_query(new_query(alice, "count", "nope"))
                signed = new_query(alice, "count", "default")
                assert good.run_query(signed)["value"]["data"] == 60
            snap = snapshot(agg.metrics)
            bad.close()
            good.close()
        finally:
            agg.stop(0)
    ref = "trustspace_aggregator_refusals_total"
    assert val(snap, ref, method="RunQuery", code="UNAUTHENTICATED", reason="revoked") == 1
    assert val(snap, ref, method="RunQuery", code="PERMISSION_DENIED", reason="operations") == 1
    assert val(snap, ref, method="RunQuery", code="INVALID_ARGUMENT", reason="invalid_request") == 1
    refused = [
        r for r in caplog.records if r.name == "trustspace.aggregator" and "refused" in r.message
    ]
    assert [r.levelno for r in refused] == [logging.WARNING] * 3
    by_caller = {getattr(r, "analyst", ""): r for r in refused}
    revoked = by_caller["mallory"]
    assert revoked.code == "UNAUTHENTICATED" and revoked.reason == "revoked"  # type: ignore[attr-defined]
    assert revoked.method == "RunQuery"  # type: ignore[attr-defined]
    denied = [r for r in refused if getattr(r, "analyst", "") == "alice"]
    assert {getattr(r, "operation", "") for r in denied} == {"sum", "count"}
    assert all(getattr(r, "request_id", "") for r in denied)
    ok = [r for r in caplog.records if getattr(r, "outcome", "") == "ok"]
    assert len(ok) == 1 and ok[0].request_id == signed.unverified_body().request_id  # type: ignore[attr-defined]
    assert ok[0].nodes == 3  # type: ignore[attr-defined]
    # the revoked caller reached no handler: no request was counted for it
    rq = "trustspace_aggregator_requests_total"
    total = sum(v for (n, _), v in snap.items() if n == rq)
    assert total == 3


# ---------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_servers_write_json_logs_without_secrets_or_data(tmp_path: Path) -> None:
    """`trustspace node`/`aggregator` with [logging] at DEBUG: JSON lines, 0640, and neither a
    private key nor a data value nor a result in them."""
    marker = 987_654.321  # a data value that must never be logged
    parts = _parts(30)
    parts["n0"].loc[0, "income"] = marker
    with LocalSpace(tmp_path) as space:
        names = list(parts)
        space.init_ca(names, analysts=["alice"])
        for name, df in parts.items():
            csv = tmp_path / f"{name}.csv"
            df.to_csv(csv, index=False)
            spec = NodeSpec(
                name,
                {"default": {"path": csv, "columns": {"age": "int", "income": "float"}}},
                policy={"min_group_size": 5},
                rules=[{"analysts": ["alice"], "operations": ["count", "sum", "mean"]}],
            )
            cfg = space.write_node_config(spec)
            cfg.write_text(
                cfg.read_text() + f'\n[logging]\nfile = "logs/{name}.log"\nlevel = "DEBUG"\n'
            )
            space.start(name, "node", cfg)
        agg_cfg = space.write_aggregator_config()
        agg_cfg.write_text(
            agg_cfg.read_text() + '\n[logging]\nfile = "logs/aggregator.log"\nlevel = "DEBUG"\n'
        )
        target = space.start("aggregator", "aggregator", agg_cfg)
        alice = Credentials.from_dir(space.identity("alice"))
        with Federation.connect(target, credentials=alice) as fed:
            total = fed.sum("default", "income")
            assert fed.count() == 90
            fed.mean("default", "income")
            with pytest.raises(PolicyError):
                fed.var("default", "income")
        codes = space.stop()
    assert set(codes.values()) == {0}
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert [p.name for p in logs] == ["aggregator.log", "n0.log", "n1.log", "n2.log"]
    key_lines = {
        line
        for name in [*names, "operator", "alice"]
        for line in (tmp_path / "ca" / name / "key.pem").read_text().splitlines()
        if "-----" not in line
    }
    forbidden = [f"{marker}", f"{marker:.2f}", f"{total}", f"{total:.2f}", "PRIVATE KEY"]
    for p in logs:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        text = p.read_text()
        for bad in forbidden:
            assert bad not in text, (p, bad)
        for line in key_lines:
            assert line[:40] not in text, p
        recs = [json.loads(x) for x in text.splitlines()]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in recs)
        role = "aggregator" if p.stem == "aggregator" else "node"
        assert {r[role] for r in recs} == {"operator" if role == "aggregator" else p.stem}
    node_recs = [json.loads(x) for x in logs[1].read_text().splitlines()]
    steps = [r for r in node_recs if r.get("decision") == "allow"]
    assert {r["operation"] for r in steps} >= {"describe_datasets", "sum", "count", "mean"}
    assert all(r["analyst"] == "alice" and r["request_id"] and "duration_ms" in r for r in steps)
    denied = [r for r in node_recs if r.get("decision") == "deny"]
    assert denied and denied[0]["reason"] == "operations" and denied[0]["operation"] == "var"
    agg_recs = [json.loads(x) for x in logs[0].read_text().splitlines()]
    done = [r for r in agg_recs if r.get("outcome") == "ok" and r.get("method") == "RunQuery"]
    assert sorted(r["operation"] for r in done) == ["count", "mean", "sum"]
    refused = [r for r in agg_recs if r["level"] == "WARNING" and r.get("code")]
    assert [(r["operation"], r["code"], r["reason"]) for r in refused] == [
        ("var", "PERMISSION_DENIED", "operations")
    ]


# ---------------------------------------------------------------------------------- usage
def test_usage_one_row_per_query_and_by_operation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.cli.main import main

    with Federation.local(_parts(20), POLICY, workdir=tmp_path, purpose="audit-2026") as fed:
        fed.count()
        fed.mean("default", "age")
        with pytest.raises(PolicyError):
            fed.sum("default", "age")
    logs = [str(p) for p in sorted((tmp_path / "audit").glob("*.jsonl"))]
    lines = sum(len(Path(p).read_text().splitlines()) for p in logs)
    assert main(["usage", *logs, "--queries", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["operation"], r["decision"], r["nodes"]) for r in rows] == [
        ("count", "allow", 3),
        ("mean", "allow", 3),
        ("sum", "deny", 3),
    ]
    assert all(r["analyst"] == "analyst" and r["purpose"] == "audit-2026" for r in rows)
    assert sum(r["steps"] for r in rows) == lines  # every audit line is in one query's row
    assert isinstance(rows[0]["steps"], int)
    assert main(["usage", *logs, "--by", "operation", "--csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("operation")
    assert table.loc["count", "queries"] == 1 and table.loc["sum", "refused"] == 1
    assert "describe_datasets" not in table.index  # planning lines count with their query
    assert main(["usage", *logs, "--by", "decision"]) == 0
    out = capsys.readouterr().out
    header, *body = out.splitlines()
    assert header.split()[:3] == ["decision", "queries", "refused"]
    assert [r.split()[:3] for r in body] == [["allow", "2", "0"], ["deny", "0", "1"]]
    with pytest.raises(SystemExit):  # one output format at a time
        main(["usage", *logs, "--csv", "--json"])


def test_dropouts_counted_by_node_and_stage() -> None:
    from test_secure_sum_exchange import DroppingNode, fan_out

    from trustspace.aggregator._secure_sum import secure_sum
    from trustspace.errors import ThresholdError
    from trustspace.secagg.stage import Stage
    from trustspace.stats import Round, Term
    from trustspace.transport import types
    from trustspace.transport.signing import SignedQuery

    m = obs_metrics.AggregatorMetrics("agg", [f"n{i}" for i in range(5)])
    ref = types.RoundRef(0, 1, None, Round("d", None, (Term.rows(),)))
    query = SignedQuery(b"{}", b"sig", b"cert")
    drops = [None, None, None, Stage.SHARE_KEYS, Stage.UNMASK]
    nodes = [DroppingNode(f"n{i}", np.ones(2, dtype=np.uint64), d) for i, d in enumerate(drops)]
    total, contributors = secure_sum(
        fan_out,  # type: ignore[arg-type]
        query,
        ref,
        2,
        nodes,  # type: ignore[arg-type]
        threshold=None,
        timeout=1.0,
        metrics=m,
    )
    assert len(contributors) == 4 and list(total) == [4, 4]  # dropped at unmask: still summed
    snap = snapshot(m)
    d = "trustspace_aggregator_secagg_dropouts_total"
    assert val(snap, d, node="n3", stage="share_keys") == 1
    assert val(snap, d, node="n4", stage="unmask") == 1
    assert sum(v for (n, _), v in snap.items() if n == d) == 2
    assert val(snap, "trustspace_aggregator_secagg_rounds_total", outcome="ok") == 1
    assert val(snap, "trustspace_aggregator_secagg_round_nodes_sum") == 4
    h = "trustspace_aggregator_secagg_stage_duration_seconds_count"
    assert [val(snap, h, stage=str(s)) for s in ROUND_STAGES] == [1, 1, 1, 1]
    # below the threshold: an aborted round, nothing summed
    few = [DroppingNode(f"n{i}", np.ones(2, dtype=np.uint64), Stage.ADVERTISE) for i in range(2)]
    few.append(DroppingNode("n2", np.ones(2, dtype=np.uint64), None))
    with pytest.raises(ThresholdError):
        secure_sum(fan_out, query, ref, 2, few, threshold=None, timeout=1.0, metrics=m)  # type: ignore[arg-type]
    snap = snapshot(m)
    assert val(snap, "trustspace_aggregator_secagg_rounds_total", outcome="aborted") == 1
    assert val(snap, d, node="n0", stage="advertise") == 1


def test_an_unreachable_node_is_reported(tmp_path: Path) -> None:
    with Federation.local(_parts(), POLICY, workdir=tmp_path) as fed:
        agg = fed.aggregator
        fed.nodes["n2"].server.stop(0)  # the process is gone; the port refuses
        before = snapshot(agg.metrics)
        with pytest.warns(UserWarning, match="n2 did not answer"):
            assert fed.count() == 120  # planned without it: the two others' rows
        after = snapshot(agg.metrics)
    assert val(after, "trustspace_aggregator_node_reachable", node="n2") == 0
    assert val(after, "trustspace_aggregator_node_reachable", node="n0") == 1
    calls = "trustspace_aggregator_node_calls_total"
    assert delta(after, before, calls, node="n2", outcome="unreachable") == 1
    assert delta(after, before, calls, node="n2", outcome="ok") == 0
    assert val(after, "trustspace_aggregator_secagg_round_nodes_sum") == 2


def test_log_lines_cannot_be_forged_or_flooded(tmp_path: Path, restore_logging: None) -> None:
    """A name an analyst chose (a dataset, a request id) is one escaped, bounded field."""
    text, js = tmp_path / "t.log", tmp_path / "j.log"
    log = logging.getLogger("trustspace.aggregator")
    forged = "x'\n2026-01-01T00:00:00.000+00:00 INFO trustspace.node: n1: all is well"
    for path, fmt in ((text, "text"), (js, "json")):
        configure("ERROR", LoggingConfig(file=path, format=fmt), role="node", name="n1")
        log.warning("refused %s", forged, extra={"dataset": forged, "request_id": "r" * 10**5})
        log.warning("refused %s", "y" * 10**5)
    lines = text.read_text().splitlines()
    assert len(lines) == 2 and "\\n2026-01-01" in lines[0]
    assert len(lines[1]) < 2200 and lines[1].endswith("(98008 more)")
    recs = [json.loads(x) for x in js.read_text().splitlines()]
    assert len(recs) == 2 and recs[0]["message"] == "refused " + forged
    assert len(recs[0]["request_id"]) < 150 and len(recs[1]["message"]) < 2100


def test_docs_list_every_metric_and_no_other(tmp_path: Path) -> None:
    import re

    from trustspace.dp import Ledger

    node = obs_metrics.NodeMetrics("n1", ["default"])

    class Audit:
        lines = 7

    ledger = Ledger(tmp_path / "l.sqlite", node="n1")
    ledger.set_budget("alice", "default", epsilon=1.0, delta=1e-6)
    node.watch_audit(Audit())
    node.watch_budgets(ledger.budgets)
    families = {
        f.name + ("_total" if f.type == "counter" else "")
        for m in (node, obs_metrics.AggregatorMetrics("agg", ["n1"]))
        for f in text_string_to_metric_families(m.exposition())
    }
    ledger.close()
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    section = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(trustspace_[a-z_]+)` \|", section, re.M))
    assert documented == families
