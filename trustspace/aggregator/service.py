"""The aggregator: drives secure-aggregation rounds over the nodes and the Paillier path.

Secure-aggregation path (``run_query``): the aggregator runs the pure stats state machine
itself and, for every ``Round``, one SecAgg+ session over the nodes (it is the SecAgg server;
each node is a client). The analyst receives only the final, policy-checked ``Result``.

Paillier path (``run_round``): the analyst runs the state machine and asks for one round at a
time with its public key. The aggregator first sums the round's *governing record counts*
by secure aggregation (every entry's count: itself for count entries, the non-null count of
its columns for sums), marks entries whose count is in ``(0, min_group_size)`` as suppressed,
then asks every node for its encrypted vector of the round's *non-count* entries (sums) with
the suppressed ones sent as 0, validates and adds the ciphertexts, and returns the
re-randomised encrypted total together with the count entries' totals (which it has just
summed; suppressed ones zeroed). Rounds of counts only need no encryption at all.

Participants: every stage calls all nodes in parallel with a deadline. A node that cannot be
reached or misses the deadline is *dropped* (the secure-aggregation protocol tolerates it
while at least ``threshold`` remain). The set of nodes is fixed by the first round of a query
(a node dropping out during it is excluded, and the query runs over the survivors): a node
dropping later aborts the query (mixing node sets across rounds would give a wrong answer).
A refusal (policy, data, protocol error) aborts at once with the node's own error.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from trustspace.aggregator._anon import run_anonymization
from trustspace.errors import (
    AuthenticationError,
    ConfigError,
    NodeError,
    ProtocolError,
    ThresholdError,
    TrustspaceError,
)
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskShares,
)
from trustspace.secagg.server import SecAggServer
from trustspace.stats import Query, Round, TableSchema, Term, start
from trustspace.transport import serde
from trustspace.transport.ca import Identity
from trustspace.transport.clients import (
    DESCRIBE_TIMEOUT_S,
    PAILLIER_TIMEOUT_S,
    STEP_TIMEOUT_S,
    NodeClient,
)

if TYPE_CHECKING:
    from trustspace.paillier import PublicKey

log = logging.getLogger("trustspace.aggregator")
T = TypeVar("T")
PLAN_CACHE_S = 600.0  # how long a Paillier query's participants and schema are remembered
#: Rounds one Paillier request id may run. The nodes' rate limit charges one token per request
#: id; the longest stats plan (quantiles with refinement) takes about six rounds, so a larger
#: budget only lets an analyst reuse an id to dodge the rate limit.
MAX_ROUNDS_PER_REQUEST = 16


class Summable(Protocol):
    """What ``secure_sum`` aggregates: a vector of ``size`` entries each node computes."""

    @property
    def size(self) -> int: ...

    @property
    def index(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Plan:
    """What one analyst request runs over: nodes, schema and the strictest min_group_size."""

    nodes: tuple[NodeClient, ...]
    schema: TableSchema
    min_group_size: int
    excluded: tuple[str, ...]
    created: float
    release: frozenset[str] = frozenset()  # nodes whose policy lets anonymized rows leave


def _ctx_for(query: Query, analyst: str, request_id: str) -> serde.RequestContext:
    return serde.RequestContext(
        analyst=analyst,
        request_id=request_id,
        operation=query.op,
        dataset=query.dataset,
        columns=tuple(query.columns),
        params={"where": query.where, "params": dict(query.params)},
    )


def _parse_query(data: dict[str, Any]) -> Query:
    try:
        return Query.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid query: {exc}") from None


class AggregatorService:
    """The aggregator's request handler (see the module docstring)."""

    def __init__(
        self,
        name: str,
        nodes: Sequence[NodeClient],
        *,
        threshold: int | None = None,
        call_timeout_s: float = STEP_TIMEOUT_S,
        paillier_timeout_s: float = PAILLIER_TIMEOUT_S,
    ) -> None:
        if not nodes:
            raise ConfigError("the aggregator needs at least one node")
        self.name = name
        self.nodes = tuple(nodes)
        self.threshold = threshold
        self.call_timeout_s = call_timeout_s
        self.paillier_timeout_s = paillier_timeout_s
        self._pool = ThreadPoolExecutor(
            max_workers=max(4, 2 * len(nodes)), thread_name_prefix=f"{name}-calls"
        )
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._rounds: dict[tuple[str, str], int] = {}
        #: Paillier requests' record-count totals by _governing_key, to skip re-summing them
        self._governing: dict[tuple[str, str], dict[tuple[Any, ...], np.ndarray[Any, Any]]] = {}
        #: runs a round's Paillier fan-out beside its secure sum (each fans out on _pool)
        self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-side")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ fan-out
    def _fan_out(
        self, nodes: Sequence[NodeClient], call: Callable[[NodeClient], T]
    ) -> tuple[dict[str, T], dict[str, TrustspaceError]]:
        """Call every node in parallel; (answers, failures) keyed by node name.

        A refusal that is not a connectivity failure (``NodeError``, or a TLS handshake the
        diagnosis shows was refused: ``AuthenticationError``) is raised at once.
        """
        futures = {n.name: self._pool.submit(call, n) for n in nodes}
        ok: dict[str, T] = {}
        failed: dict[str, TrustspaceError] = {}
        refusal: TrustspaceError | None = None
        for name, fut in futures.items():
            try:
                ok[name] = fut.result()
            except (NodeError, AuthenticationError) as exc:  # unreachable, or TLS refused
                failed[name] = exc
            except TrustspaceError as err:
                refusal = refusal or err
            except Exception as other:
                log.exception("%s: unexpected failure calling node %s", self.name, name)
                failed[name] = NodeError(f"node {name}: unexpected failure {type(other).__name__}")
        if refusal is not None:
            raise refusal
        for name, why in failed.items():
            log.warning("%s: node %s dropped: %s", self.name, name, why)
        return ok, failed

    # ------------------------------------------------------------------ planning
    def _plan(self, query: Query, analyst: str, request_id: str) -> _Plan:
        key = (analyst, request_id)
        now = time.monotonic()
        with self._lock:
            for old in [o for o, p in self._plans.items() if now - p.created > PLAN_CACHE_S]:
                del self._plans[old]
                self._rounds.pop(old, None)
                self._governing.pop(old, None)
            cached = self._plans.get(key)
        if cached is not None:
            return cached
        ctx = _ctx_for(query, analyst, request_id)
        answers, failed = self._fan_out(self.nodes, lambda n: n.describe(ctx, DESCRIBE_TIMEOUT_S))
        if not answers:
            raise NodeError(_no_nodes_message(failed))
        schema: TableSchema | None = None
        first = ""
        for node_name, desc in answers.items():
            found = {d.name: d for d in desc.datasets}
            if query.dataset not in found:
                raise ConfigError(
                    f"node {node_name} serves no dataset {query.dataset!r} (it serves "
                    f"{', '.join(sorted(found)) or 'nothing'})"
                )
            try:
                s = TableSchema.from_dict(found[query.dataset].schema)
            except (ValueError, TypeError) as exc:
                raise ProtocolError(f"node {node_name} sent a malformed schema: {exc}") from None
            if schema is None:
                schema, first = s, node_name
            elif s != schema:
                raise ConfigError(
                    f"dataset {query.dataset!r} has different schemas on node {first} and node "
                    f"{node_name}; every node must declare the same columns and types"
                )
        assert schema is not None
        strictest = max(desc.min_group_size for desc in answers.values())
        nodes = tuple(n for n in self.nodes if n.name in answers)
        release = frozenset(name for name, d in answers.items() if d.release_rows)
        plan = _Plan(nodes, schema, strictest, tuple(sorted(failed)), now, release)
        with self._lock:
            self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ secure aggregation
    def secure_sum(
        self, ctx: serde.RequestContext, rnd: Summable, nodes: Sequence[NodeClient]
    ) -> tuple[np.ndarray[Any, Any], tuple[str, ...]]:
        """Sum the nodes' encoded local vectors of ``rnd`` by one SecAgg+ session.

        ``rnd`` is a stats ``Round`` or another vector the nodes know how to compute (its
        ``part``, e.g. an anonymization round: ``aggregator._anon.AnonRound``).

        Returns (the uint64 total, the names of the nodes whose input is in it).

        Raises:
            ThresholdError: fewer than the threshold (or 2) nodes remain; names the stage,
                the counts and what each dropped node failed with.
        """
        ids = {n.name: i + 1 for i, n in enumerate(nodes)}
        by_id = {i: n for n, i in zip(nodes, ids.values(), strict=True)}
        if len(self.nodes) < 2:
            raise ThresholdError(
                "secure aggregation needs at least 2 nodes; this data space has only "
                f"{len(self.nodes)} ({', '.join(n.name for n in self.nodes)})"
            )
        if len(nodes) < 2:
            raise ThresholdError(
                f"secure aggregation needs at least 2 nodes, only {len(nodes)} answered "
                f"({', '.join(n.name for n in nodes) or 'none'})"
            )
        threshold = self.threshold
        if threshold is not None:
            if len(nodes) < threshold:
                raise ThresholdError(
                    f"only {len(nodes)} node(s) answered ({', '.join(n.name for n in nodes)}), "
                    f"fewer than the configured threshold {threshold}; no partial result"
                )
            # SecAgg needs a strict majority of share holders; never go below it
            threshold = max(threshold, len(nodes) // 2 + 1)
        setup = serde.SecAggSetup(
            session_id=secrets.token_bytes(32),
            client_ids=tuple(ids.values()),
            vector_length=rnd.size,
            threshold=threshold,
        )
        config = SecAggConfig(
            session_id=setup.session_id,
            client_ids=setup.client_ids,
            vector_length=setup.vector_length,
            threshold=setup.threshold,
        )
        server = SecAggServer(config)
        round_dict = rnd.to_dict()
        part: str = getattr(rnd, "part", "all")
        dropped: dict[str, TrustspaceError] = {}
        timeout = self.call_timeout_s

        def step(stage: str, client: NodeClient, payloads: Sequence[bytes]) -> list[bytes]:
            return client.secagg_step(
                serde.SecAggStep(
                    context=ctx,
                    setup=setup,
                    stage=stage,
                    payloads=tuple(payloads),
                    round=round_dict if stage == "advertise" else {},
                    client_id=ids[client.name],
                    part=part,
                ),
                timeout,
            )

        def run(stage: str, targets: dict[int, Sequence[bytes]]) -> dict[int, list[bytes]]:
            ok, failed = self._fan_out(
                [by_id[c] for c in targets],
                lambda n: step(stage, n, targets[ids[n.name]]),
            )
            dropped.update(failed)
            return {ids[name]: out for name, out in ok.items()}

        def guarded(stage: str, fn: Callable[[], T]) -> T:
            try:
                return fn()
            except ThresholdError as exc:
                detail = "; ".join(f"{n}: {e}" for n, e in dropped.items())
                raise ThresholdError(
                    f"secure aggregation aborted at stage {stage}: {exc}"
                    + (f" (dropped: {detail})" if detail else "")
                ) from None

        try:
            adv = run("advertise", {c: () for c in by_id})
            signed = {c: _signed(out, c) for c, out in adv.items()}
            adv_msgs = {c: AdvertiseKeys.from_bytes(sig[0]) for c, sig in signed.items()}
            roster = guarded("advertise", lambda: server.collect_advertise(adv_msgs))
            # every node checks each roster entry's signature and certificate (no sybils)
            roster_bytes = [b for c in roster for b in signed[c]]
            shared = run("share_keys", {c: roster_bytes for c in roster})
            share_msgs = {
                c: {m.recipient: m for m in (EncryptedShares.from_bytes(b) for b in out)}
                for c, out in shared.items()
            }
            routing = guarded("share_keys", lambda: server.collect_shares(share_msgs))
            masked = run(
                "masked_input",
                {r: [m.to_bytes() for m in senders.values()] for r, senders in routing.items()},
            )
            masked_msgs = {
                c: MaskedInput.from_bytes(_one(out, c, "masked_input")) for c, out in masked.items()
            }
            request = guarded("masked_input", lambda: server.collect_masked(masked_msgs))
            req_bytes = request.to_bytes()
            unmasked = run("unmask", {c: [req_bytes] for c in request.survivors})
            unmask_msgs = {
                c: UnmaskShares.from_bytes(_one(out, c, "unmask")) for c, out in unmasked.items()
            }
            total = guarded("unmask", lambda: server.collect_unmask(unmask_msgs))
        except ProtocolError as exc:
            if isinstance(exc, ThresholdError):
                raise
            raise ProtocolError(f"secure aggregation of round {rnd.index} failed: {exc}") from None
        contributors = tuple(by_id[c].name for c in sorted(request.survivors))
        return np.asarray(total, dtype=np.uint64), contributors

    def _sum_round(
        self, ctx: serde.RequestContext, rnd: Round, plan: _Plan, *, first: bool = False
    ) -> tuple[np.ndarray[Any, Any], _Plan]:
        """Securely sum one round over the plan's nodes; returns (decoded total, plan).

        A node dropping out of the *first* round of a query leaves the query over the
        survivors (nothing of its data has been used; the returned plan lists it as excluded
        and later rounds run without it). A node dropping out of a later round aborts: the
        earlier rounds' totals include it, and the stats state machine combines rounds (e.g.
        quantile bins sized by the first round's range), so mixing node sets would give a
        wrong answer.
        """
        total, contributors = self.secure_sum(ctx, rnd, plan.nodes)
        missing = sorted({n.name for n in plan.nodes} - set(contributors))
        if missing and first:
            log.warning(
                "%s: node(s) %s dropped out of the first round; the query goes on without them",
                self.name,
                ", ".join(missing),
            )
            plan = replace(
                plan,
                nodes=tuple(n for n in plan.nodes if n.name in contributors),
                excluded=tuple(sorted({*plan.excluded, *missing})),
            )
        elif missing:
            raise NodeError(
                f"node(s) {', '.join(missing)} dropped out during round {rnd.index} of the "
                "query; its earlier rounds included them, so the result would be wrong. "
                "Re-run the query (check those nodes' health)"
            )
        return rnd.decode(total), plan

    # ------------------------------------------------------------------ handlers
    def run_query(self, caller: Identity, query_dict: dict[str, Any], method: str) -> Any:
        """Secure-aggregation path: the whole query, returns ``serde.result_to_dict``."""
        if method not in ("", "secagg"):
            raise ConfigError(
                f"method {method!r}: the aggregator runs only method='secagg' queries whole; "
                "Paillier queries run round by round from the analyst (RunRound)"
            )
        query = _parse_query(query_dict)
        request_id = secrets.token_hex(8)
        plan = self._plan(query, caller.name, request_id)
        ctx = _ctx_for(query, caller.name, request_id)
        try:
            comp = start(query, plan.schema, plan.min_group_size)
        except ValueError as exc:
            raise ConfigError(f"query does not fit dataset {query.dataset!r}: {exc}") from None
        first = True
        while (rnd := comp.next_round()) is not None:
            total, plan = self._sum_round(ctx, rnd, plan, first=first)
            comp.feed(total)
            first = False
        with self._lock:
            self._plans.pop((caller.name, request_id), None)
        out = serde.result_to_dict(comp.result())
        out["nodes"] = [n.name for n in plan.nodes]
        out["excluded"] = list(plan.excluded)
        out["min_group_size"] = plan.min_group_size
        log.info(
            "%s: %s ran %s on %s over %d nodes",
            self.name,
            caller.name,
            query.op,
            query.dataset,
            len(plan.nodes),
        )
        return out

    def run_round(self, caller: Identity, req: serde.RoundRequest) -> serde.RoundResult:
        """Paillier path: one round, the encrypted total with suppressed entries zeroed."""
        from trustspace.paillier import PublicKey

        query = _parse_query(dict(req.query))
        try:
            rnd = Round.from_dict(req.round)
            pk = PublicKey(req.n)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid round request: {exc}") from None
        if rnd.dataset != query.dataset or rnd.where != query.where:
            raise ProtocolError("round request: the round does not belong to the query")
        if not req.request_id or len(req.request_id) > 64:
            raise ConfigError("round request: request_id must be 1 to 64 characters")
        request_id = req.request_id
        with self._lock:
            used = self._rounds.get((caller.name, request_id), 0) + 1
            self._rounds[(caller.name, request_id)] = used
        if used > MAX_ROUNDS_PER_REQUEST:
            raise ConfigError(
                f"request {request_id!r} has run {MAX_ROUNDS_PER_REQUEST} rounds; start the "
                "query again with a new request id"
            )
        plan = self._plan(query, caller.name, request_id)
        ctx = _ctx_for(query, caller.name, request_id)
        k = plan.min_group_size
        mask = rnd.count_mask
        sums = rnd.moment_round()
        known = None if used == 1 else self._known_governing(caller.name, request_id, sums)
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
            counts, shrunk = self._sum_round(ctx, counts_round, plan, first=used == 1)
            if shrunk is not plan:  # first round: later rounds of this request skip the dropped
                plan = shrunk
                with self._lock:
                    self._plans[(caller.name, request_id)] = plan
            self._remember_governing(caller.name, request_id, counts_round, counts)
            suppressed = tuple(int(i) for i in np.flatnonzero((counts > 0) & (counts < k)))
            if sums is not None:
                encrypted = self._paillier_sum(ctx, rnd, sums.size, plan, pk, suppressed)
        else:
            # Every sum's governing count was summed in an earlier round of this request (same
            # dataset, filter, groups, columns): the nodes encrypt the sums while the round's
            # count entries are summed by secure aggregation, instead of after.
            assert sums is not None
            counts = np.zeros(rnd.size)
            counts[~mask] = known
            early = tuple(int(i) for i in np.flatnonzero((counts > 0) & (counts < k)))
            pending = self._side.submit(self._paillier_sum, ctx, rnd, sums.size, plan, pk, early)
            only = tuple(t for t in rnd.terms if t.is_count)
            if only:
                counts_round = Round(
                    rnd.dataset, rnd.where, only, rnd.group_column, rnd.group_values, rnd.index
                )
                totals, _ = self._sum_round(ctx, counts_round, plan)
                self._remember_governing(caller.name, request_id, counts_round, totals)
                counts[mask] = totals
            suppressed = tuple(int(i) for i in np.flatnonzero((counts > 0) & (counts < k)))
            encrypted = pending.result()
        # The count entries' totals are known here already (that is ``counts`` at the count
        # entries); they go to the analyst with the suppressed ones zeroed, exactly what it
        # would decrypt. Only the other entries (sums) are encrypted by the nodes.
        shown = np.where((counts > 0) & (counts < k), 0.0, counts)[mask]
        count_totals = tuple(int(c) for c in np.rint(shown).astype(np.int64))
        log.info(
            "%s: %s Paillier round %d over %d nodes, %d suppressed, %d encrypted entries",
            self.name,
            caller.name,
            rnd.index,
            len(plan.nodes),
            len(suppressed),
            0 if sums is None else sums.size,
        )
        return serde.RoundResult(encrypted, suppressed, len(plan.nodes), count_totals)

    def _remember_governing(
        self, analyst: str, request_id: str, counts_round: Round, totals: np.ndarray[Any, Any]
    ) -> None:
        """Keep the record-count terms' totals of a request's round (per group block)."""
        with self._lock:
            memo = self._governing.setdefault((analyst, request_id), {})
            for i, t in enumerate(counts_round.terms):
                if t.kind == "moment":  # a record count of rows with these columns non-null
                    memo[_governing_key(counts_round, t)] = np.array(
                        [
                            totals[counts_round.term_slice(i, g)][0]
                            for g in range(counts_round.n_groups)
                        ]
                    )

    def _known_governing(
        self, analyst: str, request_id: str, sums: Round | None
    ) -> np.ndarray[Any, Any] | None:
        """The governing counts of ``sums``'s entries (its layout) if all are known, else None."""
        if sums is None:
            return None
        with self._lock:
            memo = self._governing.get((analyst, request_id), {})
            per_term = [memo.get(_governing_key(sums, t)) for t in sums.terms]
        if any(v is None for v in per_term):
            return None
        return np.array([v[g] for g in range(sums.n_groups) for v in per_term if v is not None])

    def _paillier_sum(
        self,
        ctx: serde.RequestContext,
        rnd: Round,
        entries: int,
        plan: _Plan,
        pk: PublicKey,
        suppressed: tuple[int, ...],
    ) -> bytes:
        """Ask every node for its encrypted non-count entries; validate, add, re-randomise."""
        from trustspace.paillier import EncryptedVector

        headroom = len(plan.nodes)
        preq = serde.PaillierRequest(ctx, int(pk.n), rnd.to_dict(), headroom, suppressed)
        answers, failed = self._fan_out(
            plan.nodes, lambda n: n.paillier_stats(preq, self.paillier_timeout_s)
        )
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

    def run_anonymization(self, caller: Identity, spec: dict[str, Any]) -> Any:
        """Federated anonymization (``aggregator._anon``): search on securely aggregated
        histograms, apply at every node, release where policy allows."""
        return run_anonymization(self, caller, spec)

    def status(self, caller: Identity) -> list[serde.NodeStatus]:
        ctx = serde.RequestContext(analyst=caller.name, request_id="", operation="status")
        futures = {
            n.name: self._pool.submit(n.describe, ctx, DESCRIBE_TIMEOUT_S) for n in self.nodes
        }
        out = []
        for n in self.nodes:
            try:
                d = futures[n.name].result()
            except TrustspaceError as exc:
                out.append(serde.NodeStatus(n.name, n.address, False, str(exc)))
                continue
            out.append(serde.NodeStatus(n.name, n.address, True, "", d.datasets, d.min_group_size))
        return out

    def close(self) -> None:
        self._side.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for n in self.nodes:
            n.close()


def _governing_key(rnd: Round, term: Term) -> tuple[Any, ...]:
    """What a record count depends on: dataset, filter, groups and the non-null columns."""
    return (rnd.dataset, rnd.where, rnd.group_column, rnd.group_values, term.columns)


def _signed(out: Sequence[bytes], client: int) -> tuple[bytes, bytes, bytes]:
    if len(out) != 3:
        raise ProtocolError(
            f"client {client} answered stage advertise with {len(out)} messages, expected keys, "
            "signature and certificate"
        )
    return out[0], out[1], out[2]


def _one(out: Sequence[bytes], client: int, stage: str) -> bytes:
    if len(out) != 1:
        raise ProtocolError(f"client {client} answered stage {stage} with {len(out)} messages")
    return out[0]


def _no_nodes_message(failed: dict[str, TrustspaceError]) -> str:
    detail = "; ".join(f"{e}" for e in failed.values())
    return f"no node answered: {detail}"
