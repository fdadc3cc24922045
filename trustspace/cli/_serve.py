"""Shared by ``trustspace node`` and ``trustspace aggregator``: logging, SIGTERM drain, SIGHUP."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
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


def serve_until_signal(
    server: _Server,
    what: str,
    grace: float,
    ready: str,
    on_hup: Callable[[], None] | None = None,
) -> int:
    """Print ``ready`` once the signal handlers are in place, block until SIGTERM/SIGINT,
    then drain in-flight calls (up to ``grace`` s); exit 0.

    ``on_hup``: called on SIGHUP (a live reload), from this loop, not from the signal
    handler: the handler only notes the signal, since a reload takes locks that the
    interrupted frame may hold. Several SIGHUPs before the loop wakes run it once; an
    exception from it is printed and serving goes on. Without ``on_hup`` SIGHUP keeps its
    default action.
    """
    wake = threading.Event()
    received: list[str] = []
    hups: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        wake.set()

    def hup(_signum: int, _frame: Any) -> None:
        hups.append(1)
        wake.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    if on_hup is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)
    print(ready, flush=True)
    try:
        while not received:
            wake.wait(0.5)
            wake.clear()
            if hups and not received and on_hup is not None:
                hups.clear()
                try:
                    on_hup()
                except Exception as exc:  # a bad reload must never stop the server
                    print(f"{what}: SIGHUP: {exc}", file=sys.stderr, flush=True)
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
