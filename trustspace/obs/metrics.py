"""Prometheus metrics of a node (``NodeMetrics``) and of the aggregator (``AggregatorMetrics``).

Each host has its own ``CollectorRegistry`` (``.registry``), never the process-wide default:
several nodes run in one process under ``Federation.local`` and in tests. The admin port
serves ``registry`` at ``/metrics``; ``exposition()`` gives the same text here.

Label values are bounded, so that no caller can grow a server's memory by inventing them:
operations, stages, methods, status codes and reasons come from fixed lists (anything else
is counted as ``other``); datasets and nodes from the config; analysts are certificate names
that passed the policy, and at most ``MAX_ANALYSTS`` distinct ones are labelled (the rest
are ``other``). Values are never data: counts of requests, durations, budget figures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trustspace.secagg.stage import Stage, stages_for
from trustspace.stats import OPS

__all__ = [
    "AGGREGATOR_METHODS",
    "DURATION_BUCKETS",
    "MAX_ANALYSTS",
    "NODE_METHODS",
    "NODE_OPERATIONS",
    "OTHER",
    "AggregatorMetrics",
    "Bounded",
    "NodeMetrics",
    "code_reason",
    "outcome_of",
    "reason_of",
]

# No ``*_created`` series: they double the exposition and Prometheus needs none of them
# (prometheus_client's switch is process-wide; nothing else in trustspace exports metrics).
disable_created_metrics()  # type: ignore[no-untyped-call]

OTHER = "other"
#: Distinct analysts labelled on one host before the rest share ``other`` (analysts are
#: certificate holders, bounded by the CA; this only caps a CA that issues without bound).
MAX_ANALYSTS = 256
#: Seconds: 1 ms (a refusal) up to 10 min (a Paillier round at 4096 bits on a large table).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
#: The RPCs of NodeService and AggregatorService (a refused call is ``rpc.METHOD``).
NODE_METHODS = (
    "DescribeDatasets",
    "SecAggStep",
    "PaillierStats",
    "AnonHistogram",
    "AnonApply",
    "AnonRelease",
    "VerticalStep",
)
AGGREGATOR_METHODS = ("RunQuery", "RunRound", "RunAnonymization", "Status")
ANON_STEPS = ("anonymize", "anonymize.histogram", "anonymize.apply", "anonymize.release")
#: What a node's audit line calls the requests it handles (its ``operation`` field).
NODE_OPERATIONS = (
    *OPS,
    *ANON_STEPS,
    "describe_datasets",
    "secagg",
    "paillier",
    "intersect",
    "vertical.intersect",
    "vertical.product",
    *(f"rpc.{m}" for m in NODE_METHODS),
)
STAGES = tuple(s.value for s in stages_for(consistency_check=True))
DECISIONS = ("allow", "deny", "error")
#: Policy rules a node names in its refusals (``PolicyRefused.rule``) and the classes of
#: the other refusals: the ``reason`` label of ``trustspace_node_refusals_total``.
REASONS = (
    "analysts",
    "datasets",
    "operations",
    "purposes",
    "columns",
    "rate_limit",
    "release_rows",
    "allow_two_party_anonymization",
    "allow_base_histogram",
    "min_k",
    "exact_requires_all",
    "dp",
    "dp.required",
    "signed_query",
    "min_nodes",
    "min_group_size",
    "dp.budget",
    "policy",
    "authentication",
    "revoked",
    "protocol",
    "threshold",
    "invalid_request",
    "malformed",
    "data",
    "unavailable",
    "internal",
)
#: gRPC status -> reason of a call refused before its handler recorded it
_CODE_REASONS = {
    "UNAUTHENTICATED": "authentication",
    "PERMISSION_DENIED": "policy",
    "INVALID_ARGUMENT": "malformed",
    "FAILED_PRECONDITION": "invalid_request",
    "RESOURCE_EXHAUSTED": "rate_limit",
    "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "unavailable",
    "INTERNAL": "internal",
    "UNKNOWN": "internal",
}
ROUND_OUTCOMES = ("ok", "aborted", "failed")
#: The outcome of an aggregator request (``trustspace_aggregator_requests_total``).
OUTCOMES = ("ok", "denied", "invalid", "threshold", "unavailable", "internal")
STATUS_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


class Bounded:
    """A label value if it is ``known`` (or among the first ``cap`` others seen), else ``other``.

    >>> op = Bounded(["count", "mean"])
    >>> op("count"), op("cuont")
    ('count', 'other')
    >>> who = Bounded(cap=1)
    >>> who("alice"), who("bob"), who("alice")
    ('alice', 'other', 'alice')
    """

    def __init__(self, known: Iterable[str] = (), *, cap: int = 0) -> None:
        self._known = frozenset(known)
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        v = value if isinstance(value, str) else ""
        if v in self._known:
            return v
        if self._cap and v and len(v) <= 128:
            with self._lock:
                if v in self._seen or len(self._seen) < self._cap:
                    self._seen.add(v)
                    return v
        return OTHER


def reason_of(exc: BaseException) -> str:
    """The ``reason`` label of a refusal: the policy rule, or the class of the error.

    >>> from trustspace.errors import ProtocolError
    >>> reason_of(ProtocolError("session id reused"))
    'protocol'
    """
    from trustspace import errors

    rule = getattr(exc, "rule", "")
    if isinstance(rule, str) and rule in REASONS:
        return rule
    classes: tuple[tuple[type[BaseException], str], ...] = (
        (errors.DisclosureError, "min_group_size"),
        (errors.LedgerError, "internal"),
        (errors.PolicyError, "policy"),
        (errors.AuthenticationError, "authentication"),
        (errors.ThresholdError, "threshold"),
        (errors.ProtocolError, "protocol"),
        (errors.ConfigError, "invalid_request"),
        (errors.DataError, "data"),
        (errors.NodeError, "unavailable"),
    )
    for cls, name in classes:
        if isinstance(exc, cls):
            return name
    return "internal"


def code_reason(code: str, details: str = "") -> str:
    """The ``reason`` of a call refused with gRPC status ``code`` before its handler ran."""
    if code == "UNAUTHENTICATED" and "revoked" in details:
        return "revoked"
    return _CODE_REASONS.get(code, "internal")


class _Audit(Protocol):
    @property
    def lines(self) -> int: ...


class _Budget(Protocol):
    @property
    def analyst(self) -> str: ...

    @property
    def dataset(self) -> str: ...

    @property
    def epsilon(self) -> float: ...

    @property
    def rho_spent(self) -> float: ...

    @property
    def rho_reserved(self) -> float: ...

    @property
    def epsilon_spent(self) -> float: ...

    @property
    def epsilon_remaining(self) -> float: ...


#: the DP ledger's figures, one gauge per budget (analyst, dataset): name, help, value
_BUDGET_GAUGES: tuple[tuple[str, str, Callable[[_Budget], float]], ...] = (
    (
        "trustspace_node_dp_epsilon_limit",
        "An analyst's DP budget on a dataset at this node (epsilon at its delta)",
        lambda b: b.epsilon,
    ),
    (
        "trustspace_node_dp_epsilon_spent",
        "Epsilon spent or reserved by an analyst on a dataset (zCDP, at its delta)",
        lambda b: b.epsilon_spent,
    ),
    (
        "trustspace_node_dp_epsilon_remaining",
        "The largest epsilon one more query of the analyst on the dataset may have",
        lambda b: b.epsilon_remaining,
    ),
    (
        "trustspace_node_dp_rho_spent",
        "zCDP rho spent or reserved by an analyst on a dataset (the ledger's unit)",
        lambda b: b.rho_spent + b.rho_reserved,
    ),
)


class _ReadAtScrape(Collector):
    """Figures that live elsewhere (the audit log's length, the DP ledger), read at scrape."""

    def __init__(self, node: str) -> None:
        self._node = node
        self.audit: _Audit | None = None
        self.budgets: Callable[[], Iterable[_Budget]] | None = None
        self.analyst = Bounded(cap=MAX_ANALYSTS)
        self.dataset: Bounded = Bounded()

    def describe(self) -> list[Any]:
        return []  # not known before the first scrape: registered without a name check

    def collect(self) -> Iterator[Any]:
        if self.audit is not None:
            c = CounterMetricFamily(
                "trustspace_node_audit_lines",
                "Lines in this node's audit log (all of them, also those before this process)",
            )
            c.add_metric([], float(self.audit.lines))
            yield c
        if self.budgets is None:
            return
        try:
            budgets = list(self.budgets())
        except Exception:  # a closed or locked ledger: no budget figures this scrape
            return
        fams = [
            (GaugeMetricFamily(name, doc, labels=["analyst", "dataset"]), value)
            for name, doc, value in _BUDGET_GAUGES
        ]
        seen: set[tuple[str, str]] = set()
        for b in budgets:
            key = (self.analyst(b.analyst), self.dataset(b.dataset))
            if OTHER in key or key in seen:
                continue  # never merge two budgets into one series
            seen.add(key)
            for fam, value in fams:
                fam.add_metric(list(key), value(b))
        yield from (fam for fam, _ in fams)


class _HostMetrics:
    """What both hosts have: their own registry and its text exposition."""

    registry: CollectorRegistry

    def exposition(self) -> str:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry).decode("utf-8")


