"""ECDH private set intersection over X25519 between two or more nodes (pure step machine).

Every party ``i`` draws a fresh secret scalar ``k_i`` (32 bytes from ``os.urandom``; X25519
clamps it). An element ``e`` (32 bytes from ``trustspace.vertical.ids``) is hashed with
SHA-512 under a domain tag to 32 bytes used as an X25519 u-coordinate: any 32 bytes are a
valid input, Curve25519 is twist-secure and clamping clears the cofactor, so no hash-to-curve
is needed (SecretFlow libpsi's Curve25519 ECDH does the same). Scalar multiplications commute,
so the tag ``k_0 k_1 ... k_{n-1} H(e)`` of an element does not depend on the order in which
the parties applied their scalars; without all scalars nobody can compute or invert a tag
(decisional Diffie-Hellman).

Protocol, ring in ``nodes`` order, leader ``nodes[0]``, ``n >= 2``:

1. each party hashes and blinds its own elements, puts them in a secret random order, and
   sends them to the next party (``psi.blind/1``);
2. at step ``s = 2..n`` each party re-blinds the set it received (``psi.blind/{s-1}``); before
   the last multiplication it forwards (``psi.blind/{s}``); after it every scalar is applied:
   - ``align``: the last hop returns the tags *in the received order* to the set's origin
     (``psi.tags``), which undoes its secret order and so knows the tag of each of its rows;
     every non-leader sends its tags, sorted, to the leader (``psi.sorted``); the leader
     intersects them with its own and sends the sorted intersection to all (``psi.common``);
     each party marks its rows; the aligned view is ordered by tag, identically everywhere;
   - ``cardinality``: the last hop *shuffles* the tags (a permutation drawn from ``rng``) and
     sends them to the leader (``psi.final``), which counts the tags common to all sets and
     sends the size to everyone (``psi.size``).

Every received set is checked: a whole number of canonical 32-byte points (top bit clear,
below 2^255 - 19), no repeats, the expected count where it is known; a point whose product is
the all-zero value (a small-order point) aborts the run.

**What each party learns** (semi-honest parties; the relaying aggregator sees only sizes, the
channel seals everything else):

- Everyone learns every set's size (the lengths of the messages).
- ``cardinality``: the leader learns the fully blinded tags of every set, shuffled, so the size
  of the intersection of *every subset* of the parties' sets (with ``n = 2``: only the size of
  the intersection); no party learns which of its rows are in any intersection; non-leaders
  learn the size the leader announces.
- ``align``: every party learns which of its rows are in the intersection of all sets (its
  purpose). The leader also holds every non-leader's tags and its own per-row tags, so it
  learns, for each of its rows, which other parties hold it, and the sizes of the
  intersections of every subset; the last hop of each set (the previous party in the ring)
  computes that set's tags and, in align, holds its own per-row tags, so it learns which of
  its rows are in the intersection with that set (with ``n = 2`` this is exactly the
  intersection both learn anyway). Hops never learn the origin's row order (it is permuted).
- A party that lies about its input can only change the result as if it had held other
  identifiers; it cannot learn another party's identifiers that it does not hold.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Final

import numpy as np

from trustspace.errors import ConfigError, DataError, ProtocolError
from trustspace.vertical._party import Message, StepOut

__all__ = [
    "DOMAIN",
    "MODES",
    "POINT_BYTES",
    "PsiParty",
    "backend",
    "blind",
    "hash_to_u",
    "shutdown_pool",
]

MODES: Final = ("cardinality", "align")
POINT_BYTES: Final = 32
DOMAIN: Final = b"trustspace/psi/x25519/v1\x00"
"""Domain tag of the element hash (SHA-512, first 32 bytes, top bit cleared)."""

PARALLEL_MIN: Final = 4096
"""With ``workers=None`` smaller batches stay in-process (a cold pool costs ~1 s)."""
CHUNK: Final = 8192
"""Most points one worker task carries (~0.3 s on one core): large chunks keep the per-task
cost (pickling, pipe) negligible while bounding how long one call holds a worker."""
MAX_POINTS: Final = 1 << 27
"""Largest set a peer may send (4 GiB of points): a bound before any allocation."""
WORKER_NICE: Final = 10
"""Workers lower their priority like the Paillier pool's, so serving threads come first."""

