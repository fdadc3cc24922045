"""A node: its engine over local files, policy, audit log and secure-aggregation sessions.

``NodeService`` is the handler behind the gRPC servicer (``transport.servicers``). Every call
is checked against the policy *before* any computation and written to the audit log (fsync'd)
*before* the answer leaves; a call whose audit line cannot be written fails.

Trust model: only certificates with role ``aggregator`` may call a node (the servicer checks
it), but a node trusts no other party's description of a computation. Every request that
computes on data carries the analyst's signed query: the node verifies it (``_runs.Runs``:
data space CA, role analyst, validity, this node's own revocations, audience, expiry),
checks its policy against the signed body alone, and derives what it computes itself (the
query's state machine replayed over the previous rounds' totals, or the signed anonymization
spec); a round that differs from the derived one is refused. A secure-aggregation session is
bound to one round: every node's signed key advertisement carries the round's digest and the
node's ``min_nodes``, and every node checks every roster entry against its own. The audit
line records the signed query and its signature's digest.

A live reload (``Node.reload`` -> ``reconfigure``) swaps the configuration between calls: each
entry point sees one configuration for its whole call (``_ConfigLock``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from functools import wraps
from typing import TYPE_CHECKING, Any, Concatenate, NoReturn, ParamSpec, TypeVar

import numpy as np

from trustspace.dp import Ledger, NoisePlan, Reservation
from trustspace.errors import (
    DataError,
    PolicyError,
    ProtocolError,
    TrustspaceError,
)
from trustspace.node import _fault
from trustspace.node._anon import AnonJobs
from trustspace.node._runs import Run, Runs, query_of
from trustspace.node._vertical import VerticalJobs
from trustspace.node.audit import AuditLog
from trustspace.node.config import ALL, NodeConfig
from trustspace.node.policy import Policy, PolicyRefused, Request, work_units
from trustspace.obs import NodeMetrics
from trustspace.obs.metrics import reason_of
from trustspace.secagg.client import SecAggClient
from trustspace.secagg.messages import AdvertiseKeys, EncryptedShares, UnmaskRequest
from trustspace.secagg.stage import Stage
from trustspace.stats import (
    PAILLIER_WORD_VALUE_BITS,
    DPSpec,
    Round,
    TableSchema,
    add_noise,
    filter_columns,
    noise_plan,
    paillier_noise_plan,
    parse_filter,
    split_words,
)
from trustspace.transport import types
from trustspace.transport.ca import (
    Credentials,
    Identity,
    sign_blob,
    verify_blob,
)
from trustspace.transport.revocation import Revocations
from trustspace.transport.signing import (
    SignedQuery,
    VerifiedQuery,
    canonical_json,
    data_space_name,
)
from trustspace.vertical.view import ViewRef

if TYPE_CHECKING:
    from trustspace.engine import LocalEngine

log = logging.getLogger("trustspace.node")
T = TypeVar("T")
P = ParamSpec("P")
MAX_SESSIONS = 256  # concurrent secure-aggregation sessions kept in memory
#: Session ids remembered after their session ends, so that a replayed advertise cannot start
#: a finished session again (32 bytes each: 2 MiB at most; the oldest are forgotten first).
MAX_USED_SESSION_IDS = 65_536
#: Paillier modulus sizes a node encrypts under (DESIGN.md: 2048 bits at least; a larger odd
#: "key" would only cost the nodes work).
PAILLIER_KEY_BITS = (2048, 3072, 4096)
#: Most entries one round may have at a node (a histogram of 100k bins is ~100k entries).
MAX_ROUND_ENTRIES = 200_000
#: Most encrypted words (two per entry) one Paillier request may ask a node for.
MAX_PAILLIER_WORDS = 20_000
#: Rounds of at least this many words (~54 ciphertexts, ~0.2 s of work at 3072 bits) are
#: encrypted by the Paillier worker pool, whose workers run niced and take bounded chunks
#: (trustspace.crypto._paillier_pool), not on this process's serving threads, where they would
#: hold the GIL against every other request; smaller rounds are not worth a worker start.
PAILLIER_POOL_MIN_WORDS = 4096


def round_columns(rnd: Round) -> tuple[str, ...]:
    """Every column a round reads: its terms, its group column and its filter."""
    cols: list[str] = []
    for t in rnd.terms:
        cols.extend(t.columns)
    if rnd.group_column:
        cols.append(rnd.group_column)
    if rnd.where:
        cols.extend(filter_columns(parse_filter(rnd.where)))
    return tuple(dict.fromkeys(cols))


@dataclass
class _Session:
    client: SecAggClient
    vector: np.ndarray[Any, Any]
    query_digest: str
    round_digest: str
    created: float
    exact: bool = True  # not a differentially private query: exact_requires_all applies
    run: Run | None = None
    names: dict[int, str] = field(default_factory=dict)  # client id -> node, from the roster
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a DP round's budget reservation: spent once the noisy masked input leaves this node,
    #: released if the session ends before that
    reservation: Reservation | None = None
    spent: bool = False


_Checked = tuple[str, str, tuple[str, ...]]  # (operation, dataset, columns) a policy checks


def round_digest(query_digest: str, part: str, index: int, k: int, vector: Any) -> str:
    """What a secure-aggregation session sums, as one digest: every participant computes it
    from its own derivation and signs it in its key advertisement."""
    return hashlib.sha256(
        canonical_json({"q": query_digest, "part": part, "i": index, "k": k, "v": vector})
    ).hexdigest()


def _audit_body(vq: VerifiedQuery) -> dict[str, Any]:
    """The signed body as the audit line records it (an anonymization spec by its digest)."""
    body = vq.body.to_dict()
    spec = body["params"].get("spec") if vq.body.operation == "anonymize" else None
    if spec is not None:
        body["params"] = {
            **body["params"],
            "spec": hashlib.sha256(canonical_json(spec)).hexdigest(),
        }
    return body


class _ConfigLock:
    """Many requests read the node's configuration at once; a live reload swaps it alone.

    Every entry point of ``NodeService`` holds the read side for the whole call, so that one
    call sees one configuration from start to end (policy, datasets, engine, revocations);
    ``NodeService.reconfigure`` holds the write side for the swap (microseconds), after the
    calls in flight have ended. A waiting writer goes first: calls that arrive meanwhile wait
    for the swap (a reload is not starved by a steady stream of requests). Re-entrant for
    readers (a thread already reading may read again while a writer waits).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._waiting = 0
        self._local = threading.local()

    @contextmanager
    def read(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._writing or self._waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _one_config(
    method: Callable[Concatenate[NodeService, P], T],
) -> Callable[Concatenate[NodeService, P], T]:
    """An entry point that sees one configuration for the whole call (``_ConfigLock``)."""

    @wraps(method)
    def wrapper(self: NodeService, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._config_lock.read():
            return method(self, *args, **kwargs)

    return wrapper


class NodeService:
    """The node's request handler (see module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        engine: LocalEngine,
        *,
        credentials: Credentials,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.name = config.name
        #: this node's Prometheus metrics (its own registry; see ``trustspace.obs``)
        self.metrics = metrics or NodeMetrics(config.name, (d.name for d in config.datasets))
        self._creds = credentials
        self._config_lock = _ConfigLock()
        self.config = config
        self.engine = engine
        #: the one revocation checker of this node ([tls] revoked and crl): the server's gate,
        #: the signed queries' signers and the secure-aggregation rosters all consult it
        #: through this attribute, so reloading or replacing it takes effect everywhere
        self.revocations = Revocations.load(config.tls, credentials.ca_pem)
        self.policy = Policy(config.name, config.policy)
        #: wall-clock time the configuration in force was swapped in by a live reload
        #: (``reconfigure``), None while it is the one the node started with
        self.reloaded_at: float | None = None
        self.audit = (
            audit
            if audit is not None
            else AuditLog(
                config.audit_path, credentials=credentials, checkpoint_every=config.checkpoint_every
            )
        )
        self._clock = clock
        self._sessions: dict[bytes, _Session] = {}
        self._used_ids: dict[bytes, None] = {}  # insertion-ordered: oldest first
        self._lock = threading.Lock()
        self._datasets = {d.name for d in config.datasets}
        self._anon = AnonJobs(config, engine, clock, self._datasets)
        self._where = f"node {self.name}"
        dp = config.policy.dp
        #: (analyst, dataset) whose ledger limit this process has set from [policy.dp]
        self._synced: set[tuple[str, str]] = set()
        try:
            self.ledger = (
                Ledger(config.dp_ledger_path, node=config.name) if dp is not None else None
            )
        except BaseException:
            if audit is None:
                self.audit.close()
            raise
        self.metrics.watch_audit(self.audit)
        if self.ledger is not None:
            self.metrics.watch_budgets(self.ledger.budgets)
        self.runs = Runs(
            self.name,
            self._where,
            ca_pem=credentials.ca_pem,
            audience=data_space_name(credentials.ca_pem),
            revoked=lambda pem: self.revocations.check(pem),
            now=wall_clock,
        )
        #: private set intersections, secure products and the views they leave
        self.vertical = VerticalJobs(self)

    # ------------------------------------------------------------------ live reload
    def reconfigure(
        self,
        config: NodeConfig,
        engine: LocalEngine | None = None,
        *,
        stale: set[str] | frozenset[str] = frozenset(),
        ledger: Ledger | None = None,
    ) -> LocalEngine | None:
        """Swap in ``config`` (a live reload, already validated by ``Node.reload``), at once:
        the policy, the datasets (``engine``: a new engine over them, or None to keep this
        one), the revocation list and the DP limits; returns the engine replaced (the caller
        closes it) or None.

        Waits for the calls in flight to end (``_ConfigLock``). What was under way:

        - a secure-aggregation session past its advertise stage finishes: its vector was
          computed and masked before the reload (a tightened ``min_nodes`` or
          ``exact_requires_all`` still applies at its later stages, a revoked analyst is
          refused at the next one);
        - a request on a dataset in ``stale`` (removed, re-declared or its file changed) ends:
          its next round is refused with the reason, and so is every later step of an
          anonymization job on it (its counts were read from the old data);
        - everything else continues under the new policy, from its next step.

        Spent and reserved DP budget stays in the ledger; the limits of ``[policy.dp]`` are set
        again from the new policy on next use (``_sync_budget``). Rate-limit buckets are kept
        (a reload hands out no fresh burst) and take a changed limit now.
        """
        why = "the dataset was changed by a configuration reload; run it again"
        # [tls] revoked and crl, built and validated before anything is swapped (ConfigError
        # when it cannot be, e.g. a CRL not signed by the data space CA or older than the one
        # in force: the reload is refused)
        revocations = self.revocations.successor(config.tls)
        with self._config_lock.write():
            replaced = None
            if engine is not None:
                replaced, self.engine = self.engine, engine
            self.config = config
            self.reloaded_at = time.time()  # before the policy: a reader never sees it older
            self.policy = self.policy.successor(config.policy)
            self._datasets = {d.name for d in config.datasets}
            self._anon.reconfigure(config, self.engine, self._datasets, stale, why)
            self.runs.forget(lambda run: run.query.body.dataset in stale, why)
            if ledger is not None and self.ledger is None:
                self.ledger = ledger
            self._synced.clear()
            # the one place every revocation check of this node comes from (the gRPC gate,
            # the analyst of every signed query, every node of a roster); signatures verified
            # before are checked again (the cache of verified queries is cleared)
            revocations.listener = self.revocations.listener  # told of a CRL taken up itself
            self.revocations = revocations
            self.runs.reverify()
        return replaced

    # ------------------------------------------------------------------ audit + policy
    def _handle(
        self,
        caller: Identity,
        signed: SignedQuery | None,
        *,
        step: str,
        params: dict[str, Any],
        work: Callable[[VerifiedQuery | None], T],
        check: Callable[[VerifiedQuery], tuple[str, str, tuple[str, ...]]] | None = None,
        extra: Callable[[VerifiedQuery], None] | None = None,
        unchecked_reason: str = "",
    ) -> T:
        """Verify the signed query, check policy (``check`` gives (operation, dataset,
        columns) to check; ``extra`` a further check), run ``work``, write the audit line
        (fsync), then return. A refusal at any point is one audit line with decision deny."""
        started = time.monotonic()
        entry: dict[str, Any] = {
            "node": self.name,
            "requester": "",
            "via": caller.name,
            "request_id": "",
            "operation": step,
            "dataset": "",
            "columns": [],
            "params": params,
        }
        vq: VerifiedQuery | None = None
        try:
            if signed is not None:
                entry["signature"] = signed.signature_digest
                vq = self.runs.verify(signed)
                b = vq.body
                entry.update(
                    requester=b.analyst,
                    request_id=b.request_id,
                    purpose=b.purpose,
                    query=_audit_body(vq),
                    dataset=b.dataset,
                    columns=list(b.columns),
                )
                if step == "secagg":  # a later stage: named by what its session computes
                    anon = b.operation == "anonymize"
                    entry["operation"] = "anonymize.histogram" if anon else b.operation
            if check is not None:
                if vq is None:
                    raise PolicyError(f"{self._where}: the request carries no signed query")
                operation, dataset, columns = check(vq)
                entry.update(operation=operation, dataset=dataset, columns=list(columns))
                b = vq.body
                self.policy.check(
                    Request(b.analyst, operation, dataset, columns, b.request_id, b.purpose)
                )
            if extra is not None and vq is not None:
                extra(vq)
        except TrustspaceError as exc:
            entry.update(decision="deny", reason=str(exc), outcome="refused")
            self._record(entry, started, exc)
            raise
        entry.update(decision="allow", reason="policy rules matched" if check else unchecked_reason)
        # metering: wall time, and CPU time of this thread (DuckDB's and the Paillier pool's
        # workers are not in it)
        wall, cpu = time.monotonic(), time.thread_time()
        try:
            result = work(vq)
        except (PolicyError, ProtocolError) as exc:  # the computation asked for is refused
            entry.update(decision="deny", reason=str(exc), outcome="refused")
            self._record(entry, started, exc)
            raise
        except TrustspaceError as exc:
            entry["outcome"] = f"error: {type(exc).__name__}: {exc}"
            self._record(entry, started, exc)
            raise
        except Exception as exc:
            entry["outcome"] = f"error: internal ({type(exc).__name__})"
            self._record(entry, started, exc)
            raise
        entry["outcome"] = "ok"
        entry["ms"] = round(1000.0 * (time.monotonic() - wall), 3)
        entry["cpu_ms"] = round(1000.0 * (time.thread_time() - cpu), 3)
        self._record(entry, started)
        return result

    def _record(
        self, entry: dict[str, Any], started: float, exc: BaseException | None = None
    ) -> None:
        """Write ``entry`` to the audit log (fsync; a failure fails the request), count it
        in the metrics and log it: a refusal at INFO, an allowed step at DEBUG (the audit log
        is the record of each). The log line names the request, never data values."""
        self.audit.append(entry)
        seconds = time.monotonic() - started
        denied = entry.get("decision") == "deny"
        decision = "deny" if denied else "error" if exc is not None else "allow"
        self.metrics.request(entry["operation"], decision, seconds, exc if denied else None)
        fields = {
            "request_id": entry.get("request_id", ""),
            "analyst": entry.get("requester", ""),
            "via": entry.get("via", ""),
            "purpose": entry.get("purpose"),
            "operation": entry["operation"],
            "dataset": entry.get("dataset", ""),
            "decision": decision,
            "duration_ms": round(1000.0 * seconds, 3),
        }
        stage = entry.get("params", {}).get("stage")
        if stage:
            fields["stage"] = str(stage)
        if denied:
            fields["reason"] = reason_of(exc) if exc is not None else "policy"
            log.info(
                "%s: refused %s for %s: %s",
                self.name,
                entry["operation"],
                fields["analyst"] or "?",
                exc,
                extra=fields,
            )
        elif exc is not None:
            log.warning(
                "%s: %s for %s failed: %s",
                self.name,
                entry["operation"],
                fields["analyst"] or "?",
                entry.get("outcome", ""),
                extra=fields,
            )
        else:
            log.debug(
                "%s: %s%s for %s",
                self.name,
                entry["operation"],
                f" {stage}" if stage else "",
                fields["analyst"] or "?",
                extra=fields,
            )

    def _stats_check(self, vq: VerifiedQuery) -> tuple[str, str, tuple[str, ...]]:
        """What the policy checks for a signed statistic: its operation, dataset and every
        column it reads (its columns, group column and filter columns)."""
        q = query_of(vq)
        if q is None:
            raise ProtocolError(
                f"{self._where}: the signed operation {vq.body.operation!r} is not a statistic"
            )
        if q.dataset not in self._datasets:
            raise PolicyError(
                f"{self._where} serves no dataset {q.dataset!r} "
                f"(it serves {', '.join(sorted(self._datasets))})"
            )
        cols = list(q.columns)
        by = q.params.get("by")
        if isinstance(by, str):
            cols.append(by)
        if q.where:
            cols.extend(filter_columns(parse_filter(q.where)))
        if vq.body.view is not None:  # a view's columns are node.column: check our own
            if vq.body.method != "secagg":
                raise ProtocolError(
                    f"{self._where}: statistics over a vertical view run by secure aggregation only"
                )
            ref = ViewRef.from_dict(vq.body.view)
            mine = []
            for c in dict.fromkeys(cols):
                node, col = ref.owner(c, f"{self._where}: query")
                if node == self.name:
                    mine.append(col)
            return q.op, q.dataset, tuple(mine)
        return q.op, q.dataset, tuple(dict.fromkeys(cols))

    def _run(self, vq: VerifiedQuery) -> Run:
        self.runs.expire()
        return self.runs.run(vq, lambda: query_of(vq))

    # ------------------------------------------------------------------ describe
    @_one_config
    def describe(self, caller: Identity, signed: SignedQuery | None) -> types.NodeDescription:
        def work(vq: VerifiedQuery | None) -> types.NodeDescription:
            analyst = vq.body.analyst if vq is not None else ALL
            return types.NodeDescription(
                node=self.name,
                datasets=tuple(
                    types.DatasetDescription(
                        d.name,
                        self.engine.schema(d.name).to_dict(),
                        self._budget(analyst, d.name) if vq is not None else None,
                        None if d.id is None else d.id.to_dict(),
                    )
                    for d in self.config.datasets
                    if self.policy.may_see(analyst, d.name)
                ),
                min_group_size=self.policy.min_group_size,
                release_rows=self.policy.config.release_rows,
                min_nodes=self.policy.config.min_nodes,
            )

        return self._handle(
            caller,
            signed,
            step="describe_datasets",
            params={},
            work=work,
            unchecked_reason="schemas only, filtered by policy",
        )

    # ------------------------------------------------------------------ differential privacy
    def _budget(self, analyst: str, dataset: str) -> dict[str, Any] | None:
        """The analyst's DP budget on ``dataset`` here (None: no ``[policy.dp]``)."""
        dp = self.policy.config.dp
        if dp is None or self.ledger is None:
            return None
        self._sync_budget(analyst, dataset)
        b = self.ledger.budget(analyst, dataset)
        return {
            "epsilon": b.epsilon,
            "delta": b.delta,
            "epsilon_spent": b.epsilon_spent,
            "epsilon_remaining": b.epsilon_remaining,
            "rho_spent": b.rho_spent + b.rho_reserved,
            "rho_remaining": b.rho_remaining,
            "required": dp.required and analyst not in dp.exact_analysts,
        }

    def _sync_budget(self, analyst: str, dataset: str) -> None:
        """Set the ledger's limit for (analyst, dataset) from ``[policy.dp]``, once per policy
        (``reconfigure`` clears ``_synced``: a reloaded limit applies; spent budget is kept)."""
        dp = self.policy.config.dp
        assert dp is not None and self.ledger is not None
        if (analyst, dataset) in self._synced:
            return
        eps, delta = dp.budget_of(analyst)
        self.ledger.set_budget(analyst, dataset, epsilon=eps, delta=delta)
        self._synced.add((analyst, dataset))

    def _reserve(
        self,
        vq: VerifiedQuery,
        dataset: str,
        key: str,
        noise: NoisePlan,
        params: dict[str, Any],
        **shape: int,
    ) -> Reservation:
        """Reserve a DP round's charge (``noise.rho``) in the ledger under ``key`` and mirror it
        in the audit line (``params.dp``); ``shape``: the t, n (and colluders) it was sized for."""
        assert self.ledger is not None
        b = vq.body
        spec = DPSpec.of(b.dp)
        assert spec is not None
        self._sync_budget(b.analyst, dataset)
        reservation = self.ledger.reserve(
            b.analyst, dataset, key, noise.rho, epsilon=spec.epsilon, delta=spec.delta
        )
        params["dp"] = {
            "epsilon": spec.epsilon,
            "delta": spec.delta,
            "rho": noise.rho,
            "node_sigma2": float(noise.node_sigma2),
            **shape,
            "ledger": key,
            "charge": "reserved",
        }
        return reservation

    def _dp_check(self, vq: VerifiedQuery) -> None:
        """``[policy.dp]`` before any computation: DP required, DP possible here, DP valid."""
        b, dp = vq.body, self.policy.config.dp
        if b.dp is None:
            if dp is not None and dp.required and not self._exact_granted(vq):
                left = self._budget(b.analyst, b.dataset)
                assert left is not None
                raise PolicyRefused(
                    self.name,
                    "dp.required",
                    f"dataset {b.dataset!r} is answered only with differential privacy here: "
                    f"pass epsilon= (e.g. fed.mean(..., epsilon=0.5), or `trustspace query "
                    f"--epsilon 0.5`); analyst {b.analyst!r} has epsilon "
                    f"{left['epsilon_remaining']:.4g} remaining at delta {left['delta']:g} "
                    f"(of {left['epsilon']:g})",
                )
            return
        if dp is None:
            raise PolicyRefused(
                self.name,
                "dp",
                "this node has no [policy.dp] budget, so it answers no differentially private "
                "query; ask without epsilon, or ask the operator to set [policy.dp]",
            )
        DPSpec.of(b.dp)  # epsilon and delta in range, or ConfigError naming them

    def _exact_granted(self, vq: VerifiedQuery) -> bool:
        """``[policy.dp] exact_analysts``, or a rule with ``exact = true`` matching the query."""
        dp, b = self.policy.config.dp, vq.body
        if dp is not None and b.analyst in dp.exact_analysts:
            return True
        operation, dataset, columns = self._stats_check(vq)
        return self.policy.exact_granted(
            Request(b.analyst, operation, dataset, columns, b.request_id, b.purpose)
        )

    def _dp_session(
        self,
        step: types.SecAggStep,
        vq: VerifiedQuery,
        rnd: Round,
        params: dict[str, Any],
        run: Run | None = None,
    ) -> tuple[Callable[[], np.ndarray[Any, Any]], dict[str, Any], Reservation]:
        """Size this node's noise for a DP round from the signed query, the session's
        threshold and size and this node's ``colluders``; reserve its budget; return the noisy
        local vector's maker, the binding's DP part and the reservation."""
        b, dp = vq.body, self.policy.config.dp
        assert dp is not None and self.ledger is not None
        spec = DPSpec.of(b.dp)
        assert spec is not None
        cfg = step.setup.config()
        schema = self._query_schema(vq, rnd.dataset)
        noise = noise_plan(rnd, schema, spec, t=cfg.t, n=cfg.n, colluders=dp.colluders)
        key = f"{b.request_id}/{rnd.index}/{step.setup.session_id.hex()[:16]}"
        reservation = self._reserve(
            vq, rnd.dataset, key, noise, params, t=cfg.t, n=cfg.n, colluders=dp.colluders
        )
        s2 = noise.node_sigma2

        def local() -> np.ndarray[Any, Any]:
            return add_noise(self._local(rnd, run).view(np.uint64), s2)

        return local, {"sigma2": f"{s2.numerator}/{s2.denominator}", "rho": noise.rho}, reservation

    def _paillier_dp(
        self, vq: VerifiedQuery, run: Run, rnd: Round, params: dict[str, Any]
    ) -> tuple[Fraction, Reservation]:
        """A Paillier DP round's noise share (``paillier_noise_plan``: the whole central noise
        at every node) and its one reservation, shared by the round's two parts (its record
        counts by secure aggregation, its sums by encryption), made by whichever comes first."""
        spec = DPSpec.of(vq.body.dp)
        assert spec is not None
        noise = paillier_noise_plan(rnd, self.engine.schema(rnd.dataset), spec)
        key = f"{vq.body.request_id}/{rnd.index}/paillier"
        with run.lock:
            if run.dp_reservation is None:
                run.dp_reservation = self._reserve(vq, rnd.dataset, key, noise, params, t=1, n=1)
            return noise.node_sigma2, run.dp_reservation

    def _settle(self, session: _Session, *, spent: bool) -> None:
        """Mark a DP session's reservation spent, or give it back (if it was not spent)."""
        r = session.reservation
        if r is None or self.ledger is None or session.spent:
            return
        if spent:
            self.ledger.commit(r)
            session.spent = True
        else:
            session.reservation = None
            self.ledger.release(r)

    # ------------------------------------------------------------------ local vectors
    def _local(self, rnd: Round, run: Run | None = None) -> np.ndarray[Any, Any]:
        """The round's local vector, fixed-point encoded as int64 (two's complement); for a
        statistic over a vertical view, this node's additive share of the round's vector (left
        in ``run.shares`` by the round's secure product)."""
        if run is not None and run.query.body.view is not None:
            with run.lock:
                share = run.shares.pop(rnd.index, None)
            if share is None or share.shape != (rnd.size,):
                raise ProtocolError(
                    f"{self._where}: round {rnd.index} over a vertical view has no secure "
                    "product here (it did not run, or was summed already); refusing"
                )
            return share.view(np.int64)
        if rnd.size > MAX_ROUND_ENTRIES:
            raise ProtocolError(
                f"{self._where}: round {rnd.index} has {rnd.size} entries, more than the "
                f"{MAX_ROUND_ENTRIES} a node computes; ask for fewer bins or groups"
            )
        tag = run.query.body.request_id if run is not None else None
        vec = np.asarray(self.engine.compute(rnd, tag=tag), dtype=np.float64)
        try:
            encoded: np.ndarray[Any, Any] = rnd.encode(vec).view(np.int64)
        except ValueError as exc:
            raise DataError(f"{self._where}: local aggregate of round {rnd.index}: {exc}") from None
        return encoded

    def _derive(self, vq: VerifiedQuery, ref: types.RoundRef) -> tuple[Run, Round]:
        """The round ``ref`` names, as this node derives it from the signed query; refuses a
        driver's ``min_group_size`` below this node's own."""
        own = self.policy.min_group_size
        if ref.min_group_size < own:
            raise PolicyError(
                f"{self._where}: the round asks for min_group_size {ref.min_group_size}, below "
                f"this node's {own}; refusing"
            )
        run = self._run(vq)
        q = run.stats
        if q is None:
            raise ProtocolError(f"{self._where}: the signed query is not a statistic")
        where = f"{self._where}: request {vq.body.request_id}"
        schema = self._query_schema(vq, q.dataset)
        with run.lock:
            rnd = run.derive(ref.index, ref.min_group_size, ref.previous, schema, where)
        self._check_model_size(run)
        return run, rnd

    def _query_schema(self, vq: VerifiedQuery, dataset: str) -> TableSchema:
        """The schema a signed statistic plans on: the dataset's, or for a statistic over a
        vertical view the view's union schema (``node.column``), its part for this node
        checked against this node's schema."""
        if vq.body.view is not None:
            return self.vertical.schema_of(vq)
        return self.engine.schema(dataset)

    def _check_model_size(self, run: Run) -> None:
        """A regression's parameters against its records (``glm_min_records_per_parameter``),
        once round 0 has given the record count."""
        size = getattr(run.comp, "model_size", None)
        if size is None:
            return
        n, p = size
        need = self.policy.config.glm_min_records_per_parameter
        if n < need * p:
            raise PolicyRefused(
                self.config.name,
                "glm_min_records_per_parameter",
                f"the model estimates {p} parameters from fewer than {need} records each; "
                "simplify the formula or widen the filter",
            )

    def _refuse_mismatch(self, ref: types.RoundRef, what: str) -> NoReturn:
        raise ProtocolError(
            f"{self._where}: the {what} asked for in round {ref.index} is not the one this node "
            "derives from the signed query (terms, columns, filter, bins, centres or encoding "
            "differ); refusing"
        )

    # ------------------------------------------------------------------ secure aggregation
    def _expire(self) -> None:
        now = self._clock()
        with self._lock:
            old = [
                s
                for s, v in self._sessions.items()
                if now - v.created > self.config.session_timeout_s
            ]
            ended = [self._sessions.pop(sid) for sid in old]
        for session in ended:
            with session.lock:
                self._settle(session, spent=False)

    @_one_config
    def secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]:
        """One stage of a secure-aggregation session (its time is measured when it completes)."""
        started = time.monotonic()
        out = self._secagg_step(caller, step)
        self.metrics.stage(step.stage, time.monotonic() - started)
        return out

    def _secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]:
        _fault.trip(f"secagg:{step.stage}")  # test-only, off unless TRUSTSPACE_TEST_FAULT is set
        self._expire()
        params: dict[str, Any] = {
            "stage": step.stage,
            "session": step.setup.session_id.hex()[:16],
        }
        if step.stage is Stage.ADVERTISE:
            ref = step.round
            assert ref is not None  # serde refuses an advertise without one
            params.update(round=ref.index, part=ref.part)
            if ref.part == "anon.histogram":
                return self._anon_advertise(caller, step, ref, params)
            return self._handle(
                caller,
                step.query,
                step="secagg",
                params=params,
                check=self._stats_check,
                extra=self._dp_check,
                work=lambda vq: self._advertise(step, ref, vq, params),
            )
        with self._lock:
            session = self._sessions.get(step.setup.session_id)
        if session is None:
            raise ProtocolError(
                f"{self._where}: no secure-aggregation session {params['session']} (it "
                "expired or never started); re-run the query"
            )
        if session.query_digest != step.query.digest:
            raise ProtocolError(
                f"{self._where}: session {params['session']} belongs to another query"
            )
        return self._handle(
            caller,
            step.query,
            step="secagg",
            params=params,
            work=lambda vq: self._continue(step, session, params),
            unchecked_reason="continues a session allowed at its advertise stage",
        )

    def _advertise(
        self,
        step: types.SecAggStep,
        ref: types.RoundRef,
        vq: VerifiedQuery | None,
        params: dict[str, Any],
    ) -> list[bytes]:
        assert vq is not None
        method = vq.body.method
        run, rnd = self._derive(vq, ref)
        if ref.part == "all":
            if method != "secagg":
                raise ProtocolError(
                    f"{self._where}: a {method} query's rounds are not summed whole; refusing"
                )
            if ref.vector != rnd:
                self._refuse_mismatch(ref, "round")
            vector = rnd
        else:  # "paillier.counts": the record counts governing the round's entries
            if method != "paillier":
                raise ProtocolError(
                    f"{self._where}: part {ref.part!r} belongs to Paillier queries; refusing"
                )
            allowed = (
                (rnd.count_terms_round(),)
                if vq.body.dp is not None  # a DP round suppresses nothing: no governing counts
                else (rnd.counts_round(), rnd.count_terms_round())
            )
            if ref.vector not in allowed:
                self._refuse_mismatch(ref, "record-count round")
            assert isinstance(ref.vector, Round)
            vector = ref.vector
        self.policy.charge(vq.body.analyst, work_units(vector.size))
        with run.lock:
            run.claim(ref.index, ref.part, self._where)
        digest = round_digest(vq.digest, ref.part, ref.index, ref.min_group_size, vector.to_dict())
        if vq.body.dp is None:
            return self._open_session(
                step, lambda: self._local(vector, run).view(np.uint64), ref.index, vq, digest, run
            )
        if ref.part == "all":
            local, dp_binding, reservation = self._dp_session(step, vq, vector, params, run)
        else:  # a Paillier DP round's record counts: the Paillier share, one reservation
            s2, reservation = self._paillier_dp(vq, run, rnd, params)

            def local() -> np.ndarray[Any, Any]:
                return add_noise(self._local(vector).view(np.uint64), s2)

            dp_binding = {"sigma2": f"{s2.numerator}/{s2.denominator}"}
        try:
            return self._open_session(
                step, local, ref.index, vq, digest, run, dp_binding, reservation
            )
        except BaseException:
            assert self.ledger is not None
            self.ledger.release(reservation)
            params["dp"]["charge"] = "released"
            raise

    def _open_session(
        self,
        step: types.SecAggStep,
        local: Callable[[], np.ndarray[Any, Any]],
        index: int,
        vq: VerifiedQuery,
        digest: str,
        run: Run | None = None,
        dp_binding: dict[str, Any] | None = None,
        reservation: Reservation | None = None,
    ) -> list[bytes]:
        """Start a SecAgg client over the vector ``local()`` and answer the advertise stage:
        the key advertisement, signed together with the session binding (round digest and
        this node's ``min_nodes``), the node's certificate and the binding."""
        s = step.setup
        cfg = s.config()
        if cfg.modulus_bits != 64:
            raise ProtocolError(f"{self._where}: statistics need 64-bit secure aggregation")
        min_nodes = self._min_nodes(vq)
        if len(cfg.client_ids) < min_nodes:
            raise PolicyError(
                f"{self._where}: a session of {len(cfg.client_ids)} node(s) is below this "
                f"node's min_nodes = {min_nodes}; refusing"
            )
        vector = local()
        if vector.shape[0] != cfg.vector_length:
            raise ProtocolError(
                f"{self._where}: round {index} has {vector.shape[0]} entries but the session "
                f"declares {cfg.vector_length}"
            )
        client = SecAggClient(cfg, step.client_id)
        session = _Session(
            client, vector, vq.digest, digest, self._clock(), vq.body.dp is None, run
        )
        session.reservation = reservation
        with self._lock:
            if s.session_id in self._sessions or s.session_id in self._used_ids:
                raise ProtocolError(f"{self._where}: session id reused; refusing")
            if len(self._sessions) >= MAX_SESSIONS:
                raise ProtocolError(f"{self._where}: too many concurrent sessions; retry later")
            self._sessions[s.session_id] = session
            self._used_ids[s.session_id] = None
            if len(self._used_ids) > MAX_USED_SESSION_IDS:
                del self._used_ids[next(iter(self._used_ids))]
        adv = client.advertise().to_bytes()
        bound: dict[str, Any] = {
            "round": digest,
            "node": self.name,
            "min_nodes": min_nodes,
            "session": s.session_id.hex(),
        }
        if dp_binding is not None:
            bound["dp"] = dp_binding  # this node's noise share, for the result's accuracy
        binding = canonical_json(bound)
        # signed with our certificate so that peers can check every participant is a real node
        # computing the same round
        return [adv, sign_blob(self._creds, adv + b"\x00" + binding), self._creds.cert_pem, binding]

    def _continue(
        self, step: types.SecAggStep, session: _Session, params: dict[str, Any]
    ) -> list[bytes]:
        with session.lock:
            try:
                out = self._stage(step, session)
            except BaseException:
                with self._lock:
                    self._sessions.pop(step.setup.session_id, None)
                if session.reservation is not None and not session.spent:
                    self._settle(session, spent=False)
                    params["dp_charge"] = "released"
                raise
            if step.stage is Stage.MASKED_INPUT and session.reservation is not None:
                params["dp_charge"] = "spent"
                params["dp_ledger"] = session.reservation.request_id
                params["dp_rho"] = session.reservation.rho
            return out

    def _stage(self, step: types.SecAggStep, session: _Session) -> list[bytes]:
        client = session.client
        if step.stage is Stage.SHARE_KEYS:
            out = client.share_keys(self._verified_roster(step, session))
            return [m.to_bytes() for _, m in sorted(out.items())]
        if step.stage is Stage.MASKED_INPUT:
            received = {}
            for raw in step.payloads:
                shares = EncryptedShares.from_bytes(raw)
                received[shares.sender] = shares
            masked = client.masked_input(session.vector, received).to_bytes()
            self._settle(session, spent=True)  # the noisy input leaves now: its budget is spent
            return [masked]
        if len(step.payloads) != 1:
            raise ProtocolError(f"{self._where}: unmask needs exactly one request")
        request = UnmaskRequest.from_bytes(step.payloads[0])
        min_nodes = self._min_nodes(session.run.query if session.run is not None else None)
        if len(request.survivors) < min_nodes:
            raise PolicyError(
                f"{self._where}: only {len(request.survivors)} node(s) survived to the unmask "
                f"stage, below this node's min_nodes = {min_nodes}; refusing to unmask"
            )
        if session.exact:
            self._check_members({session.names.get(c, "") for c in request.survivors})
        answer = client.unmask(request)
        with self._lock:
            self._sessions.pop(step.setup.session_id, None)
        return [answer.to_bytes()]

    def _verified_roster(
        self, step: types.SecAggStep, session: _Session
    ) -> dict[int, AdvertiseKeys]:
        """The roster, each entry signed by a distinct, valid node certificate of our CA, bound
        to the same round as ours, and at least as large as every member's ``min_nodes``.

        Stops a malicious aggregator from inventing participants it plays itself (a session
        of this node alone plus sybils would reveal this node's vector), and from summing this
        node's vector with other rounds (an empty filter at the others isolates this node).
        """
        p = step.payloads
        if len(p) % 4:
            raise ProtocolError(
                f"{self._where}: roster must be (keys, signature, cert, binding) quadruples"
            )
        roster: dict[int, AdvertiseKeys] = {}
        names: dict[str, int] = {}
        need = self._min_nodes(session.run.query if session.run is not None else None)
        for i in range(0, len(p), 4):
            msg = AdvertiseKeys.from_bytes(p[i])
            where = f"{self._where}: roster entry of client {msg.sender}"
            ident = verify_blob(
                self._creds.ca_pem,
                p[i + 2],
                p[i] + b"\x00" + p[i + 3],
                p[i + 1],
                role="node",
                where=where,
            )
            why = self.revocations.check(p[i + 2])
            if why:
                raise ProtocolError(f"{self._where}: roster entry of {ident.name}: {why}")
            try:
                binding = json.loads(p[i + 3])
                peer_round, peer_node = binding["round"], binding["node"]
                peer_min, peer_session = int(binding["min_nodes"]), binding["session"]
            except (ValueError, TypeError, KeyError):
                raise ProtocolError(f"{where}: malformed session binding") from None
            if peer_node != ident.name or peer_session != step.setup.session_id.hex():
                raise ProtocolError(f"{where}: its binding names another node or session")
            if peer_round != session.round_digest:
                raise ProtocolError(
                    f"{self._where}: node {ident.name} advertised another round for this "
                    "session (a different query, round or filter); aborting"
                )
            need = max(need, peer_min)
            if ident.name in names or msg.sender in roster:
                raise ProtocolError(
                    f"{self._where}: node {ident.name} appears twice in the roster; aborting"
                )
            if (msg.sender == step.client_id) != (ident.name == self.name):
                raise ProtocolError(
                    f"{self._where}: roster entry {msg.sender} is signed by {ident.name}"
                )
            names[ident.name] = msg.sender
            roster[msg.sender] = msg
        if len(roster) < need:
            raise PolicyError(
                f"{self._where}: the roster has {len(roster)} node(s); its members need at "
                f"least {need} (policy.min_nodes); refusing"
            )
        if session.exact:
            self._check_members(set(names))
        session.names = {c: n for n, c in names.items()}
        if session.run is not None:
            with session.run.lock:
                session.run.rosters.append(frozenset(names))
        return roster

    def _min_nodes(self, vq: VerifiedQuery | None) -> int:
        """``policy.min_nodes``, or 2 for a statistic over a vertical view: its sessions hold
        exactly the view's nodes, and every node of the view is shown the round totals anyway
        (a node subtracting its own share from a total learns only another node's masked
        share, or a figure the total already is)."""
        if vq is not None and vq.body.view is not None:
            return 2
        return self.policy.config.min_nodes

    def _check_members(self, present: set[str]) -> None:
        """``policy.exact_requires_all``: an exact answer only with every listed member."""
        cfg = self.policy.config
        if not cfg.exact_requires_all:
            return
        missing = sorted(set(cfg.members) - present)
        if missing:
            raise PolicyRefused(
                self.name,
                "exact_requires_all",
                f"an exact answer needs every member of the data space; missing: "
                f"{', '.join(missing)}. Re-run when they are up, or ask for a differentially "
                "private answer",
            )

    # ------------------------------------------------------------------ Paillier
    @_one_config
    def paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes:
        """One Paillier round: this node's encrypted sums (its time is measured when done)."""
        started = time.monotonic()
        out = self._paillier_stats(caller, req)
        self.metrics.paillier_seconds.observe(time.monotonic() - started)
        return out

    def _paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes:
        from trustspace.paillier import PublicKey

        ref = req.round
        try:
            pk = PublicKey(req.n)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{self._where}: invalid Paillier public key: {exc}") from None
        params: dict[str, Any] = {
            "method": "paillier",
            "round": ref.index,
            "key": pk.fingerprint,
            "key_bits": pk.bits,
            "suppressed": len(req.suppressed),
        }

        def check_key(vq: VerifiedQuery) -> None:
            if vq.body.method != "paillier" or vq.body.paillier_key != pk.fingerprint:
                raise PolicyError(
                    f"{self._where}: the Paillier key {pk.fingerprint[:16]} is not the one the "
                    "analyst signed; refusing to encrypt under it"
                )
            if pk.bits not in PAILLIER_KEY_BITS:
                raise PolicyError(
                    f"{self._where}: a {pk.bits}-bit Paillier modulus is not allowed; use "
                    f"{', '.join(map(str, PAILLIER_KEY_BITS))} bits"
                )

        def checks(vq: VerifiedQuery) -> None:
            check_key(vq)
            self._dp_check(vq)

        def work(vq: VerifiedQuery | None) -> bytes:
            assert vq is not None
            run, rnd = self._derive(vq, ref)
            if ref.vector != rnd:
                self._refuse_mismatch(ref, "round")
            # Only the non-count entries are encrypted: the aggregator sums the record counts
            # by secure aggregation anyway (min_group_size), so they travel only that way.
            sums = rnd.moment_round()
            if sums is None:
                raise ProtocolError(
                    f"{self._where}: round {rnd.index} holds only record counts, which are "
                    "summed by secure aggregation; there is nothing to encrypt"
                )
            if 2 * sums.size > MAX_PAILLIER_WORDS:
                raise ProtocolError(
                    f"{self._where}: round {rnd.index} would encrypt {2 * sums.size} words, more "
                    f"than the {MAX_PAILLIER_WORDS} a node encrypts per request"
                )
            bad = [i for i in req.suppressed if not 0 <= i < rnd.size]
            if bad:
                raise ProtocolError(f"{self._where}: suppressed index {bad[0]} out of range")
            if vq.body.dp is not None and req.suppressed:
                raise ProtocolError(
                    f"{self._where}: a differentially private round suppresses nothing"
                )
            self.policy.charge(vq.body.analyst, work_units(rnd.size, 2 * sums.size))
            with run.lock:
                seen = run.rosters[-1] if run.rosters else frozenset()
            if vq.body.dp is None:
                self._check_members(set(seen))  # the round's counts session named them
            with run.lock:
                run.claim(ref.index, "paillier", self._where)
            where = ~rnd.count_mask
            full = np.zeros(rnd.size, dtype=np.int64)
            local = self._local(sums)
            reservation = None
            if vq.body.dp is not None:
                s2, reservation = self._paillier_dp(vq, run, rnd, params)
                local = add_noise(local.view(np.uint64), s2).view(np.int64)
            full[where] = local
            full[list(req.suppressed)] = 0
            encoded = full[where]
            words = split_words(encoded)
            pooled = words.size >= PAILLIER_POOL_MIN_WORDS
            ev = pk.encrypt_vector(
                words,
                value_bits=PAILLIER_WORD_VALUE_BITS,
                headroom=req.headroom,
                processes=max(2, os.cpu_count() or 1) if pooled else 1,
            )
            if reservation is not None:  # the noisy sums leave now: the round's budget is spent
                assert self.ledger is not None
                self.ledger.commit(reservation)
                params["dp_charge"] = "spent"
                params["dp_rho"] = reservation.rho
            return ev.to_bytes()

        return self._handle(
            caller,
            req.query,
            step="paillier",
            params=params,
            check=self._stats_check,
            extra=checks,
            work=work,
        )

    # ------------------------------------------------------------------ anonymization
    def _anon_check(self, vq: VerifiedQuery) -> tuple[str, str, tuple[str, ...]]:
        if vq.body.operation != "anonymize":
            raise ProtocolError(
                f"{self._where}: the signed operation {vq.body.operation!r} is not an anonymization"
            )
        job = self._anon.job(vq.body.analyst, vq.body.request_id)
        return "anonymize.histogram", job.spec.dataset, job.spec.columns

    def _anon_advertise(
        self,
        caller: Identity,
        step: types.SecAggStep,
        ref: types.RoundRef,
        params: dict[str, Any],
    ) -> list[bytes]:
        """The advertise stage of one anonymization round: this node's vector of the job."""
        vector = ref.vector
        if not isinstance(vector, types.AnonVector):
            raise ProtocolError(f"{self._where}: an anonymization round carries no vector")
        req = vector.request
        params["vector"] = {"kind": req.kind, "levels": list(req.levels), "cells": req.cells}

        def work(vq: VerifiedQuery | None) -> list[bytes]:
            assert vq is not None
            job = self._anon.job(vq.body.analyst, vq.body.request_id)
            run = self._run(vq)
            self.policy.charge(vq.body.analyst, work_units(step.setup.vector_length))
            with run.lock:
                run.claim(ref.index, ref.part, self._where)
            digest = round_digest(
                vq.digest, ref.part, ref.index, 0, {"digest": vector.digest, **req.to_dict()}
            )
            return self._open_session(
                step, lambda: self._anon.vector(job, vector), ref.index, vq, digest, run
            )

        return self._handle(
            caller,
            step.query,
            step="secagg",
            params=params,
            check=self._anon_check,
            work=work,
            extra=lambda vq: self._anon.check_parties(len(step.setup.client_ids)),
        )

    @_one_config
    def anon_histogram(
        self, caller: Identity, signed: SignedQuery, nodes: tuple[str, ...]
    ) -> tuple[str, str]:
        """Prepare an anonymization job from the signed spec: policy, participants, this
        node's tuple counts."""
        state: dict[str, Any] = {}

        def check(vq: VerifiedQuery) -> tuple[str, str, tuple[str, ...]]:
            if vq.body.operation != "anonymize":
                raise ProtocolError(
                    f"{self._where}: the signed operation {vq.body.operation!r} is not an "
                    "anonymization"
                )
            spec = self._anon.parse_spec(vq.body.params, self.engine)
            state["spec"] = spec
            return "anonymize.histogram", spec.dataset, spec.columns

        def work(vq: VerifiedQuery | None) -> tuple[str, str]:
            assert vq is not None
            self._run(vq)
            self.policy.charge(vq.body.analyst)
            out = self._anon.prepare(state["spec"], vq.body.analyst, vq.body.request_id)
            return str(out["node"]), str(out["digest"])

        return self._handle(
            caller,
            signed,
            step="anonymize.histogram",
            params={"step": "prepare", "nodes": list(nodes)},
            check=check,
            work=work,
            extra=lambda vq: self._anon.check_prepare(state["spec"], len(nodes)),
        )

    def _job_check(
        self, operation: str
    ) -> Callable[[VerifiedQuery], tuple[str, str, tuple[str, ...]]]:
        """Apply and release touch whole rows: the policy checks every column of the dataset."""

        def check(vq: VerifiedQuery) -> tuple[str, str, tuple[str, ...]]:
            job = self._anon.job(vq.body.analyst, vq.body.request_id)
            return operation, job.spec.dataset, tuple(self.engine.schema(job.spec.dataset).columns)

        return check

    @_one_config
    def anon_apply(
        self, caller: Identity, signed: SignedQuery, result_json: str, digest: str, release: bool
    ) -> dict[str, Any]:
        """Apply the chosen transformation to this node's rows and write them locally."""

        def work(vq: VerifiedQuery | None) -> dict[str, Any]:
            assert vq is not None
            job = self._anon.job(vq.body.analyst, vq.body.request_id)
            self.policy.charge(vq.body.analyst)
            payload = {"result": result_json, "digest": digest, "release": release}
            return self._anon.apply(job, payload)

        return self._handle(
            caller,
            signed,
            step="anonymize.apply",
            params={"step": "apply", "digest": digest[:16]},
            check=self._job_check("anonymize.apply"),
            work=work,
        )

    @_one_config
    @_one_config
    def vertical_step(self, caller: Identity, step: types.VerticalStep) -> types.VerticalReply:
        """One step of a vertical protocol (``node._vertical``)."""
        return self.vertical.step(caller, step)

    def anon_release(self, caller: Identity, signed: SignedQuery) -> bytes:
        """The rows written by ``anon_apply``, if ``policy.release_rows`` allows it."""

        def work(vq: VerifiedQuery | None) -> bytes:
            assert vq is not None
            job = self._anon.job(vq.body.analyst, vq.body.request_id)
            return self._anon.release(job)

        return self._handle(
            caller,
            signed,
            step="anonymize.release",
            params={"step": "release"},
            check=self._job_check("anonymize.release"),
            work=work,
            extra=lambda vq: self.policy.check_release(vq.body.analyst),
        )

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        self.audit.close()
