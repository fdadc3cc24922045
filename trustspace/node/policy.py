"""A node's policy, checked before every computation: who may do what, on which data, how often.

A request is allowed when one rule lists the analyst, the operation, the dataset and every
column the request reads (its columns and the columns its filter mentions). A refusal is a
``PolicyRefused`` naming the node and the rule that failed (``analysts``, ``datasets``,
``operations``, ``purposes``, ``columns``, ``rate_limit``, ``release_rows``). The rate limit
charges by work (``work_units``: rounds, entries, encrypted words), not by request.
``min_group_size`` is not
checked here: it is a property of *global* counts, reported to the aggregator and enforced there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trustspace.errors import PolicyError
from trustspace.node.config import ALL, PolicyConfig, Rule

#: Work units of one computation: every round a node computes costs one unit, plus one per
#: ``ENTRIES_PER_UNIT`` entries of its vector (a 20,000-bin histogram costs 5) and, on the
#: Paillier path, one per ``WORDS_PER_UNIT`` words it encrypts (homomorphic work is ~1,000
#: times dearer per entry than a secure sum). The rate limit's tokens are these units.
ENTRIES_PER_UNIT = 4096
WORDS_PER_UNIT = 256


def work_units(entries: int, encrypted_words: int = 0) -> int:
    """The rate-limit cost of computing one round of ``entries`` entries (see above)."""
    return 1 + entries // ENTRIES_PER_UNIT + encrypted_words // WORDS_PER_UNIT


class PolicyRefused(PolicyError):
    """A node's policy refused a request; ``node`` and ``rule`` say where and which rule."""

    def __init__(self, node: str, rule: str, message: str) -> None:
        super().__init__(f"node {node} refused the request (policy rule {rule!r}): {message}")
        self.node = node
        self.rule = rule


@dataclass(frozen=True)
class Request:
    """What a policy decision is about."""

    analyst: str
    operation: str
    dataset: str
    columns: tuple[str, ...]
    request_id: str = ""
    purpose: str | None = None  # the purpose the analyst declared (signed with the query)


def _matches(allowed: tuple[str, ...], value: str) -> bool:
    return ALL in allowed or value in allowed


def _op_matches(allowed: tuple[str, ...], op: str) -> bool:
    """Operations also match a family: ``"anonymize.*"`` allows every ``anonymize.`` step."""
    return _matches(allowed, op) or any(a.endswith(".*") and op.startswith(a[:-1]) for a in allowed)


class _Bucket:
    def __init__(self, capacity: int, per_second: float, now: float) -> None:
        self.tokens = float(capacity)
        self.capacity = capacity
        self.rate = per_second
        self.stamp = now

    def take(self, now: float, units: int = 1) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        # a step dearer than the whole burst can still run once the bucket is full
        need = min(float(units), float(self.capacity))
        if self.tokens >= need:
            self.tokens -= need
            return True
        return False


