"""The sealed node-to-node channel of vertical sessions, against a malicious relay.

Each attack is played by the ``tamper`` hooks of ``relay_local`` (the model of the aggregator
loop) or by handing a channel forged hellos, and must be refused with a clear error naming
the sender, never the content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from trustspace.errors import AuthenticationError, ConfigError, ProtocolError
from trustspace.transport.ca import Credentials, init_ca, issue, revocation_check
from trustspace.transport.signing import canonical_json
from trustspace.transport.vertical_identity import CertHelloIdentity, hello_identity
from trustspace.vertical import channel as ch
from trustspace.vertical._party import Message, StepOut, run_local
from trustspace.vertical.channel import (
    CHUNK_BYTES,
    ENVELOPE_MAX,
    HELLO_DOMAIN,
    Channel,
    Envelope,
    Session,
    relay_local,
)

NODES = ("n1", "n2", "n3")
CONTEXT = b"query-digest:0123|psi.cardinality"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials]:
    """Node identities n1..n3 and analyst alice of one CA; a foreign CA's node n2; an
    expired n2 of our CA."""
    root = tmp_path_factory.mktemp("vpki")
    init_ca(root / "ca", name="v-space")
    old = issue(
        root / "ca",
        "n2",
        "node",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
        out_dir=root / "old-n2",
    )
    out: dict[str, Credentials] = {}
    for name, role in (("n1", "node"), ("n2", "node"), ("n3", "node"), ("alice", "analyst")):
        out[name] = Credentials.from_dir(issue(root / "ca", name, role))
    init_ca(root / "other", name="foreign")
    out["foreign-n2"] = Credentials.from_dir(issue(root / "other", "n2", "node"))
    out["expired-n2"] = replace(
        out["n2"], cert_pem=(old / "cert.pem").read_bytes(), key_pem=(old / "key.pem").read_bytes()
    )
    return out


class Impostor:
    """A ``HelloIdentity`` that claims ``name`` but signs with someone else's credentials."""

    def __init__(self, name: str, creds: Credentials) -> None:
        self.name = name
        self._inner = CertHelloIdentity(creds)
        self.cert_pem = creds.cert_pem

    def sign(self, blob: bytes, *, domain: bytes) -> bytes:
        return self._inner.sign(blob, domain=domain)

    def verify(
        self,
        cert_pem: bytes,
        blob: bytes,
        signature: bytes,
        *,
        domain: bytes,
        role: str,
        where: str,
    ) -> str:
        return self._inner.verify(cert_pem, blob, signature, domain=domain, role=role, where=where)


class Toy:
    """Step 1: send payloads; step 2: acknowledge each peer's bytes by digest; step 3: check
    the acknowledgements and finish. ``quit_at`` makes a party finish early (no messages)."""

    def __init__(
        self,
        name: str,
        nodes: Sequence[str],
        payloads: Mapping[str, Sequence[bytes]] | None = None,
        quit_at: int = 0,
    ) -> None:
        self.name = name
        self.peers = [n for n in nodes if n != name]
        self.payloads = {p: list((payloads or {}).get(p, ())) for p in self.peers}
        self.quit_at = quit_at
        self.got: dict[str, list[bytes]] = {}

    def step(self, index: int, inbox: Sequence[Message]) -> StepOut:
        if index == self.quit_at:
            return StepOut(done=True, result={"quit": index})
        if index == 1:
            if inbox:
                raise ProtocolError("toy: messages at step 1")
            return StepOut(
                tuple(
                    Message(self.name, p, "toy.data/1", body)
                    for p in self.peers
                    for body in self.payloads[p]
                )
            )
        if index == 2:
            for m in inbox:
                if m.kind != "toy.data/1" or m.recipient != self.name:
                    raise ProtocolError("toy: unexpected message at step 2")
                self.got.setdefault(m.sender, []).append(m.body)
            active = [p for p in self.peers if p in self.got or self.payloads[p]]
            return StepOut(
                tuple(
                    Message(self.name, p, "toy.ack/2", _digest(self.got.get(p, []))) for p in active
                )
            )
        if index == 3:
            acks = {m.sender: m.body for m in inbox}
            for p, bodies in self.payloads.items():
                if bodies and acks.get(p) != _digest(bodies):
                    raise ProtocolError(f"toy: {p} acknowledged other bytes")
            total = sum(len(b) for bs in self.got.values() for b in bs)
            return StepOut(done=True, result={"received": total})
        raise ProtocolError(f"toy: no step {index}")


