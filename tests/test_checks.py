"""Start-up checks an operator relies on before going live: ports, ``--check``, ``health``."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_node_config

from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.cli.main import main
from trustspace.errors import ConfigError
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.transport.servicers import NODE_SERVICE


def _node_config(tmp_path: Path, pki: Path, data: Path, name: str = "n1", **kw: str) -> Path:
    return write_node_config(
        tmp_path / f"{name}.toml",
        name=name,
        identity=pki / "ca" / name,
        data=data,
        audit=tmp_path / f"{name}.jsonl",
        **kw,
    )


# ----------------------------------------------------------------------------- ports
def test_second_node_on_a_port_in_use_is_refused(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    """gRPC's SO_REUSEPORT default let a second server share the port silently."""
    first = Node(load_node_config(_node_config(tmp_path, pki, partitions["n1"]))).start()
    try:
        port = first.port
        (tmp_path / "b").mkdir()
        cfg = _node_config(tmp_path / "b", pki, partitions["n1"], listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError) as info:
            Node(load_node_config(cfg))
        msg = str(info.value)
        assert f"port {port} is already in use" in msg
        assert "key node.listen" in msg and str(cfg) in msg
        assert "another process is listening" in msg
    finally:
        first.stop(0)


def test_node_on_a_port_held_by_a_plain_socket_is_refused(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = _node_config(tmp_path, pki, partitions["n1"], listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=f"port {port} is already in use"):
            Node(load_node_config(cfg))


def test_second_aggregator_on_a_port_in_use_is_refused(tmp_path: Path, pki: Path) -> None:
    first = Aggregator(load_aggregator_config(_agg_config(tmp_path, pki, {"n1": "127.0.0.1:1"})))
    first.start()
    try:
        port = first.port
        (tmp_path / "b").mkdir()
        cfg = _agg_config(tmp_path / "b", pki, {"n1": "127.0.0.1:1"}, listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError) as info:
            Aggregator(load_aggregator_config(cfg))
        msg = str(info.value)
        assert f"port {port} is already in use" in msg and "key aggregator.listen" in msg
    finally:
        first.stop(0)


# ----------------------------------------------------------------------------- node --check
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


DP_POLICY = (
    "min_group_size = 5\nmin_nodes = 2\n[policy.dp]\nepsilon = 1.0\ndelta = 1e-6\n"
    '[[policy.rules]]\nanalysts = ["*"]\noperations = ["*"]\n'
)


def test_node_check_creates_no_file(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`node --check` used to build the Node, which creates the audit log and DP ledger."""
    cfg = write_node_config(
        tmp_path / "n1.toml",
        name="n1",
        identity=pki / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "audit" / "n1.jsonl",  # its directory does not exist either
        policy=DP_POLICY,
    )
    before = _snapshot(tmp_path)
    assert main(["node", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "audit").exists()
    assert "audit log" in out and "absent" in out and "dataset 'default'" in out
    assert "valid until" in out and out.rstrip().endswith("OK")


def test_node_check_leaves_an_existing_audit_log_untouched(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _node_config(tmp_path, pki, partitions["n1"], policy=DP_POLICY)
    Node(load_node_config(cfg)).stop(0)  # a node ran once: audit log, checkpoint, ledger exist
    assert (tmp_path / "n1.jsonl").is_file()
    before = _snapshot(tmp_path)
    assert main(["node", str(cfg), "--check"]) == 0
    assert _snapshot(tmp_path) == before
    assert "chain OK" in capsys.readouterr().out


def test_node_check_reports_a_broken_audit_log_and_bad_data(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.node.audit import AuditLog

    cfg = _node_config(tmp_path, pki, partitions["n1"])
    log = tmp_path / "n1.jsonl"
    audit = AuditLog(log)
    for _ in range(3):
        audit.append({"operation": "count", "decision": "allow"})
    audit.close()
    log.write_text(log.read_text().replace('"allow"', '"allaw"', 1))
    assert main(["node", str(cfg), "--check"]) == 2
    assert "audit log" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("age,income,sex\n30,1.5,F\n31,x,M\n")
    (tmp_path / "x").mkdir()
    cfg2 = _node_config(tmp_path / "x", pki, bad)
    assert main(["node", str(cfg2), "--check"]) == 2
    assert "line 3" in capsys.readouterr().err


# ----------------------------------------------------------------------------- aggregator --check
def _agg_config(root: Path, pki: Path, nodes: dict[str, str], listen: str = "127.0.0.1:0") -> Path:
    text = (
        f'[aggregator]\nname = "agg"\nlisten = "{listen}"\ndrain_grace_s = 1\n\n'
        f'[tls]\ndir = "{pki / "ca" / "agg"}"\n'
    )
    for name, address in nodes.items():
        text += f'\n[[nodes]]\nname = "{name}"\naddress = "{address}"\n'
    path = root / "aggregator.toml"
    path.write_text(text)
    return path


@pytest.fixture()
def three_nodes(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, partitions: dict[str, Path]
) -> Iterator[dict[str, Node]]:
    root = tmp_path_factory.mktemp("nodes")
    nodes = {
        n: Node(load_node_config(_node_config(root, pki, partitions[n], n))).start()
        for n in ("n1", "n2", "n3")
    }
    yield nodes
    for node in nodes.values():
        node.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_aggregator_check_all_ok_and_no_side_effect(
    tmp_path: Path, pki: Path, three_nodes: dict[str, Node], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _agg_config(tmp_path, pki, {n: node.address for n, node in three_nodes.items()})
    before = _snapshot(tmp_path)
    assert main(["aggregator", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    assert _snapshot(tmp_path) == before  # no witness log: agg-witness.jsonl stays absent
    assert not (tmp_path / "agg-witness.jsonl").exists()
    for n in three_nodes:
        assert re.search(rf"OK +node {n} .*datasets default", out)
    assert "dataset 'default': same schema at n1, n2, n3 (age int, income float, sex str)" in out
    assert "summary: 3 of 3 node(s) OK; every schema agrees" in out


def test_aggregator_check_reports_each_bad_node(
    tmp_path: Path,
    pki: Path,
    partitions: dict[str, Path],
    three_nodes: dict[str, Node],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A down node, a node at another's address, and a node whose schema differs."""
    (tmp_path / "odd").mkdir()
    odd_cfg = _node_config(tmp_path / "odd", pki, partitions["n3"], "n3")
    odd_cfg.write_text(odd_cfg.read_text().replace('income = "float"', 'income = "str"'))
    odd = Node(load_node_config(odd_cfg)).start()
    try:
        nodes = {
            "n1": three_nodes["n1"].address,
            "n2": three_nodes["n1"].address,  # the wrong node answers there
            "n3": odd.address,
            "n4": f"127.0.0.1:{_free_port()}",  # nothing listens
        }
        cfg = _agg_config(tmp_path, pki, nodes)
        assert main(["aggregator", str(cfg), "--check"]) == 1
        out = capsys.readouterr().out
    finally:
        odd.stop(0)
    assert re.search(r"OK +node n1 ", out)
    wrong = next(line for line in out.splitlines() if "FAIL node n2" in line)
    assert "presented the certificate of 'n1' (role node" in wrong and "'n2' was expected" in wrong
    assert "--host" not in wrong
    assert re.search(r"UNREACHABLE node n4 .*cannot reach", out)
    assert "dataset 'default': the schema differs" in out and "income is str, not float" in out
    assert "summary: 2 of 4 node(s) OK; 3 problem(s)" in out


def test_aggregator_check_refuses_a_node_address_that_is_an_aggregator(
    tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Aggregator(load_aggregator_config(_agg_config(tmp_path, pki, {"n1": "127.0.0.1:1"})))
    other.start()
    try:
        (tmp_path / "c").mkdir()
        cfg = _agg_config(tmp_path / "c", pki, {"n1": other.address})
        assert main(["aggregator", str(cfg), "--check"]) == 1
    finally:
        other.stop(0)
    assert "FAIL node n1" in capsys.readouterr().out


def test_serving_aggregator_warns_about_each_unreachable_node(
    tmp_path: Path, pki: Path, three_nodes: dict[str, Node]
) -> None:
    down = f"127.0.0.1:{_free_port()}"
    cfg = _agg_config(tmp_path, pki, {"n1": three_nodes["n1"].address, "n2": down})
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustspace.cli.main", "aggregator", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "serving on" in ready and "1 not answering: n2" in ready
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert re.search(rf"WARNING .*node n2 at {down} is unreachable", err)
    assert "node n1 at" not in err


# ----------------------------------------------------------------------------- health
def _health(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "trustspace.cli.main", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_health_exit_codes(
    tmp_path: Path, pki: Path, three_nodes: dict[str, Node], capsys: pytest.CaptureFixture[str]
) -> None:
    node = three_nodes["n1"]
    agg = str(pki / "ca" / "agg")
    code = main(["health", node.address, "-c", agg])
    assert (code, capsys.readouterr().out) == (0, f"health {node.address} (n1): SERVING\n")
    assert main(["health", node.address, "-c", agg, "--name", "n1", "--service", NODE_SERVICE]) == 0
    assert main(["health", node.address, "-c", agg, "--service", "no.such.Service"]) == 2
    assert "no service 'no.such.Service'" in capsys.readouterr().out
    assert main(["health", node.address, "-c", agg, "--name", "n2"]) == 3
    out = capsys.readouterr().out
    assert "TLS FAILED" in out and "presented the certificate of 'n1'" in out
    assert main(["health", node.address, "-c", str(pki / "other" / "eve")]) == 3
    assert main(["health", f"127.0.0.1:{_free_port()}", "-c", agg]) == 3
    assert "UNREACHABLE" in capsys.readouterr().out
    assert main(["health", "nonsense", "-c", agg]) == 2
    assert main(["health", node.address, "-c", str(tmp_path / "none")]) == 2
    # a draining server reports NOT_SERVING (what `stop` sets before it waits for calls)
    node.server._health.enter_graceful_shutdown()
    assert main(["health", node.address, "-c", agg]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out


def test_health_as_a_command(three_nodes: dict[str, Node], pki: Path) -> None:
    code, out = _health(three_nodes["n2"].address, "-c", str(pki / "ca" / "alice"), "--name", "n2")
    assert (code, out) == (0, f"health {three_nodes['n2'].address} (n2): SERVING\n")


def test_aggregator_check_as_an_analyst_sees_the_datasets_rules_name(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A node shows a dataset's schema to an unsigned describe only if a rule covers every
    analyst; a real policy names them, so the check can ask as one (a signed status query)."""
    policy = 'min_nodes = 2\n[[policy.rules]]\nanalysts = ["alice"]\noperations = ["count"]\n'
    nodes = {}
    for n in ("n1", "n2"):
        (tmp_path / n).mkdir()
        cfg = _node_config(tmp_path / n, pki, partitions[n], n, policy=policy)
        nodes[n] = Node(load_node_config(cfg)).start()
    try:
        cfg = _agg_config(tmp_path, pki, {n: node.address for n, node in nodes.items()})
        assert main(["aggregator", str(cfg), "--check"]) == 0
        out = capsys.readouterr().out
        assert "datasets none visible (the node shows a schema only to analysts" in out
        assert "same schema" not in out
        # nothing was compared: the summary must not claim that every schema agrees
        assert "every schema agrees" not in out
        assert "summary: 2 of 2 node(s) OK; no schema compared (no node showed a dataset" in out
        alice = str(pki / "ca" / "alice")
        assert main(["aggregator", str(cfg), "--check", "--analyst", alice]) == 0
        out = capsys.readouterr().out
        assert "dataset 'default': same schema at n1, n2" in out
        bob_only = str(pki / "ca" / "bob")
        assert main(["aggregator", str(cfg), "--check", "--analyst", bob_only]) == 0
        out = capsys.readouterr().out
        assert "none visible to bob" in out and "no schema compared (no node showed bob" in out
        assert main(["aggregator", str(cfg), "--check", "--analyst", str(pki / "ca" / "n1")]) == 1
        assert "role 'node'" in capsys.readouterr().err
    finally:
        for node in nodes.values():
            node.stop(0)


def test_node_check_points_out_a_certificate_about_to_expire(
    tmp_path: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.transport.ca import init_ca, issue

    init_ca(tmp_path / "ca", name="test-space")
    issue(tmp_path / "ca", "n1", "node", days=10)
    cfg = write_node_config(
        tmp_path / "n1.toml",
        name="n1",
        identity=tmp_path / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "n1.jsonl",
    )
    assert main(["node", str(cfg), "--check"]) == 0
    assert "renew it soon" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "foreign", "garbage"])
def test_checks_load_the_revocation_list_a_start_would_refuse(
    tmp_path: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """``node --check`` and ``aggregator --check`` said OK (exit 0) over a ``[tls] crl`` that
    is missing, from another data space or not a CRL, and the start then refused it."""
    from trustspace.transport.ca import init_ca, issue, write_crl

    init_ca(tmp_path / "ca", name="crl-space")
    issue(tmp_path / "ca", "n1", "node")
    issue(tmp_path / "ca", "agg", "aggregator")
    write_crl(tmp_path / "ca")
    node_cfg = write_node_config(
        tmp_path / "n1.toml",
        name="n1",
        identity=tmp_path / "ca" / "n1",
        data=partitions["n1"],
        audit=tmp_path / "n1.jsonl",
    )
    node_cfg.write_text(node_cfg.read_text().replace("[tls]\n", '[tls]\ncrl = "crl.pem"\n'))
    agg_cfg = tmp_path / "aggregator.toml"
    agg_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{tmp_path / "ca" / "agg"}"\ncrl = "crl.pem"\n'
        '[[nodes]]\nname = "n1"\naddress = "127.0.0.1:1"\n'
    )
    crl = tmp_path / "crl.pem"
    crl.write_bytes((tmp_path / "ca" / "crl.pem").read_bytes())
    assert main(["node", str(node_cfg), "--check"]) == 0
    listed = r"revocation: .*CRL \S*crl\.pem number 1, 0 serial\(s\)"
    assert re.search(listed, capsys.readouterr().out)
    assert main(["aggregator", str(agg_cfg), "--check"]) == 1  # n1 is not up
    assert re.search(listed, capsys.readouterr().out)
    if kind == "missing":
        crl.unlink()
        want = "crl.pem: revocation list (tls.crl) not readable"
    elif kind == "foreign":
        init_ca(tmp_path / "other", name="other-space")
        crl.write_bytes(write_crl(tmp_path / "other").read_bytes())
        want = "crl.pem: this revocation list is not signed by the data space CA"
    else:
        crl.write_text("not a revocation list\n")
        want = "crl.pem: not an X.509 revocation list"
    assert main(["node", str(node_cfg), "--check"]) == 2
    assert want in capsys.readouterr().err
    assert main(["aggregator", str(agg_cfg), "--check"]) == 2
    assert want in capsys.readouterr().err
    with pytest.raises(ConfigError, match=re.escape(want)):  # what a start says
        Node(load_node_config(node_cfg))


def test_node_check_says_whether_the_admin_port_is_free(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--check`` said nothing of ``[admin] listen``; a start then refused a port in use."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = _node_config(tmp_path, pki, partitions["n1"])
        cfg.write_text(cfg.read_text() + f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
        assert main(["node", str(cfg), "--check"]) == 0
        assert f"admin 127.0.0.1:{port}: in use now" in capsys.readouterr().out
    assert main(["node", str(cfg), "--check"]) == 0
    assert f"admin 127.0.0.1:{port}: free" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_node_on_the_same_files_leaves_their_log_file_alone(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    """A node started twice on one config was refused by the pid file only after it had
    opened the first one's ``[logging] file`` and written a line to it."""
    cfg = _node_config(tmp_path, pki, partitions["n1"])
    cfg.write_text(cfg.read_text() + '\n[logging]\nfile = "logs/n1.log"\n')
    cmd = [sys.executable, "-m", "trustspace.cli.main", "node", str(cfg)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        assert "serving" in first.stdout.readline()
        log = tmp_path / "logs" / "n1.log"
        before = log.read_bytes()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another node (pid" in second.stderr
        assert log.read_bytes() == before
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
