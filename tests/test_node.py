"""A node as a server: start-up data checks, health, bad input, graceful drain and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import write_node_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trustspace.errors import ConfigError, DataError, NodeError, ProtocolError
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.proto.v1 import node_pb2, node_pb2_grpc
from trustspace.secagg import Stage
from trustspace.transport import serde, types
from trustspace.transport.ca import Credentials, Identity
from trustspace.transport.clients import NodeClient
from trustspace.transport.server import TlsServer
from trustspace.transport.servicers import NODE_SERVICE, add_node_servicer
from trustspace.transport.signing import SignedQuery, new_query
from trustspace.transport.tls import secure_channel


def _config(tmp_path: Path, pki: Path, data: Path, name: str = "n1") -> Path:
    return write_node_config(
        tmp_path / f"{name}.toml",
        name=name,
        identity=pki / "ca" / name,
        data=data,
        audit=tmp_path / f"{name}.jsonl",
    )


@pytest.fixture()
def node(tmp_path: Path, pki: Path, partitions: dict[str, Path]):  # type: ignore[no-untyped-def]
    n = Node(load_node_config(_config(tmp_path, pki, partitions["n1"]))).start()
    yield n
    n.stop(1)


def _agg(pki: Path) -> Credentials:
    return Credentials.from_dir(pki / "ca" / "agg")


def test_missing_data_file_named(tmp_path: Path, pki: Path) -> None:
    cfg = load_node_config(_config(tmp_path, pki, tmp_path / "gone.csv"))
    with pytest.raises(DataError, match=r"gone\.csv"):
        Node(cfg)


def test_bad_row_named_with_line_and_column(tmp_path: Path, pki: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("age,income,sex\n30,100.5,F\n41,abc,M\n")
    cfg = load_node_config(_config(tmp_path, pki, data))
    with pytest.raises(DataError) as info:
        Node(cfg)
    msg = str(info.value)
    assert "bad.csv" in msg and "income" in msg and "3" in msg


def test_certificate_must_match_node_name(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    p = _config(tmp_path, pki, partitions["n1"])
    p.write_text(p.read_text().replace('name = "n1"', 'name = "other"'))
    with pytest.raises(ConfigError, match="issued to 'n1'"):
        Node(load_node_config(p))


def test_cli_check_mode(
    tmp_path: Path, pki: Path, partitions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.cli.main import main

    assert main(["node", str(_config(tmp_path, pki, partitions["n1"])), "--check"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nname = 1\n")
    assert main(["node", str(bad)]) == 2
    assert "bad.toml: key node.name = 1" in capsys.readouterr().err


def test_health_service(node: Node, pki: Path) -> None:
    ch = secure_channel(node.address, _agg(pki), "n1")
    stub = health_pb2_grpc.HealthStub(ch)
    for svc in ("", NODE_SERVICE):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ch.close()


def _count(pki: Path) -> SignedQuery:
    """A fresh count query signed by analyst alice."""
    return new_query(Credentials.from_dir(pki / "ca" / "alice"), "count", "default")


def test_garbage_requests_are_refused_and_node_keeps_serving(node: Node, pki: Path) -> None:
    client = NodeClient("n1", node.address, _agg(pki))
    setup = types.SecAggSetup(os.urandom(32), (1, 2), 2)
    no_session = types.SecAggStep(_count(pki), setup, Stage.SHARE_KEYS, (b"junk",), None, 1)
    with pytest.raises(ProtocolError, match="n1"):
        client.secagg_step(no_session, timeout=5)
    bad_round = serde.step_to_proto(no_session)
    bad_round.stage = "advertise"
    bad_round.round.round.dataset = "default"  # a round without terms
    with pytest.raises(ProtocolError, match="n1: malformed round"):
        client._call("SecAggStep", client._stub.SecAggStep, bad_round, 5)
    ch = secure_channel(node.address, _agg(pki), "n1")
    stub = node_pb2_grpc.NodeServiceStub(ch)
    with pytest.raises(grpc.RpcError) as info:
        stub.SecAggStep(node_pb2.SecAggStepRequest(stage="explode"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        stub.PaillierStats(node_pb2.PaillierStatsRequest(headroom=2), timeout=5)
    assert info.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    ch.close()
    desc = client.describe(_count(pki), timeout=5)  # still serving
    assert desc.node == "n1" and desc.min_group_size == 5
    assert [d.name for d in desc.datasets] == ["default"]
    client.close()


class _SlowHandler:
    name = "slow"

    def __init__(self) -> None:
        self.entered = threading.Event()

    def describe(self, caller: Identity, query: SignedQuery | None) -> types.NodeDescription:
        self.entered.set()
        time.sleep(1.0)
        return types.NodeDescription("slow", (), 3, False)

    def secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]:
        raise NotImplementedError

    def paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes:
        raise NotImplementedError

    def anon_histogram(
        self, caller: Identity, query: SignedQuery, nodes: tuple[str, ...]
    ) -> tuple[str, str]:
        raise NotImplementedError

    def anon_apply(
        self, caller: Identity, query: SignedQuery, result_json: str, digest: str, release: bool
    ) -> dict[str, object]:
        raise NotImplementedError

    def anon_release(self, caller: Identity, query: SignedQuery) -> bytes:
        raise NotImplementedError


def test_stop_drains_in_flight_calls(pki: Path) -> None:
    creds = Credentials.from_dir(pki / "ca" / "n2")
    handler = _SlowHandler()
    server = TlsServer(
        name="n2",
        listen="127.0.0.1:0",
        creds=creds,
        register=lambda s: add_node_servicer(s, handler),
        service_names=(NODE_SERVICE,),
    )
    server.start()
    client = NodeClient("n2", server.address, _agg(pki))
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(client.describe(None, 10)))
    t.start()
    assert handler.entered.wait(5)
    server.stop(grace=10)  # returns after the in-flight call finished
    t.join(5)
    assert out and isinstance(out[0], types.NodeDescription) and out[0].min_group_size == 3
    client.close()


@pytest.mark.slow
def test_sigterm_exits_zero(tmp_path: Path, pki: Path, partitions: dict[str, Path]) -> None:
    cfg = _config(tmp_path, pki, partitions["n1"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustspace.cli.main", "node", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving default on 127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "SIGTERM received, draining" in err and "stopped" in err


def test_no_answer_leaves_without_its_audit_line(node: Node, pki: Path) -> None:
    client = NodeClient("n1", node.address, _agg(pki))
    before = node.service.audit.lines
    assert client.describe(_count(pki), timeout=5).node == "n1"
    assert node.service.audit.lines == before + 1
    node.service.audit.close()  # the disk "fails": the next line cannot be written
    with pytest.raises(NodeError, match="cannot write audit log"):
        client.describe(_count(pki), timeout=5)
    client.close()


def test_roster_entries_must_be_signed_by_distinct_nodes(node: Node, pki: Path) -> None:
    """A malicious aggregator cannot add participants it plays itself (sybils)."""
    from trustspace.errors import AuthenticationError
    from trustspace.secagg.client import SecAggClient
    from trustspace.secagg.config import SecAggConfig
    from trustspace.stats import Round, Term
    from trustspace.transport.ca import sign_blob

    agg = _agg(pki)
    client = NodeClient("n1", node.address, agg)
    rnd = Round("default", None, (Term.rows(),))
    ref = types.RoundRef(0, 5, None, rnd)

    def advertise(setup: types.SecAggSetup) -> tuple[SignedQuery, list[bytes]]:
        q = _count(pki)
        return q, client.secagg_step(types.SecAggStep(q, setup, Stage.ADVERTISE, (), ref, 1), 5)

    def attempt(entry: tuple[bytes, bytes, bytes]) -> None:
        setup = types.SecAggSetup(os.urandom(32), (1, 2), rnd.size)
        q, own = advertise(setup)
        assert len(own) == 4  # keys, signature, certificate, session binding
        fake = SecAggClient(SecAggConfig(setup.session_id, (1, 2), rnd.size), 2)
        adv = fake.advertise().to_bytes()
        keys, sig, cert = entry
        binding = own[3].replace(b'"node":"n1"', b'"node":"n2"')
        signed = (keys or adv) + b"\x00" + binding
        payloads = (*own, keys or adv, sig or sign_blob(agg, signed), cert, binding)
        client.secagg_step(types.SecAggStep(q, setup, Stage.SHARE_KEYS, payloads, None, 1), 5)

    with pytest.raises(AuthenticationError, match="is not a node"):
        attempt((b"", b"", agg.cert_pem))  # signed by the aggregator itself
    n2 = (pki / "ca" / "n2" / "cert.pem").read_bytes()
    with pytest.raises(AuthenticationError, match="does not verify"):
        attempt((b"", b"", n2))  # claims to be n2, signed by someone else
    setup = types.SecAggSetup(os.urandom(32), (1, 2), rnd.size)
    q, own = advertise(setup)
    with pytest.raises(ProtocolError, match="appears twice"):  # a replayed genuine entry
        client.secagg_step(types.SecAggStep(q, setup, Stage.SHARE_KEYS, (*own, *own), None, 1), 5)
    client.close()


def test_secagg_sessions_expire(node: Node, pki: Path) -> None:
    from trustspace.stats import Round, Term

    now = [0.0]
    node.service._clock = lambda: now[0]
    client = NodeClient("n1", node.address, _agg(pki))
    q = _count(pki)
    rnd = Round("default", None, (Term.rows(),))
    setup = types.SecAggSetup(os.urandom(32), (1, 2), rnd.size)
    ref = types.RoundRef(0, 5, None, rnd)
    client.secagg_step(types.SecAggStep(q, setup, Stage.ADVERTISE, (), ref, 1), 5)
    now[0] += node.config.session_timeout_s + 1
    with pytest.raises(ProtocolError, match="expired or never started"):
        client.secagg_step(types.SecAggStep(q, setup, Stage.SHARE_KEYS, (), None, 1), 5)
    client.close()


def test_port_in_use_is_a_clear_config_error(
    tmp_path: Path, pki: Path, partitions: dict[str, Path]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = _config(tmp_path, pki, partitions["n1"])
        p.write_text(
            p.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        )
        with pytest.raises(
            ConfigError, match=f"cannot listen on '127.0.0.1:{port}'.*another process"
        ):
            Node(load_node_config(p))
