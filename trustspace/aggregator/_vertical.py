"""The aggregator's part in vertical jobs: plan over nodes holding different columns, and relay
the nodes' sealed messages step by step (``node._vertical`` is the other side).

The aggregator cannot read what it relays (every envelope is AES-GCM sealed between two
nodes); it sees the envelopes' sizes, who sends to whom, and the public results (the size of
an intersection). It knows nothing of the protocols: it gives every node, at step k, the
envelopes addressed to it at step k-1, until every node says it is done. A node failing or
refusing at any step aborts the job: a vertical job has no dropouts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trustspace.aggregator._host import Plan
from trustspace.errors import ConfigError, NodeError, ProtocolError
from trustspace.stats import TableSchema
from trustspace.transport import types
from trustspace.transport.clients import DESCRIBE_TIMEOUT_S, NodeClient
from trustspace.transport.signing import QueryBody, SignedQuery

if TYPE_CHECKING:
    from trustspace.aggregator.service import AggregatorService

log = logging.getLogger("trustspace.aggregator")

__all__ = ["relay", "vertical_plan"]

#: Most steps of one vertical protocol (a PSI over n nodes takes about n + 3).
MAX_STEPS = 64
#: Most bytes of envelopes one "deliver" call carries.
DELIVER_BYTES = 24 * 1024 * 1024


def vertical_plan(
    svc: AggregatorService, signed: SignedQuery, body: QueryBody, names: Sequence[str]
) -> tuple[Plan, dict[str, TableSchema], dict[str, Any]]:
    """Describe the named nodes: the plan over them (their strictest ``min_group_size`` and
    ``min_nodes``), each node's schema of the dataset and each node's id column.

    Raises:
        ConfigError: a node is not in this data space, does not serve the dataset to this
            analyst, or declares no id column.
    """
    by_name = {n.name: n for n in svc.nodes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"node(s) {', '.join(unknown)} are not in this data space (it has "
            f"{', '.join(sorted(by_name))})"
        )
    nodes = [by_name[n] for n in names]
    answers, failed = svc.fan_out(nodes, lambda n: n.describe(signed, DESCRIBE_TIMEOUT_S))
    if failed:
        raise NodeError(
            "a vertical job needs every node it names; unreachable: "
            + "; ".join(f"{n}: {e}" for n, e in failed.items())
        )
    schemas: dict[str, TableSchema] = {}
    ids: dict[str, Any] = {}
    for name in names:
        desc = answers[name]
        found = {d.name: d for d in desc.datasets}
        d = found.get(body.dataset)
        if d is None:
            raise ConfigError(
                f"node {name} serves no dataset {body.dataset!r} to analyst {body.analyst!r} "
                f"(it shows them: {', '.join(sorted(found)) or 'none'})"
            )
        schemas[name] = TableSchema.from_dict(d.schema)
        ids[name] = d.id
    plan = Plan(
        key=(body.analyst, body.request_id),
        nodes=tuple(nodes),
        schema=next(iter(schemas.values())),
        min_group_size=max(answers[n].min_group_size for n in names),
        min_nodes=max(answers[n].min_nodes for n in names),
        excluded=(),
        created=time.monotonic(),
    )
    return plan, schemas, ids


def relay(
    svc: AggregatorService,
    signed: SignedQuery,
    part: str,
    nodes: Sequence[NodeClient],
    round_ref: types.RoundRef | None = None,
) -> dict[str, dict[str, Any]]:
    """Run one vertical protocol over ``nodes`` (in protocol order); every node's public
    result."""
    session = os.urandom(32)
    names = tuple(n.name for n in nodes)
    timeout = svc.paillier_timeout_s

    def call(node: NodeClient, step: int, action: str, **kw: Any) -> types.VerticalReply:
        return node.vertical_step(
            types.VerticalStep(signed, session, part, step, action, **kw), timeout
        )

    def everyone(fn: Any, among: Sequence[NodeClient] = nodes) -> dict[str, Any]:
        ok, failed = svc.fan_out(among, fn)
        if failed:
            raise NodeError(
                f"vertical {part}: node(s) {', '.join(sorted(failed))} failed; a vertical job "
                "needs every node it names: " + "; ".join(f"{n}: {e}" for n, e in failed.items())
            )
        return ok

    hellos = everyone(lambda n: call(n, 0, "run", nodes=names, round=round_ref))
    hello_list = tuple(hellos[n].hello for n in names)
    inbox: dict[str, list[types.Envelope]] = {n: [] for n in names}
    results: dict[str, dict[str, Any]] = {}
    for step in range(1, MAX_STEPS + 1):
        pending = {n: inbox[n] for n in names}
        inbox = {n: [] for n in names}

        def run(
            node: NodeClient,
            step: int = step,
            pending: dict[str, list[types.Envelope]] = pending,
        ) -> list[types.VerticalReply]:
            batch: list[types.Envelope] = []
            size = 0
            for env in pending[node.name]:
                if batch and size + len(env.body) > DELIVER_BYTES:
                    call(node, step, "deliver", inbox=tuple(batch))
                    batch, size = [], 0
                batch.append(env)
                size += len(env.body)
            kw: dict[str, Any] = {"inbox": tuple(batch)}
            if step == 1:
                kw["hellos"] = hello_list
            replies = [call(node, step, "run", **kw)]
            while replies[-1].more:
                replies.append(call(node, step, "pull"))
            return replies

        answers = everyone(run, [n for n in nodes if n.name not in results])
        for sender, replies in answers.items():
            for reply in replies:
                for env in reply.outbox:
                    if env.sender != sender or env.recipient not in inbox:
                        raise ProtocolError(
                            f"vertical {part}: node {sender} addressed an envelope to "
                            f"{env.recipient!r}, not a participant"
                        )
                    inbox[env.recipient].append(env)
            if replies[-1].done:
                results[sender] = dict(replies[-1].result or {})
        for n in results:  # a peer's last batch to a node that finished in the same step
            inbox[n] = []
        if len(results) == len(names):
            return results
    raise ProtocolError(f"vertical {part}: no result after {MAX_STEPS} steps")
