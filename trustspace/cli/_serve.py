"""Shared by ``trustspace node`` and ``trustspace aggregator``: logging, SIGTERM drain, SIGHUP."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol


class _Server(Protocol):
    def stop(self, grace: float | None = None) -> None: ...


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
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
    exception from it is logged and serving goes on. Without ``on_hup`` SIGHUP keeps its
    default action.
    """
    stop = threading.Event()
    wake = threading.Event()
    received: list[str] = []
    hup: list[bool] = []

    def handler(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            hup.append(True)
        else:
            received.append(signal.Signals(signum).name)
            stop.set()
        wake.set()

    signals = [signal.SIGTERM, signal.SIGINT]
    if on_hup is not None:
        signals.append(signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signals}
    print(ready, flush=True)
    try:
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if hup and not stop.is_set() and on_hup is not None:
                hup.clear()
                try:
                    on_hup()
                except Exception:
                    logging.getLogger("trustspace").exception("%s: SIGHUP handler failed", what)
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