def _digest(bodies: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for b in bodies:
        h.update(struct.pack(">Q", len(b)) + b)
    return h.digest()


def _sessions(
    space: dict[str, Credentials],
    payloads: Mapping[str, Mapping[str, Sequence[bytes]]],
    *,
    nodes: Sequence[str] = NODES,
    session: bytes | None = None,
    contexts: Mapping[str, bytes] | None = None,
    quit_at: Mapping[str, int] | None = None,
    **kw: Any,
) -> dict[str, Session]:
    sid = session or secrets.token_bytes(32)
    out = {}
    for n in nodes:
        c = Channel(hello_identity(space[n]), nodes, sid, (contexts or {}).get(n, CONTEXT), **kw)
        out[n] = Session(c, Toy(n, nodes, payloads.get(n), (quit_at or {}).get(n, 0)))
    return out


def _small_payloads() -> dict[str, dict[str, list[bytes]]]:
    return {
        "n1": {"n2": [b"a" * 3000, b"b" * 10], "n3": [os.urandom(2500)]},
        "n2": {"n1": [b""], "n3": [os.urandom(100)]},
        "n3": {"n1": [os.urandom(5000)]},
    }


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ch, "CHUNK_BYTES", 1024)


# -- honest runs --------------------------------------------------------------------------


def test_ten_megabytes_round_trip_in_chunks(space: dict[str, Credentials]) -> None:
    big = os.urandom(10 * 1024 * 1024)
    seen: list[Envelope] = []

    def watch(step: int, envs: list[Envelope]) -> list[Envelope]:
        seen.extend(envs)
        return envs

    sessions = _sessions(space, {"n1": {"n2": [big]}}, nodes=("n1", "n2"))
    results = relay_local(sessions, tamper=watch)
    assert results == {"n1": {"received": 0}, "n2": {"received": len(big)}}
    assert sessions["n2"].party.got["n1"] == [big]  # type: ignore[attr-defined]
    data = [e for e in seen if e.sender == "n1" and len(e.body) > 1000]
    assert len(data) == 3  # 4 + 4 + 2 MiB
    assert max(len(e.body) for e in seen) <= ENVELOPE_MAX
    assert all(big[:64] not in e.body and big[-64:] not in e.body for e in data)


def test_three_nodes_many_messages_kept_in_order(
    space: dict[str, Credentials], small_chunks: None
) -> None:
    payloads = _small_payloads()
    sessions = _sessions(space, payloads)
    results = relay_local(sessions)
    assert results["n1"] == {"received": 100 + 5000 - 100}
    assert sessions["n2"].party.got["n1"] == payloads["n1"]["n2"]  # type: ignore[attr-defined]
    assert results["n3"] == {"received": 2500 + 100}


def test_nonces_never_repeat_under_a_key(space: dict[str, Credentials], small_chunks: None) -> None:
    seen: list[Envelope] = []

    def watch(step: int, envs: list[Envelope]) -> list[Envelope]:
        seen.extend(envs)
        return envs

    relay_local(_sessions(space, _small_payloads()), tamper=watch)
    hs = ch._HEADER.size
    nonces = [(e.sender, e.recipient, e.body[hs : hs + 12]) for e in seen]
    assert len(nonces) > 20
    assert len(set(nonces)) == len(nonces)


def test_a_step_is_sealed_once(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {})
    for s in sessions.values():
        s.accept({n: t.hello() for n, t in sessions.items()})
    c = sessions["n1"].channel
    c.open([])
    c.seal([])
    with pytest.raises(ProtocolError, match="open the envelopes of step 1"):
        c.seal([])  # a second seal at the same step would reuse the step's nonces


def test_a_party_that_finishes_early(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {"n1": {"n2": [b"x" * 10]}}, quit_at={"n3": 1})
    results = relay_local(sessions)
    assert results == {"n1": {"received": 0}, "n2": {"received": 10}, "n3": {"quit": 1}}


def test_run_local_steps_parties_without_channels() -> None:
    parties = {n: Toy(n, NODES, {p: [n.encode() * 3] for p in NODES if p != n}) for n in NODES}
    assert run_local(parties) == {n: {"received": 12} for n in NODES}
    late = {"n1": Toy("n1", ("n1", "n2"), {"n2": [b"x"]}), "n2": Toy("n2", ("n1", "n2"), quit_at=1)}
    with pytest.raises(ProtocolError, match="for 'n2', which is done"):
        run_local(late)
    with pytest.raises(ProtocolError, match="not all done after 2 steps"):
        run_local({"n1": Toy("n1", ("n1", "n2")), "n2": Toy("n2", ("n1", "n2"))}, max_steps=2)