_P: Final = 2**255 - 19


def hash_to_u(element: bytes) -> bytes:
    """The X25519 u-coordinate of an element: SHA-512(DOMAIN || element)[:32], top bit 0."""
    d = bytearray(hashlib.sha512(DOMAIN + element).digest()[:32])
    d[31] &= 0x7F
    return bytes(d)


def _blind_serial(
    scalar: bytes, data: bytes, hash_first: bool, accel: bool = True
) -> tuple[bytes, int]:
    """(products joined, index of the first all-zero product or -1). Runs in workers too.

    Uses the multi-buffer X25519 of ``ipp-crypto`` where it loads (``BACKEND``), else OpenSSL.
    """
    from trustspace.vertical._x25519_mb import mb8

    sha512 = hashlib.sha512
    mv = memoryview(data)
    if mb8 is not None and accel:
        if hash_first:
            data = b"".join(
                sha512(DOMAIN + mv[i : i + POINT_BYTES]).digest()[:32]
                for i in range(0, len(data), POINT_BYTES)
            )
        return mb8(scalar, data)
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    out: list[bytes] = []
    append = out.append
    try:
        if hash_first:
            for i in range(0, len(data), POINT_BYTES):
                # X25519 ignores the top bit of u itself (RFC 7748), so this equals hash_to_u
                append(exchange(load(sha512(DOMAIN + mv[i : i + POINT_BYTES]).digest()[:32])))
        else:
            for i in range(0, len(data), POINT_BYTES):
                append(exchange(load(mv[i : i + POINT_BYTES].tobytes())))
    except ValueError:  # OpenSSL refuses an all-zero shared value (a small-order input)
        return b"", len(out)
    return b"".join(out), -1


def backend() -> str:
    """Which X25519 runs: ``"ipp-crypto mb8"`` (AVX-512 IFMA) or ``"openssl"``."""
    from trustspace.vertical._x25519_mb import mb8

    return "openssl" if mb8 is None else "ipp-crypto mb8"


def _init_worker() -> None:
    if hasattr(os, "nice"):
        os.nice(WORKER_NICE)


def _task(args: tuple[bytes, bytes, bool]) -> tuple[bytes, int]:
    return _blind_serial(*args)


_lock = threading.Lock()
_pools: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_init_worker
            )
            _pools[workers] = pool
        return pool