class NodeMetrics(_HostMetrics):
    """A node's metrics; ``NodeService`` fills them, ``watch_*`` attach scrape-time readers."""

    def __init__(self, node: str, datasets: Iterable[str] = ()) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        r = self.registry
        self.operation = Bounded(NODE_OPERATIONS)
        self._stage = Bounded(STAGES)
        self._reason = Bounded(REASONS)
        self._decision = Bounded(DECISIONS)
        self.requests = Counter(
            "trustspace_node_requests_total",
            "Requests this node handled (one per audit line), by operation and decision",
            ["operation", "decision"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "trustspace_node_request_duration_seconds",
            "Time this node took to handle a request, by operation",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "trustspace_node_refusals_total",
            "Requests this node refused, by reason (policy rule or error class)",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "trustspace_node_secagg_stage_duration_seconds",
            "Time this node took for a secure-aggregation stage it completed",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.paillier_seconds = Histogram(
            "trustspace_node_paillier_duration_seconds",
            "Time this node took for a Paillier round it answered (compute and encrypt)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        info = Gauge("trustspace_node_info", "This node (always 1)", ["node"], registry=r)
        info.labels(node).set(1)
        self._scrape = _ReadAtScrape(node)
        self._scrape.dataset = Bounded(datasets)
        r.register(self._scrape)
        for op in ("describe_datasets",):  # present from the start, so rate() sees the first
            for d in DECISIONS:
                self.requests.labels(op, d)

    def watch_audit(self, audit: _Audit) -> None:
        """Expose ``audit.lines`` as ``trustspace_node_audit_lines_total``."""
        self._scrape.audit = audit

    def watch_budgets(self, budgets: Callable[[], Iterable[_Budget]]) -> None:
        """Expose the DP ledger's budgets (``budgets()`` is called at each scrape)."""
        self._scrape.budgets = budgets

    def request(
        self,
        operation: str,
        decision: str,
        seconds: float,
        refusal: BaseException | None = None,
    ) -> None:
        """One handled request (one audit line); ``refusal``: why it was denied."""
        op = self.operation(operation)
        self.requests.labels(op, self._decision(decision)).inc()
        self.request_seconds.labels(op).observe(max(0.0, seconds))
        if refusal is not None:
            self.refusals.labels(self._reason(reason_of(refusal))).inc()

    def refused_call(self, method: str, code: str, details: str = "") -> None:
        """A call refused before its handler recorded it (revoked, wrong role, malformed)."""
        self.requests.labels(self.operation(f"rpc.{method}"), "deny").inc()
        self.refusals.labels(self._reason(code_reason(code, details))).inc()

    def stage(self, stage: Stage | str, seconds: float) -> None:
        self.stage_seconds.labels(self._stage(str(stage))).observe(max(0.0, seconds))


class AggregatorMetrics(_HostMetrics):
    """The aggregator's metrics (filled by ``AggregatorService`` and its call hooks)."""

    def __init__(self, name: str, nodes: Iterable[str] = ()) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        r = self.registry
        node_names = tuple(nodes)
        self._node = Bounded(node_names)
        self._method = Bounded(AGGREGATOR_METHODS)
        self.operation = Bounded((*OPS, "anonymize", "status", ""))
        self._outcome = Bounded(OUTCOMES)
        self._stage = Bounded(STAGES)
        self._code = Bounded(STATUS_CODES)
        self._reason = Bounded(REASONS)
        self.requests = Counter(
            "trustspace_aggregator_requests_total",
            "Analyst requests the aggregator handled, by method, operation and outcome",
            ["method", "operation", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "trustspace_aggregator_request_duration_seconds",
            "Time the aggregator took for an analyst request, by method and operation",
            ["method", "operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "trustspace_aggregator_refusals_total",
            "Calls the aggregator refused or failed, by method, gRPC status and reason",
            ["method", "code", "reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "trustspace_aggregator_secagg_stage_duration_seconds",
            "Time of one secure-aggregation stage across the nodes (the slowest answer)",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.dropouts = Counter(
            "trustspace_aggregator_secagg_dropouts_total",
            "Nodes that dropped out of a secure-aggregation stage (unreachable or too slow)",
            ["node", "stage"],
            registry=r,
        )
        self.rounds = Counter(
            "trustspace_aggregator_secagg_rounds_total",
            "Secure-aggregation rounds, by outcome (ok; aborted: too few nodes left; failed: "
            "refused by a node or a bad message)",
            ["outcome"],
            registry=r,
        )
        self.round_nodes = Histogram(
            "trustspace_aggregator_secagg_round_nodes",
            "Nodes whose input is in the sum of a completed secure-aggregation round",
            buckets=(1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100),
            registry=r,
        )
        self.node_up = Gauge(
            "trustspace_aggregator_node_reachable",
            "1 if the node answered the aggregator's last call to it, 0 if it could not be "
            "reached or missed the deadline",
            ["node"],
            registry=r,
        )
        self.node_calls = Counter(
            "trustspace_aggregator_node_calls_total",
            "Calls the aggregator made to a node, by outcome (ok, refused, unreachable)",
            ["node", "outcome"],
            registry=r,
        )
        info = Gauge(
            "trustspace_aggregator_info", "This aggregator (always 1)", ["aggregator"], registry=r
        )
        info.labels(name).set(1)
        self.configured_nodes = Gauge(
            "trustspace_aggregator_nodes", "Nodes in the aggregator's config", registry=r
        )
        self.configured_nodes.set(len(node_names))
        for n in node_names:
            for outcome in ("ok", "refused", "unreachable"):
                self.node_calls.labels(n, outcome)
        for outcome in ROUND_OUTCOMES:
            self.rounds.labels(outcome)

    def request(self, method: str, operation: str, outcome: str, seconds: float) -> None:
        m, op = self._method(method), self.operation(operation)
        self.requests.labels(m, op, self._outcome(outcome)).inc()
        self.request_seconds.labels(m, op).observe(max(0.0, seconds))

    def refused(self, method: str, code: str, reason: str) -> None:
        self.refusals.labels(self._method(method), self._code(code), self._reason(reason)).inc()

    def stage(self, stage: Stage | str, seconds: float, dropped: Iterable[str] = ()) -> None:
        s = self._stage(str(stage))
        self.stage_seconds.labels(s).observe(max(0.0, seconds))
        for n in dropped:
            self.dropouts.labels(self._node(n), s).inc()

    def round(self, outcome: str, contributors: int = 0) -> None:
        """A secure-aggregation round ended: ``ok`` (with ``contributors`` nodes in the sum),
        ``aborted`` (too few nodes left) or ``failed`` (a node refused, a bad message)."""
        self.rounds.labels(outcome if outcome in ROUND_OUTCOMES else "failed").inc()
        if outcome == "ok":
            self.round_nodes.observe(contributors)

    def node_call(self, node: str, outcome: str) -> None:
        """One call to ``node``: ``ok``, ``refused`` (it answered with an error) or
        ``unreachable``."""
        n = self._node(node)
        self.node_calls.labels(n, outcome if outcome in ("ok", "refused") else "unreachable").inc()
        self.node_up.labels(n).set(0 if outcome == "unreachable" else 1)


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of an aggregator request that ended with ``exc`` (None: ok)."""
    if exc is None:
        return "ok"
    reason = reason_of(exc)
    if reason == "threshold":
        return "threshold"
    if reason == "unavailable":
        return "unavailable"
    if reason == "internal":
        return "internal"
    if reason in ("protocol", "invalid_request", "data", "malformed"):
        return "invalid"
    return "denied"