class Policy:
    """Evaluates a ``PolicyConfig`` for one node; thread-safe.

    >>> from trustspace.node.config import PolicyConfig, Rule
    >>> p = Policy("n1", PolicyConfig((Rule(("alice",), ("count",), ("*",)),)))
    >>> p.check(Request("alice", "count", "default", ()))
    >>> p.check(Request("bob", "count", "default", ()))
    Traceback (most recent call last):
    ...
    trustspace.node.policy.PolicyRefused: node n1 refused the request (policy rule 'analysts'): \
no rule lets analyst 'bob' use this node; add 'bob' to [[policy.rules]] analysts
    """

    def __init__(
        self,
        node: str,
        config: PolicyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def successor(self, config: PolicyConfig) -> Policy:
        """The policy ``config`` for a live reload, keeping each analyst's rate-limit bucket
        (a reload hands out no fresh burst): its tokens, refilled at the old rate until now,
        are capped at the new burst and refill at the new rate from now on."""
        new = Policy(self.node, config, clock=self._clock)
        limit = config.rate_limit
        if limit is None:
            return new
        with self._lock:
            now = self._clock()
            for analyst, old in self._buckets.items():
                old.take(now, 0)  # refill up to now at the old rate
                bucket = _Bucket(limit.burst, limit.per_minute / 60.0, now)
                bucket.tokens = min(old.tokens, float(limit.burst))
                new._buckets[analyst] = bucket
        return new

    @property
    def min_group_size(self) -> int:
        return self.config.min_group_size

    def check(self, req: Request) -> None:
        """Raise ``PolicyRefused`` unless the rules allow ``req`` (no charge: see ``charge``)."""
        self._check_rules(req)

    def exact_granted(self, req: Request) -> bool:
        """Whether a rule with ``exact = true`` allows ``req`` (under ``[policy.dp] required``:
        that request may have an exact answer)."""
        return any(
            r.exact
            and _matches(r.analysts, req.analyst)
            and _matches(r.datasets, req.dataset)
            and _op_matches(r.operations, req.operation)
            and (ALL in r.purposes or (req.purpose is not None and req.purpose in r.purposes))
            and all(_matches(r.columns, c) for c in req.columns)
            for r in self.config.rules
        )

    def charge(self, analyst: str, units: int = 1) -> None:
        """Take ``units`` work units (``work_units``) from ``analyst``'s rate limit, or raise
        ``PolicyRefused`` (rule ``rate_limit``) and take nothing."""
        limit = self.config.rate_limit
        if limit is None:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(analyst)
            if bucket is None:
                bucket = self._buckets[analyst] = _Bucket(limit.burst, limit.per_minute / 60.0, now)
            if not bucket.take(now, units):
                raise PolicyRefused(
                    self.node,
                    "rate_limit",
                    f"analyst {analyst!r} exceeded {limit.per_minute:g} work units per minute "
                    f"(burst {limit.burst}; this step costs {units}: one per round, more for "
                    "large rounds and for encryption); wait and retry",
                )

    def may_see(self, analyst: str, dataset: str) -> bool:
        """Whether some rule lets ``analyst`` use ``dataset`` (else its schema is not shown)."""
        return any(
            _matches(r.analysts, analyst) and _matches(r.datasets, dataset)
            for r in self.config.rules
        )

    def check_release(self, analyst: str) -> None:
        """Raise ``PolicyRefused`` unless anonymized rows may leave this node."""
        if not self.config.release_rows:
            raise PolicyRefused(
                self.node,
                "release_rows",
                f"anonymized rows stay on this node (release_rows = false); analyst {analyst!r} "
                "receives only the local output path",
            )

    def _check_rules(self, req: Request) -> None:
        rules: Iterable[Rule] = self.config.rules
        cand = [r for r in rules if _matches(r.analysts, req.analyst)]
        if not cand:
            raise PolicyRefused(
                self.node,
                "analysts",
                f"no rule lets analyst {req.analyst!r} use this node; add {req.analyst!r} "
                "to [[policy.rules]] analysts",
            )
        cand = [r for r in cand if _matches(r.datasets, req.dataset)]
        if not cand:
            raise PolicyRefused(
                self.node,
                "datasets",
                f"analyst {req.analyst!r} may not use dataset {req.dataset!r}",
            )
        cand = [r for r in cand if _op_matches(r.operations, req.operation)]
        if not cand:
            raise PolicyRefused(
                self.node,
                "operations",
                f"analyst {req.analyst!r} may not run {req.operation!r} on dataset {req.dataset!r}",
            )
        with_purpose = [
            r for r in cand if ALL in r.purposes or (req.purpose and req.purpose in r.purposes)
        ]
        if not with_purpose:
            allowed = sorted({p for r in cand for p in r.purposes})
            raise PolicyRefused(
                self.node,
                "purposes",
                f"analyst {req.analyst!r} may run {req.operation!r} on dataset {req.dataset!r} "
                f"only for the purpose(s) {', '.join(map(repr, allowed))}; declared: "
                f"{req.purpose!r} (Federation.connect(..., purpose=...), or "
                "`trustspace query --purpose`)",
            )
        cand = with_purpose
        best: tuple[str, ...] = ()
        for r in cand:
            denied = tuple(c for c in req.columns if not _matches(r.columns, c))
            if not denied:
                return
            if not best or len(denied) < len(best):
                best = denied
        raise PolicyRefused(
            self.node,
            "columns",
            f"analyst {req.analyst!r} may not read column(s) {', '.join(best)} of dataset "
            f"{req.dataset!r} for {req.operation!r}",
        )