def test_canonical_json_is_the_transport_one() -> None:
    doc = {"b": [1, "é", None], "a": {"z": 1.5, "y": True}}
    assert ch._canonical_json(doc) == canonical_json(doc)


def test_message_repr_and_kind_checks() -> None:
    m = Message("n1", "n2", "psi.blind/2", b"secret-bytes")
    assert "secret" not in repr(m) and "12 bytes" in repr(m)
    assert "secret" not in repr(Envelope("n1", "n2", b"secret"))
    for bad in ("", "x" * 65, "has space", "caf\u00e9"):
        with pytest.raises(ProtocolError, match="kind"):
            Message("n1", "n2", bad, b"")
    with pytest.raises(ProtocolError, match="sends to itself"):
        Message("n1", "n1", "k", b"")


# -- a malicious relay: envelopes -------------------------------------------------------


def _attack(
    space: dict[str, Credentials], tamper: ch.Tamper, match: str, **kw: Any
) -> ProtocolError:
    sessions = _sessions(space, _small_payloads(), **kw)
    with pytest.raises(ProtocolError, match=match) as info:
        relay_local(sessions, tamper=tamper)
    text = str(info.value)
    assert "aaaa" not in text and "toy.data" not in text  # never contents or kinds
    return info.value


def _at(step: int, f: ch.Tamper) -> ch.Tamper:
    return lambda s, envs: f(s, envs) if s == step else envs


def _big(e: Envelope) -> bool:
    return len(e.body) > 500


def test_dropped_chunk_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def drop(step: int, envs: list[Envelope]) -> list[Envelope]:
        victim = next(e for e in envs if e.sender == "n1" and e.recipient == "n2" and _big(e))
        return [e for e in envs if e is not victim]

    err = _attack(space, _at(2, drop), r"of the 3 chunks of message 0 from n1 arrived")
    assert "n2" in str(err)


def test_dropped_message_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def drop(step: int, envs: list[Envelope]) -> list[Envelope]:
        last = [e for e in envs if e.sender == "n1" and e.recipient == "n2"][-1]  # message 1
        return [e for e in envs if e is not last]

    _attack(space, _at(2, drop), r"1 of the 2 messages from n1 arrived")


def test_dropped_batch_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def drop(step: int, envs: list[Envelope]) -> list[Envelope]:
        return [e for e in envs if not (e.sender == "n2" and e.recipient == "n3")]

    _attack(space, _at(3, drop), r"nothing from n2 \(its envelopes were dropped")


def test_replay_from_an_earlier_step_refused(
    space: dict[str, Credentials], small_chunks: None
) -> None:
    old: list[Envelope] = []

    def tamper(step: int, envs: list[Envelope]) -> list[Envelope]:
        if step == 2:
            old.extend(e for e in envs if e.sender == "n1" and e.recipient == "n2")
            return envs
        if step == 3:
            return [*envs, old[0]]
        return envs

    _attack(space, tamper, r"from n1 belongs to step 1 \(replayed")


def test_repeated_chunk_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def dup(step: int, envs: list[Envelope]) -> list[Envelope]:
        return [*envs, next(e for e in envs if e.sender == "n3" and _big(e))]

    _attack(space, _at(2, dup), r"chunk 0 of message 0 from n3 arrives twice")


def test_reordered_chunks_are_reassembled_in_order(
    space: dict[str, Credentials], small_chunks: None
) -> None:
    payloads = _small_payloads()
    sessions = _sessions(space, payloads)
    relay_local(sessions, tamper=lambda s, envs: list(reversed(envs)))
    assert sessions["n2"].party.got["n1"] == payloads["n1"]["n2"]  # type: ignore[attr-defined]
    assert sessions["n1"].party.got["n3"] == payloads["n3"]["n1"]  # type: ignore[attr-defined]


def _edit_header(e: Envelope, **fields: int) -> Envelope:
    names = ("version", "flags", "step", "count", "seq", "chunks", "chunk")
    values = dict(zip(names, ch._HEADER.unpack(e.body[: ch._HEADER.size]), strict=True))
    values.update(fields)
    header = ch._HEADER.pack(*(values[n] for n in names))
    return Envelope(e.sender, e.recipient, header + e.body[ch._HEADER.size :])


