"""A node: its engine over local files, policy, audit log and secure-aggregation sessions.

``NodeService`` is the handler behind the gRPC servicer (``transport.servicers``). Every call
is checked against the policy *before* any computation and written to the audit log (fsync'd)
*before* the answer leaves; a call whose audit line cannot be written fails.

Trust assumption: only certificates with role ``aggregator`` may call a node (the servicer
checks it); the analyst identity in a request is the one the aggregator read from the
analyst's certificate. A node therefore trusts the data space's aggregator to forward it
faithfully (the audit line records both the analyst and the forwarding aggregator).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np

from trustspace.errors import (
    DataError,
    PolicyError,
    ProtocolError,
    TrustspaceError,
)
from trustspace.node import _fault
from trustspace.node._anon import AnonJob, AnonJobs
from trustspace.node.audit import AuditLog
from trustspace.node.config import NodeConfig
from trustspace.node.policy import Policy, Request
from trustspace.secagg.client import SecAggClient
from trustspace.secagg.config import SecAggConfig
from trustspace.secagg.messages import AdvertiseKeys, EncryptedShares, UnmaskRequest
from trustspace.secagg.stage import Stage
from trustspace.stats import (
    PAILLIER_WORD_VALUE_BITS,
    Round,
    filter_columns,
    parse_filter,
    split_words,
)
from trustspace.transport import types
from trustspace.transport.ca import (
    Credentials,
    Identity,
    revocation_check,
    sign_blob,
    verify_blob,
)

if TYPE_CHECKING:
    from trustspace.engine import LocalEngine

log = logging.getLogger("trustspace.node")
T = TypeVar("T")
MAX_SESSIONS = 256  # concurrent secure-aggregation sessions kept in memory
#: Session ids remembered after their session ends, so that a replayed advertise cannot start
#: a finished session again (32 bytes each: 2 MiB at most; the oldest are forgotten first).
MAX_USED_SESSION_IDS = 65_536


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
    analyst: str
    request_id: str
    created: float
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    ) -> None:
        self.name = config.name
        self._creds = credentials
        self.config = config
        self.engine = engine
        self.policy = Policy(config.name, config.policy)
        self.audit = audit if audit is not None else AuditLog(config.audit_path)
        self._clock = clock
        self._sessions: dict[bytes, _Session] = {}
        self._used_ids: dict[bytes, None] = {}  # insertion-ordered: oldest first
        self._lock = threading.Lock()
        self._datasets = {d.name for d in config.datasets}
        self._anon = AnonJobs(config, engine, clock, self._datasets)

    # ------------------------------------------------------------------ audit + policy
    def _handle(
        self,
        caller: Identity,
        ctx: types.RequestContext,
        *,
        operation: str,
        dataset: str,
        columns: tuple[str, ...],
        params: dict[str, Any],
        work: Callable[[], T],
        check: bool = True,
        unchecked_reason: str = "",
        extra: Callable[[], None] | None = None,
    ) -> T:
        """Check policy (and ``extra``, a further policy check), run ``work``, write the audit
        line (fsync), then return."""
        entry: dict[str, Any] = {
            "requester": ctx.analyst,
            "via": caller.name,
            "request_id": ctx.request_id,
            "operation": operation,
            "dataset": dataset,
            "columns": list(columns),
            "params": params,
        }
        try:
            if check:
                if not ctx.analyst:
                    raise PolicyError(
                        f"node {self.name}: request from {caller.name} names no analyst"
                    )
                self.policy.check(Request(ctx.analyst, operation, dataset, columns, ctx.request_id))
            if extra is not None:
                extra()
        except PolicyError as exc:
            entry.update(decision="deny", reason=str(exc), outcome="refused")
            self.audit.append(entry)
            log.info("%s: refused %s for %s: %s", self.name, operation, ctx.analyst, exc)
            raise
        entry.update(decision="allow", reason="policy rules matched" if check else unchecked_reason)
        try:
            result = work()
        except TrustspaceError as exc:
            entry["outcome"] = f"error: {type(exc).__name__}: {exc}"
            self.audit.append(entry)
            raise
        except Exception as exc:
            entry["outcome"] = f"error: internal ({type(exc).__name__})"
            self.audit.append(entry)
            raise
        entry["outcome"] = "ok"
        self.audit.append(entry)
        return result

    # ------------------------------------------------------------------ describe
    def describe(self, caller: Identity, ctx: types.RequestContext) -> types.NodeDescription:
        def work() -> types.NodeDescription:
            return types.NodeDescription(
                node=self.name,
                datasets=tuple(
                    types.DatasetDescription(d.name, self.engine.schema(d.name).to_dict())
                    for d in self.config.datasets
                    if self.policy.may_see(ctx.analyst, d.name)
                ),
                min_group_size=self.policy.min_group_size,
                release_rows=self.policy.config.release_rows,
            )

        return self._handle(
            caller,
            ctx,
            operation="describe_datasets",
            dataset="",
            columns=(),
            params={},
            work=work,
            check=False,
            unchecked_reason="schemas only, filtered by policy",
        )

    # ------------------------------------------------------------------ local vectors
    def _check_round(self, ctx: types.RequestContext, rnd: Round) -> tuple[str, ...]:
        if rnd.dataset not in self._datasets:
            raise PolicyError(
                f"node {self.name} serves no dataset {rnd.dataset!r} "
                f"(it serves {', '.join(sorted(self._datasets))})"
            )
        if ctx.dataset and ctx.dataset != rnd.dataset:
            raise ProtocolError(
                f"node {self.name}: request names dataset {ctx.dataset!r} but its round reads "
                f"{rnd.dataset!r}"
            )
        return round_columns(rnd)

    def _local(self, rnd: Round) -> np.ndarray[Any, Any]:
        """The round's local vector, fixed-point encoded as int64 (two's complement)."""
        vec = np.asarray(self.engine.compute(rnd), dtype=np.float64)
        try:
            encoded: np.ndarray[Any, Any] = rnd.encode(vec).view(np.int64)
        except ValueError as exc:
            raise DataError(
                f"node {self.name}: local aggregate of round {rnd.index}: {exc}"
            ) from None
        return encoded

    # ------------------------------------------------------------------ secure aggregation
    def _expire(self) -> None:
        now = self._clock()
        with self._lock:
            for sid in [
                s
                for s, v in self._sessions.items()
                if now - v.created > self.config.session_timeout_s
            ]:
                del self._sessions[sid]

    def secagg_step(self, caller: Identity, step: types.SecAggStep) -> list[bytes]:
        _fault.trip(f"secagg:{step.stage}")  # test-only, off unless TRUSTSPACE_TEST_FAULT is set
        self._expire()
        ctx = step.context
        params: dict[str, Any] = {
            "stage": step.stage,
            "session": step.setup.session_id.hex()[:16],
            "query": dict(ctx.params),
        }
        if step.stage is Stage.ADVERTISE and isinstance(step.vector, types.AnonVector):
            return self._anon_advertise(caller, step, step.vector, params)
        if step.stage is Stage.ADVERTISE:
            rnd = step.vector
            if not isinstance(rnd, Round):
                raise ProtocolError(f"node {self.name}: the advertise stage carries no round")
            params["round"] = rnd.index
            return self._handle(
                caller,
                ctx,
                operation=ctx.operation,
                dataset=rnd.dataset,
                columns=round_columns(rnd),
                params=params,
                work=lambda: self._advertise(step, rnd),
            )
        with self._lock:
            session = self._sessions.get(step.setup.session_id)
        if session is None:
            raise ProtocolError(
                f"node {self.name}: no secure-aggregation session {params['session']} (it "
                "expired or never started); re-run the query"
            )
        if session.analyst != ctx.analyst or session.request_id != ctx.request_id:
            raise ProtocolError(
                f"node {self.name}: session {params['session']} belongs to another request"
            )
        return self._handle(
            caller,
            ctx,
            operation=ctx.operation,
            dataset=ctx.dataset,
            columns=ctx.columns,
            params=params,
            work=lambda: self._continue(step, session),
            check=False,
            unchecked_reason="continues a session allowed at its advertise stage",
        )

    def _advertise(self, step: types.SecAggStep, rnd: Round) -> list[bytes]:
        self._check_round(step.context, rnd)
        return self._open_session(step, lambda: self._local(rnd).view(np.uint64), rnd.index)

    def _open_session(
        self, step: types.SecAggStep, local: Callable[[], np.ndarray[Any, Any]], index: int
    ) -> list[bytes]:
        """Start a SecAgg client over the vector ``local()`` and answer the advertise stage."""
        s = step.setup
        cfg = SecAggConfig(
            session_id=s.session_id,
            client_ids=s.client_ids,
            vector_length=s.vector_length,
            threshold=s.threshold,
            neighbors=s.neighbors,
            modulus_bits=s.modulus_bits,
        )
        if cfg.modulus_bits != 64:
            raise ProtocolError(f"node {self.name}: statistics need 64-bit secure aggregation")
        vector = local()
        if vector.shape[0] != cfg.vector_length:
            raise ProtocolError(
                f"node {self.name}: round {index} has {vector.shape[0]} entries but the session "
                f"declares {cfg.vector_length}"
            )
        client = SecAggClient(cfg, step.client_id)
        session = _Session(
            client, vector, step.context.analyst, step.context.request_id, self._clock()
        )
        with self._lock:
            if s.session_id in self._sessions or s.session_id in self._used_ids:
                raise ProtocolError(f"node {self.name}: session id reused; refusing")
            if len(self._sessions) >= MAX_SESSIONS:
                raise ProtocolError(f"node {self.name}: too many concurrent sessions; retry later")
            self._sessions[s.session_id] = session
            self._used_ids[s.session_id] = None
            if len(self._used_ids) > MAX_USED_SESSION_IDS:
                del self._used_ids[next(iter(self._used_ids))]
        adv = client.advertise().to_bytes()
        # signed with our certificate so that peers can check every participant is a real node
        return [adv, sign_blob(self._creds, adv), self._creds.cert_pem]

    def _continue(self, step: types.SecAggStep, session: _Session) -> list[bytes]:
        with session.lock:
            try:
                return self._stage(step, session)
            except BaseException:
                with self._lock:
                    self._sessions.pop(step.setup.session_id, None)
                raise

    def _stage(self, step: types.SecAggStep, session: _Session) -> list[bytes]:
        client = session.client
        if step.stage is Stage.SHARE_KEYS:
            out = client.share_keys(self._verified_roster(step))
            return [m.to_bytes() for _, m in sorted(out.items())]
        if step.stage is Stage.MASKED_INPUT:
            received = {}
            for raw in step.payloads:
                shares = EncryptedShares.from_bytes(raw)
                received[shares.sender] = shares
            return [client.masked_input(session.vector, received).to_bytes()]
        if len(step.payloads) != 1:
            raise ProtocolError(f"node {self.name}: unmask needs exactly one request")
        answer = client.unmask(UnmaskRequest.from_bytes(step.payloads[0]))
        with self._lock:
            self._sessions.pop(step.setup.session_id, None)
        return [answer.to_bytes()]

    def _verified_roster(self, step: types.SecAggStep) -> dict[int, AdvertiseKeys]:
        """The roster, each entry signed by a distinct, valid node certificate of our CA.

        Stops a malicious aggregator from inventing participants it plays itself (a session
        of this node alone plus sybils would reveal this node's vector).
        """
        p = step.payloads
        if len(p) % 3:
            raise ProtocolError(f"node {self.name}: roster must be (keys, signature, cert) triples")
        roster: dict[int, AdvertiseKeys] = {}
        names: dict[str, int] = {}
        for i in range(0, len(p), 3):
            msg = AdvertiseKeys.from_bytes(p[i])
            ident = verify_blob(
                self._creds.ca_pem,
                p[i + 2],
                p[i],
                p[i + 1],
                role="node",
                where=f"node {self.name}: roster entry of client {msg.sender}",
            )
            why = revocation_check(self.config.tls.revoked)(p[i + 2])
            if why:
                raise ProtocolError(f"node {self.name}: roster entry of {ident.name}: {why}")
            if ident.name in names or msg.sender in roster:
                raise ProtocolError(
                    f"node {self.name}: node {ident.name} appears twice in the roster; aborting"
                )
            if (msg.sender == step.client_id) != (ident.name == self.name):
                raise ProtocolError(
                    f"node {self.name}: roster entry {msg.sender} is signed by {ident.name}"
                )
            names[ident.name] = msg.sender
            roster[msg.sender] = msg
        return roster

    # ------------------------------------------------------------------ Paillier
    def paillier_stats(self, caller: Identity, req: types.PaillierRequest) -> bytes:
        from trustspace.paillier import PublicKey

        ctx = req.context
        rnd = req.round
        try:
            pk = PublicKey(req.n)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"node {self.name}: invalid Paillier public key: {exc}") from None
        params: dict[str, Any] = {
            "method": "paillier",
            "round": rnd.index,
            "key": pk.fingerprint,
            "key_bits": pk.bits,
            "suppressed": len(req.suppressed),
            "query": dict(ctx.params),
        }

        def work() -> bytes:
            self._check_round(ctx, rnd)
            # Only the non-count entries are encrypted: the aggregator sums the record counts
            # by secure aggregation anyway (min_group_size), so they travel only that way.
            sums = rnd.moment_round()
            if sums is None:
                raise ProtocolError(
                    f"node {self.name}: round {rnd.index} holds only record counts, which are "
                    "summed by secure aggregation; there is nothing to encrypt"
                )
            bad = [i for i in req.suppressed if not 0 <= i < rnd.size]
            if bad:
                raise ProtocolError(f"node {self.name}: suppressed index {bad[0]} out of range")
            where = ~rnd.count_mask
            full = np.zeros(rnd.size, dtype=np.int64)
            full[where] = self._local(sums)
            full[list(req.suppressed)] = 0
            encoded = full[where]
            ev = pk.encrypt_vector(
                split_words(encoded),
                value_bits=PAILLIER_WORD_VALUE_BITS,
                headroom=req.headroom,
            )
            return ev.to_bytes()

        return self._handle(
            caller,
            ctx,
            operation=ctx.operation,
            dataset=rnd.dataset,
            columns=round_columns(rnd),
            params=params,
            work=work,
        )

    # ------------------------------------------------------------------ anonymization
    def _anon_advertise(
        self,
        caller: Identity,
        step: types.SecAggStep,
        vector: types.AnonVector,
        params: dict[str, Any],
    ) -> list[bytes]:
        """The advertise stage of one anonymization round: this node's vector of the job."""
        ctx = step.context
        job = self._anon.job(ctx.analyst, ctx.request_id)
        req = vector.request
        params["vector"] = {"kind": req.kind, "levels": list(req.levels), "cells": req.cells}
        return self._handle(
            caller,
            ctx,
            operation="anonymize.histogram",
            dataset=job.spec.dataset,
            columns=job.spec.columns,
            params=params,
            work=lambda: self._open_session(step, lambda: self._anon.vector(job, vector), 0),
            extra=lambda: self._anon.check_parties(len(step.setup.client_ids)),
        )

    def anon_histogram(
        self, caller: Identity, ctx: types.RequestContext, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Prepare an anonymization job: policy, participants, this node's tuple counts."""
        try:
            spec, nodes = self._anon.parse_spec(payload)
        except TrustspaceError as exc:
            self._refuse_malformed(caller, ctx, "anonymize.histogram", exc)
        params = {
            "step": "prepare",
            "quasi_identifiers": list(spec.quasi_identifiers),
            "models": [m.describe() for m in spec.models()],
            "suppression_limit": spec.suppression_limit,
            "disclosure": spec.disclosure,
            "nodes": list(nodes),
        }
        return self._handle(
            caller,
            ctx,
            operation="anonymize.histogram",
            dataset=spec.dataset,
            columns=spec.columns,
            params=params,
            work=lambda: self._anon.prepare(spec, ctx.analyst, ctx.request_id),
            extra=lambda: self._anon.check_prepare(spec, len(nodes)),
        )

    def _anon_job(
        self, caller: Identity, ctx: types.RequestContext, operation: str
    ) -> tuple[AnonJob, tuple[str, ...]]:
        """The prepared job of this request and every column of its dataset (apply and release
        touch whole rows); an unknown or expired job is refused and audited."""
        try:
            job = self._anon.job(ctx.analyst, ctx.request_id)
        except TrustspaceError as exc:
            self._refuse_malformed(caller, ctx, operation, exc)
        return job, tuple(self.engine.schema(job.spec.dataset).columns)

    def anon_apply(
        self, caller: Identity, ctx: types.RequestContext, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply the chosen transformation to this node's rows and write them locally."""
        job, columns = self._anon_job(caller, ctx, "anonymize.apply")
        return self._handle(
            caller,
            ctx,
            operation="anonymize.apply",
            dataset=job.spec.dataset,
            columns=columns,
            params={"step": "apply", "digest": job.spec.digest()[:16]},
            work=lambda: self._anon.apply(job, payload),
        )

    def anon_release(self, caller: Identity, ctx: types.RequestContext) -> bytes:
        """The rows written by ``anon_apply``, if ``policy.release_rows`` allows it."""
        job, columns = self._anon_job(caller, ctx, "anonymize.release")
        return self._handle(
            caller,
            ctx,
            operation="anonymize.release",
            dataset=job.spec.dataset,
            columns=columns,
            params={"step": "release", "path": str(job.output) if job.output else ""},
            work=lambda: self._anon.release(job),
            extra=lambda: self.policy.check_release(ctx.analyst),
        )

    def _refuse_malformed(
        self, caller: Identity, ctx: types.RequestContext, operation: str, exc: TrustspaceError
    ) -> NoReturn:
        """Audit a request that could not even be parsed, then raise its error."""

        def fail() -> None:
            raise exc

        self._handle(
            caller,
            ctx,
            operation=operation,
            dataset=ctx.dataset,
            columns=ctx.columns,
            params=dict(ctx.params),
            work=fail,
            check=False,
            unchecked_reason="malformed request",
        )
        raise exc

    def close(self) -> None:
        self.audit.close()
