"""A node's vertical jobs: private set intersections, secure products, and the views they leave.

The aggregator drives every vertical protocol (``trustspace.vertical``) as synchronous steps
(``VerticalStep``): step 0 opens a session and answers this node's signed channel hello; at
step 1 the node checks every participant's hello (``Channel.accept``); at every step it opens
the envelopes addressed to it, runs its party's step and seals what the party sends. The
aggregator moves envelopes it cannot read; large steps travel in several calls ("deliver"
before "run", "pull" after it).

Two parts:

- ``intersect`` (the signed operation ``"intersect"``): an ECDH PSI over this node's
  ``id_column``. In ``align`` mode it leaves a ``View`` here: this node's rows of the
  intersection, in the order every participant shares, kept for the analyst who asked.
- ``vertical.product`` (a statistic signed with a ``view``): the secure products of one round
  of the statistics state machine, which this node derives itself from the signed query over
  the view's union schema. Its result is this node's additive share of the round's vector,
  kept in the request's ``Run`` until the secure-aggregation session of that round sums it.

Bounds: at most ``MAX_SESSIONS`` open sessions and ``MAX_VIEWS`` views (the oldest view is
forgotten first); a session's inbox is bounded by the channel; both expire.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from trustspace._cancel import request_tag
from trustspace.errors import ConfigError, DataError, PolicyError, ProtocolError
from trustspace.transport import types
from trustspace.transport.signing import VerifiedQuery
from trustspace.transport.vertical_identity import hello_identity
from trustspace.vertical.channel import Channel, Envelope, Session
from trustspace.vertical.view import ViewRef

if TYPE_CHECKING:
    from trustspace.node.service import NodeService
    from trustspace.stats import Round, TableSchema

log = logging.getLogger(__name__)

__all__ = ["MAX_SESSIONS", "MAX_VIEWS", "VIEW_TTL_S", "VerticalJobs", "View"]

#: Open vertical sessions at once (each holds a channel and a party's state).
MAX_SESSIONS = 16
#: Views kept at once; the oldest is forgotten first.
MAX_VIEWS = 32
#: How long a view stays usable after its intersection (seconds).
VIEW_TTL_S = 8 * 3600.0
#: Most bytes of envelopes one reply carries (the rest waits for "pull").
REPLY_BYTES = 24 * 1024 * 1024
#: Most steps a session may take.
MAX_STEPS = 64
#: Most bytes of encrypted factors a view keeps for later rounds (a 100k-row factor is 51 MB).
CACHE_BYTES = 256 * 1024**2
#: Paillier modulus of a node's secure-product key (one per view; DESIGN.md allows 2048).
PRODUCT_KEY_BITS = 2048
#: Intersect modes.
MODES = ("cardinality", "align")
#: Most envelope bytes one session accepts in one step (a 1M-row secure product sends ~0.5 GB).
SESSION_BYTES = 2 * 1024**3


class _FactorCache(MutableMapping[tuple[Any, ...], bytes]):
    """A view's encrypted factors (``ProductParty(cache=...)``), at most ``limit`` bytes: the
    least recently used are dropped first (and simply encrypted again when needed)."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()  # two queries over one view may run at once

    def __getitem__(self, key: tuple[Any, ...]) -> bytes:
        with self._lock:
            value = self._items[key]
            self._items.move_to_end(key)
            return value

    def __setitem__(self, key: tuple[Any, ...], value: bytes) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= len(self._items.pop(key))
            if len(value) > self._limit:
                return
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self._limit:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)

    def __delitem__(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._bytes -= len(self._items.pop(key))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class View:
    """This node's rows of an aligned intersection (``rows``: file-order row indices in the
    order common to every node of the view)."""

    id: str
    analyst: str
    dataset: str
    nodes: tuple[str, ...]
    rows: npt.NDArray[np.int64]
    size: int
    created: float
    engine: int  # id() of the engine it was made over: a reload makes it stale
    #: this node's Paillier key pair for the view's secure products (made at first use,
    #: forgotten with the view; the key is this node's own, never sent but its public half)
    keypair: Any = None
    #: this node's encrypted factors, reused by later rounds over the view (bounded)
    cache: _FactorCache = field(default_factory=lambda: _FactorCache(CACHE_BYTES))


@dataclass
class _Session:
    part: str
    digest: str  # the signed query's
    nodes: tuple[str, ...]
    session: Session  # the channel and the party (trustspace.vertical.channel)
    created: float
    on_done: Callable[[Any], None]
    outbox: list[types.Envelope] = field(default_factory=list)
    step: int = 0
    done: bool = False
    result: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _context(vq: VerifiedQuery, part: str, extra: str) -> bytes:
    """What every honest participant derives for a session: the signed query, the part and
    what it computes (the round's digest, or the identifier normalisation)."""
    return hashlib.sha256(f"{vq.digest}\x00{part}\x00{extra}".encode()).digest()


class VerticalJobs:
    """The vertical sessions and views of one node (thread-safe, bounded)."""

    def __init__(self, service: NodeService) -> None:
        self._svc = service
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}
        self.views: OrderedDict[str, View] = OrderedDict()

    @property
    def _where(self) -> str:
        return self._svc._where

    # ------------------------------------------------------------------ entry point
    def step(self, caller: Any, st: types.VerticalStep) -> types.VerticalReply:
        self._expire()
        if st.step == 0:
            if st.action != "run":
                raise ProtocolError(f"{self._where}: step 0 of a vertical session is 'run'")
            return self._open(caller, st)
        with self._lock:
            session = self._sessions.get(st.session)
        if session is None:
            raise ProtocolError(
                f"{self._where}: no vertical session {st.session.hex()[:16]} (it expired, "
                "failed or never started); re-run the request"
            )
        if session.digest != st.query.digest or session.part != st.part:
            raise ProtocolError(f"{self._where}: the session belongs to another request")
        try:
            with session.lock:
                return self._continue(caller, st, session)
        except BaseException:
            with self._lock:
                self._sessions.pop(st.session, None)
            raise

    def _continue(
        self, caller: Any, st: types.VerticalStep, session: _Session
    ) -> types.VerticalReply:
        if st.action == "deliver":
            session.session.deliver(_envelopes(st.inbox))
            return types.VerticalReply()
        if st.action == "pull":
            return self._reply(session)
        # "run"
        if st.step != session.step + 1 or session.done or st.step > MAX_STEPS:
            raise ProtocolError(
                f"{self._where}: step {st.step} asked for out of order (the session is at "
                f"step {session.step})"
            )
        if session.outbox:
            raise ProtocolError(f"{self._where}: step {session.step} still has envelopes to pull")
        if st.inbox:
            session.session.deliver(_envelopes(st.inbox))
        return self._svc._handle(
            caller,
            st.query,
            step=f"vertical.{'intersect' if st.part == 'intersect' else 'product'}",
            params={"session": st.session.hex()[:16], "step": st.step},
            work=lambda vq: self._run(st, session),
            unchecked_reason="continues a vertical session allowed at its first step",
        )

    def _run(self, st: types.VerticalStep, session: _Session) -> types.VerticalReply:
        if st.step == 1:
            if len(st.hellos) != len(session.nodes):
                raise ProtocolError(
                    f"{self._where}: step 1 needs one hello per participant "
                    f"({len(session.nodes)}), got {len(st.hellos)}"
                )
            session.session.accept(dict(zip(session.nodes, st.hellos, strict=True)))
        sealed, done, result = session.session.run(st.step)
        session.outbox = [types.Envelope(e.sender, e.recipient, e.body) for e in sealed]
        session.step = st.step
        if done:
            session.on_done(session.session.party)
            session.done = True
            session.result = dict(result) if result is not None else {}
        return self._reply(session)

    def _reply(self, session: _Session) -> types.VerticalReply:
        batch: list[types.Envelope] = []
        size = 0
        while session.outbox and (not batch or size + len(session.outbox[0].body) <= REPLY_BYTES):
            env = session.outbox.pop(0)
            batch.append(env)
            size += len(env.body)
        more = bool(session.outbox)
        done = session.done and not more
        if done:
            with self._lock:
                self._sessions = {k: v for k, v in self._sessions.items() if v is not session}
        return types.VerticalReply(
            outbox=tuple(batch), more=more, done=done, result=session.result if done else None
        )

    # ------------------------------------------------------------------ opening a session
    def _open(self, caller: Any, st: types.VerticalStep) -> types.VerticalReply:
        svc = self._svc
        nodes = st.nodes
        if svc.name not in nodes or len(set(nodes)) != len(nodes) or len(nodes) < 2:
            raise ProtocolError(
                f"{self._where}: a vertical session needs 2 or more distinct participants, "
                "this node among them"
            )
        if st.part == "intersect":
            return svc._handle(  # type: ignore[no-any-return]
                caller,
                st.query,
                step="intersect",
                params={"session": st.session.hex()[:16], "nodes": list(nodes)},
                check=self._intersect_check,
                work=lambda vq: self._open_intersect(st, vq),
            )
        return svc._handle(  # type: ignore[no-any-return]
            caller,
            st.query,
            step="vertical.product",
            params={"session": st.session.hex()[:16], "round": st.round.index if st.round else -1},
            check=svc._stats_check,
            extra=svc._dp_check,
            work=lambda vq: self._open_product(st, vq),
        )

    def _intersect_check(self, vq: VerifiedQuery) -> tuple[str, str, tuple[str, ...]]:
        b = vq.body
        if b.operation != "intersect":
            raise ProtocolError(f"{self._where}: the signed operation is not an intersect")
        spec = self._id_spec(b.dataset)
        return "intersect", b.dataset, (spec.column,)

    def _id_spec(self, dataset: str) -> Any:
        spec = next((d for d in self._svc.config.datasets if d.name == dataset), None)
        if spec is None:
            raise PolicyError(f"{self._where} serves no dataset {dataset!r}")
        if spec.id is None:
            raise ConfigError(
                f"{self._where}: dataset {dataset!r} declares no id_column, so it cannot take "
                "part in a vertical job; its operator adds id_column to [datasets."
                f"{dataset}]"
            )
        return spec.id

    def _register(self, st: types.VerticalStep, session: _Session) -> types.VerticalReply:
        with self._lock:
            if st.session in self._sessions:
                raise ProtocolError(f"{self._where}: vertical session id reused; refusing")
            if len(self._sessions) >= MAX_SESSIONS:
                raise ProtocolError(
                    f"{self._where}: too many vertical sessions at once; retry later"
                )
            self._sessions[st.session] = session
        return types.VerticalReply(hello=session.session.hello())

    def _session(self, st: types.VerticalStep, context: bytes, party: Any) -> Session:
        """The sealed channel of this session (``trustspace.vertical.channel``) and its party."""
        svc = self._svc
        channel = Channel(
            hello_identity(svc._creds),
            st.nodes,
            st.session,
            context,
            revoked=svc.revocations.check,
            max_bytes=SESSION_BYTES,
        )
        return Session(channel, party)

    def _open_intersect(self, st: types.VerticalStep, vq: VerifiedQuery | None) -> Any:
        from trustspace.vertical.ids import id_elements
        from trustspace.vertical.psi import PsiParty

        assert vq is not None
        svc, b = self._svc, vq.body
        p = dict(b.params)
        mode = p.get("mode")
        if mode not in MODES:
            raise ProtocolError(f"{self._where}: intersect mode {mode!r} is not one of {MODES}")
        signed_nodes = p.get("nodes")
        if not isinstance(signed_nodes, list) or tuple(signed_nodes) != st.nodes:
            raise ProtocolError(
                f"{self._where}: the session's participants are not the nodes the analyst "
                "signed; refusing"
            )
        spec = self._id_spec(b.dataset)
        on = p.get("on")
        if on != spec.column:
            raise ConfigError(
                f"{self._where}: dataset {b.dataset!r} intersects on its id_column "
                f"{spec.column!r}, not {on!r}; use on={spec.column!r} or ask the operators to "
                "agree on one name"
            )
        with request_tag(b.request_id):  # a Spark source's jobs carry the request's id
            frame = svc.engine.column_frame(b.dataset, [spec.column])
        where = f"{self._where}: dataset {b.dataset!r} column {spec.column!r}"
        elements, report = id_elements(frame[spec.column], spec, where)
        if report.duplicates:
            raise DataError(
                f"{where}: {report.duplicates} row(s) repeat an identifier another row has; "
                "an intersection needs each identifier once: deduplicate the file (no "
                "identifier is shown here)"
            )
        party = PsiParty(svc.name, st.nodes, mode, elements)
        analyst, dataset, engine = b.analyst, b.dataset, id(svc.engine)

        def done(party: Any) -> None:
            if mode != "align":
                return
            rows = np.asarray(party.aligned, dtype=np.int64)
            if len(rows) < svc.policy.min_group_size:
                return  # nothing may be computed over so few people: no view is kept
            self._keep(
                View(
                    b.request_id,
                    analyst,
                    dataset,
                    st.nodes,
                    rows,
                    len(rows),
                    time.monotonic(),
                    engine,
                )
            )

        session = _Session(
            "intersect",
            vq.digest,
            st.nodes,
            self._session(st, _context(vq, "intersect", spec.digest), party),
            time.monotonic(),
            done,
        )
        log.debug("%s: intersect over %d rows (%d null ids)", svc.name, report.rows, report.nulls)
        return self._register(st, session)

    def _keep(self, view: View) -> None:
        with self._lock:
            self.views[view.id] = view
            self.views.move_to_end(view.id)
            while len(self.views) > MAX_VIEWS:
                self.views.popitem(last=False)

    # ------------------------------------------------------------------ views for statistics
    def view_of(self, vq: VerifiedQuery) -> tuple[ViewRef, View]:
        """The signed view of a statistic and this node's rows of it, checked: it exists here,
        belongs to the analyst, has the signed nodes and size, and is not stale."""
        b = vq.body
        assert b.view is not None
        ref = ViewRef.from_dict(b.view)
        svc = self._svc
        with self._lock:
            view = self.views.get(ref.id)
        where = f"{self._where}: view {ref.id[:12]}"
        if view is None or view.analyst != b.analyst:
            raise PolicyError(
                f"{where} does not exist here (it expired, the node restarted, or it belongs "
                "to another analyst); intersect again"
            )
        if view.nodes != ref.nodes or view.size != ref.size or view.dataset != ref.dataset:
            raise ProtocolError(f"{where}: the query describes it with other nodes or size")
        if b.dataset != ref.dataset:
            raise ProtocolError(f"{where}: the query names another dataset than its view")
        if view.engine != id(svc.engine):
            raise PolicyError(f"{where}: this node's data were reloaded since; intersect again")
        ref.check_own(svc.name, svc.engine.schema(ref.dataset), where)
        return ref, view

    def schema_of(self, vq: VerifiedQuery) -> TableSchema:
        ref, _ = self.view_of(vq)
        return ref.union_schema()

    def _open_product(self, st: types.VerticalStep, vq: VerifiedQuery | None) -> Any:
        from trustspace.vertical.product import ProductParty
        from trustspace.vertical.terms import local_factors, plan_round

        assert vq is not None
        svc = self._svc
        ref = st.round
        if ref is None or ref.part != "vertical.product":
            raise ProtocolError(f"{self._where}: a secure product names the round it computes")
        view_ref, view = self.view_of(vq)
        if tuple(st.nodes) != view_ref.nodes:
            raise ProtocolError(f"{self._where}: the session's participants are not the view's")
        run, rnd = svc._derive(vq, ref)
        if ref.vector != rnd:
            svc._refuse_mismatch(ref, "round")
        with run.lock:
            run.claim(ref.index, "vertical.product", self._where)
        plan = plan_round(rnd, view_ref.owners(), view_ref.nodes)
        own = list(view_ref.schemas[svc.name].columns)
        with request_tag(vq.body.request_id):
            frame = svc.engine.column_frame(view.dataset, own)
        frame = frame.iloc[view.rows].reset_index(drop=True)
        factors = local_factors(plan, svc.name, frame)
        with self._lock:
            if view.keypair is None and any(t.encryptor == svc.name for t in plan.terms):
                from trustspace.paillier import generate_keypair

                view.keypair = generate_keypair(PRODUCT_KEY_BITS)
            keypair = view.keypair
        party = ProductParty(
            svc.name, plan, factors, key_bits=PRODUCT_KEY_BITS, keypair=keypair, cache=view.cache
        )
        index = ref.index

        def done(party: Any) -> None:
            with run.lock:
                run.shares[index] = np.asarray(party.share, dtype=np.uint64)

        session = _Session(
            "vertical.product",
            vq.digest,
            st.nodes,
            self._session(st, _context(vq, "vertical.product", _round_digest(rnd)), party),
            time.monotonic(),
            done,
        )
        return self._register(st, session)

    # ------------------------------------------------------------------ housekeeping
    def _expire(self) -> None:
        now = time.monotonic()
        timeout = self._svc.config.session_timeout_s
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if now - v.created > 4 * timeout]:
                self._sessions.pop(sid, None)
            for vid in [v for v, x in self.views.items() if now - x.created > VIEW_TTL_S]:
                self.views.pop(vid, None)

    def forget_views(self) -> None:
        """Drop every view (the data were reloaded)."""
        with self._lock:
            self.views.clear()


def _envelopes(items: Sequence[types.Envelope]) -> list[Envelope]:
    return [Envelope(e.sender, e.recipient, e.body) for e in items]


def _round_digest(rnd: Round) -> str:
    from trustspace.transport.signing import canonical_json

    return hashlib.sha256(canonical_json(rnd.to_dict())).hexdigest()
