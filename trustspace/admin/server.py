"""``AdminServer``: the admin app served by uvicorn on its own port, in a background thread.

The socket is bound when the server is made (a port in use is a ``ConfigError`` before the
node starts serving; no ``SO_REUSEPORT``, so a second process cannot share the port), and
uvicorn serves it from a daemon thread until ``stop()``.

With ``[admin] tls = true`` the port speaks HTTPS with the server's own ``[tls]`` identity and
requires a client certificate issued by the data space CA (uvicorn's ``ssl_cert_reqs =
CERT_REQUIRED``, ``ssl_ca_certs``: OpenSSL checks the chain and validity). Each connection's
certificate is then checked here before any request reaches the app: its role must be
``operator``, its name one of ``[admin] operators``, and it must not be revoked
(``[tls] revoked``); otherwise every request on the connection gets 403 naming the reason.
The app sees the caller's name (shown in the page footer and logged with each page view).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CollectorRegistry
from uvicorn.protocols.http.h11_impl import H11Protocol

from trustspace._config import AdminConfig, TlsConfig
from trustspace.admin._views import HostView, NodeView
from trustspace.admin.app import PEER_KEY, ASGIApp, Message, Scope, create_app
from trustspace.errors import ConfigError
from trustspace.transport.ca import identity_from_pem

if TYPE_CHECKING:
    from trustspace.aggregator.server import Aggregator
    from trustspace.node.server import Node

__all__ = ["START_TIMEOUT_S", "STOP_TIMEOUT_S", "AdminServer", "aggregator_admin", "node_admin"]

log = logging.getLogger("trustspace.admin")
START_TIMEOUT_S = 10.0  # uvicorn's start-up is milliseconds; this only bounds a hang
STOP_TIMEOUT_S = 5.0  # open keep-alive connections get this long to finish, then are closed
#: Connections served at once; more get 503 at once (a few operators and a Prometheus scraper
#: need far fewer, and a flood cannot tie up the node's process beyond this)
MAX_CONNECTIONS = 32
OPERATOR_ROLE = "operator"
#: pages polled by machines: logged at DEBUG, every other page view at INFO
_QUIET = ("/healthz", "/metrics", "/static/")


class _Gate:
    """The per-connection check of an mTLS admin port's client certificate."""

    def __init__(self, operators: tuple[str, ...], revoked: Callable[[bytes], str]) -> None:
        self.operators = frozenset(operators)
        self.revoked = revoked

    def check(self, transport: asyncio.BaseTransport) -> tuple[str, str]:
        """(caller, refusal): the caller's description and why it is refused ("": allowed)."""
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; fail closed all the same
            return "?", "no client certificate"
        pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii")
        try:
            ident = identity_from_pem(pem)
        except Exception as exc:  # any unreadable certificate is refused
            return "?", f"unreadable client certificate ({exc})"
        caller = f"{ident.name} (role {ident.role})"
        why = self.revoked(pem)
        if why:
            return caller, f"the certificate of {ident.name!r} is revoked ({why})"
        if ident.role != OPERATOR_ROLE:
            return caller, (
                f"the certificate of {ident.name!r} has role {ident.role!r}; the console needs "
                f"a certificate with role {OPERATOR_ROLE!r} (`trustspace ca issue DIR NAME "
                "--role operator`)"
            )
        if ident.name not in self.operators:
            return caller, (
                f"{ident.name!r} is not one of this console's operators ([admin] operators = "
                f"{sorted(self.operators)})"
            )
        return caller, ""