def shutdown_pool() -> None:
    """Stop the worker processes (started on first parallel use; also run at exit)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pool)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _workers(n: int, workers: int | None) -> int:
    if workers is None:
        return 1 if n < PARALLEL_MIN else max(1, _cpus())
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int or None, got {workers!r}")
    return workers


def _check_scalar(scalar: bytes) -> None:
    if not isinstance(scalar, bytes) or len(scalar) != 32:
        raise ConfigError("the PSI scalar must be 32 bytes")


def _blind_joined(data: bytes, scalar: bytes, *, hash_first: bool, workers: int | None) -> bytes:
    """``blind`` over joined 32-byte items; returns the joined products in the same order."""
    _check_scalar(scalar)
    if len(data) % POINT_BYTES:
        raise ProtocolError(f"PSI: {len(data)} bytes is not a whole number of 32-byte points")
    n = len(data) // POINT_BYTES
    procs = min(_workers(n, workers), max(1, n))
    if procs == 1 or n <= 1:
        parts = [_blind_serial(scalar, data, hash_first)]
    else:
        size = min(CHUNK, -(-n // procs)) * POINT_BYTES
        pool = _pool(procs)
        futs: list[Future[tuple[bytes, int]]] = [
            pool.submit(_task, (scalar, data[i : i + size], hash_first))
            for i in range(0, len(data), size)
        ]
        parts = [f.result() for f in futs]
    for _, bad in parts:
        if bad >= 0:
            raise ProtocolError(
                "PSI: a point gives the all-zero product (a small-order point); the peer's "
                "set is refused"
            )
    return b"".join(p for p, _ in parts)


def blind(
    points_or_elements: Sequence[bytes], scalar: bytes, *, hash_first: bool, workers: int | None
) -> list[bytes]:
    """Multiply each point (or, with ``hash_first``, each element's ``hash_to_u``) by ``scalar``.

    X25519 (RFC 7748) via ``cryptography``; batches of at least ``PARALLEL_MIN`` use all cores
    (``workers=None``) or ``workers`` processes in chunks.

    Raises:
        ProtocolError: an item is not 32 bytes, or a product is all-zero (small-order input).
    """
    for item in points_or_elements:
        if len(item) != POINT_BYTES:
            raise ProtocolError("PSI: every point and element must be 32 bytes")
    joined = _blind_joined(
        b"".join(points_or_elements), scalar, hash_first=hash_first, workers=workers
    )
    return [joined[i : i + POINT_BYTES] for i in range(0, len(joined), POINT_BYTES)]


def _permutation(m: int, rng: Callable[[int], bytes]) -> np.ndarray:
    """A uniformly random permutation of ``m`` items: the order of 128-bit keys from ``rng``."""
    if m <= 1:
        return np.arange(m, dtype=np.int64)
    keys = np.frombuffer(rng(16 * m), dtype=">u8").reshape(m, 2)
    return np.lexsort((keys[:, 1], keys[:, 0])).astype(np.int64)


def _points(msg: Message, what: str, expect: int | None = None) -> np.ndarray:
    """The body as an (m,) 'S32' array, checked: whole, canonical, no repeats, right count."""
    body = msg.body
    if len(body) % POINT_BYTES:
        raise ProtocolError(
            f"PSI {what} from {msg.sender!r}: {len(body)} bytes is not a whole number of "
            "32-byte points"
        )
    m = len(body) // POINT_BYTES
    if m > MAX_POINTS:
        raise ProtocolError(f"PSI {what} from {msg.sender!r}: {m} points, more than {MAX_POINTS}")
    if expect is not None and m != expect:
        raise ProtocolError(f"PSI {what} from {msg.sender!r}: {m} points, expected {expect}")
    if m == 0:
        return np.empty(0, dtype="S32")
    raw = np.frombuffer(body, dtype=np.uint8).reshape(m, POINT_BYTES)
    top = raw[:, 31]
    noncanonical = (top & 0x80) != 0
    noncanonical |= (top == 0x7F) & (raw[:, 1:31] == 0xFF).all(axis=1) & (raw[:, 0] >= 0xED)
    if noncanonical.any():
        raise ProtocolError(
            f"PSI {what} from {msg.sender!r}: {int(noncanonical.sum())} of {m} points are not "
            "canonical X25519 u-coordinates"
        )
    arr = np.frombuffer(body, dtype="S32")
    if len(np.unique(arr)) != m:
        raise ProtocolError(f"PSI {what} from {msg.sender!r}: repeated points among {m}")
    return arr


class PsiParty:
    """One node's side of the PSI (implements ``trustspace.vertical._party.Party``).

    Args:
        name: this node.
        nodes: all participants in protocol order; ``nodes[0]`` is the leader.
        mode: ``"cardinality"`` or ``"align"``.
        elements: one 32-byte element per row (``b""`` = null row, skipped), distinct.
        workers: processes for the scalar multiplications (``None``: all cores for large sets).
        rng: randomness for the scalar and the permutations.
    """

    def __init__(
        self,
        name: str,
        nodes: Sequence[str],
        mode: str,
        elements: Sequence[bytes],
        *,
        workers: int | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        nodes = tuple(nodes)
        if len(nodes) < 2:
            raise ConfigError(f"PSI needs at least two nodes, got {len(nodes)}")
        if len(set(nodes)) != len(nodes):
            raise ConfigError("PSI: a node is named twice in the participants")
        if name not in nodes:
            raise ConfigError(f"PSI: {name!r} is not among the participants {list(nodes)}")
        if mode not in MODES:
            raise ConfigError(f"PSI mode must be one of {MODES}, got {mode!r}")
        _workers(1, workers)
        self.name = name
        self.nodes = nodes
        self.mode = mode
        self._workers = workers
        self._rng = rng
        self._me = nodes.index(name)
        self._n = len(nodes)
        self._next = nodes[(self._me + 1) % self._n]
        self._prev = nodes[(self._me - 1) % self._n]
        self._leader = nodes[0]
        rows: list[int] = []
        parts: list[bytes] = []
        for i, e in enumerate(elements):
            if not e:
                continue
            if len(e) != POINT_BYTES:
                raise DataError(
                    f"PSI at {name!r}: row {i}: an element must be 32 bytes (from id_elements)"
                )
            rows.append(i)
            parts.append(e)
        own = b"".join(parts)
        if len(np.unique(np.frombuffer(own, dtype="S32"))) != len(rows):
            raise DataError(f"PSI at {name!r}: the identifiers hold duplicates; remove them first")
        self._rows = np.asarray(rows, dtype=np.int64)
        self._own = own
        self._scalar = rng(32)
        _check_scalar(self._scalar)
        self._order = _permutation(len(rows), rng)  # sent position j holds row _order[j]
        self._index = 0
        self._done = False
        self._tags: np.ndarray | None = None  # per own row (align)
        self._finals: list[np.ndarray] = []  # the leader's fully blinded sets (cardinality)
        self._aligned: np.ndarray | None = None
        self._size: int | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _msg(self, to: str, kind: str, body: bytes) -> Message:
        return Message(sender=self.name, recipient=to, kind=kind, body=body)

    def _expect(self, inbox: Sequence[Message], wanted: dict[str, str]) -> dict[str, Message]:
        """Exactly one message of the given kind from each named sender, nothing else."""
        got: dict[str, Message] = {}
        for m in inbox:
            if m.recipient != self.name:
                raise ProtocolError(
                    f"PSI step {self._index} at {self.name!r}: a message for {m.recipient!r}"
                )
            if wanted.get(m.sender) != m.kind or m.sender in got:
                raise ProtocolError(
                    f"PSI step {self._index} at {self.name!r}: unexpected {m.kind!r} from "
                    f"{m.sender!r}"
                )
            got[m.sender] = m
        missing = sorted(set(wanted) - set(got))
        if missing:
            raise ProtocolError(
                f"PSI step {self._index} at {self.name!r}: missing "
                + ", ".join(f"{wanted[s]!r} from {s!r}" for s in missing)
            )
        return got

    def _blind(self, data: bytes, hash_first: bool) -> bytes:
        return _blind_joined(data, self._scalar, hash_first=hash_first, workers=self._workers)

    def _finish(self, size: int) -> StepOut:
        self._done = True
        self._size = size
        self._scalar = b""
        return StepOut(done=True, result={"size": size})

    def _mark(self, common: np.ndarray) -> None:
        tags = self._tags
        assert tags is not None
        mask = np.isin(tags, common, assume_unique=True)
        if int(mask.sum()) != len(common):
            raise ProtocolError(
                f"PSI at {self.name!r}: the intersection from {self._leader!r} holds tags that "
                "are not this node's"
            )
        sel = tags[mask]
        self._aligned = self._rows[mask][np.argsort(sel, kind="stable")]

    # -- the step machine --------------------------------------------------------------------
    def step(self, index: int, inbox: Sequence[Message]) -> StepOut:
        """Run step ``index`` (1, 2, ...) on the messages produced for this party at index-1."""
        if self._done:
            raise ProtocolError(f"PSI at {self.name!r}: step {index} after the run finished")
        if index != self._index + 1:
            raise ProtocolError(
                f"PSI at {self.name!r}: step {index} out of order (expected {self._index + 1})"
            )
        self._index = index
        n = self._n
        if index == 1:
            self._expect(inbox, {})
            perm = np.frombuffer(self._own, dtype="S32")[self._order].tobytes()
            return StepOut(
                messages=(self._msg(self._next, "psi.blind/1", self._blind(perm, True)),)
            )
        if index <= n:
            kind = f"psi.blind/{index - 1}"
            got = self._expect(inbox, {self._prev: kind})[self._prev]
            pts = _points(got, kind)
            out = self._blind(pts.tobytes(), False)
            origin = self.nodes[(self._me - (index - 1)) % n]
            if index < n:
                return StepOut(messages=(self._msg(self._next, f"psi.blind/{index}", out),))
            if self.mode == "align":
                return StepOut(messages=(self._msg(origin, "psi.tags", out),))
            arr = np.frombuffer(out, dtype="S32")
            shuffled = arr[_permutation(len(arr), self._rng)]
            if self.name == self._leader:
                self._finals.append(shuffled)
                return StepOut()
            return StepOut(messages=(self._msg(self._leader, "psi.final", shuffled.tobytes()),))
        if self.mode == "align":
            return self._step_align(index, inbox)
        return self._step_cardinality(index, inbox)

    def _step_align(self, index: int, inbox: Sequence[Message]) -> StepOut:
        n = self._n
        leader = self.name == self._leader
        others = [p for p in self.nodes if p != self.name]
        if index == n + 1:
            got = self._expect(inbox, {self._prev: "psi.tags"})[self._prev]
            sent = _points(got, "psi.tags", expect=len(self._rows))
            tags = np.empty_like(sent)
            tags[self._order] = sent
            self._tags = tags
            if leader:
                return StepOut()
            return StepOut(
                messages=(self._msg(self._leader, "psi.sorted", np.sort(tags).tobytes()),)
            )
        if index == n + 2 and leader:
            sorted_sets = self._expect(inbox, dict.fromkeys(others, "psi.sorted"))
            assert self._tags is not None
            common = np.sort(self._tags)
            for p in others:
                theirs = _points(sorted_sets[p], "psi.sorted")
                common = np.intersect1d(common, theirs, assume_unique=True)
            self._mark(common)
            body = common.tobytes()
            msgs = tuple(self._msg(p, "psi.common", body) for p in others)
            out = self._finish(len(common))
            return StepOut(messages=msgs, done=True, result=out.result)
        if index == n + 2:
            self._expect(inbox, {})
            return StepOut()
        if index == n + 3 and not leader:
            got = self._expect(inbox, {self._leader: "psi.common"})[self._leader]
            common = _points(got, "psi.common")
            if len(common) > 1 and not bool((common[1:] > common[:-1]).all()):
                raise ProtocolError(
                    f"PSI at {self.name!r}: the intersection from {self._leader!r} is not sorted"
                )
            self._mark(common)
            return self._finish(len(common))
        raise ProtocolError(f"PSI at {self.name!r}: no step {index} in align mode with {n} nodes")

    def _step_cardinality(self, index: int, inbox: Sequence[Message]) -> StepOut:
        n = self._n
        others = [p for p in self.nodes if p != self.name]
        if self.name == self._leader and index == n + 1:
            finals = self._expect(inbox, dict.fromkeys(others, "psi.final"))
            sets = self._finals + [_points(finals[p], "psi.final") for p in others]
            common = sets[0]
            for s in sets[1:]:
                common = np.intersect1d(common, s, assume_unique=True)
            size = len(common)
            body = size.to_bytes(8, "big")
            msgs = tuple(self._msg(p, "psi.size", body) for p in others)
            return StepOut(messages=msgs, done=True, result=self._finish(size).result)
        if self.name != self._leader and index == n + 1:
            self._expect(inbox, {})
            return StepOut()
        if self.name != self._leader and index == n + 2:
            got = self._expect(inbox, {self._leader: "psi.size"})[self._leader]
            if len(got.body) != 8:
                raise ProtocolError(
                    f"PSI at {self.name!r}: a size of {len(got.body)} bytes from {self._leader!r}"
                )
            size = int.from_bytes(got.body, "big")
            if size > len(self._rows):
                raise ProtocolError(
                    f"PSI at {self.name!r}: {self._leader!r} announced an intersection larger "
                    "than this node's set"
                )
            return self._finish(size)
        raise ProtocolError(
            f"PSI at {self.name!r}: no step {index} in cardinality mode with {n} nodes"
        )

    # -- results -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The intersection size (after the run)."""
        if self._size is None:
            raise ProtocolError(f"PSI at {self.name!r}: the run has not finished")
        return self._size

    @property
    def aligned(self) -> np.ndarray:
        """This party's row indices in the intersection, ordered by tag (align mode, when done).

        Raises:
            ProtocolError: before the run finished, or in cardinality mode.
        """
        if self.mode != "align":
            raise ProtocolError(f"PSI at {self.name!r}: rows are aligned only in align mode")
        if self._aligned is None:
            raise ProtocolError(f"PSI at {self.name!r}: the run has not finished")
        out = self._aligned.copy()
        out.flags.writeable = False
        return out
