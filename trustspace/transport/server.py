"""A gRPC server with mutual TLS, message size limits, health checking and a graceful drain.

Every call of our services passes a gate (``_Gate``, a server interceptor) before any work:
the caller's certificate is checked against the revocation list (``CallHooks.revoked``), the
request bytes are parsed here so that an undecodable message is a clean ``INVALID_ARGUMENT``
(gRPC itself would answer ``INTERNAL``), every refused or failed call that the handler did
not record itself is reported to ``CallHooks.refused`` (a node writes it to its audit log),
and every answer, refusals included, ends with ``CallHooks.trailing`` metadata (a node's
signed audit checkpoint, made after the call's audit line).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trustspace.errors import ConfigError
from trustspace.proto.v1 import common_pb2
from trustspace.transport.ca import Credentials
from trustspace.transport.status import ERROR_KEY
from trustspace.transport.tls import GRPC_OPTIONS, check_own_credentials, server_credentials

log = logging.getLogger("trustspace.transport")
MAX_WORKERS = 16  # enough for one aggregator calling every stage in parallel plus health checks
#: gRPC sets SO_REUSEPORT by default: a second server on a port in use would then start and
#: silently share its connections with the first. Off, binding a used port fails at start.
SERVER_OPTIONS: list[tuple[str, Any]] = [*GRPC_OPTIONS, ("grpc.so_reuseport", 0)]


def _no_revocation(pem: bytes) -> str:
    return ""


@dataclass(frozen=True)
class CallHooks:
    """What a server runs around each call of its services (not the health service).

    ``revoked(cert_pem)`` returns why the caller's certificate is revoked ("" if it is not);
    ``before()`` runs just before the servicer; ``refused(method, caller, code_name, details)``
    reports a call that ended with an error status (``handled()`` says whether the handler
    already recorded it, e.g. wrote its own audit line); ``trailing()`` returns metadata
    added to the trailing metadata of every answer, after ``refused`` ran.
    """

    revoked: Callable[[bytes], str] = _no_revocation
    before: Callable[[], None] | None = None
    refused: Callable[[str, str, str, str], None] | None = None
    handled: Callable[[], bool] | None = None
    trailing: Callable[[], tuple[tuple[str, bytes], ...]] | None = None


def _peer_pem(context: grpc.ServicerContext) -> bytes:
    pems = context.auth_context().get("x509_pem_cert") or []
    return bytes(pems[0]) if pems else b""


def _peer_name(pem: bytes) -> str:
    from trustspace.transport.ca import identity_from_pem

    try:
        return identity_from_pem(pem).name if pem else "?"
    except Exception:
        return "?"


class _Gate(grpc.ServerInterceptor):  # type: ignore[misc]
    """Revocation check, strict request parsing and refusal reporting around every call."""

    def __init__(self, name: str, hooks: CallHooks) -> None:
        self._name = name
        self._hooks = hooks

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        method_path = str(details.method)
        if handler is None or handler.unary_unary is None or "grpc.health" in method_path:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(method_path.rsplit("/", 1)[-1], handler),
            request_deserializer=None,  # bytes: parsed below, with a clean error
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, handler: Any) -> Callable[[bytes, grpc.ServicerContext], Any]:
        inner, parse, hooks = handler.unary_unary, handler.request_deserializer, self._hooks

        def refuse(context: grpc.ServicerContext, caller: str, code: Any, msg: str) -> None:
            self._report(method, caller, code, msg)
            bad_input = code == grpc.StatusCode.INVALID_ARGUMENT
            kind = "ProtocolError" if bad_input else "AuthenticationError"
            info = common_pb2.ErrorInfo(node=self._name, message=msg, kind=kind)
            context.set_trailing_metadata(((ERROR_KEY, info.SerializeToString()),))
            self._add_trailing(method, context)
            context.abort(code, msg)

        def behavior(raw: bytes, context: grpc.ServicerContext) -> Any:
            pem = _peer_pem(context)
            caller = _peer_name(pem)
            why = hooks.revoked(pem) if pem else ""
            if why:
                refuse(
                    context,
                    caller,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{self._name} refused {method} from {caller}: its certificate is revoked "
                    f"({why})",
                )
            try:
                request = parse(raw) if parse is not None else raw
            except Exception:
                refuse(
                    context,
                    caller,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{self._name}: {method}: the request ({len(raw)} bytes) is not a valid "
                    "protobuf message of its type",
                )
            if hooks.before is not None:
                hooks.before()
            try:
                result = inner(request, context)
            except BaseException:
                code = context.code()
                if code not in (None, grpc.StatusCode.OK) and not (
                    hooks.handled is not None and hooks.handled()
                ):
                    details = context.details() or ""
                    if isinstance(details, bytes):  # grpc keeps the details it sends as bytes
                        details = details.decode("utf-8", "replace")
                    self._report(method, caller, code, str(details))
                # gRPC sends the trailing metadata with the status, after this returns
                self._add_trailing(method, context)
                raise
            self._add_trailing(method, context)
            return result

        return behavior

    def _add_trailing(self, method: str, context: grpc.ServicerContext) -> None:
        """Append ``hooks.trailing()`` to what the handler set (e.g. an ``ErrorInfo``)."""
        if self._hooks.trailing is None:
            return
        try:
            extra = self._hooks.trailing()
        except Exception:  # an answer without a checkpoint beats a crashed answer
            log.exception("%s: no trailing metadata for %s", self._name, method)
            return
        if extra:
            current = tuple(context.trailing_metadata() or ())
            context.set_trailing_metadata(current + tuple(extra))

    def _report(self, method: str, caller: str, code: Any, details: str) -> None:
        """Hand a refused or failed call to ``hooks.refused`` (which logs it), or log it here."""
        if self._hooks.refused is None:
            log.warning(
                "%s: refused %s from %s: %s: %s",
                self._name,
                method,
                caller,
                getattr(code, "name", str(code)),
                details[:500],
            )
            return
        try:
            self._hooks.refused(method, caller, getattr(code, "name", str(code)), details)
        except Exception:  # reporting must not turn a clean refusal into a crash
            log.exception("%s: could not record the refused %s call", self._name, method)


def bind_error(listen: str) -> OSError | None:
    """Why ``listen`` (HOST:PORT) cannot be bound now, None if it can (``--check``s, errors).

    Bound, never listened on, and closed at once: nobody sees the probe.

    Raises:
        OSError: no socket of the address family can be made on this machine.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            return err
    return None


