"""Shared by ``trustspace node`` and ``trustspace aggregator``: logging, SIGTERM drain."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trustspace._config import LoggingConfig


class _Server(Protocol):
    def stop(self, grace: float | None = None) -> None: ...


def setup_logging(
    level: str,
    config: LoggingConfig | None = None,
    *,
    role: str = "",
    name: str = "",
    where: str = "<config>",
) -> None:
    """Human-readable text on stderr at ``level``; with ``config.file`` (``[logging]``), also
    the log file (JSON lines by default, rotated). Called again once the config is read."""
    from trustspace.obs.logs import configure

    configure(level, config, role=role, name=name, where=where)
    if config is not None and config.file is not None:
        logging.getLogger("trustspace").info(
            "%s %s: logging to %s (%s, level %s)",
            role,
            name,
            config.file,
            config.format,
            config.level,
        )


def serve_until_signal(server: _Server, what: str, grace: float, ready: str) -> int:
    """Print ``ready`` once the signal handlers are in place, block until SIGTERM/SIGINT,
    then drain in-flight calls (up to ``grace`` s); exit 0."""
    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    print(ready, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(
        f"{what}: {received[0]} received, draining in-flight calls (up to {grace:g} s)",
        file=sys.stderr,
        flush=True,
    )
    server.stop(grace)
    print(f"{what}: stopped", file=sys.stderr, flush=True)
    return 0
