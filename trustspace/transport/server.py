"""A gRPC server with mutual TLS, message size limits, health checking and a graceful drain."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trustspace.errors import ConfigError
from trustspace.transport.ca import Credentials
from trustspace.transport.tls import GRPC_OPTIONS, check_own_credentials, server_credentials

log = logging.getLogger("trustspace.transport")
MAX_WORKERS = 16  # enough for one aggregator calling every stage in parallel plus health checks


class TlsServer:
    """A started-on-demand gRPC server on ``listen`` with mTLS and the health service.

    ``register`` receives the raw ``grpc.Server`` to add servicers; ``service_names`` are the
    fully-qualified services reported SERVING by the health service.
    """

    def __init__(
        self,
        *,
        name: str,
        listen: str,
        creds: Credentials,
        register: Callable[[grpc.Server], None],
        service_names: tuple[str, ...],
    ) -> None:
        check_own_credentials(creds, f"{name}'s certificate")
        self.name = name
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix=name),
            options=GRPC_OPTIONS,
        )
        register(self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services = ("", *service_names)
        try:
            self.port = self._server.add_secure_port(listen, server_credentials(creds))
        except RuntimeError as exc:
            reason = str(exc).split(";")[0]
            raise ConfigError(
                f"{name}: cannot listen on {listen!r} ({reason}); is another process using "
                "that port? Choose another listen address in the config"
            ) from None
        if self.port == 0:
            raise ConfigError(
                f"{name}: cannot listen on {listen!r} (address in use or not local); choose "
                "another listen address"
            )
        host = listen.rpartition(":")[0]
        wildcard = host in ("0.0.0.0", "[::]", "::")  # noqa: S104 - naming, not binding
        self.address = f"{'127.0.0.1' if wildcard else host}:{self.port}"
        self._stopped = threading.Event()

    def start(self) -> None:
        self._server.start()
        for svc in self._services:
            self._health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s: serving on port %d (mutual TLS)", self.name, self.port)

    def stop(self, grace: float | None = 30.0) -> None:
        """Stop accepting calls, let in-flight calls finish for up to ``grace`` s, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        log.info("%s: stopped", self.name)

    def wait(self) -> None:
        self._server.wait_for_termination()
