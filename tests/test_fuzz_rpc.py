"""Bad input to every RPC of a live node and aggregator (in-process servers on 127.0.0.1).

Hypothesis generates malformed messages: random bytes as the whole request, and messages whose
fields are random or nearly valid (real stage names, real round and query JSON with wrong
types, huge strings, wrong key sizes). Every call must end cleanly — OK for a harmless request,
or INVALID_ARGUMENT / PERMISSION_DENIED / FAILED_PRECONDITION / UNAUTHENTICATED / UNIMPLEMENTED,
never INTERNAL, UNKNOWN or a hang — the server keeps serving, and a node writes exactly one
audit line per call (refusals included). ``make test`` runs FAST_EXAMPLES inputs per RPC;
``make soak`` runs SOAK_EXAMPLES (10,000) per RPC.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from _reliability import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustspace.api import Federation
from trustspace.node.audit import verify
from trustspace.proto.v1 import aggregator_pb2, common_pb2, node_pb2
from trustspace.secagg import Stage
from trustspace.stats import (
    PAILLIER_WORD_VALUE_BITS,
    Query,
    paillier_round_total,
    split_words,
    start,
)
from trustspace.transport import serde, types
from trustspace.transport.ca import Credentials
from trustspace.transport.signing import SignedQuery, new_query
from trustspace.transport.tls import secure_channel

FAST_EXAMPLES = 200
SOAK_EXAMPLES = 10_000
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
NODE_RPCS = {
    "DescribeDatasets": node_pb2.DescribeDatasetsRequest,
    "SecAggStep": node_pb2.SecAggStepRequest,
    "PaillierStats": node_pb2.PaillierStatsRequest,
    "AnonHistogram": node_pb2.AnonHistogramRequest,
    "AnonApply": node_pb2.AnonApplyRequest,
    "AnonRelease": node_pb2.AnonReleaseRequest,
}
AGG_RPCS = {
    "RunQuery": aggregator_pb2.RunQueryRequest,
    "RunRound": aggregator_pb2.RunRoundRequest,
    "RunAnonymization": aggregator_pb2.RunAnonymizationRequest,
    "Status": aggregator_pb2.StatusRequest,
}
CALL_TIMEOUT_S = 30.0  # a hang shows as DEADLINE_EXCEEDED, which fails the test


class Space:
    """Two in-process nodes and an aggregator (Federation.local) plus raw channels."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(3)  # test data only
        df = pd.DataFrame({"age": rng.integers(18, 90, 60), "sex": rng.choice(["F", "M"], 60)})
        self.df = df
        self.fed = Federation.local(
            {"n1": df, "n2": df.iloc[::-1]},
            policy={"min_group_size": 3, "rules": [{"analysts": ["analyst"], "operations": ["*"]}]},
            workdir=root,
            bounds={"age": (0, 120)},
        )
        ca = root / "ca"
        self.node = self.fed.nodes["n1"]
        self.agg_creds = Credentials.from_dir(ca / "aggregator")
        self.analyst_creds = Credentials.from_dir(ca / "analyst")
        self.node_channel = secure_channel(self.node.address, self.agg_creds, "n1")
        agg_addr = self.fed.aggregator.address
        self.agg_channel = secure_channel(agg_addr, self.analyst_creds, "127.0.0.1")
        self.audit = self.node.service.audit
        schema = self.node.engine.schema("default")
        self.round = start(Query("count", "default", where="age > 30"), schema, 3).next_round()
        assert self.round is not None
        from trustspace.paillier import generate_keypair

        self.paillier_n = int(generate_keypair(2048)[0].n)
        self.valid = _valid_requests(self)

    def sign(self, op: str, columns: tuple[str, ...] = (), where: str | None = None,
             **kw: Any) -> SignedQuery:  # fmt: skip
        """A fresh query signed by the space's analyst."""
        return new_query(self.analyst_creds, op, "default", columns, where, **kw)

    def raw(self, service: str, method: str) -> Callable[..., Any]:
        chan = self.node_channel if service == "NodeService" else self.agg_channel
        return chan.unary_unary(f"/trustspace.proto.v1.{service}/{method}")

    def close(self) -> None:
        self.node_channel.close()
        self.agg_channel.close()
        self.fed.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    s = Space(tmp_path_factory.mktemp("fuzz"))
    try:
        yield s
    finally:
        s.close()


