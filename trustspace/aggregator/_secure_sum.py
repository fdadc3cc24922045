"""The aggregator's secure sum: ``secagg.drive`` with an exchange that fans out over gRPC.

The driver decides stage order, dropouts and aborts; this module only carries each stage's
messages to the nodes (every node of a stage in parallel, with a deadline) and back. A node
that cannot be reached or misses the deadline is absent from the stage's replies: the driver
treats it as dropped. A refusal (policy, data, protocol error) aborts at once with the node's
own error.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from trustspace.errors import ProtocolError, ThresholdError, TrustspaceError
from trustspace.obs import AggregatorMetrics
from trustspace.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Stage,
    UnmaskShares,
    drive,
)
from trustspace.transport import types
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import SignedQuery

T = TypeVar("T")

FanOut = Callable[
    [Sequence[NodeClient], Callable[[NodeClient], T]],
    tuple[dict[str, T], dict[str, TrustspaceError]],
]


class _GrpcExchange:
    """``exchange(stage, {client: payload})`` for ``secagg.drive`` over the nodes' RPCs."""

    def __init__(
        self,
        fan_out: FanOut[list[bytes]],
        query: SignedQuery,
        setup: types.SecAggSetup,
        ref: types.RoundRef,
        nodes: Sequence[NodeClient],
        timeout: float,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        self._fan_out = fan_out
        self._metrics = metrics
        self._query, self._setup, self._ref, self._timeout = query, setup, ref, timeout
        self.ids = {n.name: i for n, i in zip(nodes, setup.client_ids, strict=True)}
        self.by_id = {i: n for n, i in zip(nodes, setup.client_ids, strict=True)}
        self.dropped: dict[str, TrustspaceError] = {}
        #: each node's (keys, signature, certificate, binding) from the advertise stage:
        #: forwarded as the roster, so that every node checks every participant is a real,
        #: distinct node computing the same round
        self._signed: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}

    def binding(self, client: int) -> bytes:
        """The session binding ``client`` signed at the advertise stage."""
        return self._signed[client][3]

    def __call__(self, stage: Stage, payloads: Mapping[int, Any]) -> dict[int, Any]:
        raw = self._send(stage, {c: self._encode(stage, p) for c, p in payloads.items()})
        return {c: self._decode(stage, c, out) for c, out in raw.items()}

    def _encode(self, stage: Stage, payload: Any) -> Sequence[bytes]:
        if stage is Stage.ADVERTISE:
            return ()
        if stage is Stage.SHARE_KEYS:
            return [b for c in payload for b in self._signed[c]]
        if stage is Stage.MASKED_INPUT:
            return [m.to_bytes() for m in payload.values()]
        return [payload.to_bytes()]  # the unmask request

    def _decode(self, stage: Stage, client: int, out: Sequence[bytes]) -> Any:
        if stage is Stage.ADVERTISE:
            if len(out) != 4:
                raise ProtocolError(
                    f"client {client} answered stage {stage} with {len(out)} messages, "
                    "expected keys, signature, certificate and session binding"
                )
            self._signed[client] = (out[0], out[1], out[2], out[3])
            return AdvertiseKeys.from_bytes(out[0])
        if stage is Stage.SHARE_KEYS:
            msgs = (EncryptedShares.from_bytes(b) for b in out)
            return {m.recipient: m for m in msgs}
        if len(out) != 1:
            raise ProtocolError(f"client {client} answered stage {stage} with {len(out)} messages")
        if stage is Stage.MASKED_INPUT:
            return MaskedInput.from_bytes(out[0])
        return UnmaskShares.from_bytes(out[0])

    def _send(self, stage: Stage, targets: Mapping[int, Sequence[bytes]]) -> dict[int, list[bytes]]:
        def call(node: NodeClient) -> list[bytes]:
            step = types.SecAggStep(
                query=self._query,
                setup=self._setup,
                stage=stage,
                payloads=tuple(targets[self.ids[node.name]]),
                round=self._ref if stage is Stage.ADVERTISE else None,
                client_id=self.ids[node.name],
            )
            return node.secagg_step(step, self._timeout)

        started = time.monotonic()
        ok, failed = self._fan_out([self.by_id[c] for c in targets], call)
        if self._metrics is not None:
            self._metrics.stage(stage, time.monotonic() - started, failed)
        self.dropped.update(failed)
        return {self.ids[name]: out for name, out in ok.items()}


def secure_sum(
    fan_out: FanOut[list[bytes]],
    query: SignedQuery,
    ref: types.RoundRef,
    size: int,
    nodes: Sequence[NodeClient],
    *,
    threshold: int | None,
    timeout: float,
    bindings: dict[str, bytes] | None = None,
    metrics: AggregatorMetrics | None = None,
) -> tuple[np.ndarray[Any, Any], tuple[str, ...]]:
    """Sum the nodes' local vectors of ``ref`` (``size`` entries) by one SecAgg+ session.

    Returns (the uint64 total, the names of the nodes whose input is in it). ``bindings``, if
    given, receives each of those nodes' signed session binding (a DP round's carries the
    node's noise share). ``metrics`` receives each stage's duration and dropouts and the
    round's outcome.

    Raises:
        ThresholdError: fewer than the threshold (or 2) nodes remain; names the stage, the
            counts and what each dropped node failed with.
        ProtocolError: a node sent a malformed or inconsistent message.
    """
    if len(nodes) < 2:
        raise ThresholdError(
            f"secure aggregation needs at least 2 nodes, only {len(nodes)} answered "
            f"({', '.join(n.name for n in nodes) or 'none'})"
        )
    if threshold is not None:
        if len(nodes) < threshold:
            raise ThresholdError(
                f"only {len(nodes)} node(s) answered ({', '.join(n.name for n in nodes)}), "
                f"fewer than the configured threshold {threshold}; no partial result"
            )
        # SecAgg needs a strict majority of share holders; never go below it
        threshold = max(threshold, len(nodes) // 2 + 1)
    setup = types.SecAggSetup(
        session_id=secrets.token_bytes(32),
        client_ids=tuple(range(1, len(nodes) + 1)),
        vector_length=size,
        threshold=threshold,
    )
    config = setup.config()
    exchange = _GrpcExchange(fan_out, query, setup, ref, nodes, timeout, metrics)
    ended = metrics.round if metrics is not None else lambda outcome, contributors=0: None
    try:
        outcome = drive(config, exchange)
    except ThresholdError as exc:
        ended("aborted")
        detail = "; ".join(f"{n}: {e}" for n, e in exchange.dropped.items())
        raise ThresholdError(f"{exc}" + (f" (dropped: {detail})" if detail else "")) from None
    except ProtocolError as exc:
        ended("failed")
        raise ProtocolError(f"secure aggregation of round {ref.index} failed: {exc}") from None
    except BaseException:  # a node's refusal (policy, data): the round ends with its error
        ended("failed")
        raise
    contributors = tuple(exchange.by_id[c].name for c in outcome.survivors)
    ended("ok", len(contributors))
    if bindings is not None:
        bindings.update({exchange.by_id[c].name: exchange.binding(c) for c in outcome.survivors})
    return np.asarray(outcome.total, dtype=np.uint64), contributors
