"""Worker processes of tests/test_dp_ledger.py (a small module, cheap to preload and fork)."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from trustspace.dp import Ledger
from trustspace.errors import PolicyError


def context() -> Any:
    """A forkserver context that has this module (and so trustspace.dp) preloaded: children
    start in milliseconds, without inheriting the test process's threads."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])  # "__main__": children skip re-running it
    return ctx


def reserve_and_crash(path: str, rho: float) -> None:
    ledger = Ledger(path, recover=False)
    ledger.reserve("alice", "adult", "crash", rho)
    os._exit(0)  # no commit, no close: a crash between reservation and answer


def race(path: str, request_id: str, rho: float, barrier: Any, out: Any) -> None:
    ledger = Ledger(path, recover=False)
    barrier.wait()
    try:
        r = ledger.reserve("alice", "adult", request_id, rho)
    except PolicyError:
        out.put("refused")
        return
    ledger.commit(r)
    out.put("charged")