# ------------------------------------------------------------------ strategies
def _interesting_json(space_round: dict[str, Any]) -> st.SearchStrategy[str]:
    """JSON text that is valid, nearly valid (wrong types, missing keys) or broken."""
    good_query = {"op": "count", "dataset": "default", "columns": [], "where": None, "params": {}}
    variants: list[Any] = [
        space_round,
        good_query,
        {**good_query, "op": 5},
        {**good_query, "dataset": ["x"]},
        {**good_query, "where": "age >>> 3"},
        {**good_query, "where": "age = 1 or " * 2000 + "age = 1"},
        {**space_round, "terms": "all"},
        {**space_round, "index": -1},
        {**space_round, "dataset": "other"},
        [],
        None,
        "x",
        1e308,
    ]
    texts = [json.dumps(v) for v in variants]
    texts += ["{", "[" * 5000, '{"a":' * 3000, "\x00", "NaN", "{}" * 10]
    return st.one_of(st.sampled_from(texts), st.text(max_size=200))


def _field_strategy(field: Any, json_text: st.SearchStrategy[str], depth: int) -> Any:
    fd = field
    if fd.type == fd.TYPE_MESSAGE:
        if depth > 2:
            return st.none()
        inner = _message_strategy(fd.message_type, json_text, depth + 1)
        return st.lists(inner, max_size=3) if _repeated(fd) else inner
    if fd.type == fd.TYPE_STRING:
        if fd.name.endswith("_json"):
            base: Any = json_text
        else:
            base = st.one_of(
                st.sampled_from(
                    [
                        "",
                        "analyst",
                        "advertise",
                        "share_keys",
                        "masked_input",
                        "unmask",
                        "all",
                        "counts",
                        "default",
                        "count",
                        "1",
                        "2",
                        "-1",
                        "9" * 30,
                        "../../etc/passwd",
                        "/tmp/x.csv",
                    ]
                ),
                st.text(max_size=64),
            )
    elif fd.type == fd.TYPE_BYTES:
        base = st.one_of(
            st.binary(max_size=300),
            st.sampled_from([b"", b"\x00" * 32, (1 << 2047 | 1).to_bytes(256, "big")]),
        )
    elif fd.type == fd.TYPE_BOOL:
        base = st.booleans()
    elif fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        base = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e308]), st.floats())
    elif fd.type in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32):
        base = st.one_of(st.integers(-4, 4), st.integers(-(2**31), 2**31 - 1))
    elif fd.type in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64):
        base = st.one_of(st.integers(-4, 4), st.integers(-(2**63), 2**63 - 1))
    else:  # unsigned integers: uint32/fixed32, uint64/fixed64
        bits = 64 if fd.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64) else 32
        base = st.one_of(st.integers(0, 4), st.integers(0, 2**bits - 1))
    return st.lists(base, max_size=4) if _repeated(fd) else base


def _repeated(fd: Any) -> bool:
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)