def test_chunk_moved_to_another_position_or_message_refused(
    space: dict[str, Credentials], small_chunks: None
) -> None:
    def swap_index(step: int, envs: list[Envelope]) -> list[Envelope]:
        i = next(i for i, e in enumerate(envs) if e.sender == "n1" and _big(e))
        return [*envs[:i], _edit_header(envs[i], chunk=1), *envs[i + 1 :]]

    _attack(space, _at(2, swap_index), "from n1 failed authentication")

    def into_other(step: int, envs: list[Envelope]) -> list[Envelope]:
        i = next(i for i, e in enumerate(envs) if e.sender == "n1" and _big(e))
        return [*envs[:i], _edit_header(envs[i], seq=1), *envs[i + 1 :]]

    _attack(space, _at(2, into_other), "from n1 failed authentication")


def test_swapped_recipient_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def swap(step: int, envs: list[Envelope]) -> list[Envelope]:
        other = {"n2": "n3", "n3": "n2"}
        return [replace(e, recipient=other[e.recipient]) if e.sender == "n1" else e for e in envs]

    _attack(space, _at(2, swap), "from n1 failed authentication")


def test_swapped_sender_refused(space: dict[str, Credentials], small_chunks: None) -> None:
    def swap(step: int, envs: list[Envelope]) -> list[Envelope]:
        return [replace(e, sender="n3") if e.sender == "n2" else e for e in envs]

    _attack(space, _at(2, swap), "from n3 failed authentication")


def test_envelope_for_someone_else_refused(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {})
    for s in sessions.values():
        s.accept({n: t.hello() for n, t in sessions.items()})
    envs, _, _ = sessions["n1"].run(1)
    to_n3 = next(e for e in envs if e.recipient == "n3")
    with pytest.raises(ProtocolError, match="from 'n1' for 'n3'"):
        sessions["n2"].deliver([to_n3])
    with pytest.raises(ProtocolError, match="aborted"):
        sessions["n2"].run(1)
    c = sessions["n3"].channel
    c.open([])
    c.seal([])
    with pytest.raises(ProtocolError, match="addressed to 'n2', not to this node"):
        c.open([replace(to_n3, recipient="n2")])


def test_flipped_bit_and_other_session_refused(
    space: dict[str, Credentials], small_chunks: None
) -> None:
    def flip(step: int, envs: list[Envelope]) -> list[Envelope]:
        e = envs[0]
        body = bytearray(e.body)
        body[-1] ^= 1
        return [Envelope(e.sender, e.recipient, bytes(body)), *envs[1:]]

    _attack(space, _at(2, flip), "failed authentication")

    captured: list[Envelope] = []

    def keep(step: int, envs: list[Envelope]) -> list[Envelope]:
        captured.extend(envs)
        return envs

    relay_local(_sessions(space, _small_payloads()), tamper=_at(2, keep))  # another session
    _attack(space, _at(2, lambda s, envs: captured), "failed authentication")


def test_envelope_from_a_finished_peer_refused(space: dict[str, Credentials]) -> None:
    final: list[Envelope] = []

    def tamper(step: int, envs: list[Envelope]) -> list[Envelope]:
        if step == 2:
            final.extend(e for e in envs if e.sender == "n3")
        if step == 3:
            return [*envs, *(replace(e) for e in final if e.recipient == "n1")]
        return envs

    sessions = _sessions(space, {"n1": {"n2": [b"x"]}}, quit_at={"n3": 1})
    with pytest.raises(ProtocolError, match="from 'n3', which finished at step 1"):
        relay_local(sessions, tamper=tamper)


# -- bounds -------------------------------------------------------------------------------


def test_oversized_step_refused(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {"n1": {"n2": [b"z" * 20000]}}, max_bytes=10000)
    with pytest.raises(ProtocolError, match="sends 20000 bytes to n2, above the session's"):
        relay_local(sessions)
    # a relay that floods a node's buffer
    sessions = _sessions(space, {}, max_bytes=10000)
    for s in sessions.values():
        s.accept({n: t.hello() for n, t in sessions.items()})
    envs, _, _ = sessions["n1"].run(1)
    e = next(e for e in envs if e.recipient == "n2")
    with pytest.raises(ProtocolError, match="more than max_bytes = 10000 buffered"):
        sessions["n2"].deliver([replace(e, body=b"\0" * 6000)] * 2)
    with pytest.raises(ProtocolError, match=r"above the .* an envelope may have"):
        sessions["n3"].deliver([Envelope("n1", "n3", b"\0" * (ENVELOPE_MAX + 1))])


