"""The aggregator's gRPC secure sum runs the same driver as ``simulate``: dropout cases agree.

The nodes here are in-process fakes that speak the node's wire format (canonical message
bytes, the (keys, signature, certificate, binding) quadruples of the advertise stage); a node
"dropped" at a stage fails with ``NodeError`` as an unreachable node does over gRPC. Every
dropout pattern must give exactly what ``secagg.simulate`` gives, or the same
``ThresholdError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace import secagg
from trustspace.aggregator._secure_sum import secure_sum
from trustspace.errors import NodeError, ThresholdError, TrustspaceError
from trustspace.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    SecAggClient,
    SecAggConfig,
    Stage,
    UnmaskRequest,
)
from trustspace.stats import Round, Term
from trustspace.transport import types
from trustspace.transport.signing import SignedQuery


class FakeNode:
    """A node's secure-aggregation side without gRPC, TLS or policy."""

    def __init__(self, name: str, vector: np.ndarray, drop_at: Stage | None) -> None:
        self.name = name
        self.vector = vector
        self.drop_at = drop_at
        self.client: SecAggClient | None = None
        self.seen: list[Stage] = []

    def secagg_step(self, step: types.SecAggStep, timeout: float) -> list[bytes]:
        self.seen.append(step.stage)
        s = step.setup
        if step.stage is Stage.ADVERTISE:
            assert step.round is not None and isinstance(step.round.vector, Round)
            cfg = SecAggConfig(s.session_id, s.client_ids, s.vector_length, s.threshold)
            self.client = SecAggClient(cfg, step.client_id)
            return [self.client.advertise().to_bytes(), b"signature", b"certificate", b"binding"]
        assert self.client is not None and step.round is None
        p = step.payloads
        if step.stage is Stage.SHARE_KEYS:
            assert len(p) % 4 == 0 and all(p[i + 1] == b"signature" for i in range(0, len(p), 4))
            assert all(p[i + 3] == b"binding" for i in range(0, len(p), 4))
            roster = {m.sender: m for m in (AdvertiseKeys.from_bytes(b) for b in p[::4])}
            return [m.to_bytes() for _, m in sorted(self.client.share_keys(roster).items())]
        if step.stage is Stage.MASKED_INPUT:
            got = {m.sender: m for m in (EncryptedShares.from_bytes(b) for b in p)}
            return [self.client.masked_input(self.vector, got).to_bytes()]
        return [self.client.unmask(UnmaskRequest.from_bytes(p[0])).to_bytes()]


def fan_out(
    nodes: Sequence[FakeNode], call: Callable[[FakeNode], Any]
) -> tuple[dict[str, Any], dict[str, TrustspaceError]]:
    """The service's fan-out contract: answers, and failures of unreachable nodes."""
    ok: dict[str, Any] = {}
    failed: dict[str, TrustspaceError] = {}
    for node in nodes:
        try:
            ok[node.name] = call(node)
        except NodeError as exc:
            failed[node.name] = exc
    return ok, failed


class DroppingNode(FakeNode):
    def secagg_step(self, step: types.SecAggStep, timeout: float) -> list[bytes]:
        order = list(secagg.STAGES)
        if self.drop_at is not None and order.index(step.stage) >= order.index(self.drop_at):
            raise NodeError(f"node {self.name} is unavailable")
        return super().secagg_step(step, timeout)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 7),
    length=st.integers(1, 12),
    data=st.data(),
)
def test_grpc_exchange_agrees_with_simulate_under_dropouts(
    n: int, length: int, data: st.DataObject
) -> None:
    inputs = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 2**64 - 1), min_size=length, max_size=length),
                min_size=n,
                max_size=n,
            )
        ),
        dtype=np.uint64,
    )
    when = data.draw(st.lists(st.sampled_from([None, *secagg.STAGES]), min_size=n, max_size=n))
    dropouts: dict[str, list[int]] = {}
    for i, stage in enumerate(when):
        if stage is not None:
            dropouts.setdefault(str(stage), []).append(i)
    nodes = [DroppingNode(f"n{i}", inputs[i], when[i]) for i in range(n)]
    rnd = Round("d", None, (Term.rows(),))
    ref = types.RoundRef(0, 1, None, rnd)
    query = SignedQuery(b"{}", b"sig", b"cert")  # the fakes check no signature
    try:
        expected: np.ndarray | None = secagg.simulate(list(inputs), dropouts=dropouts)
    except ThresholdError:
        expected = None
    if expected is None:
        with pytest.raises(ThresholdError, match="aborted at stage"):
            secure_sum(fan_out, query, ref, length, nodes, threshold=None, timeout=1.0)  # type: ignore[arg-type]
        return
    total, contributors = secure_sum(
        fan_out,
        query,
        ref,
        length,
        nodes,
        threshold=None,
        timeout=1.0,  # type: ignore[arg-type]
    )
    assert np.array_equal(total, expected)
    survivors = {f"n{i}" for i in range(n) if when[i] in (None, Stage.UNMASK)}
    assert set(contributors) == survivors
    for node in nodes:  # a node dropped at a stage is never asked again
        if node.drop_at is not None:
            assert node.drop_at not in node.seen[:-1]
