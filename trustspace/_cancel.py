"""Cancelling what a call has running at a source when the call ends early.

``transport.status.guard`` gives every gRPC call a ``CancelScope`` (``cancel_scope``) and
cancels it when the call terminates; the engine runs each statement under ``cancellable(hook)``
(DuckDB's ``interrupt``, PostgreSQL's cancel request, Spark's ``cancelJobsWithTag``), so a
call abandoned by its client or past its deadline stops its statements instead of leaving
them to run out their timeouts. A call that ends normally has nothing running: its cancel
does nothing.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from trustspace.errors import DataError

log = logging.getLogger("trustspace.engine")

__all__ = ["CancelScope", "cancel_scope", "cancellable", "current_tag", "request_tag"]


class CancelScope:
    """The statements one gRPC call has running; ``cancel()`` stops them (idempotent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[int, Callable[[], None]] = {}
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks = list(self._hooks.values())
        for hook in hooks:
            try:
                hook()
            except Exception:  # a cancel that fails leaves the statement to its timeout
                log.warning("cancelling a running statement failed", exc_info=True)

    @contextmanager
    def running(self, hook: Callable[[], None]) -> Iterator[None]:
        key = id(hook)
        with self._lock:
            if self.cancelled:
                raise DataError("the request was abandoned before its statement started")
            self._hooks[key] = hook
        try:
            yield
        finally:
            with self._lock:
                self._hooks.pop(key, None)


_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "trustspace_cancel_scope", default=None
)


@contextmanager
def cancel_scope(scope: CancelScope) -> Iterator[CancelScope]:
    """Run the enclosed code with ``scope`` as the current call's cancel scope."""
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


@contextmanager
def cancellable(hook: Callable[[], None]) -> Iterator[None]:
    scope = _SCOPE.get()
    if scope is None:
        yield
        return
    with scope.running(hook):
        yield


_TAG: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trustspace_request_tag", default=None
)


@contextmanager
def request_tag(tag: str) -> Iterator[None]:
    """Name the statements run in the enclosed code after request ``tag`` (a Spark job tag)."""
    token = _TAG.set(tag)
    try:
        yield
    finally:
        _TAG.reset(token)


def current_tag() -> str | None:
    """The request the current statements belong to (``request_tag``), if any."""
    return _TAG.get()
