"""What a node keeps for one analyst request: the verified signed query and the rounds it derived.

A node trusts no other party's description of a computation. For every request it verifies
the analyst's signed query itself (``Runs.verify``) and keeps one ``Run`` per request id: the
query's pure stats state machine, started with the strictest participant's
``min_group_size``, which the node advances itself. The driver (the aggregator, or the analyst
on the Paillier path) sends the total it fed for the previous round; the node decodes it with
its *own* previous round, feeds it, and derives the next round. What the driver asked for is
compared with what the node derived (``derive``): any difference in terms, columns, filter,
bins, centres or encoding is refused. Each (round, part) is computed at most once per request,
a request id used by another query is refused, and an expired query is refused.

What this does not stop (docs/security.md, "What a node learns from the totals it is shown"):
a dishonest driver may feed totals that are not the true sums, steering the data-dependent
parameters of later rounds (ranges, centres, quantile bins) within what the query's own state
machine can ask for; every such round is still the query's round, over its filter, with its
record counts checked against ``min_group_size``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustspace.dp import Reservation
from trustspace.errors import AuthenticationError, PolicyError, ProtocolError
from trustspace.node.policy import PolicyRefused
from trustspace.stats import Computation, DPComputation, Query, Round, TableSchema, start
from trustspace.transport.signing import SignedQuery, VerifiedQuery, verify_query
from trustspace.transport.types import RoundTotal

#: Requests a node keeps state for at once; the oldest is forgotten first (its id stays refused).
MAX_RUNS = 1024
#: Request ids remembered after their run is forgotten, so that they cannot be used again.
MAX_SEEN_IDS = 65_536
#: Verified signatures cached (by signature digest), so a many-round query is verified once.
MAX_VERIFIED = 4096


def total_digest(total: RoundTotal | None) -> str:
    if total is None:
        return ""
    h = hashlib.sha256(f"{total.index}:{list(total.suppressed)}:".encode())
    h.update(np.asarray(total.total, dtype=np.uint64).tobytes())
    return h.hexdigest()


@dataclass
class Run:
    """One request at this node: its verified query and the rounds derived so far."""

    query: VerifiedQuery
    stats: Query | None
    k: int | None = None
    comp: Computation | DPComputation | None = None
    rounds: list[Round] = field(default_factory=list)
    fed: list[str] = field(default_factory=list)  # digest of the total fed for round i
    used: set[tuple[int, str]] = field(default_factory=set)
    #: the node names of every verified secure-aggregation roster of this request, in order
    rosters: list[frozenset[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a Paillier DP round's one budget reservation (its counts and sums parts share it)
    dp_reservation: Reservation | None = None
    #: over a vertical view: this node's additive share of each round's vector (uint64), left
    #: by the round's secure product until its secure-aggregation session takes it
    shares: dict[int, np.ndarray[Any, Any]] = field(default_factory=dict)

    def claim(self, index: int, part: str, where: str) -> None:
        """Mark (round, part) as computed; a second time is refused (a replay)."""
        if (index, part) in self.used:
            raise ProtocolError(
                f"{where}: round {index} ({part}) of request {self.query.body.request_id} was "
                "already computed; refusing to compute it again"
            )
        self.used.add((index, part))

    def derive(
        self, index: int, k: int, previous: RoundTotal | None, schema: TableSchema, where: str
    ) -> Round:
        """The round ``index`` of this request's query, derived here (see module docstring)."""
        if self.stats is None:
            raise ProtocolError(f"{where}: the signed query is not a statistic; no rounds")
        if self.k is None:
            self.k = k
            self.comp = start(self.stats, schema, k, self.query.body.dp)
        elif self.k != k:
            raise ProtocolError(
                f"{where}: round {index} names min_group_size {k}, the request's earlier rounds "
                f"{self.k}; refusing"
            )
        assert self.comp is not None
        if index == 1 and not self.rounds:  # round 0 needs no total: derive it first
            first = self.comp.next_round()
            if first is None:
                raise ProtocolError(f"{where}: the query has no rounds")
            self.rounds.append(first)
        n = len(self.rounds)
        if index == n:
            if index == 0:
                if previous is not None:
                    raise ProtocolError(f"{where}: round 0 has no previous round")
            else:
                self._feed(index, previous, where)
            nxt = self.comp.next_round()
            if nxt is None:
                raise ProtocolError(
                    f"{where}: the query needs {n} round(s); round {index} does not exist"
                )
            self.rounds.append(nxt)
        elif index == n - 1:
            if index > 0 and total_digest(previous) != self.fed[index - 1]:
                raise ProtocolError(
                    f"{where}: round {index} is asked for again with another previous total; "
                    "refusing"
                )
        else:
            raise ProtocolError(
                f"{where}: round {index} asked for out of order (this node has derived {n})"
            )
        return self.rounds[index]

    def _feed(self, index: int, previous: RoundTotal | None, where: str) -> None:
        assert self.comp is not None
        if isinstance(self.comp, DPComputation):
            raise ProtocolError(
                f"{where}: a differentially private query has one round; round {index} does "
                "not exist"
            )
        if previous is None or previous.index != index - 1:
            raise ProtocolError(f"{where}: round {index} needs the total of round {index - 1}")
        prev = self.rounds[index - 1]
        if len(previous.total) != prev.size:
            raise ProtocolError(
                f"{where}: the total of round {index - 1} has {len(previous.total)} entries, "
                f"the round {prev.size}"
            )
        if any(not 0 <= i < prev.size for i in previous.suppressed):
            raise ProtocolError(f"{where}: a suppressed index of round {index - 1} is out of range")
        decoded = prev.decode(np.asarray(previous.total, dtype=np.uint64))
        self.comp.feed(decoded, tuple(previous.suppressed))
        self.fed.append(total_digest(previous))


