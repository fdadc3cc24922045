"""Shared by ``trustspace node`` and ``trustspace aggregator``: logging, SIGTERM drain."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, Protocol


class _Server(Protocol):
    def stop(self, grace: float | None = None) -> None: ...


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
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