def _connection_app(app: ASGIApp, caller: str, refusal: str, server: str) -> ASGIApp:
    """``app`` for one connection: the caller's name in the scope, or 403 for every request."""

    async def wrapped(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if refusal:
            log.warning(
                "%s admin: refused %s %s from %s: %s",
                server,
                scope["method"],
                scope["path"],
                caller,
                refusal,
            )
            body = f"forbidden: {refusal}\n".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope[PEER_KEY] = caller
        await app(scope, receive, send)

    return wrapped


def _logged(app: ASGIApp, server: str) -> ASGIApp:
    """Log each request with its caller and status (the console's access log)."""

    async def wrapped(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await app(scope, receive, watch)
        finally:
            path = str(scope.get("path", ""))
            level = logging.DEBUG if path.startswith(_QUIET) else logging.INFO
            client = scope.get("client") or ("?", 0)
            log.log(
                level,
                "%s admin: %s %s from %s (%s:%s) -> %s",
                server,
                scope["method"],
                path,
                scope.get(PEER_KEY, "local"),
                client[0],
                client[1],
                status[0] if status else "no answer",
            )

    return wrapped


def _protocol(gate: _Gate, server: str) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, checking each TLS connection's certificate first.

    ``connection_made`` runs after the TLS handshake, when the peer certificate is known.
    """

    class _GatedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            caller, refusal = gate.check(transport)
            self.app = _connection_app(self.app, caller, refusal, server)

    return _GatedH11


def _bind(config: AdminConfig, server: str) -> socket.socket:
    """The admin port's listening socket, or a ConfigError that says what to do."""
    host = config.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # SO_REUSEADDR (TIME_WAIT only) but never SO_REUSEPORT: a port in use is refused
        return socket.create_server((host, config.port), family=family, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{server}: cannot open the admin port: [admin] listen = {config.listen!r} is "
                "already in use by another process (is another node or console running?); "
                "choose another port in [admin] listen"
            ) from None
        raise ConfigError(
            f"{server}: cannot open the admin port on [admin] listen = {config.listen!r}: "
            f"{exc.strerror or exc}; use an address of this machine, e.g. 127.0.0.1:9464"
        ) from None


class AdminServer:
    """The admin port of one node or aggregator: bound at construction, ``start()``, ``stop()``.

    Args:
        config: the ``[admin]`` table.
        app: the ASGI app (``create_app``).
        name: the server's name, for messages and logs.
        tls: the server's ``[tls]`` identity; used (and required) when ``config.tls``.
        revoked: the server's revocation check (certificate PEM -> why revoked, or "").

    Raises:
        ConfigError: the port is in use or the address is not of this machine; ``tls = true``
            without a ``tls`` identity.
    """

    def __init__(
        self,
        config: AdminConfig,
        app: ASGIApp,
        *,
        name: str,
        tls: TlsConfig | None = None,
        revoked: Callable[[bytes], str] = lambda pem: "",
    ) -> None:
        self.config = config
        self.name = name
        options: dict[str, Any] = {}
        http: Any = "h11"
        if config.tls:
            if tls is None:
                raise ConfigError(f"{name}: [admin] tls = true needs the [tls] identity")
            options = {
                "ssl_certfile": str(tls.cert),
                "ssl_keyfile": str(tls.key),
                "ssl_ca_certs": str(tls.ca),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
                "ssl_context_factory": _tls12_or_later,
            }
            http = _protocol(_Gate(config.operators, revoked), name)
        self._sock = _bind(config, name)
        self.port: int = self._sock.getsockname()[1]
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                _logged(app, name),
                http=http,
                ws="none",  # no websocket: the console is pages and JSON only
                lifespan="off",
                log_config=None,  # the node's logging stays as it is configured
                access_log=False,  # ``_logged`` logs each request with its caller
                server_header=False,
                limit_concurrency=MAX_CONNECTIONS,
                timeout_graceful_shutdown=int(STOP_TIMEOUT_S),
                **options,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - naming only
        return f"[{shown}]:{self.port}" if ":" in shown else f"{shown}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.config.tls else 'http'}://{self.address}/"

    def start(self) -> AdminServer:
        """Serve in a background thread; returns once uvicorn is up.

        Raises:
            ConfigError: uvicorn did not start (e.g. the TLS files are unreadable).
        """
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._uvicorn.run(sockets=[self._sock])
            except BaseException as exc:  # reported to start()
                errors.append(exc)

        self._thread = threading.Thread(target=run, name=f"{self.name}-admin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                why = f"{type(errors[0]).__name__}: {errors[0]}" if errors else "no answer"
                raise ConfigError(f"{self.name}: the admin port did not start ({why})")
            time.sleep(0.01)
        log.info("%s: admin console on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        """Stop serving (open connections get ``STOP_TIMEOUT_S``) and close the port."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S + 2.0)
            self._thread = None
        self._sock.close()


def _tls12_or_later(
    config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's context from the options above, refusing protocol versions below TLS 1.2."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def node_admin(node: Node, registry: CollectorRegistry | None = None) -> AdminServer:
    """The admin port of a running ``Node`` (its ``[admin]`` table), bound but not started."""
    config = node.config
    assert config.admin is not None
    view = NodeView(
        node.service,
        serving=lambda: not node.server.stopping,
        address=lambda: node.address,
        ca_pem=Path(config.tls.ca).read_bytes(),
    )
    return AdminServer(
        config.admin,
        create_app(
            view,
            node.metrics.registry if registry is None else registry,
            hosts=_hosts(config.admin),
        ),
        name=f"node {config.name}",
        tls=config.tls,
        # looked up at each connection: a live reload replaces the service's checker
        revoked=lambda pem: node.service.revocations.check(pem),
    )


def aggregator_admin(agg: Aggregator, registry: CollectorRegistry | None = None) -> AdminServer:
    """The admin port of a running ``Aggregator``: overview, ``/healthz`` and ``/metrics``."""
    config = agg.config
    assert config.admin is not None
    view = HostView(
        agg.server.name,
        "aggregator",
        serving=lambda: not agg.server.stopping,
        address=lambda: agg.address,
        extra=lambda: {"nodes": [{"name": n.name, "address": n.address} for n in config.nodes]},
    )
    return AdminServer(
        config.admin,
        create_app(
            view, agg.metrics.registry if registry is None else registry, hosts=_hosts(config.admin)
        ),
        name=f"aggregator {config.name}",
        tls=config.tls,
        revoked=lambda pem: agg.revocations.check(pem),
    )


def _hosts(config: AdminConfig) -> tuple[str, ...]:
    """The ``Host`` names the console answers to besides loopback: its listen host (unless a
    wildcard) and ``[admin] hosts``."""
    wildcard = config.host in ("0.0.0.0", "::", "")  # noqa: S104 - naming, not binding
    return (*(() if wildcard else (config.host,)), *config.hosts)
