"""Identity faults: certificates from another CA, of the wrong role, expired or revoked.

Each is refused at the TLS handshake (foreign CA, expired: gRPC never hands the call to us)
or by the gate before any work (wrong role, revoked: ``tls.revoked``), and a node writes a
``deny`` line for every call that reaches it. Servers are in-process on 127.0.0.1:0.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _reliability import record
from conftest import write_node_config
from cryptography import x509

from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.errors import AuthenticationError, ConfigError
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.proto.v1 import aggregator_pb2, node_pb2, node_pb2_grpc
from trustspace.transport.ca import Credentials, identity_from_pem, issue
from trustspace.transport.clients import AggregatorClient, NodeClient
from trustspace.transport.signing import SignedQuery, new_query
from trustspace.transport.tls import secure_channel


@pytest.fixture(scope="module")
def ids(pki: Path) -> dict[str, Path]:
    """Extra identities of the shared CA: expired, revoked by name, revoked by serial."""
    ca = pki / "ca"
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    out = {
        "expired-agg": issue(
            ca, "expired-agg", "aggregator", not_before=past, not_after=past + dt.timedelta(days=1)
        ),
        "revoked-agg": issue(ca, "revoked-agg", "aggregator"),
        "serial-agg": issue(ca, "serial-agg", "aggregator"),
        "revoked-analyst": issue(ca, "revoked-analyst", "analyst"),
    }
    return out


def _serial(identity: Path) -> str:
    cert = x509.load_pem_x509_certificate((identity / "cert.pem").read_bytes())
    return f"serial:{cert.serial_number:x}"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Path,
    ids: dict[str, Path],
    partitions: dict[str, Path],
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("identity")
    cfg = write_node_config(
        root / "n1.toml",
        name="n1",
        identity=pki / "ca" / "n1",
        data=partitions["n1"],
        audit=root / "n1.jsonl",
    )
    revoked = json.dumps(["revoked-agg", _serial(ids["serial-agg"]), "n3"])
    cfg.write_text(cfg.read_text().replace("[tls]\n", f"[tls]\nrevoked = {revoked}\n"))
    node = Node(load_node_config(cfg)).start()
    agg_cfg = root / "agg.toml"
    agg_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{pki / "ca" / "agg"}"\nrevoked = ["revoked-analyst"]\n'
        f'[[nodes]]\nname = "n1"\naddress = "{node.address}"\n'
    )
    agg = Aggregator(load_aggregator_config(agg_cfg)).start()
    n3_cfg = write_node_config(
        root / "n3.toml",
        name="n3",
        identity=pki / "ca" / "n3",
        data=partitions["n3"],
        audit=root / "n3.jsonl",
    )
    n3 = Node(load_node_config(n3_cfg)).start()
    agg13_cfg = root / "agg13.toml"
    agg13_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{pki / "ca" / "agg"}"\n'
        f'[[nodes]]\nname = "n1"\naddress = "{node.address}"\n'
        f'[[nodes]]\nname = "n3"\naddress = "{n3.address}"\n'
    )
    agg13 = Aggregator(load_aggregator_config(agg13_cfg)).start()
    try:
        yield {"node": node, "agg": agg, "agg13": agg13, "audit": root / "n1.jsonl"}
    finally:
        agg13.stop(0)
        agg.stop(0)
        n3.stop(0)
        node.stop(0)


def _raw_creds(identity: Path) -> Credentials:
    """The identity's files without the client-side checks (an attacker skips them)."""
    cert = (identity / "cert.pem").read_bytes()
    return Credentials(
        (identity / "ca.pem").read_bytes(),
        cert,
        (identity / "key.pem").read_bytes(),
        identity_from_pem(cert),
    )


def _alice_count(pki: Path) -> SignedQuery:
    """A count signed by analyst alice (whoever then sends it)."""
    return new_query(Credentials.from_dir(pki / "ca" / "alice"), "count", "default")