def test_too_many_envelopes_refused(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {})
    s = Session(sessions["n2"].channel, sessions["n2"].party, max_envelopes=5)
    with pytest.raises(ProtocolError, match="more than 5 envelopes buffered"):
        s.deliver([Envelope("n1", "n2", b"\0" * 50)] * 6)


def test_open_refuses_more_than_max_bytes(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {}, max_bytes=4000)
    for s in sessions.values():
        s.accept({n: t.hello() for n, t in sessions.items()})
    c = sessions["n2"].channel
    c.open([])
    c.seal([])
    with pytest.raises(ProtocolError, match="above max_bytes = 4000"):
        c.open([Envelope("n1", "n2", b"\0" * 3000)] * 2)


def test_chunk_size_is_the_design_constant() -> None:
    assert CHUNK_BYTES == 4 * 1024 * 1024
    assert ENVELOPE_MAX - CHUNK_BYTES < 200


# -- a malicious relay: hellos ------------------------------------------------------------


def _channels(
    space: dict[str, Credentials], nodes: Sequence[str] = ("n1", "n2"), **kw: Any
) -> tuple[bytes, dict[str, Channel]]:
    sid = secrets.token_bytes(32)
    return sid, {n: Channel(hello_identity(space[n]), nodes, sid, CONTEXT, **kw) for n in nodes}


def _forged(
    ident: Any, session: bytes, context: bytes = CONTEXT, nodes: Sequence[str] = ("n1", "n2")
) -> bytes:
    return Channel(ident, nodes, session, context).hello()


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda sp, sid: _forged(Impostor("n2", sp["alice"]), sid),
            AuthenticationError,
            "alice .role analyst. is not a node",
        ),
        (
            lambda sp, sid: _forged(Impostor("n2", sp["n3"]), sid),
            AuthenticationError,
            "signed with the certificate of node 'n3', not of 'n2'",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["foreign-n2"]), sid),
            AuthenticationError,
            "hello of n2",
        ),
        (
            lambda sp, sid: _forged(CertHelloIdentity(sp["expired-n2"]), sid),
            AuthenticationError,
            "expired",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["n2"]), sid, b"another query"),
            ProtocolError,
            "computes something else",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["n2"]), os.urandom(32)),
            ProtocolError,
            "another session",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["n2"]), sid, nodes=("n1", "n2", "n3")),
            ProtocolError,
            "told of other participants",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["n2"]), sid)[:-3],
            ProtocolError,
            "malformed hello|truncated",
        ),
        (
            lambda sp, sid: _forged(hello_identity(sp["n2"]), sid) + b"\0",
            ProtocolError,
            "trailing bytes",
        ),
        (lambda sp, sid: b"GET / HTTP/1.1", ProtocolError, "not a vertical channel hello"),
    ],
)
def test_substituted_hello_refused(
    space: dict[str, Credentials], make: Any, error: type[Exception], match: str
) -> None:
    sid, chans = _channels(space)
    with pytest.raises(error, match=match):
        chans["n1"].accept({"n1": chans["n1"].hello(), "n2": make(space, sid)})


def test_forged_signature_over_an_altered_binding_refused(space: dict[str, Credentials]) -> None:
    _, chans = _channels(space)
    good = chans["n2"].hello()
    binding, cert, sig = ch._decode_hello(good, "t")
    altered = binding.replace(b"n1", b"n9")
    with pytest.raises(AuthenticationError, match="does not verify"):
        chans["n1"].accept({"n1": chans["n1"].hello(), "n2": ch._encode_hello(altered, cert, sig)})
    # a signature of another domain (a secagg advert over the same bytes) is refused
    other = CertHelloIdentity(space["n2"]).sign(binding, domain=b"trustspace/secagg/advertise/v1\0")
    with pytest.raises(AuthenticationError, match="does not verify"):
        chans["n1"].accept(
            {"n1": chans["n1"].hello(), "n2": ch._encode_hello(binding, cert, other)}
        )
    assert HELLO_DOMAIN.startswith(b"trustspace/vertical/")