def _listen_error(name: str, listen: str, key: str, grpc_reason: str) -> str:
    """Why ``listen`` (at ``key``, e.g. ``node.toml: key node.listen``) cannot be bound."""
    port = listen.rpartition(":")[2]
    reason = grpc_reason.split(";")[0].strip()
    try:  # gRPC's own text is vague ("Failed to bind"): ask the OS which it is
        err = bind_error(listen)
    except OSError as exc:  # no socket of that family on this machine
        err = exc
    if err is not None:
        if err.errno == errno.EADDRINUSE:
            return (
                f"{name}: cannot listen on {listen!r} ({key}): port {port} is already in use: "
                "another process is listening on it; stop it or choose another listen address"
            )
        reason = err.strerror or reason
    return (
        f"{name}: cannot listen on {listen!r} ({key}): {reason or 'bind failed'}; check that "
        "the host is an address of this machine, or choose another listen address"
    )


class TlsServer:
    """A started-on-demand gRPC server on ``listen`` with mTLS and the health service.

    ``register`` receives the raw ``grpc.Server`` to add servicers; ``service_names`` are the
    fully-qualified services reported SERVING by the health service; ``hooks`` are run around
    every call (see ``CallHooks``).
    """

    def __init__(
        self,
        *,
        name: str,
        listen: str,
        creds: Credentials,
        register: Callable[[grpc.Server], None],
        service_names: tuple[str, ...],
        hooks: CallHooks | None = None,
        listen_key: str = "key listen",
    ) -> None:
        check_own_credentials(creds, f"{name}'s certificate")
        self.name = name
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix=name),
            options=SERVER_OPTIONS,
            interceptors=[_Gate(name, hooks or CallHooks())],
        )
        register(self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services = ("", *service_names)
        try:
            self.port = self._server.add_secure_port(listen, server_credentials(creds))
        except RuntimeError as exc:
            raise ConfigError(_listen_error(name, listen, listen_key, str(exc))) from None
        if self.port == 0:  # older gRPC releases return 0 instead of raising
            raise ConfigError(_listen_error(name, listen, listen_key, ""))
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

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called (draining or stopped): health checks say not serving."""
        return self._stopped.is_set()


class AdminPort(Protocol):
    """A host's admin port (``trustspace.admin.server.AdminServer``), bound when it is made."""

    def start(self) -> Any: ...
    def stop(self) -> None: ...


class ServerHost:
    """What ``Node`` and ``Aggregator`` share: a ``TlsServer`` in ``self.server`` and the
    admin port (``[admin]``), started, waited on and drained the same way; ``close()``
    releases what the subclass owns."""

    server: TlsServer
    drain_grace_s: float
    #: the admin port, made by ``_admin_port`` at the first ``start()`` (None: no [admin])
    admin: AdminPort | None = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def port(self) -> int:
        return int(self.server.port)

    def _admin_port(self) -> AdminPort | None:
        """This host's admin port, bound (a port in use is refused here, before gRPC serves);
        None: the config has no [admin] table."""
        return None

    def start(self) -> Self:
        """Serve gRPC, then the admin port if there is one (gRPC stops if it cannot start)."""
        if self.admin is None:
            self.admin = self._admin_port()
        self.server.start()
        if self.admin is not None:
            try:
                self.admin.start()
            except BaseException:
                self.server.stop(0)
                raise
        return self

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace`` or the configured
        ``drain_grace_s``), stop the admin port, then close."""
        self.server.stop(self.drain_grace_s if grace is None else grace)
        if self.admin is not None:  # after the drain: /healthz said "draining" meanwhile
            self.admin.stop()
        self.close()

    def wait(self) -> None:
        self.server.wait()

    def close(self) -> None:
        """Release the subclass's resources (called by ``stop``)."""