def _describe(address: str, identity: Path) -> grpc.StatusCode:
    creds = _raw_creds(identity)
    ch = secure_channel(address, creds, "n1")
    try:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        req = node_pb2.DescribeDatasetsRequest()
        stub.DescribeDatasets(req, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    finally:
        ch.close()


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("label", "who", "expected", "audited"),
    [
        ("aggregator of another CA", "other/mallory", grpc.StatusCode.UNAVAILABLE, False),
        ("expired aggregator certificate", "expired", grpc.StatusCode.UNAVAILABLE, False),
        ("analyst certificate (wrong role)", "ca/alice", grpc.StatusCode.UNAUTHENTICATED, True),
        ("node certificate (wrong role)", "ca/n2", grpc.StatusCode.UNAUTHENTICATED, True),
        ("revoked by name", "revoked", grpc.StatusCode.UNAUTHENTICATED, True),
        ("revoked by serial", "serial", grpc.StatusCode.UNAUTHENTICATED, True),
        ("valid aggregator", "ca/agg", grpc.StatusCode.OK, True),
    ],
)
def test_node_refuses_bad_identities(
    servers: dict[str, Any],
    pki: Path,
    ids: dict[str, Path],
    label: str,
    who: str,
    expected: grpc.StatusCode,
    audited: bool,
) -> None:
    identity = {
        "expired": ids["expired-agg"],
        "revoked": ids["revoked-agg"],
        "serial": ids["serial-agg"],
    }.get(who, pki / who)
    before = len(_audit_lines(servers["audit"]))
    code = _describe(servers["node"].address, identity)
    assert code == expected
    lines = _audit_lines(servers["audit"])[before:]
    assert len(lines) == (1 if audited else 0)
    if audited and expected != grpc.StatusCode.OK:
        assert lines[0]["decision"] == "deny" and lines[0]["outcome"] == "refused"
        assert lines[0]["via"] == identity.name
    where = (
        "the TLS handshake (gRPC logs it; the call never reaches the node)"
        if not audited
        else (
            "the gate, before any work; a deny line in the audit log" if code.name != "OK" else ""
        )
    )
    record(
        "identity",
        f"node called with: {label}",
        f"{code.name}" + (f", refused at {where}" if where else ", served and audited"),
    )


def test_clients_explain_the_refusal(
    servers: dict[str, Any], pki: Path, ids: dict[str, Path]
) -> None:
    """The pre-flight names the reason for the refusals gRPC reports only as UNAVAILABLE."""
    node = servers["node"].address
    with pytest.raises(AuthenticationError, match=r"refused our certificate|not issued"):
        NodeClient("n1", node, Credentials.from_dir(pki / "other" / "mallory"), check=True)
    with pytest.raises(AuthenticationError, match="expired"):
        NodeClient("n1", node, _raw_creds(ids["expired-agg"]), check=True)


@pytest.mark.parametrize(
    ("label", "who", "ok"),
    [
        ("revoked analyst", "revoked-analyst", False),
        ("node certificate (wrong role)", "n2", False),
        ("valid analyst", "alice", True),
    ],
)
def test_aggregator_refuses_bad_identities(
    servers: dict[str, Any], pki: Path, ids: dict[str, Path], label: str, who: str, ok: bool
) -> None:
    identity = ids.get(who, pki / "ca" / who)
    client = AggregatorClient(servers["agg"].address, Credentials.from_dir(identity), check=False)
    try:
        if ok:
            assert client.status()[1][0].reachable
        else:
            with pytest.raises(AuthenticationError, match=r"revoked|only analyst"):
                client.run_query(_alice_count(pki))
            ch = secure_channel(servers["agg"].address, Credentials.from_dir(identity))
            raw = ch.unary_unary("/trustspace.proto.v1.AggregatorService/Status")
            with pytest.raises(grpc.RpcError) as info:
                raw(aggregator_pb2.StatusRequest().SerializeToString(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ch.close()
    finally:
        client.close()
    record(
        "identity",
        f"aggregator called with: {label}",
        "served" if ok else "UNAUTHENTICATED before any work (logged by the aggregator)",
    )


def test_bad_revocation_entry_is_a_config_error(tmp_path: Path, pki: Path) -> None:
    cfg = tmp_path / "agg.toml"
    cfg.write_text(
        f'[aggregator]\n[tls]\ndir = "{pki / "ca" / "agg"}"\nrevoked = ["serial:xyz"]\n'
        '[[nodes]]\nname = "n1"\naddress = "127.0.0.1:1"\n'
    )
    with pytest.raises(ConfigError, match=r"agg\.toml: key tls\.revoked: 'serial:xyz'"):
        load_aggregator_config(cfg)


def test_revoked_node_in_a_roster_aborts_secure_aggregation(
    servers: dict[str, Any], pki: Path
) -> None:
    """n1 revokes n3: an aggregator that puts n3 in a secure-aggregation roster gets a refusal
    from n1 before n1 shares anything."""
    from trustspace.errors import ProtocolError

    client = AggregatorClient(servers["agg13"].address, Credentials.from_dir(pki / "ca" / "alice"))
    try:
        with pytest.raises(ProtocolError, match=r"roster entry of n3: name 'n3' is on the revoc"):
            client.run_query(_alice_count(pki))
    finally:
        client.close()
    record(
        "identity",
        "revoked node certificate in a secure-aggregation roster",
        "the revoking node aborts at share_keys; nothing shared",
    )