def test_revoked_peer_refused(space: dict[str, Credentials]) -> None:
    _, chans = _channels(space, revoked=revocation_check(("n2",)))
    with pytest.raises(AuthenticationError, match=r"revoked \(name 'n2' is on the revocation"):
        chans["n1"].accept({n: c.hello() for n, c in chans.items()})


def test_hello_set_must_be_exactly_the_participants(space: dict[str, Credentials]) -> None:
    sid, chans = _channels(space, nodes=("n1", "n2", "n3"))
    hellos = {n: c.hello() for n, c in chans.items()}
    with pytest.raises(ProtocolError, match=r"missing \['n3'\]"):
        chans["n1"].accept({"n1": hellos["n1"], "n2": hellos["n2"]})
    with pytest.raises(ProtocolError, match=r"not participants \['n4'\]"):
        chans["n1"].accept({**hellos, "n4": hellos["n3"]})
    with pytest.raises(ProtocolError, match="own hello was replaced"):
        chans["n1"].accept({**hellos, "n1": _forged(hello_identity(space["n1"]), sid, nodes=NODES)})
    with pytest.raises(
        AuthenticationError, match="hello of n3: signed with the certificate of node 'n2'"
    ):
        chans["n1"].accept({**hellos, "n3": hellos["n2"]})
    chans["n1"].accept(hellos)
    with pytest.raises(ProtocolError, match="already accepted"):
        chans["n1"].accept(hellos)


def test_relay_showing_different_hellos_is_caught(space: dict[str, Credentials]) -> None:
    """A relay that runs a node against a context it chose: the node refuses at once."""
    sessions = _sessions(space, {"n1": {"n2": [b"q"]}}, contexts={"n3": b"other round"})
    with pytest.raises(ProtocolError, match="computes something else"):
        relay_local(sessions)


def test_wrong_context_cannot_open_even_if_hellos_pass(
    space: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: the keys themselves depend on the context, so a node whose hello
    check were skipped still could not open what a node of another context sealed."""
    sid = secrets.token_bytes(32)
    a = Channel(hello_identity(space["n1"]), ("n1", "n2"), sid, CONTEXT)
    b = Channel(hello_identity(space["n2"]), ("n1", "n2"), sid, CONTEXT)
    hellos = {"n1": a.hello(), "n2": b.hello()}
    a.accept(hellos)
    check = b._check_hello

    def lenient(name: str, raw: bytes, where: str) -> bytes:
        saved, b.context_digest = b.context_digest, a.context_digest
        try:
            return check(name, raw, where)
        finally:
            b.context_digest = saved

    monkeypatch.setattr(b, "_check_hello", lenient)
    b.context_digest = hashlib.sha256(b"another round").digest()
    b.accept(hellos)
    a.open([])
    envs = a.seal([Message("n1", "n2", "k", b"hi")])
    b.open([])
    b.seal([])
    with pytest.raises(ProtocolError, match="from n1 failed authentication"):
        b.open(envs)


def test_non_node_credentials_cannot_make_a_channel(space: dict[str, Credentials]) -> None:
    with pytest.raises(ConfigError, match="only a node takes part"):
        hello_identity(space["alice"])
    ident = hello_identity(space["n1"])
    with pytest.raises(ConfigError, match="not a participant"):
        Channel(ident, ("n2", "n3"), os.urandom(32), CONTEXT)
    with pytest.raises(ConfigError, match="32 bytes"):
        Channel(ident, ("n1", "n2"), b"short", CONTEXT)
    with pytest.raises(ConfigError, match="named twice"):
        Channel(ident, ("n1", "n2", "n2"), os.urandom(32), CONTEXT)
    assert "key" not in repr(ident).lower()


def test_session_runs_steps_in_order_and_stays_aborted(space: dict[str, Credentials]) -> None:
    sessions = _sessions(space, {})
    hellos = {n: t.hello() for n, t in sessions.items()}
    with pytest.raises(ProtocolError, match="before the hellos were accepted"):
        sessions["n1"].channel.seal([])
    for s in sessions.values():
        s.accept(hellos)
    with pytest.raises(ProtocolError, match="asked to run step 2, the next is 1"):
        sessions["n1"].run(2)
    with pytest.raises(ProtocolError, match=r"after the session was aborted \(ProtocolError\)"):
        sessions["n1"].run(1)
    with pytest.raises(ProtocolError, match="aborted"):
        sessions["n1"].deliver([])
