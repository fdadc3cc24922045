"""Compose the aggregator from its config: credentials, node clients, gRPC server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustspace.aggregator._observed import Observed
from trustspace.aggregator.check import load_aggregator_credentials
from trustspace.aggregator.config import AggregatorConfig
from trustspace.aggregator.service import AggregatorService
from trustspace.aggregator.witness import Witness
from trustspace.obs import AggregatorMetrics
from trustspace.transport.ca import Credentials
from trustspace.transport.clients import NodeClient
from trustspace.transport.revocation import Revocations
from trustspace.transport.server import CallHooks, ServerHost, TlsServer
from trustspace.transport.servicers import AGGREGATOR_SERVICE, add_aggregator_servicer

if TYPE_CHECKING:
    from trustspace.admin.server import AdminServer


class Aggregator(ServerHost):
    """A running aggregator: ``start()``, ``address``, ``stop(grace)``."""

    def __init__(self, config: AggregatorConfig, *, credentials: Credentials | None = None) -> None:
        creds = credentials or load_aggregator_credentials(config)
        self.config = config
        self.credentials = creds
        self.admin: AdminServer | None = None  # [admin]: opened by start()
        self.drain_grace_s = config.drain_grace_s
        #: the aggregator's one revocation checker ([tls] revoked and crl), for the callers
        #: and the signers of their queries; ``check`` picks up a changed CRL file by itself
        self.revocations = Revocations.load(config.tls, creds.ca_pem)
        # every node answer carries a signed checkpoint of the node's audit log: witness it
        self.witness = Witness(creds.ca_pem, config.witness_log)
        #: Prometheus metrics (own registry; served at /metrics on the admin port)
        self.metrics = AggregatorMetrics(creds.name, (n.name for n in config.nodes))
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
            revoked=lambda pem: self.revocations.check(pem),
            metrics=self.metrics,
        )
        observed = Observed(self.service, self.metrics)
        try:
            self.server = TlsServer(
                name=creds.name,
                listen=config.listen,
                listen_key=f"{config.source}: key aggregator.listen",
                creds=creds,
                register=lambda s: add_aggregator_servicer(s, observed),
                service_names=(AGGREGATOR_SERVICE,),
                # revoked analysts are refused before any work; every refused or failed call
                # is logged (WARNING) and counted
                hooks=CallHooks(
                    revoked=lambda pem: self.revocations.check(pem),
                    before=observed.clear,
                    refused=observed.refused,
                ),
            )
        except BaseException:
            self.service.close()
            self.witness.close()
            raise

    def _admin_port(self) -> AdminServer | None:
        if self.config.admin is None:
            return None
        from trustspace.admin.server import aggregator_admin

        return aggregator_admin(self)

    def close(self) -> None:
        self.service.close()
        self.witness.close()
