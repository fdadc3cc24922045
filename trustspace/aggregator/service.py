"""The aggregator: drives secure-aggregation rounds over the nodes and the Paillier path.

Secure-aggregation path (``run_query``): the aggregator runs the pure stats state machine
itself and, for every ``Round``, one SecAgg+ session over the nodes (it is the SecAgg server;
each node is a client; ``_secure_sum``). The analyst receives only the final, policy-checked
``Result``. Paillier path (``run_round``): one analyst round at a time (``_paillier``).
Federated anonymization: ``_anon``.

Participants: every stage calls all nodes in parallel with a deadline. A node that cannot be
reached or misses the deadline is *dropped* (the secure-aggregation protocol tolerates it
while at least ``threshold`` remain). The set of nodes is fixed by the first round of a query
(a node dropping out during it is excluded, and the query runs over the survivors): a node
dropping later aborts the query (mixing node sets across rounds would give a wrong answer).
A refusal (policy, data, protocol error) aborts at once with the node's own error.

Every request's plan (its nodes, schema and strictest ``min_group_size``) lives exactly as long
as the request: ``with self.planned(...) as plan:`` forgets it on the way out, also on error; a
Paillier request keeps it between its rounds until it expires (``PLAN_CACHE_S``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from trustspace.aggregator._anon import run_anonymization
from trustspace.aggregator._host import Plan
from trustspace.aggregator._paillier import PaillierRounds
from trustspace.aggregator._secure_sum import secure_sum
from trustspace.aggregator._vertical import relay, vertical_plan
from trustspace.errors import (
    AuthenticationError,
    ConfigError,
    NodeError,
    PolicyError,
    ProtocolError,
    ThresholdError,
    TrustspaceError,
)
from trustspace.obs import AggregatorMetrics
from trustspace.stats import DPComputation, Query, Round, TableSchema, noise_variance, start
from trustspace.transport import serde, types
from trustspace.transport.ca import Identity
from trustspace.transport.clients import (
    DESCRIBE_TIMEOUT_S,
    PAILLIER_TIMEOUT_S,
    STEP_TIMEOUT_S,
    NodeClient,
)
from trustspace.transport.signing import QueryBody, SignedQuery, data_space_name, verify_query
from trustspace.vertical.view import MAX_VIEW_NODES, ViewRef

log = logging.getLogger("trustspace.aggregator")
T = TypeVar("T")
PLAN_CACHE_S = 600.0  # how long a Paillier query's participants and schema are remembered


def _query_of(body: QueryBody) -> Query:
    try:
        return Query.from_dict(
            {
                "op": body.operation,
                "dataset": body.dataset,
                "columns": list(body.columns),
                "where": body.where,
                "params": dict(body.params),
            }
        )
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
        ca_pem: bytes | None = None,
        revoked: Callable[[bytes], str] | None = None,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        if not nodes:
            raise ConfigError("the aggregator needs at least one node")
        self.name = name
        #: Prometheus metrics (own registry; see ``trustspace.obs``)
        self.metrics = metrics or AggregatorMetrics(name, (n.name for n in nodes))
        #: the data space CA: the aggregator checks every signed query before it plans (the
        #: nodes check again; this only refuses early). None: checks are left to the nodes.
        self._ca = ca_pem
        #: why a query's signer is revoked here ("" if not; the server's ``Revocations``)
        self._revoked = revoked
        self.nodes = tuple(nodes)
        self.threshold = threshold
        self.call_timeout_s = call_timeout_s
        self.paillier_timeout_s = paillier_timeout_s
        self._pool = ThreadPoolExecutor(
            max_workers=max(4, 2 * len(nodes)), thread_name_prefix=f"{name}-calls"
        )
        self._plans: dict[tuple[str, str], Plan] = {}
        self._lock = threading.Lock()
        self._paillier = PaillierRounds(self)

    # ------------------------------------------------------------------ fan-out
    def fan_out(
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
                self.metrics.node_call(name, "ok")
            except (NodeError, AuthenticationError) as exc:  # unreachable, or TLS refused
                failed[name] = exc
                self.metrics.node_call(name, "unreachable")
            except TrustspaceError as err:
                refusal = refusal or err
                self.metrics.node_call(name, "refused")
            except Exception as other:
                log.exception("%s: unexpected failure calling node %s", self.name, name)
                failed[name] = NodeError(f"node {name}: unexpected failure {type(other).__name__}")
                self.metrics.node_call(name, "unreachable")
        if refusal is not None:
            raise refusal
        for name, why in failed.items():
            log.warning("%s: node %s dropped: %s", self.name, name, why, extra={"node": name})
        return ok, failed

    # ------------------------------------------------------------------ planning
    def verified(self, caller: Identity, query: SignedQuery) -> QueryBody:
        """The body of ``query`` once checked: signed by the calling analyst (the nodes verify
        it again, against their own revocation lists)."""
        if self._ca is not None:
            body = verify_query(
                query,
                ca_pem=self._ca,
                audience=data_space_name(self._ca),
                revoked=self._revoked or (),
                where=f"aggregator {self.name}",
            ).body
        else:
            body = query.unverified_body()
        if body.analyst != caller.name:
            raise AuthenticationError(
                f"aggregator {self.name}: the query is signed by {body.analyst!r} but sent by "
                f"{caller.name!r}; an analyst sends only its own queries"
            )
        return body

    @contextmanager
    def planned(self, query: SignedQuery, body: QueryBody, *, keep: bool = False) -> Iterator[Plan]:
        """The plan of one request (nodes, schema, strictest min_group_size) while it runs.

        The plan is made by describing every node (or taken from an earlier round of the same
        request) and forgotten on the way out; with ``keep`` (a Paillier request, whose rounds
        arrive one by one) it stays until ``PLAN_CACHE_S`` after its creation, unless the
        round fails.
        """
        key = (body.analyst, body.request_id)
        plan = self._cached(key) or self._make_plan(query, body, key)
        ok = False
        try:
            yield plan
            ok = True
        finally:
            if not (keep and ok):
                self._forget(key)

    def update_plan(self, plan: Plan) -> None:
        """Replace a kept plan (its first round dropped nodes)."""
        with self._lock:
            if plan.key in self._plans:
                self._plans[plan.key] = plan

    def _cached(self, key: tuple[str, str]) -> Plan | None:
        now = time.monotonic()
        with self._lock:
            stale = [k for k, p in self._plans.items() if now - p.created > PLAN_CACHE_S]
            cached = self._plans.get(key)
        for k in stale:
            self._forget(k)
        return cached if key not in stale else None

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._plans.pop(key, None)
        self._paillier.forget(key)

    def _make_plan(self, query: SignedQuery, body: QueryBody, key: tuple[str, str]) -> Plan:
        dataset = body.dataset
        answers, failed = self.fan_out(self.nodes, lambda n: n.describe(query, DESCRIBE_TIMEOUT_S))
        if not answers:
            raise NodeError(_no_nodes_message(failed))
        schema: TableSchema | None = None
        first = ""
        for node_name, desc in answers.items():
            found = {d.name: d for d in desc.datasets}
            if dataset not in found:
                # a node describes only the datasets its policy lets this analyst use, so
                # "not served" and "not allowed" look the same from here: say both
                raise ConfigError(
                    f"node {node_name} serves no dataset {dataset!r} to analyst "
                    f"{body.analyst!r} (it shows them: {', '.join(sorted(found)) or 'none'}): "
                    f"either it does not serve that dataset, or no rule of its policy lets "
                    f"{body.analyst!r} use it; check the name, or ask that node's operator"
                )
            try:
                s = TableSchema.from_dict(found[dataset].schema)
            except (ValueError, TypeError) as exc:
                raise ProtocolError(f"node {node_name} sent a malformed schema: {exc}") from None
            if schema is None:
                schema, first = s, node_name
            elif s != schema:
                raise ConfigError(
                    f"dataset {dataset!r} has different schemas on node {first} and node "
                    f"{node_name}; every node must declare the same columns and types"
                )
        assert schema is not None
        plan = Plan(
            key=key,
            nodes=tuple(n for n in self.nodes if n.name in answers),
            schema=schema,
            min_group_size=max(desc.min_group_size for desc in answers.values()),
            min_nodes=max(desc.min_nodes for desc in answers.values()),
            excluded=tuple(sorted(failed)),
            created=time.monotonic(),
            release=frozenset(name for name, d in answers.items() if d.release_rows),
        )
        with self._lock:
            self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ secure aggregation
    def secure_sum(
        self,
        query: SignedQuery,
        ref: types.RoundRef,
        size: int,
        nodes: Sequence[NodeClient],
        bindings: dict[str, bytes] | None = None,
    ) -> tuple[np.ndarray[Any, Any], tuple[str, ...]]:
        """Sum the nodes' local vectors of ``ref`` (``size`` entries) by one SecAgg+ session;
        returns (the uint64 total, the names of the nodes whose input is in it).

        Raises:
            ThresholdError: fewer than the threshold (or 2) nodes remain; names the stage,
                the counts and what each dropped node failed with.
        """
        if len(self.nodes) < 2:
            raise ThresholdError(
                "secure aggregation needs at least 2 nodes; this data space has only "
                f"{len(self.nodes)} ({', '.join(n.name for n in self.nodes)})"
            )
        return secure_sum(
            self.fan_out,
            query,
            ref,
            size,
            nodes,
            threshold=self.threshold,
            timeout=self.call_timeout_s,
            bindings=bindings,
            metrics=self.metrics,
        )

    def sum_round(
        self,
        query: SignedQuery,
        ref: types.RoundRef,
        plan: Plan,
        *,
        first: bool = False,
        bindings: dict[str, bytes] | None = None,
    ) -> tuple[np.ndarray[Any, Any], Plan]:
        """Securely sum one round (``ref.vector``) over the plan's nodes; returns (its uint64
        total, plan).

        A node dropping out of the *first* round of a query leaves the query over the
        survivors (nothing of its data has been used; the returned plan lists it as excluded
        and later rounds run without it). A node dropping out of a later round aborts: the
        earlier rounds' totals include it, and the stats state machine combines rounds (e.g.
        quantile bins sized by the first round's range), so mixing node sets would give a
        wrong answer.
        """
        rnd = ref.vector
        assert isinstance(rnd, Round)
        total, contributors = self.secure_sum(query, ref, rnd.size, plan.nodes, bindings)
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
        return total, plan

    # ------------------------------------------------------------------ handlers
    def run_query(self, caller: Identity, signed: SignedQuery) -> dict[str, Any]:
        """Secure-aggregation path: the whole query, returns ``serde.result_to_dict`` with
        ``nodes``, ``excluded`` and ``min_group_size``."""
        body = self.verified(caller, signed)
        if body.method != "secagg":
            raise ConfigError(
                f"method {body.method!r}: the aggregator runs only method='secagg' queries "
                "whole; Paillier queries run round by round from the analyst (RunRound)"
            )
        if body.operation == "intersect":
            return self._run_intersect(signed, body)
        query = _query_of(body)
        view: ViewRef | None = None
        if body.view is not None:
            view = ViewRef.from_dict(body.view)
            plan, schemas, _ = vertical_plan(self, signed, body, view.nodes)
            for name in view.nodes:
                if schemas[name] != view.schemas[name]:
                    raise ConfigError(
                        f"node {name}'s schema of dataset {body.dataset!r} changed since the "
                        "view was made; intersect again"
                    )
            plan = replace(plan, schema=view.union_schema())
            planned: Any = contextlib.nullcontext(plan)
        else:
            planned = self.planned(signed, body)
        with planned as plan:
            try:
                comp = start(query, plan.schema, plan.min_group_size, body.dp)
            except ValueError as exc:
                raise ConfigError(f"query does not fit dataset {query.dataset!r}: {exc}") from None
            previous: types.RoundTotal | None = None
            while (rnd := comp.next_round()) is not None:
                ref = types.RoundRef(rnd.index, plan.min_group_size, previous, rnd, "all")
                bindings: dict[str, bytes] = {}
                if view is not None:  # the round's secure products first: shares at the nodes
                    product = replace(ref, part="vertical.product")
                    relay(self, signed, "vertical.product", plan.nodes, product)
                total, plan = self.sum_round(
                    signed, ref, plan, first=rnd.index == 0 and view is None, bindings=bindings
                )
                if isinstance(comp, DPComputation):
                    comp.feed(
                        rnd.decode(total),
                        noise_variance=noise_variance(bindings),
                        nodes=len(bindings),
                    )
                else:
                    comp.feed(rnd.decode(total))
                previous = types.RoundTotal(rnd.index, tuple(int(x) for x in total))
        out = serde.result_to_dict(comp.result())
        out["nodes"] = [n.name for n in plan.nodes]
        out["excluded"] = list(plan.excluded)
        out["min_group_size"] = plan.min_group_size
        return out

    def _run_intersect(self, signed: SignedQuery, body: QueryBody) -> dict[str, Any]:
        """A private set intersection of the signed nodes' id columns (``fed.intersect``)."""
        from trustspace.vertical.ids import IdSpec

        p = body.params
        names, mode, on = p.get("nodes"), p.get("mode"), p.get("on")
        if (
            not isinstance(names, list)
            or not 2 <= len(names) <= MAX_VIEW_NODES
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) for n in names)
        ):
            raise ConfigError(
                f"intersect: nodes must list 2 to {MAX_VIEW_NODES} distinct node names"
            )
        if mode not in ("cardinality", "align"):
            raise ConfigError(f"intersect: mode {mode!r} is not 'cardinality' or 'align'")
        plan, schemas, ids = vertical_plan(self, signed, body, names)
        digests: dict[str, str] = {}
        for name in names:
            d = ids[name]
            if d is None:
                raise ConfigError(
                    f"node {name}: dataset {body.dataset!r} declares no id_column, so it "
                    "cannot be intersected; its operator adds id_column to the dataset"
                )
            spec = IdSpec.from_dict(d)
            if spec.column != on:
                raise ConfigError(
                    f"node {name}: the id column of dataset {body.dataset!r} is "
                    f"{spec.column!r}, not {on!r}"
                )
            digests[name] = spec.digest
        if len(set(digests.values())) > 1:
            described = "; ".join(f"{n}: {_normalisation(ids[n])}" for n in names)
            raise ConfigError(
                f"intersect on {on!r}: the nodes normalise their identifiers differently "
                f"({described}); the same person would not match. The operators must declare "
                "the same type, trimming and case"
            )
        results = relay(self, signed, "intersect", plan.nodes)
        sizes = {int(r.get("size", -1)) for r in results.values()}
        if len(sizes) != 1:
            raise ProtocolError("intersect: the nodes found different intersection sizes")
        size = sizes.pop()
        k = plan.min_group_size
        if size < k:
            raise PolicyError(
                f"intersect: the intersection of {', '.join(names)} holds fewer records than "
                f"the strictest node's min_group_size = {k}; nothing is released and no view "
                "is kept"
            )
        out: dict[str, Any] = {
            "size": size,
            "mode": mode,
            "dataset": body.dataset,
            "nodes": list(names),
        }
        if mode == "align":
            out["view"] = ViewRef(
                body.request_id, body.dataset, tuple(names), schemas, size
            ).to_dict()
        return {"intersect": out, "nodes": list(names), "excluded": [], "min_group_size": k}

    def run_round(self, caller: Identity, req: types.RoundRequest) -> types.RoundResult:
        """Paillier path: one round, the encrypted total with suppressed entries zeroed."""
        from trustspace.paillier import PublicKey

        body = self.verified(caller, req.query)
        if body.method != "paillier":
            raise ConfigError("RunRound: the signed query is not a Paillier query")
        query = _query_of(body)
        rnd = req.round
        try:
            pk = PublicKey(req.n)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid round request: {exc}") from None
        if pk.fingerprint != body.paillier_key:
            raise AuthenticationError(
                "RunRound: the public key is not the one whose fingerprint the query signs"
            )
        if rnd.dataset != query.dataset or rnd.where != query.where:
            raise ProtocolError("round request: the round does not belong to the query")
        return self._paillier.run(req, body, pk)

    def run_anonymization(self, caller: Identity, signed: SignedQuery) -> Any:
        """Federated anonymization (``aggregator._anon``): search on securely aggregated
        histograms, apply at every node, release where policy allows."""
        body = self.verified(caller, signed)
        if body.operation != "anonymize":
            raise ConfigError("RunAnonymization: the signed query is not an anonymization")
        return run_anonymization(self, signed, body)

    def status(self, caller: Identity, signed: SignedQuery | None) -> list[types.NodeStatus]:
        if signed is not None:
            self.verified(caller, signed)
        futures = {
            n.name: self._pool.submit(n.describe, signed, DESCRIBE_TIMEOUT_S) for n in self.nodes
        }
        out = []
        for n in self.nodes:
            try:
                d = futures[n.name].result()
            except TrustspaceError as exc:
                out.append(types.NodeStatus(n.name, n.address, False, str(exc)))
                unreachable = isinstance(exc, NodeError | AuthenticationError)
                self.metrics.node_call(n.name, "unreachable" if unreachable else "refused")
                continue
            self.metrics.node_call(n.name, "ok")
            out.append(
                types.NodeStatus(
                    n.name, n.address, True, "", d.datasets, d.min_group_size, d.min_nodes
                )
            )
        return out

    def close(self) -> None:
        self._paillier.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for n in self.nodes:
            n.close()


def _normalisation(spec: Mapping[str, Any]) -> str:
    """How a node's id column is normalised, for an error (the declaration, never values)."""
    return ", ".join(f"{k}={spec[k]!r}" for k in sorted(spec) if k != "column")


def _no_nodes_message(failed: dict[str, TrustspaceError]) -> str:
    detail = "; ".join(f"{e}" for e in failed.values())
    return f"no node answered: {detail}"
