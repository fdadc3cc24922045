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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from trustspace.aggregator._host import Host, Plan
from trustspace.errors import ConfigError, NodeError, ProtocolError, TrustspaceError
from trustspace.stats import Round, Term
from trustspace.transport import types
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import QueryBody, SignedQuery

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
        #: per request: (round index, its count mask, the count totals returned for it)
        self._shown: dict[Key, tuple[int, np.ndarray[Any, Any], tuple[int, ...]]] = {}

    def forget(self, key: Key) -> None:
        """Drop what is kept for a request (its plan expired or failed)."""
        with self._lock:
            self._rounds.pop(key, None)
            self._governing.pop(key, None)
            self._shown.pop(key, None)

    def close(self) -> None:
        self._side.shutdown(wait=False, cancel_futures=True)

    def run(self, req: types.RoundRequest, body: QueryBody, pk: PublicKey) -> types.RoundResult:
        """One round of the signed query ``body`` (see the module docstring)."""
        key = (body.analyst, body.request_id)
        with self._lock:
            used = self._rounds.get(key, 0) + 1
            self._rounds[key] = used
        if used > MAX_ROUNDS_PER_REQUEST:
            raise ConfigError(
                f"request {body.request_id!r} has run {MAX_ROUNDS_PER_REQUEST} rounds; start "
                "the query again with a new request id"
            )
        host = self._host
        with host.planned(req.query, body, keep=True) as plan:
            if req.min_group_size != plan.min_group_size:
                raise ProtocolError(
                    f"RunRound: the round was planned with min_group_size {req.min_group_size}, "
                    f"the nodes' strictest is {plan.min_group_size}; start the query again"
                )
            self._check_previous(key, req)
            out = self._run(req, plan, pk, first=req.round.index == 0)
            with self._lock:
                self._shown[key] = (req.round.index, req.round.count_mask, out.count_totals)
            return out

    def _check_previous(self, key: Key, req: types.RoundRequest) -> None:
        """The analyst's previous total must hold the count totals this aggregator returned
        (the nodes replay the state machine with it; lying about counts would steer them)."""
        prev = req.previous
        with self._lock:
            shown = self._shown.get(key)
        if prev is None:
            if req.round.index != 0:
                raise ProtocolError(f"RunRound: round {req.round.index} needs the previous total")
            return
        if shown is None or shown[0] != prev.index or prev.index != req.round.index - 1:
            raise ProtocolError("RunRound: the previous total is not of this request's last round")
        _, mask, counts = shown
        total = np.asarray(prev.total, dtype=np.uint64)
        if total.shape != mask.shape or not np.array_equal(
            total[mask], np.asarray(counts, dtype=np.int64).view(np.uint64)
        ):
            raise ProtocolError(
                "RunRound: the previous total's record counts differ from those this aggregator "
                "returned; refusing"
            )

    def _run(
        self, req: types.RoundRequest, plan: Plan, pk: PublicKey, *, first: bool
    ) -> types.RoundResult:
        host, k = self._host, plan.min_group_size
        rnd, query, previous = req.round, req.query, req.previous

        def ref(vector: Round, part: str) -> types.RoundRef:
            return types.RoundRef(rnd.index, k, previous, vector, part)

        if query.unverified_body().dp is not None:
            return self._run_dp(req, plan, pk, ref, first=first)

        mask = rnd.count_mask
        sums = rnd.moment_round()
        known = None if first else self._known_governing(plan.key, sums)
        encrypted = b""
        if known is None:
            counts_round = rnd.counts_round()
            raw, shrunk = host.sum_round(
                query, ref(counts_round, "paillier.counts"), plan, first=first
            )
            governing = counts_round.decode(raw)
            counts = rnd.governing_counts(counts_round, governing)
            if shrunk is not plan:  # first round: later rounds of this request skip the dropped
                plan = shrunk
                host.update_plan(plan)
            self._remember_governing(plan.key, counts_round, governing)
            suppressed = _suppressed(counts, k)
            if sums is not None:
                encrypted = self._encrypted_sum(
                    query, ref(rnd, "all"), sums.size, plan, pk, suppressed
                )
        else:
            # Every sum's governing count was summed in an earlier round of this request (same
            # dataset, filter, groups, columns): the nodes encrypt the sums while the round's
            # count entries are summed by secure aggregation, instead of after.
            assert sums is not None
            counts = np.zeros(rnd.size)
            counts[~mask] = known
            early = _suppressed(counts, k)
            pending = self._side.submit(
                self._encrypted_sum, query, ref(rnd, "all"), sums.size, plan, pk, early
            )
            only = rnd.count_terms_round()
            if only is not None:
                raw, _ = host.sum_round(query, ref(only, "paillier.counts"), plan)
                totals = only.decode(raw)
                self._remember_governing(plan.key, only, totals)
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
            plan.key[0],
            rnd.index,
            len(plan.nodes),
            len(suppressed),
            0 if sums is None else sums.size,
        )
        return types.RoundResult(encrypted, suppressed, len(plan.nodes), count_totals)

    def _run_dp(
        self,
        req: types.RoundRequest,
        plan: Plan,
        pk: PublicKey,
        ref: Callable[[Round, str], types.RoundRef],
        *,
        first: bool,
    ) -> types.RoundResult:
        """A differentially private round: its record counts, noisy, by secure aggregation, its
        sums, noisy, encrypted; nothing is suppressed (the noise protects small groups)."""
        host, rnd = self._host, req.round
        only = rnd.count_terms_round()
        count_totals: tuple[int, ...] = ()
        if only is not None:
            raw, shrunk = host.sum_round(req.query, ref(only, "paillier.counts"), plan, first=first)
            if shrunk is not plan:
                plan = shrunk
                host.update_plan(plan)
            count_totals = tuple(int(x) for x in np.asarray(raw, dtype=np.uint64).view(np.int64))
        sums = rnd.moment_round()
        encrypted = b""
        if sums is not None:
            encrypted = self._encrypted_sum(req.query, ref(rnd, "all"), sums.size, plan, pk, ())
        return types.RoundResult(encrypted, (), len(plan.nodes), count_totals)

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
        query: SignedQuery,
        ref: types.RoundRef,
        entries: int,
        plan: Plan,
        pk: PublicKey,
        suppressed: tuple[int, ...],
    ) -> bytes:
        """Ask every node for its encrypted non-count entries; validate, add, re-randomise."""
        from trustspace.paillier import EncryptedVector

        host = self._host
        rnd = ref.vector
        assert isinstance(rnd, Round)
        preq = types.PaillierRequest(query, int(pk.n), ref, len(plan.nodes), suppressed)

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
