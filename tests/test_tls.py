"""Mutual TLS between real servers on 127.0.0.1: accepted identities, refused ones, and why."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustspace.api import Federation
from trustspace.errors import AuthenticationError, ConfigError, NodeError
from trustspace.transport.ca import Credentials, issue
from trustspace.transport.clients import AggregatorClient, NodeClient
from trustspace.transport.tls import preflight


@pytest.fixture(scope="module")
def fed(
    partitions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("tls")
    with Federation.local({k: str(v) for k, v in list(partitions.items())[:2]}, workdir=work) as f:
        yield f


def _ca(fed: Federation) -> Path:
    assert fed.workdir is not None
    return fed.workdir / "ca"


def test_analyst_accepted(fed: Federation) -> None:
    creds = Credentials.from_dir(_ca(fed) / "analyst")
    name = preflight(
        fed.aggregator.address, creds, expected_role="aggregator", server_name="aggregator"
    )
    assert name == "aggregator"


def test_foreign_ca_refused_with_clear_message(fed: Federation, pki: Path) -> None:
    with pytest.raises(AuthenticationError, match="not issued by our data space CA"):
        Federation.connect(fed.aggregator.address, pki / "other" / "eve", server_name="aggregator")


def test_foreign_client_cert_refused_by_server(fed: Federation, pki: Path) -> None:
    # our CA bundle (so we trust the server) but a certificate from another CA
    ours = Credentials.from_dir(_ca(fed) / "analyst")
    eve = pki / "other" / "eve"
    mixed = Credentials(
        ours.ca_pem, (eve / "cert.pem").read_bytes(), (eve / "key.pem").read_bytes(), ours.identity
    )
    with pytest.raises(AuthenticationError, match="not issued by the data space CA"):
        preflight(
            fed.aggregator.address, mixed, expected_role="aggregator", server_name="aggregator"
        )
    client = AggregatorClient(fed.aggregator.address, mixed, server_name="aggregator", check=False)
    try:
        with pytest.raises(AuthenticationError, match="not issued by the data space CA"):
            client.status(timeout=5)
    finally:
        client.close()


def test_expired_certificate_refused(fed: Federation, tmp_path: Path) -> None:
    old = issue(
        _ca(fed),
        "old-analyst",
        "analyst",
        out_dir=tmp_path / "old",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(AuthenticationError, match="expired on 2021-01-01"):
        Federation.connect(fed.aggregator.address, old, server_name="aggregator")


def test_wrong_role_refused_by_aggregator(fed: Federation) -> None:
    node_creds = Credentials.from_dir(_ca(fed) / "n1")
    with pytest.raises(ConfigError, match="role 'node'"):
        Federation.connect(fed.aggregator.address, node_creds, server_name="aggregator")
    client = AggregatorClient(
        fed.aggregator.address, node_creds, server_name="aggregator", check=False
    )
    try:
        with pytest.raises(AuthenticationError, match="only analyst certificates may call it"):
            client.status(timeout=5)
    finally:
        client.close()


def test_analyst_may_not_call_a_node(fed: Federation) -> None:
    creds = Credentials.from_dir(_ca(fed) / "analyst")
    node = fed.nodes["n1"]
    client = NodeClient("n1", node.address, creds)
    try:
        with pytest.raises(AuthenticationError, match="only aggregator certificates"):
            client.describe(None, timeout=5)
    finally:
        client.close()


def test_client_checks_the_server_role(fed: Federation) -> None:
    creds = Credentials.from_dir(_ca(fed) / "analyst")
    with pytest.raises(AuthenticationError, match="role 'node', but a 'aggregator'"):
        preflight(fed.nodes["n1"].address, creds, expected_role="aggregator", server_name="n1")


def test_server_name_must_match_certificate(fed: Federation) -> None:
    creds = Credentials.from_dir(_ca(fed) / "analyst")
    with pytest.raises(
        AuthenticationError, match=r"presented the certificate of 'aggregator'.*'bank\.example' was"
    ):
        preflight(
            fed.aggregator.address, creds, expected_role="aggregator", server_name="bank.example"
        )


def test_nothing_listening_is_a_node_error(fed: Federation) -> None:
    creds = Credentials.from_dir(_ca(fed) / "analyst")
    with pytest.raises(NodeError, match=r"cannot reach 127\.0\.0\.1:1"):
        preflight("127.0.0.1:1", creds, expected_role="aggregator")


def test_server_with_expired_certificate_refuses_to_start(fed: Federation, tmp_path: Path) -> None:
    from trustspace.transport.server import TlsServer

    old = issue(
        _ca(fed),
        "n9",
        "node",
        out_dir=tmp_path / "n9",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    ok = Credentials.from_dir(_ca(fed) / "n1")
    creds = Credentials(
        ok.ca_pem, (old / "cert.pem").read_bytes(), (old / "key.pem").read_bytes(), ok.identity
    )
    with pytest.raises(AuthenticationError, match=r"n9's certificate: .*expired"):
        TlsServer(
            name="n9", listen="127.0.0.1:0", creds=creds, register=lambda s: None, service_names=()
        )


def test_aggregator_explains_a_node_from_another_ca(fed: Federation, tmp_path: Path) -> None:
    from trustspace.transport.ca import init_ca
    from trustspace.transport.clients import NodeClient
    from trustspace.transport.server import TlsServer

    init_ca(tmp_path / "rogue", name="rogue-space")
    rogue = Credentials.from_dir(issue(tmp_path / "rogue", "n1", "node"))
    server = TlsServer(
        name="n1", listen="127.0.0.1:0", creds=rogue, register=lambda s: None, service_names=()
    )
    server.start()
    client = NodeClient("n1", server.address, Credentials.from_dir(_ca(fed) / "aggregator"))
    try:
        with pytest.raises(AuthenticationError, match=r"node n1 is unavailable for .*not issued"):
            client.describe(None, timeout=5)
    finally:
        client.close()
        server.stop(0)
    client = NodeClient("n1", server.address, Credentials.from_dir(_ca(fed) / "aggregator"))
    with pytest.raises(NodeError, match="cannot reach"):  # the server is gone now
        client.describe(None, timeout=5)
    client.close()
