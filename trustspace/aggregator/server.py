"""Compose the aggregator from its config: credentials, node clients, gRPC server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from trustspace.aggregator.config import AggregatorConfig
from trustspace.aggregator.service import AggregatorService
from trustspace.aggregator.witness import Witness
from trustspace.transport.ca import Credentials, revocation_check
from trustspace.transport.clients import NodeClient
from trustspace.transport.server import CallHooks, ServerHost, TlsServer
from trustspace.transport.servicers import AGGREGATOR_SERVICE, add_aggregator_servicer

if TYPE_CHECKING:
    from trustspace.admin.server import AdminServer


class Aggregator(ServerHost):
    """A running aggregator: ``start()``, ``address``, ``stop(grace)``."""

    def __init__(self, config: AggregatorConfig, *, credentials: Credentials | None = None) -> None:
        creds = credentials or Credentials.from_files(
            config.tls.ca, config.tls.cert, config.tls.key, expected_role="aggregator"
        )
        self.config = config
        self.admin: AdminServer | None = None  # [admin]: opened by start()
        self.drain_grace_s = config.drain_grace_s
        # every node answer carries a signed checkpoint of the node's audit log: witness it
        self.witness = Witness(creds.ca_pem, config.witness_log)
        clients = [
            NodeClient(n.name, n.address, creds, witness=self.witness.observe) for n in config.nodes
        ]
        self.service = AggregatorService(
            creds.name,
            clients,
            threshold=config.threshold,
            call_timeout_s=config.call_timeout_s,
            paillier_timeout_s=config.paillier_timeout_s,
            ca_pem=creds.ca_pem,
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
            self.witness.close()
            raise

    def start(self) -> Self:
        """Serve gRPC, and the admin port if ``[admin]`` is set (bound first)."""
        if self.config.admin is not None and self.admin is None:
            from trustspace.admin.server import aggregator_admin

            self.admin = aggregator_admin(self)
        super().start()
        if self.admin is not None:
            try:
                self.admin.start()
            except BaseException:
                self.server.stop(0)
                raise
        return self

    def close(self) -> None:
        if self.admin is not None:
            self.admin.stop()
        self.service.close()
        self.witness.close()