def _message_strategy(desc: Any, json_text: st.SearchStrategy[str], depth: int = 0) -> Any:
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(desc)
    fields = {f.name: _field_strategy(f, json_text, depth) for f in desc.fields}

    def build(values: dict[str, Any]) -> Any:
        return cls(**{k: v for k, v in values.items() if v is not None})

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _mutations(base: Any, json_text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A valid request with one field (top-level or one level down) replaced by a random or
    nearly valid value: these reach the policy, the state machines and the crypto."""
    choices: list[st.SearchStrategy[bytes]] = []

    def mutate(path: tuple[str, ...], value: Any) -> bytes:
        msg = type(base)()
        msg.CopyFrom(base)
        holder = msg
        for name in path[:-1]:
            holder = getattr(holder, name)
        field = holder.DESCRIPTOR.fields_by_name[path[-1]]
        holder.ClearField(path[-1])
        if value is None:
            pass
        elif _repeated(field):
            getattr(holder, path[-1]).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(holder, path[-1]).CopyFrom(value)
        else:
            setattr(holder, path[-1], value)
        return bytes(msg.SerializeToString())

    for f in base.DESCRIPTOR.fields:
        if f.type == f.TYPE_MESSAGE and not _repeated(f):
            for g in f.message_type.fields:
                strat = _field_strategy(g, json_text, 3)
                choices.append(strat.map(lambda v, p=(f.name, g.name): mutate(p, v)))
        strat = _field_strategy(f, json_text, 1)
        choices.append(strat.map(lambda v, p=(f.name,): mutate(p, v)))
    return st.one_of(*choices)


def _sums_round(space: Space, query: Query) -> tuple[Any, Any, types.RoundTotal]:
    """The first round of ``query`` with sums (what PaillierStats encrypts), the round before
    it, and the total fed for that one (every entry 100)."""
    comp = start(query, space.node.engine.schema("default"), 3)
    first = comp.next_round()
    assert first is not None and first.moment_round() is None
    fed = np.full(first.size, 100.0)
    comp.feed(fed)
    sums = comp.next_round()
    assert sums is not None and sums.moment_round() is not None and sums.index == 1
    total = types.RoundTotal(0, tuple(int(x) for x in first.encode(fed)))
    return sums, first, total


def _valid_requests(space: Space) -> dict[str, Any]:
    """One valid request per RPC that has a simple one (the base of the mutations)."""
    count = space.sign("count", where="age > 30")
    sums_query = Query("sum", "default", "age", where="age > 30")
    sums, _, previous = _sums_round(space, sums_query)
    from trustspace.paillier import PublicKey

    fp = PublicKey(space.paillier_n).fingerprint
    paillier = space.sign("sum", ("age",), "age > 30", method="paillier", paillier_key=fp)
    n = serde.int_to_bytes(space.paillier_n)
    return {
        "DescribeDatasets": node_pb2.DescribeDatasetsRequest(query=serde.signed_to_proto(count)),
        "SecAggStep": serde.step_to_proto(
            types.SecAggStep(
                count,
                types.SecAggSetup(b"s" * 32, (1, 2), space.round.size),
                Stage.ADVERTISE,
                (),
                types.RoundRef(0, 3, None, space.round),
                1,
            )
        ),
        "PaillierStats": serde.paillier_request_to_proto(
            types.PaillierRequest(
                paillier, space.paillier_n, types.RoundRef(1, 3, previous, sums), 2
            )
        ),
        "RunQuery": aggregator_pb2.RunQueryRequest(query=serde.signed_to_proto(count)),
        "RunRound": aggregator_pb2.RunRoundRequest(
            query=serde.signed_to_proto(paillier),
            round=serde.round_to_proto(sums),
            round_index=1,
            min_group_size=3,
            previous=serde.total_to_proto(previous),
            public_key=common_pb2.PaillierPublicKey(n=n),
        ),
    }


# ------------------------------------------------------------------ the checks
def _call(fn: Callable[..., Any], payload: bytes) -> grpc.StatusCode:
    try:
        fn(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _still_serving(space: Space) -> None:
    desc = space.raw("NodeService", "DescribeDatasets")
    req = node_pb2.DescribeDatasetsRequest()
    assert _call(desc, req.SerializeToString()) == grpc.StatusCode.OK
    status = space.raw("AggregatorService", "Status")
    assert _call(status, aggregator_pb2.StatusRequest().SerializeToString()) == grpc.StatusCode.OK


def fuzz_rpc(space: Space, service: str, method: str, msg_cls: Any, examples: int) -> None:
    fn = space.raw(service, method)
    json_text = _interesting_json(space.round.to_dict())
    structured = _message_strategy(msg_cls.DESCRIPTOR, json_text)
    kinds = [st.binary(max_size=512), structured.map(lambda m: m.SerializeToString())]
    base = space.valid.get(method)
    if base is not None:
        kinds.append(_mutations(base, json_text))
    inputs = st.one_of(*kinds)
    codes: dict[str, int] = {}
    calls = 0
    lines_before = space.audit.lines

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=examples <= FAST_EXAMPLES,  # make test: the same inputs on every run
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=inputs)
    def run(payload: bytes) -> None:
        nonlocal calls
        code = _call(fn, payload)
        calls += 1
        codes[code.name] = codes.get(code.name, 0) + 1
        assert code in CLEAN, f"{method}: {code.name} for {payload[:80]!r}"

    t0 = time.monotonic()
    try:
        run()
    finally:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
        record(
            "bad input",
            f"{service}.{method} ({'long' if examples > FAST_EXAMPLES else 'short'} run): "
            "random bytes, random fields, one field of a valid request mutated",
            f"{summary}; no crash",
            tries=calls,
            ok=all(grpc.StatusCode[k] in CLEAN for k in codes),
        )
    if service == "NodeService":
        # every call (refusals included) is exactly one audit line
        assert space.audit.lines - lines_before == calls, (space.audit.lines - lines_before, calls)
        assert verify(space.audit.path).ok
    _still_serving(space)
    print(f"{method}: {calls} inputs in {time.monotonic() - t0:.1f} s: {summary}")


@pytest.mark.parametrize("method", sorted(NODE_RPCS))
def test_node_rpc_bad_input(space: Space, method: str) -> None:
    fuzz_rpc(space, "NodeService", method, NODE_RPCS[method], FAST_EXAMPLES)


@pytest.mark.parametrize("method", sorted(AGG_RPCS))
def test_aggregator_rpc_bad_input(space: Space, method: str) -> None:
    fuzz_rpc(space, "AggregatorService", method, AGG_RPCS[method], FAST_EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize(
    ("service", "method"),
    [("NodeService", m) for m in sorted(NODE_RPCS)]
    + [("AggregatorService", m) for m in sorted(AGG_RPCS)],
)
def test_long_fuzz(space: Space, service: str, method: str) -> None:
    rpcs = NODE_RPCS if service == "NodeService" else AGG_RPCS
    fuzz_rpc(space, service, method, rpcs[method], SOAK_EXAMPLES)


# ------------------------------------------------------------------ targeted bad input
@pytest.mark.parametrize(
    ("label", "n"),
    [
        ("zero", 0),
        ("one", 1),
        ("even", 1 << 2047),
        ("tiny (35)", 35),
        ("1024-bit", (1 << 1023) | 1),
        ("9000-bit", (1 << 8999) | 1),
        ("40000-bit", (1 << 39999) | 1),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_paillier_public_keys(space: Space, label: str, n: int) -> None:
    """Node and aggregator refuse unusable or oversized keys at once (a 40,000-bit key used
    to cost a node 65 s of CPU)."""
    n_bytes = serde.int_to_bytes(n)
    node_req = type(space.valid["PaillierStats"])()
    node_req.CopyFrom(space.valid["PaillierStats"])
    node_req.public_key.n = n_bytes
    t0 = time.monotonic()
    code = _call(space.raw("NodeService", "PaillierStats"), node_req.SerializeToString())
    took = time.monotonic() - t0
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), code
    agg_req = type(space.valid["RunRound"])()
    agg_req.CopyFrom(space.valid["RunRound"])
    agg_req.public_key.n = n_bytes
    code2 = _call(space.raw("AggregatorService", "RunRound"), agg_req.SerializeToString())
    assert code2 in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    ), code2
    record(
        "bad input",
        f"Paillier public key: {label}",
        f"node {code.name} in {took:.2f} s, aggregator {code2.name}",
    )


def test_oversized_messages_are_refused(space: Space) -> None:
    big_body = b"[" + b"1," * (5 * 1024 * 1024) + b"1]"  # 10 MiB, above the 8 MiB body limit
    req = aggregator_pb2.RunQueryRequest(
        query=common_pb2.SignedQuery(body=big_body, signature=b"s", certificate=b"c")
    )
    assert (
        _call(space.raw("AggregatorService", "RunQuery"), req.SerializeToString())
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    too_big = b"\x0a" + b"\xff" * 5 + os.urandom(16)  # a field claiming ~34 GB: truncated
    assert (
        _call(space.raw("NodeService", "SecAggStep"), too_big) == grpc.StatusCode.INVALID_ARGUMENT
    )
    over = aggregator_pb2.RunQueryRequest(
        query=common_pb2.SignedQuery(body=b"x" * (65 * 1024 * 1024), signature=b"s")
    )
    code = _call(space.raw("AggregatorService", "RunQuery"), over.SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # the 64 MiB message limit
    _still_serving(space)
    record(
        "bad input",
        "oversized: 10 MiB signed query body, truncated length prefix, 65 MiB message",
        "INVALID_ARGUMENT, INVALID_ARGUMENT, RESOURCE_EXHAUSTED; still serving",
        tries=3,
    )


# ------------------------------------------------------------------ replayed secagg messages
class _Driver:
    """Drives one secure-aggregation session over n1 and n2 by hand (what the aggregator's
    ``secure_sum`` does), keeping every message so that tests can replay them."""

    def __init__(self, space: Space, label: str) -> None:
        from trustspace.secagg.config import SecAggConfig
        from trustspace.secagg.server import SecAggServer
        from trustspace.transport.clients import NodeClient

        self.rnd = space.round
        self.clients = {
            1: NodeClient("n1", space.fed.nodes["n1"].address, space.agg_creds),
            2: NodeClient("n2", space.fed.nodes["n2"].address, space.agg_creds),
        }
        self.query = space.sign("count", where="age > 30")
        self.setup = types.SecAggSetup(
            session_id=os.urandom(32), client_ids=(1, 2), vector_length=self.rnd.size
        )
        self.server = SecAggServer(
            SecAggConfig(
                session_id=self.setup.session_id, client_ids=(1, 2), vector_length=self.rnd.size
            )
        )
        self.sent: dict[tuple[str, int], tuple[bytes, ...]] = {}

    def step(self, stage: str, cid: int, payloads: tuple[bytes, ...]) -> list[bytes]:
        self.sent[(stage, cid)] = payloads
        st = Stage.parse(stage)
        ref = types.RoundRef(0, 3, None, self.rnd) if st is Stage.ADVERTISE else None
        return self.clients[cid].secagg_step(
            types.SecAggStep(self.query, self.setup, st, payloads, ref, cid),
            timeout=CALL_TIMEOUT_S,
        )

    def run_until(self, last: str) -> Any:
        from trustspace.secagg.messages import (
            AdvertiseKeys,
            EncryptedShares,
            MaskedInput,
            UnmaskShares,
        )

        adv = {c: self.step("advertise", c, ()) for c in (1, 2)}
        if last == "advertise":
            return adv
        roster = self.server.collect_advertise(
            {c: AdvertiseKeys.from_bytes(o[0]) for c, o in adv.items()}
        )
        roster_bytes = tuple(b for c in roster for b in adv[c])
        shared = {c: self.step("share_keys", c, roster_bytes) for c in roster}
        routing = self.server.collect_shares(
            {
                c: {m.recipient: m for m in (EncryptedShares.from_bytes(b) for b in out)}
                for c, out in shared.items()
            }
        )
        if last == "share_keys":
            return routing
        masked = {
            r: self.step("masked_input", r, tuple(m.to_bytes() for m in senders.values()))
            for r, senders in routing.items()
        }
        request = self.server.collect_masked(
            {c: MaskedInput.from_bytes(o[0]) for c, o in masked.items()}
        )
        if last == "masked_input":
            return request
        unmasked = {c: self.step("unmask", c, (request.to_bytes(),)) for c in request.survivors}
        return self.server.collect_unmask(
            {c: UnmaskShares.from_bytes(o[0]) for c, o in unmasked.items()}
        )

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def test_replayed_secagg_messages_are_refused(space: Space) -> None:
    from trustspace.errors import ProtocolError

    done = _Driver(space, "replay-1")
    total = done.run_until("unmask")
    # the honest run completes with the exact count (n2 holds the same rows)
    assert space.round.decode(total)[0] == 2 * int((space.df.age > 30).sum())
    cases = {
        "advertise again (same session id)": ("advertise", 1),
        "share_keys after the session ended": ("share_keys", 1),
        "masked_input after the session ended": ("masked_input", 2),
        "unmask again (a second survivor list)": ("unmask", 1),
    }
    lines = space.audit.lines
    for label, (stage, cid) in cases.items():
        with pytest.raises(ProtocolError):
            done.step(stage, cid, done.sent[(stage, cid)])
        record("bad input", f"replayed SecAgg message: {label}", "INVALID_ARGUMENT, audited")
    # every refused call to n1 is one line of n1's audit log
    assert space.audit.lines - lines == sum(cid == 1 for _, cid in cases.values())
    done.close()

    # a session left half-way (its query failed after masked_input): nothing more is released
    half = _Driver(space, "replay-2")
    request = half.run_until("masked_input")
    other = _Driver(space, "replay-3")
    with pytest.raises(ProtocolError):  # its messages do not fit another session
        other.step("share_keys", 1, tuple(half.sent[("share_keys", 1)]))
    with pytest.raises(ProtocolError):  # masked input twice: the state machine refuses
        half.step("masked_input", 1, half.sent[("masked_input", 1)])
    # a session that saw a protocol error is dropped: even the honest unmask request (which
    # would release shares) is refused afterwards
    with pytest.raises(ProtocolError, match="no secure-aggregation session"):
        half.step("unmask", 1, (request.to_bytes(),))
    record(
        "data safety",
        "half-finished session: its messages replayed into another session, masked input "
        "twice, then the unmask request",
        "each refused; the session is dropped, no share is released",
        tries=3,
    )
    half.close()
    other.close()
    assert verify(space.audit.path).ok


# ------------------------------------------------------------------ bad ciphertexts
def test_bad_ciphertexts_from_a_node_are_refused(space: Space) -> None:
    """A node (or a man in the middle) returning out-of-range, non-unit, foreign-key or
    truncated ciphertexts: the aggregator refuses the round with a clean ProtocolError."""
    import datetime as dt

    from trustspace.aggregator.service import AggregatorService
    from trustspace.errors import InvalidCiphertext, ProtocolError
    from trustspace.paillier import EncryptedVector, generate_keypair
    from trustspace.transport.ca import Identity
    from trustspace.transport.clients import NodeClient

    pk, sk = generate_keypair(2048)
    other_pk, _ = generate_keypair(2048)
    p = int(sk.p)
    n1 = NodeClient("n1", space.fed.nodes["n1"].address, space.agg_creds)
    n2 = NodeClient("n2", space.fed.nodes["n2"].address, space.agg_creds)
    query = Query("sum", "default", "age", where="age > 30")
    rnd, first, _ = _sums_round(space, query)
    words = split_words(np.arange(rnd.size, dtype=np.int64))  # what a node encrypts

    def node_vector(key: Any) -> bytes:
        ev = key.encrypt_vector(words, value_bits=PAILLIER_WORD_VALUE_BITS, headroom=2)
        return bytes(ev.to_bytes())

    honest, foreign = node_vector(pk), node_vector(other_pk)
    width = pk.ciphertext_length

    def with_first(value: int) -> bytes:
        head, last = honest[: len(honest) - width], honest[len(honest) - width :]
        assert len(last) == width
        return head + value.to_bytes(width, "big") if value < 1 << (8 * width) else honest[:-1]

    nsq = int(pk.n) ** 2
    crafted = {
        "zero": with_first(0),
        "n^2 (out of range)": with_first(nsq) if nsq < 1 << (8 * width) else honest[:-1],
        "a multiple of p (not a unit)": with_first(p * 12345 if p else int(pk.n)),
        "n (not a unit)": with_first(int(pk.n)),
        "under another key": foreign,
        "truncated": honest[:-7],
    }

    class Evil:
        """A node client that runs secure aggregation honestly and answers PaillierStats with
        the given bytes."""

        def __init__(self, real: NodeClient, data: bytes) -> None:
            self.real, self.data = real, data
            self.name, self.address = real.name, real.address

        def describe(self, *a: Any, **k: Any) -> Any:
            return self.real.describe(*a, **k)

        def secagg_step(self, *a: Any, **k: Any) -> Any:
            return self.real.secagg_step(*a, **k)

        def paillier_stats(self, *a: Any, **k: Any) -> bytes:
            return self.data

        def close(self) -> None:
            pass

    analyst = Identity("analyst", "analyst", dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC))
    for label, data in crafted.items():
        with pytest.raises(InvalidCiphertext):
            EncryptedVector.from_bytes(pk, data)
        agg = AggregatorService("agg", [Evil(n1, data), Evil(n2, honest)])  # type: ignore[list-item]
        signed = space.sign(
            "sum", ("age",), "age > 30", method="paillier", paillier_key=pk.fingerprint
        )
        try:
            # the analyst's round 0 (counts only), then round 1, whose sums n1 answers badly
            r0 = agg.run_round(analyst, types.RoundRequest(signed, int(pk.n), first, 3))
            total = paillier_round_total(first.count_mask, r0.count_totals, None)
            prev = types.RoundTotal(0, tuple(int(x) for x in total), r0.suppressed)
            with pytest.raises(ProtocolError, match="n1 sent an invalid encrypted vector"):
                agg.run_round(analyst, types.RoundRequest(signed, int(pk.n), rnd, 3, prev))
        finally:
            agg._pool.shutdown(wait=True)
        record(
            "bad input", f"Paillier ciphertext from a node: {label}", "ProtocolError, round refused"
        )
    ok = EncryptedVector.from_bytes(pk, honest)  # the honest vector still decrypts
    assert len(sk.decrypt_vector(ok)) >= 2
    n1.close()
    n2.close()


# ------------------------------------------------------------------ what the long fuzz found
@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("SecAggStep", "client_id", "²"),  # str.isdigit() accepts it, int() does not
        ("SecAggStep", "client_id", "١٢"),  # Arabic-Indic digits: int() would accept them
        ("PaillierStats", "headroom", 2**32 - 2),  # no 63-bit packing slot fits it
        ("PaillierStats", "headroom", 2**31 + 1),
    ],
)
def test_long_fuzz_findings_stay_fixed(space: Space, method: str, field: str, value: Any) -> None:
    """Inputs that ``make soak`` found answering INTERNAL (an unexpected exception)."""
    msg = type(space.valid[method])()
    msg.CopyFrom(space.valid[method])
    setattr(msg, field, value)
    code = _call(space.raw("NodeService", method), msg.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    record("bad input", f"{method} with {field} = {value!r} (found by the long fuzz)", code.name)
