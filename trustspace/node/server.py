"""Compose a node from its config: credentials, engine (checked at start-up), audit, gRPC server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Self

from trustspace.engine import Engine
from trustspace.errors import ConfigError
from trustspace.node.config import NodeConfig
from trustspace.node.service import NodeService
from trustspace.transport.ca import Credentials, revocation_check
from trustspace.transport.checkpoint import CHECKPOINT_KEY
from trustspace.transport.server import CallHooks, ServerHost, TlsServer
from trustspace.transport.servicers import NODE_SERVICE, add_node_servicer

if TYPE_CHECKING:
    from trustspace.admin.server import AdminServer

log = logging.getLogger("trustspace.node")


def build_engine(config: NodeConfig) -> Engine:
    """The node's engine over its datasets, validated (DataError naming file, line, column)."""
    engine = Engine({d.name: d for d in config.datasets})
    engine.validate()
    return engine


def load_credentials(config: NodeConfig) -> Credentials:
    creds = Credentials.from_files(
        config.tls.ca, config.tls.cert, config.tls.key, expected_role="node"
    )
    if creds.name != config.name:
        raise ConfigError(
            f"{config.source}: key node.name = {config.name!r} but the certificate "
            f"{config.tls.cert} is issued to {creds.name!r}; the aggregator checks nodes by "
            "certificate name, so they must match"
        )
    return creds


class Node(ServerHost):
    """A running node: ``start()``, ``address``, ``stop(grace)`` (drains in-flight calls)."""

    def __init__(self, config: NodeConfig, *, credentials: Credentials | None = None) -> None:
        creds = credentials or load_credentials(config)
        self.config = config
        self.admin: AdminServer | None = None  # [admin]: opened by start()
        self.drain_grace_s = config.drain_grace_s
        self.engine = build_engine(config)
        try:
            self.service = NodeService(config, self.engine, credentials=creds)
        except BaseException:  # e.g. an unusable DP ledger: nothing is left open
            self.engine.close()
            raise
        try:
            self.server = TlsServer(
                name=config.name,
                listen=config.listen,
                creds=creds,
                register=lambda s: add_node_servicer(s, self.service),
                service_names=(NODE_SERVICE,),
                hooks=self._hooks(),
            )
        except BaseException:
            self.service.close()
            self.engine.close()
            raise
        log.info(
            "node %s: audit log %s (%d lines, head %s)",
            config.name,
            config.audit_path,
            self.service.audit.lines,
            self.service.audit.head,
        )

    def _hooks(self) -> CallHooks:
        """Revoked callers are refused before any work; every refused call is audited; every
        answer carries the audit log's signed checkpoint (made after the call's line)."""
        audit = self.service.audit
        name = self.config.name

        def refused(method: str, caller: str, code: str, details: str) -> None:
            audit.append(
                {
                    "requester": "",
                    "via": caller,
                    "operation": f"rpc.{method}",
                    "dataset": "",
                    "columns": [],
                    "params": {"status": code},
                    "decision": "deny",
                    "reason": details[:500],
                    "outcome": "refused",
                }
            )
            log.info("node %s: refused %s from %s: %s", name, method, caller, code)

        def trailing() -> tuple[tuple[str, bytes], ...]:
            signed = audit.checkpoint()  # one signature per answer, not per line
            if signed is None:
                return ()
            return ((CHECKPOINT_KEY, signed.to_proto().SerializeToString()),)

        return CallHooks(
            revoked=revocation_check(self.config.tls.revoked),
            before=audit.mark,
            refused=refused,
            handled=audit.written_since_mark,
            trailing=trailing,
        )

    def start(self) -> Self:
        """Serve gRPC, and the admin port if ``[admin]`` is set (bound first: a port in use
        is refused before the node serves)."""
        if self.config.admin is not None and self.admin is None:
            from trustspace.admin.server import node_admin  # uvicorn only when configured

            self.admin = node_admin(self)
        super().start()
        if self.admin is not None:
            try:
                self.admin.start()
            except BaseException:
                self.server.stop(0)
                raise
        return self

    def close(self) -> None:
        if self.admin is not None:  # after the drain: /healthz said "draining" meanwhile
            self.admin.stop()
        self.service.close()
        self.engine.close()
