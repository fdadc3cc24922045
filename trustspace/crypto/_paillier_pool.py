"""Worker processes for batch Paillier encryption/decryption (hazmat, used by the key classes).

One pool per (key, kind, size) is started on first use and kept: each worker receives the key
once, in its initializer, and builds its fixed-base table once, so tasks carry only plaintexts
or ciphertexts. Workers are started with ``forkserver`` (``spawn`` where unavailable) so that a
parent holding gRPC threads is never forked. Private-key material reaches workers through the
pool's pipe to its own child processes only.

**Priority and bounds** (issue 13, class 6: one request must not starve the others). Workers
lower their own scheduling priority (``WORKER_NICE``) in their initializer, so the serving
processes (gRPC handlers, secure aggregation, other analysts' small queries) get the cores
first and batch Paillier work takes what is left. One ``run`` splits its items into chunks of
at most ``MAX_CHUNK_ITEMS`` and keeps at most ``processes`` chunks submitted at a time (the
next is submitted as one finishes), so a request that arrives while others use the same pool
waits for at most one chunk per running request before its own first chunk starts, instead of
for every chunk already queued.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Final

from trustspace.errors import ConfigError

PARALLEL_MIN_ITEMS: Final = 1024
"""With ``processes=None``, smaller batches stay in-process (a cold pool costs ~1 s)."""

MAX_POOLS: Final = 2
"""Idle pools kept alive at once; the least recently used idle one is shut down (a pool that a
``run`` is using is never shut down under it)."""

WORKER_NICE: Final = 10
"""Added to the workers' nice value (``os.nice``, Unix): at nice 10 a busy worker gets about a
tenth of a core's share against a nice-0 process (Linux CFS weights 110 vs 1024), so it only
soaks up otherwise idle CPU. Niceness can be raised without privilege but never lowered back."""

MAX_CHUNK_ITEMS: Final = 64
"""Most items one task carries: 64 encryptions under a 4096-bit key take ~0.3 s on one core of
a 2020s server, which bounds how long one request can hold a worker before another request's
chunk gets it."""

_lock = threading.Lock()
_pools: dict[tuple[Any, ...], ProcessPoolExecutor] = {}
_in_use: dict[tuple[Any, ...], int] = {}  # runs currently using each pool
_worker_key: Any = None


def available_cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_processes(n_items: int, processes: int | None) -> int:
    """How many processes a batch of ``n_items`` should use (``processes=None`` means auto).

    Raises:
        ConfigError: if ``processes`` is given and < 1.
    """
    if processes is not None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ConfigError(f"processes must be a positive int or None, got {processes!r}")
        return max(1, min(processes, n_items))
    if n_items < PARALLEL_MIN_ITEMS:
        return 1
    return max(1, min(available_cpus(), n_items))


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _init_worker(n: int, pq: tuple[int, int] | None, insecure: bool, config: Any) -> None:
    global _worker_key
    if hasattr(os, "nice"):  # batch work: below the serving processes (see WORKER_NICE)
        os.nice(WORKER_NICE)
    from trustspace.crypto import paillier as P
    from trustspace.crypto._paillier_fixedbase import TABLES

    TABLES.reconfigure(config)
    ctx = P._allow_insecure_test_keys() if insecure else contextlib.nullcontext()
    with ctx:
        pk = P.PublicKey(n)
        key = pk if pq is None else P.PrivateKey(pk, pq[0], pq[1])
        key._warm()
    _worker_key = key


def _encrypt_chunk(ms: list[int]) -> list[int]:
    from gmpy2 import mpz

    key = _worker_key
    return [int(key._raw_encrypt_fresh(mpz(m))) for m in ms]


def _decrypt_chunk(cs: list[int]) -> list[int]:
    from gmpy2 import mpz

    key = _worker_key
    return [int(key._raw_decrypt(mpz(c))) for c in cs]


def _ping(wait: float) -> int:
    time.sleep(wait)  # hold this worker so the next submit starts another one
    return os.getpid()


def _start_all(pool: ProcessPoolExecutor, processes: int) -> None:
    """Start every worker and wait for its initializer (its table build) to finish.

    Python 3.11 starts non-fork workers lazily, one per submit that finds no idle worker; a
    worker answers a ping only after its initializer ran, and each ping holds its worker for a
    moment so that the others get theirs.
    """
    pids: set[int] = set()
    for _ in range(200):  # bounded: ~40 s at worst, then carry on with what started
        pids.update(pool.map(_ping, [0.2] * processes))
        if len(pids) >= processes:
            return


_TASKS: Final = {"encrypt": _encrypt_chunk, "decrypt": _decrypt_chunk}


def _acquire(key: Any, processes: int) -> tuple[tuple[Any, ...], ProcessPoolExecutor]:
    """The kept pool for ``key`` (started if need be), marked in use until ``_release``."""
    from trustspace.crypto import paillier as P
    from trustspace.crypto._paillier_fixedbase import TABLES

    pk = key.public_key
    private = isinstance(key, P.PrivateKey)
    ident = (int(pk.n), private, processes, TABLES.config)
    with _lock:
        pool = _pools.pop(ident, None)
        if pool is None:
            pq = (int(key.p), int(key.q)) if private else None
            pool = ProcessPoolExecutor(
                max_workers=processes,
                mp_context=_context(),
                initializer=_init_worker,
                initargs=(int(pk.n), pq, P._insecure_allowed(), TABLES.config),
            )
            _start_all(pool, processes)
        _pools[ident] = pool  # most recently used last
        _in_use[ident] = _in_use.get(ident, 0) + 1
        _evict()
        return ident, pool


def _release(ident: tuple[Any, ...]) -> None:
    with _lock:
        left = _in_use.pop(ident, 1) - 1
        if left > 0:
            _in_use[ident] = left
        _evict()


def _evict() -> None:
    """Shut down the least recently used idle pools beyond ``MAX_POOLS`` (under ``_lock``)."""
    idle = [i for i in _pools if i not in _in_use]
    while len(_pools) > MAX_POOLS and idle:
        _pools.pop(idle.pop(0)).shutdown(wait=False, cancel_futures=True)


def chunk_size(n_items: int, processes: int) -> int:
    """Items per task: ~16 tasks per process (a slow worker delays a batch by one task at most),
    at least 8 (per-task overhead), at most ``MAX_CHUNK_ITEMS`` (the bound on how long one
    request holds a worker).

    >>> chunk_size(100_000, 2), chunk_size(100, 2), chunk_size(1000, 4)
    (64, 8, 16)
    """
    return max(1, min(MAX_CHUNK_ITEMS, max(8, -(-n_items // (processes * 16)))))


def run(key: Any, task: str, items: list[int], processes: int) -> list[Any]:
    """Run ``task`` ("encrypt" or "decrypt") over ``items`` on ``processes`` workers, in order.

    At most ``processes`` chunks of this call are submitted at a time (module docstring).
    """
    from gmpy2 import mpz

    ident, pool = _acquire(key, processes)
    try:
        size = chunk_size(len(items), processes)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        fn = _TASKS[task]
        window: collections.deque[Future[list[int]]] = collections.deque()
        out: list[Any] = []
        nxt = 0
        while nxt < len(parts) or window:
            while nxt < len(parts) and len(window) < processes:
                window.append(pool.submit(fn, parts[nxt]))
                nxt += 1
            out.extend(mpz(x) for x in window.popleft().result())
        return out
    finally:
        _release(ident)


def shutdown_pools() -> None:
    """Shut every kept pool down (waits for running tasks)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
        _in_use.clear()
    for p in pools:
        p.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)
