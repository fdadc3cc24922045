"""The admin port's ASGI app: a read-only operator console, ``/healthz`` and ``/metrics``.

``create_app(view, registry=None)`` returns a Starlette app. With a ``NodeView`` it serves the
node's pages; with a plain ``HostView`` (the aggregator) only the overview, ``/healthz`` and
``/metrics``. Every page has a JSON twin under ``/api/`` for scripts.

===================  ====================================================================
``/``                overview: name, version, uptime, health, gRPC address, audit log head
``/datasets``        each dataset's file, format, row count and declared schema
``/policy``          the policy in effect (rules, floors, rate limit, ``[policy.dp]``)
``/audit``           the audit log, newest first: search, analyst/operation/decision
                     filters, pages; the chain's verification status
``/usage``           queries, refusals and budget per analyst and per purpose
``/budgets``         DP budgets per analyst and dataset from the node's ledger
``/healthz``         ``serving`` (200) or ``draining`` (503); JSON with ``?format=json``
``/metrics``         the Prometheus exposition of the registry given
===================  ====================================================================

Security: GET (and HEAD) only, anything else is 405; templates are autoescaped and every
response carries a Content-Security-Policy that allows no script at all, so an analyst's
``<script>`` in a purpose is shown as text and could not run even if escaping failed; the
``Host`` header must name this machine or a configured host (DNS rebinding: a web page the
operator visits cannot make the browser read a loopback console under the page's origin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from trustspace.admin._views import AuditQuery, HostView, NodeView
from trustspace.errors import ConfigError

__all__ = ["LOOPBACK_HOSTS", "SECURITY_HEADERS", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

#: Host names a loopback console answers to (with any port: an ssh tunnel picks its own).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Sent with every response: no script, no framing, no external resources, nothing cached.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
#: what the pages' caller is called when the admin port has no client certificates
LOCAL_CALLER = "local (loopback, no client certificate)"
PEER_KEY = "trustspace.admin.peer"  # the scope key the mTLS gate puts the caller's name under


class _SecurityHeaders:
    """Pure ASGI middleware adding ``SECURITY_HEADERS`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _host_of(header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:9464`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    return header.rpartition(":")[0].lower() if header.count(":") == 1 else header.lower()


class _HostCheck:
    """Refuse a request whose ``Host`` is not a name of this console (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_of(raw) not in self.allowed:
                response = PlainTextResponse(
                    f"Host {raw!r} is not a name of this console (allowed: "
                    f"{', '.join(sorted(self.allowed))}); add it to [admin] hosts if the "
                    "operators reach the console by that name\n",
                    status_code=421,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _num(value: Any) -> str:
    """A number for a table cell: thousands separated, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("trustspace.admin", "templates"),
        autoescape=True,  # every value, in every template (not only *.html)
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: (
        "" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.6g}")
    )
    return env


def create_app(
    view: HostView,
    registry: CollectorRegistry | None = None,
    *,
    hosts: Sequence[str] = (),
) -> Starlette:
    """The admin app over ``view`` (a ``NodeView`` for a node's console).

    Args:
        view: what the pages read, at each request.
        registry: the metrics ``/metrics`` exposes; None: an empty registry.
        hosts: more ``Host`` names allowed besides ``LOOPBACK_HOSTS`` (the listen address's
            host, ``[admin] hosts``).
    """
    templates = Jinja2Templates(env=_environment())
    metrics = registry if registry is not None else CollectorRegistry()
    node = view if isinstance(view, NodeView) else None
    pages = [("/", "overview")]
    if node is not None:
        pages += [
            ("/datasets", "datasets"),
            ("/policy", "policy"),
            ("/audit", "audit"),
            ("/usage", "usage"),
            ("/budgets", "budgets"),
        ]

    def page(request: Request, template: str, title: str, data: dict[str, Any]) -> Response:
        context = {
            "title": title,
            "view": view.overview() if template != "overview" else data,
            "data": data,
            "pages": pages,
            "path": request.url.path,
            "caller": request.scope.get(PEER_KEY) or LOCAL_CALLER,
        }
        return templates.TemplateResponse(request, f"{template}.html", context)

    def bad_request(request: Request, exc: ConfigError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=400)
        return PlainTextResponse(f"bad request: {exc}\n", status_code=400)

    def need_node() -> NodeView:
        assert node is not None  # the routes below exist only for a node
        return node

    # -- pages -----------------------------------------------------------------------------
    def overview_data() -> dict[str, Any]:
        data = view.overview()
        if node is not None:
            data["chain"] = node.chain()  # cached; small logs are verified when they change
        return data

    def overview(request: Request) -> Response:
        return page(request, "overview", "overview", overview_data())

    def datasets(request: Request) -> Response:
        return page(request, "datasets", "datasets", need_node().datasets())

    def policy(request: Request) -> Response:
        return page(request, "policy", "policy", need_node().policy())

    def audit_data(request: Request) -> dict[str, Any]:
        n = need_node()
        query = AuditQuery.parse(dict(request.query_params))
        out = n.audit(query)
        out["chain"] = n.chain(force=request.query_params.get("verify") == "1")
        return out

    def audit(request: Request) -> Response:
        try:
            return page(request, "audit", "audit log", audit_data(request))
        except ConfigError as exc:
            return bad_request(request, exc)

    def usage_data() -> dict[str, Any]:
        n = need_node()
        return {"analyst": n.usage("analyst"), "purpose": n.usage("purpose")}

    def usage(request: Request) -> Response:
        return page(request, "usage", "usage", usage_data())

    def budgets(request: Request) -> Response:
        return page(request, "budgets", "DP budgets", need_node().budgets())

    # -- for machines ----------------------------------------------------------------------
    def healthz(request: Request) -> Response:
        state = view.health()
        code = 200 if state == "serving" else 503
        wants_json = "application/json" in request.headers.get("accept", "")
        if wants_json or request.query_params.get("format") == "json":
            return JSONResponse({"status": state, "name": view.name, "kind": view.kind}, code)
        return PlainTextResponse(state + "\n", code)

    icon = (Path(__file__).parent / "static" / "favicon.svg").read_bytes()

    def favicon(request: Request) -> Response:  # browsers ask for it on the plain-text pages
        return Response(icon, media_type="image/svg+xml")

    def metrics_page(request: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    def api(fn: Callable[[], dict[str, Any]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return JSONResponse(fn())

        return endpoint

    def api_audit(request: Request) -> Response:
        try:
            return JSONResponse(audit_data(request))
        except ConfigError as exc:
            return bad_request(request, exc)

    routes: list[BaseRoute] = [
        Route("/", overview, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/api/overview", api(overview_data), methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("trustspace.admin", "static")]), name="static"),
    ]
    if node is not None:
        routes += [
            Route("/datasets", datasets, methods=["GET"]),
            Route("/policy", policy, methods=["GET"]),
            Route("/audit", audit, methods=["GET"]),
            Route("/usage", usage, methods=["GET"]),
            Route("/budgets", budgets, methods=["GET"]),
            Route("/api/datasets", api(node.datasets), methods=["GET"]),
            Route("/api/policy", api(node.policy), methods=["GET"]),
            Route("/api/audit", api_audit, methods=["GET"]),
            Route("/api/usage", api(usage_data), methods=["GET"]),
            Route("/api/budgets", api(node.budgets), methods=["GET"]),
        ]
    allowed = list(dict.fromkeys([*LOOPBACK_HOSTS, *hosts]))
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(_SecurityHeaders),  # outermost: refusals carry the headers too
            Middleware(_HostCheck, allowed=allowed),
        ],
    )
