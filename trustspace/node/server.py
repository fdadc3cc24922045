"""Compose a node from its config: credentials, engine (checked at start-up), audit, gRPC server."""

from __future__ import annotations

import logging
from pathlib import Path

from trustspace.engine import Engine
from trustspace.errors import ConfigError, DataError
from trustspace.node.config import NodeConfig
from trustspace.node.service import NodeService
from trustspace.obs.metrics import code_reason
from trustspace.transport.ca import Credentials
from trustspace.transport.checkpoint import CHECKPOINT_KEY
from trustspace.transport.server import CallHooks, ServerHost, TlsServer
from trustspace.transport.servicers import NODE_SERVICE, add_node_servicer

log = logging.getLogger("trustspace.node")


def build_engine(config: NodeConfig) -> Engine:
    """The node's engine over its datasets, validated (DataError naming file, line, column)."""
    for d in config.datasets:
        path = Path(d.path)
        if config.source.is_file() and not path.is_file():
            raise DataError(
                f"{config.source}: key datasets.{d.name}.path: file not found at "
                f"{path.absolute()} (a relative path is relative to the config file's "
                f"directory, {config.source.parent.absolute()}); fix the path"
            )
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
        self.drain_grace_s = config.drain_grace_s
        self.engine = build_engine(config)
        try:
            self.service = NodeService(config, self.engine, credentials=creds)
        except BaseException:  # e.g. an unusable DP ledger: nothing is left open
            self.engine.close()
            raise
        #: Prometheus metrics (own registry; served at /metrics on the admin port)
        self.metrics = self.service.metrics
        try:
            self.server = TlsServer(
                name=config.name,
                listen=config.listen,
                listen_key=f"{config.source}: key node.listen",
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
        service = self.service

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
            self.metrics.refused_call(method, code, details)
            log.warning(
                "node %s: refused %s from %s: %s: %s",
                name,
                method,
                caller,
                code,
                details[:500],
                extra={
                    "via": caller,
                    "operation": f"rpc.{method}",
                    "decision": "deny",
                    "code": code,
                    "reason": code_reason(code, details),
                },
            )

        def trailing() -> tuple[tuple[str, bytes], ...]:
            signed = audit.checkpoint()  # one signature per answer, not per line
            if signed is None:
                return ()
            return ((CHECKPOINT_KEY, signed.to_proto().SerializeToString()),)

        return CallHooks(
            revoked=lambda pem: service.revocations.check(pem),  # the node's one checker
            before=audit.mark,
            refused=refused,
            handled=audit.written_since_mark,
            trailing=trailing,
        )

    def close(self) -> None:
        self.service.close()
        self.engine.close()
