"""The aggregator's Paillier path (``RunRound``): one analyst round at a time.

The analyst runs the stats state machine and asks for one round at a time with its public
key. The aggregator first sums the round's *governing record counts* by secure aggregation
(every entry's count: itself for count entries, the non-null count of its columns for sums),
marks entries whose count is in ``(0, min_group_size)`` as suppressed, then asks every node
for its encrypted vector of the round's *non-count* entries (sums) with the suppressed ones
sent as 0, validates and adds the ciphertexts, and returns the re-randomised encrypted total
together with the count entries' totals (which it has just summed; suppressed ones zeroed).
Rounds of counts only need no encryption at all. Counts already summed in an earlier round
of the same request are reused, so the nodes encrypt while the new counts are summed.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from trustspace.aggregator._host import Host, Plan
from trustspace.errors import ConfigError, NodeError, ProtocolError, TrustspaceError
from trustspace.stats import Query, Round, Term
from trustspace.transport import types
from trustspace.transport.clients import NodeClient

if TYPE_CHECKING:
    from trustspace.paillier import PublicKey

log = logging.getLogger("trustspace.aggregator")

#: Rounds one Paillier request id may run. The nodes' rate limit charges one token per request
#: id; the longest stats plan (quantiles with refinement) takes about six rounds, so a larger
#: budget only lets an analyst reuse an id to dodge the rate limit.
MAX_ROUNDS_PER_REQUEST = 16

Key = tuple[str, str]  # (analyst, request id)


def _governing_key(rnd: Round, term: Term) -> tuple[Any, ...]:
    """What a record count depends on: dataset, filter, groups and the non-null columns."""
    return (rnd.dataset, rnd.where, rnd.group_column, rnd.group_values, term.columns)


class PaillierRounds:
    """The state the aggregator keeps across one analyst's Paillier rounds (thread-safe)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._rounds: dict[Key, int] = {}
        #: record-count totals by ``_governing_key``, so later rounds need not re-sum them
        self._governing: dict[Key, dict[tuple[Any, ...], np.ndarray[Any, Any]]] = {}
        #: runs a round's Paillier fan-out beside its secure sum (each fans out on its own)
        self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{host.name}-side")

    def forget(self, key: Key) -> None:
        """Drop what is kept for a request (its plan expired or failed)."""
        with self._lock:
            self._rounds.pop(key, None)
            self._governing.pop(key, None)

    def close(self) -> None:
        self._side.shutdown(wait=False, cancel_futures=True)

    def run(
        self, ctx: types.RequestContext, query: Query, rnd: Round, pk: PublicKey
    ) -> types.RoundResult:
        """One round of ``query`` for ``ctx.analyst`` (see the module docstring)."""
        key = (ctx.analyst, ctx.request_id)
        with self._lock:
            used = self._rounds.get(key, 0) + 1
            self._rounds[key] = used
        if used > MAX_ROUNDS_PER_REQUEST:
            raise ConfigError(
                f"request {ctx.request_id!r} has run {MAX_ROUNDS_PER_REQUEST} rounds; start the "
                "query again with a new request id"
            )
        host = self._host
        with host.planned(query.dataset, ctx.analyst, ctx.request_id, keep=True) as plan:
            return self._run(ctx, plan, rnd, pk, first=used == 1)

    def _run(
        self, ctx: types.RequestContext, plan: Plan, rnd: Round, pk: PublicKey, *, first: bool
    ) -> types.RoundResult:
        host, k = self._host, plan.min_group_size
        mask = rnd.count_mask
        sums = rnd.moment_round()
        known = None if first else self._known_governing(plan.key, sums)
        encrypted = b""
        if known is None:
            counts_round = Round(
                rnd.dataset,
                rnd.where,
                tuple(t if t.is_count else Term.count(*t.columns) for t in rnd.terms),
                rnd.group_column,
                rnd.group_values,
                rnd.index,
            )
            counts, shrunk = host.sum_round(ctx, counts_round, plan, first=first)
            if shrunk is not plan:  # first round: later rounds of this request skip the dropped
                plan = shrunk
                host.update_plan(plan)
            self._remember_governing(plan.key, counts_round, counts)
            suppressed = _suppressed(counts, k)
            if sums is not None:
                encrypted = self._encrypted_sum(ctx, rnd, sums.size, plan, pk, suppressed)
        else:
            # Every sum's governing count was summed in an earlier round of this request (same
            # dataset, filter, groups, columns): the nodes encrypt the sums while the round's
            # count entries are summed by secure aggregation, instead of after.
            assert sums is not None
            counts = np.zeros(rnd.size)
            counts[~mask] = known
            early = _suppressed(counts, k)
            pending = self._side.submit(self._encrypted_sum, ctx, rnd, sums.size, plan, pk, early)
            only = tuple(t for t in rnd.terms if t.is_count)
            if only:
                counts_round = Round(
                    rnd.dataset, rnd.where, only, rnd.group_column, rnd.group_values, rnd.index
                )
                totals, _ = host.sum_round(ctx, counts_round, plan)
                self._remember_governing(plan.key, counts_round, totals)
                counts[mask] = totals
            suppressed = _suppressed(counts, k)
            encrypted = pending.result()
        # The count entries' totals are known here already (that is ``counts`` at the count
        # entries); they go to the analyst with the suppressed ones zeroed, exactly what it
        # would decrypt. Only the other entries (sums) are encrypted by the nodes.
        shown = np.where((counts > 0) & (counts < k), 0.0, counts)[mask]
        count_totals = tuple(int(c) for c in np.rint(shown).astype(np.int64))
        log.info(
            "%s: %s Paillier round %d over %d nodes, %d suppressed, %d encrypted entries",
            host.name,
            ctx.analyst,
            rnd.index,
            len(plan.nodes),
            len(suppressed),
            0 if sums is None else sums.size,
        )
        return types.RoundResult(encrypted, suppressed, len(plan.nodes), count_totals)

    def _remember_governing(
        self, key: Key, counts_round: Round, totals: np.ndarray[Any, Any]
    ) -> None:
        """Keep the record-count terms' totals of a request's round (per group block)."""
        with self._lock:
            memo = self._governing.setdefault(key, {})
            for i, t in enumerate(counts_round.terms):
                if t.kind == "moment":  # a record count of rows with these columns non-null
                    memo[_governing_key(counts_round, t)] = np.array(
                        [
                            totals[counts_round.term_slice(i, g)][0]
                            for g in range(counts_round.n_groups)
                        ]
                    )

    def _known_governing(self, key: Key, sums: Round | None) -> np.ndarray[Any, Any] | None:
        """The governing counts of ``sums``'s entries (its layout) if all are known, else None."""
        if sums is None:
            return None
        with self._lock:
            memo = self._governing.get(key, {})
            per_term = [memo.get(_governing_key(sums, t)) for t in sums.terms]
        if any(v is None for v in per_term):
            return None
        return np.array([v[g] for g in range(sums.n_groups) for v in per_term if v is not None])

    def _encrypted_sum(
        self,
        ctx: types.RequestContext,
        rnd: Round,
        entries: int,
        plan: Plan,
        pk: PublicKey,
        suppressed: tuple[int, ...],
    ) -> bytes:
        """Ask every node for its encrypted non-count entries; validate, add, re-randomise."""
        from trustspace.paillier import EncryptedVector

        host = self._host
        preq = types.PaillierRequest(ctx, int(pk.n), rnd, len(plan.nodes), suppressed)

        def call(n: NodeClient) -> bytes:
            return n.paillier_stats(preq, host.paillier_timeout_s)

        answers, failed = host.fan_out(plan.nodes, call)
        if failed:
            detail = "; ".join(f"{n}: {e}" for n, e in failed.items())
            raise NodeError(f"Paillier round {rnd.index} failed at {detail}")
        vectors = []
        for node_name, data in answers.items():
            try:
                ev = EncryptedVector.from_bytes(pk, data)
            except (ValueError, TrustspaceError) as exc:
                raise ProtocolError(
                    f"node {node_name} sent an invalid encrypted vector: {exc}"
                ) from None
            if len(ev) != 2 * entries:
                raise ProtocolError(
                    f"node {node_name} sent {len(ev)} words, the round needs {2 * entries}"
                )
            vectors.append(ev)
        total = vectors[0]
        for ev in vectors[1:]:
            total = total + ev
        return total.to_bytes()


def _suppressed(counts: np.ndarray[Any, Any], k: int) -> tuple[int, ...]:
    """The entries whose governing count is in (0, k): withheld as too small."""
    return tuple(int(i) for i in np.flatnonzero((counts > 0) & (counts < k)))
