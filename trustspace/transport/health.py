"""The standard gRPC health check (``grpc.health.v1``) over mutual TLS, as a client."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trustspace.errors import NodeError
from trustspace.transport.ca import Credentials
from trustspace.transport.tls import preflight, secure_channel

__all__ = ["health_check"]


def health_check(
    address: str,
    creds: Credentials,
    *,
    name: str | None = None,
    service: str = "",
    timeout: float = 5.0,
) -> tuple[str, str]:
    """Ask the server at ``address`` whether ``service`` ("" = the server) is serving.

    The TLS handshake is checked first (``preflight``: our CA, the name ``name`` or the host
    of ``address``), so a refused handshake is named instead of "unavailable".

    Returns:
        (status, peer): status is ``SERVING``, ``NOT_SERVING`` (``NOT_SERVING (draining ...)``
        when the server refuses calls while stopping) or ``SERVICE_UNKNOWN``; peer is the
        name on the server's certificate.

    Raises:
        ConfigError: ``address`` is not HOST:PORT.
        NodeError: nothing answers, or the health call itself fails.
        AuthenticationError: the TLS handshake failed (the reason named).
    """
    peer = preflight(address, creds, expected_role=None, server_name=name, timeout=timeout)
    channel = secure_channel(address, creds, name)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN", peer
        if code == grpc.StatusCode.UNAVAILABLE:  # the handshake worked: it refuses calls
            return "NOT_SERVING (refuses calls: draining or stopping)", peer
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise NodeError(f"{address} has no gRPC health service") from None
        raise NodeError(f"health check of {address} failed: {code.name}: {err.details()}") from None
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if status == "UNKNOWN":
        status = "NOT_SERVING (status UNKNOWN)"
    return status, peer
