"""The admin port: a read-only operator console, ``/healthz`` and ``/metrics`` over HTTP(S).

- ``app``: the Starlette app (``create_app``): pages and their JSON twins, GET only;
- ``_views``: what the pages show, read from the running node at request time (its policy,
  audit log, usage, DP ledger); never a data value, only schemas and public domains;
- ``server``: ``AdminServer``, uvicorn in a background thread on its own port, localhost only
  unless ``[admin] tls = true`` (client certificates of the data space CA, role ``operator``).

Configured by the ``[admin]`` table (``trustspace._config.AdminConfig``); see
``docs/operations.md``, "Operator console and admin port".
"""

from __future__ import annotations

from trustspace.admin.app import create_app
from trustspace.admin.server import AdminServer

__all__ = ["AdminServer", "create_app"]
