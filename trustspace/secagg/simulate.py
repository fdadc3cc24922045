"""In-process driver: run the same client and server state machines without a network."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from trustspace.errors import ConfigError, DataError
from trustspace.secagg.client import SecAggClient
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.driver import drive
from trustspace.secagg.stage import ROUND_STAGES, Stage, stages_for

__all__ = ["STAGES", "deterministic_rng", "simulate"]

#: The stages ``simulate(dropouts=...)`` takes, in order ("share" is accepted for share_keys;
#: "consistency" too with ``consistency_check=True``).
STAGES = ROUND_STAGES


def deterministic_rng(seed: bytes) -> Callable[[int], bytes]:
    """A reproducible byte source (SHAKE-256 in counter mode) for tests only, never production."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)

    return rng


def simulate(
    inputs: Sequence[np.ndarray[Any, Any]] | np.ndarray[Any, Any],
    threshold: int | None = None,
    neighbors: int | None = None,
    dropouts: Mapping[str, Sequence[int]] | None = None,
    seed: int | bytes | None = None,
    *,
    modulus_bits: int | None = None,
    dropout_fraction: float = 0.1,
    corrupt_fraction: float = 0.05,
    wire: bool = True,
    session_id: bytes | None = None,
    consistency_check: bool = False,
) -> np.ndarray[Any, Any]:
    """Run one SecAgg+ round in-process; return the sum of the surviving clients' inputs.

    Client ``i`` (0-based index into ``inputs``) has client id ``i + 1``.

    Args:
        inputs: one 1-D integer vector per client (or a 2-D array, one row per client).
        threshold, neighbors: t and k (see :class:`SecAggConfig`; computed when None).
        dropouts: ``{"advertise" | "share_keys" | "masked_input" | "unmask": [client
            indices]}`` (``"share"`` is accepted for ``"share_keys"``): the clients that fall
            silent at that stage (and stay silent afterwards).
        seed: makes the run reproducible (keys, seeds, session id) -- tests only.
        modulus_bits: 32 or 64; by default 32 for uint32/int32 inputs, else 64.
        wire: pass every message through ``to_bytes``/``from_bytes`` as the network would.
        consistency_check: run the optional consistency round (signed survivor list); then
            ``dropouts`` may also name clients that drop at ``"consistency"``.
        session_id: use this session id instead of a fresh one (to rebuild the same
            :class:`SecAggConfig`, hence the same graph, outside; e.g. in benchmarks).

    Returns:
        The sum modulo ``2**modulus_bits`` of the inputs of the clients that sent a masked
        input, as uint32 or uint64.

    Raises:
        ThresholdError: if too few clients remain at some stage (no partial sum).
        DataError, ConfigError: for malformed inputs or parameters.

    >>> import numpy as np
    >>> xs = np.arange(12, dtype=np.uint64).reshape(4, 3)
    >>> simulate(xs, dropouts={"masked_input": [1]}, seed=1).tolist()
    [15, 18, 21]
    """
    vectors = [np.asarray(v) for v in inputs]
    if not vectors:
        raise DataError("simulate: no inputs")
    n = len(vectors)
    length = vectors[0].shape[0] if vectors[0].ndim == 1 else -1
    if any(v.ndim != 1 or v.shape[0] != length for v in vectors):
        raise DataError(
            "simulate: inputs must be 1-D vectors of one common length, got shapes "
            f"{sorted({v.shape for v in vectors})[:3]}"
        )
    if modulus_bits is None:
        modulus_bits = 32 if vectors[0].dtype in (np.uint32, np.int32) else 64
    stages = stages_for(consistency_check=consistency_check)
    drops: dict[Stage, set[int]] = {stage: set() for stage in stages}
    for name, idx in (dropouts or {}).items():
        try:
            stage = Stage.parse(name, aliases=True)
        except ConfigError:
            stage = None
        if stage not in drops:
            raise ConfigError(
                f"simulate: unknown dropout stages [{name!r}]; use "
                f"{[str(s) for s in stages]} ('share' is accepted for share_keys)"
            )
        if any(not isinstance(i, int) or not 0 <= i < n for i in idx):
            raise ConfigError(f"simulate: dropouts[{name!r}] must be indices in 0 .. {n - 1}")
        drops[stage].update(idx)
    if seed is None:
        rngs = [os.urandom for _ in range(n + 1)]
    else:
        base = seed if isinstance(seed, bytes) else str(seed).encode()
        rngs = [deterministic_rng(base + b"/client/" + str(i).encode()) for i in range(n + 1)]
    if session_id is None:
        session_id = rngs[n](32)
    config = SecAggConfig(
        session_id=session_id,
        client_ids=tuple(range(1, n + 1)),
        vector_length=int(length),
        threshold=threshold,
        neighbors=neighbors,
        modulus_bits=modulus_bits,
        dropout_fraction=dropout_fraction,
        corrupt_fraction=corrupt_fraction,
        consistency_check=consistency_check,
    )
    clients = {i + 1: SecAggClient(config, i + 1, rng=rngs[i]) for i in range(n)}
    gone: set[int] = set()

    def exchange(stage: Stage, payloads: Mapping[int, Any]) -> dict[int, Any]:
        gone.update(i + 1 for i in drops[stage])
        replies: dict[int, Any] = {}
        for c, payload in payloads.items():
            if c in gone:
                continue
            client = clients[c]
            if stage is Stage.ADVERTISE:
                reply: Any = client.advertise()
            elif stage is Stage.SHARE_KEYS:
                reply = client.share_keys(payload)
            elif stage is Stage.MASKED_INPUT:
                reply = client.masked_input(vectors[c - 1], payload)
            elif stage is Stage.CONSISTENCY:
                reply = client.consistency(_wire(payload, wire))
            else:
                reply = client.unmask(_wire(payload, wire))
            replies[c] = _wire(reply, wire)
        return replies

    return drive(config, exchange).total


def _wire(msg: Any, wire: bool) -> Any:
    """``msg`` after a trip through its canonical bytes (as the network carries it)."""
    if not wire:
        return msg
    if isinstance(msg, dict):
        return {k: _wire(v, wire) for k, v in msg.items()}
    return type(msg).from_bytes(msg.to_bytes())
