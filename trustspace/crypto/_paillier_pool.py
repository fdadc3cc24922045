"""Worker processes for batch Paillier encryption/decryption (hazmat, used by the key classes).

One pool per (key, kind, size) is started on first use and kept: each worker receives the key
once, in its initializer, and builds its fixed-base table once, so tasks carry only plaintexts
or ciphertexts. Workers are started with ``forkserver`` (``spawn`` where unavailable) so that a
parent holding gRPC threads is never forked. Private-key material reaches workers through the
pool's pipe to its own child processes only.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Final

from trustspace.errors import ConfigError

PARALLEL_MIN_ITEMS: Final = 1024
"""With ``processes=None``, smaller batches stay in-process (a cold pool costs ~1 s)."""

MAX_POOLS: Final = 2
"""Pools kept alive at once; the least recently used one is shut down."""

_lock = threading.Lock()
_pools: dict[tuple[Any, ...], ProcessPoolExecutor] = {}
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


def _get_pool(key: Any, processes: int) -> ProcessPoolExecutor:
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
        while len(_pools) > MAX_POOLS:
            old = next(iter(_pools))
            _pools.pop(old).shutdown(wait=False, cancel_futures=True)
        return pool


def run(key: Any, task: str, items: list[int], processes: int) -> list[Any]:
    """Run ``task`` ("encrypt" or "decrypt") over ``items`` on ``processes`` workers, in order."""
    from gmpy2 import mpz

    pool = _get_pool(key, processes)
    # many small chunks: a slow or busy worker delays the batch by one chunk at most
    size = max(8, -(-len(items) // (processes * 16)))
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    out: list[Any] = []
    for res in pool.map(_TASKS[task], parts):
        out.extend(mpz(x) for x in res)
    return out


def shutdown_pools() -> None:
    """Shut every kept pool down (waits for running tasks)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)