class Runs:
    """The node's runs and verified queries (thread-safe; bounded)."""

    def __init__(
        self,
        node: str,
        where: str,
        *,
        ca_pem: bytes,
        audience: str,
        revoked: Callable[[bytes], str],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._where = where
        self._node = node
        self._ca = ca_pem
        self._audience = audience
        self._revoked = revoked  # consulted on every use of a query, cached or not
        self._now = now
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._seen: OrderedDict[str, str] = OrderedDict()  # request id -> query digest
        self._verified: OrderedDict[str, VerifiedQuery] = OrderedDict()
        self._ended: OrderedDict[str, str] = OrderedDict()  # request id -> why it was ended

    def reverify(self) -> None:
        """Verify every query again on its next use (a live reload changed what is trusted)."""
        with self._lock:
            self._verified.clear()

    def forget(self, which: Callable[[Run], bool], why: str) -> None:
        """End the runs ``which`` selects (their ids stay refused; a later step says ``why``)."""
        with self._lock:
            for rid in [r for r, run in self._runs.items() if which(run)]:
                del self._runs[rid]
                self._ended[rid] = why
            while len(self._ended) > MAX_SEEN_IDS:
                self._ended.popitem(last=False)

    def verify(self, signed: SignedQuery) -> VerifiedQuery:
        """Verify ``signed`` (cached by its signature); expiry is checked on every call."""
        key = signed.signature_digest + signed.digest
        with self._lock:
            vq = self._verified.get(key)
        now = self._now()
        if vq is not None:
            why = self._revoked(signed.certificate)  # revoked since it was verified?
            if why:
                raise PolicyRefused(
                    self._node,
                    "signed_query",
                    f"the query's signer {vq.analyst.name!r} is revoked at this node ({why})",
                )
            if vq.body.expires_at <= now:
                raise ProtocolError(
                    f"{self._where}: the query expired at {vq.body.expires:%Y-%m-%d %H:%M:%S} "
                    "UTC; run it again"
                )
            return vq
        try:
            vq = verify_query(
                signed, ca_pem=self._ca, audience=self._audience, revoked=self._revoked,
                now=now, where=self._where,
            )  # fmt: skip
        except AuthenticationError as exc:
            # a refusal of this query (not of the aggregator's connection): the aggregator
            # must report it, not treat this node as unreachable
            why = str(exc).removeprefix(f"{self._where}: ")
            raise PolicyRefused(self._node, "signed_query", why) from None
        with self._lock:
            self._verified[key] = vq
            while len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
        return vq

    def run(self, vq: VerifiedQuery, stats: Callable[[], Query | None]) -> Run:
        """The run of ``vq``'s request id (made on first use); a request id that another
        query used is refused."""
        rid = vq.body.request_id
        with self._lock:
            seen = self._seen.get(rid)
            if seen is not None and seen != vq.digest:
                raise PolicyError(
                    f"{self._where}: request id {rid} was used by another query; refusing it "
                    "(a replay?). Sign each query with a fresh request id"
                )
            run = self._runs.get(rid)
            if run is not None:
                return run
            if seen is not None:
                why = self._ended.get(rid)
                if why is not None:
                    raise ProtocolError(f"{self._where}: request {rid} was ended: {why}")
                raise ProtocolError(
                    f"{self._where}: request {rid} is finished or was forgotten; run the query "
                    "again"
                )
        made = Run(vq, stats())
        with self._lock:
            run = self._runs.setdefault(rid, made)
            self._seen[rid] = vq.digest
            while len(self._runs) > MAX_RUNS:
                self._runs.popitem(last=False)
            while len(self._seen) > MAX_SEEN_IDS:
                self._seen.popitem(last=False)
        return run

    def finish(self, request_id: str) -> None:
        """Forget a request's state (its id stays refused)."""
        with self._lock:
            self._runs.pop(request_id, None)

    def expire(self) -> None:
        now = self._now()
        with self._lock:
            for rid in [r for r, run in self._runs.items() if run.query.body.expires_at <= now]:
                del self._runs[rid]

    def get(self, request_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(request_id)


def query_of(vq: VerifiedQuery) -> Query | None:
    """The signed statistic as a ``stats.Query`` (None for other operations)."""
    b = vq.body
    from trustspace.stats import OPS

    if b.operation not in OPS:
        return None
    data: dict[str, Any] = {
        "op": b.operation,
        "dataset": b.dataset,
        "columns": list(b.columns),
        "where": b.where,
        "params": dict(b.params),
    }
    try:
        return Query.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"the signed query is not a valid statistic: {exc}") from None
