"""Compose the aggregator from its config: credentials, node clients, gRPC server."""

from __future__ import annotations

from trustspace.aggregator.service import AggregatorService
from trustspace.node.config import AggregatorConfig
from trustspace.transport.ca import Credentials, revocation_check
from trustspace.transport.clients import NodeClient
from trustspace.transport.server import CallHooks, TlsServer
from trustspace.transport.servicers import AGGREGATOR_SERVICE, add_aggregator_servicer


class Aggregator:
    """A running aggregator: ``start()``, ``address``, ``stop(grace)``."""

    def __init__(self, config: AggregatorConfig, *, credentials: Credentials | None = None) -> None:
        creds = credentials or Credentials.from_files(
            config.tls.ca, config.tls.cert, config.tls.key, expected_role="aggregator"
        )
        self.config = config
        clients = [NodeClient(n.name, n.address, creds) for n in config.nodes]
        self.service = AggregatorService(
            creds.name,
            clients,
            threshold=config.threshold,
            call_timeout_s=config.call_timeout_s,
            paillier_timeout_s=config.paillier_timeout_s,
        )
        try:
            self.server = TlsServer(
                name=creds.name,
                listen=config.listen,
                creds=creds,
                register=lambda s: add_aggregator_servicer(s, self.service),
                service_names=(AGGREGATOR_SERVICE,),
                # revoked analysts are refused before any work (the refusal is logged)
                hooks=CallHooks(revoked=revocation_check(config.tls.revoked)),
            )
        except BaseException:
            self.service.close()
            raise

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return int(self.server.port)

    def start(self) -> Aggregator:
        self.server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(self.config.drain_grace_s if grace is None else grace)
        self.service.close()

    def wait(self) -> None:
        self.server.wait()
