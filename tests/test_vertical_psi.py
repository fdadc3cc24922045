"""ECDH-PSI over X25519: correctness against Python sets, alignment, and what a peer can abuse."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from trustspace.errors import ConfigError, DataError, ProtocolError
from trustspace.vertical._party import Message, StepOut, run_local
from trustspace.vertical.psi import PsiParty, blind, hash_to_u


def ids(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def run(sets: Mapping[str, Sequence[bytes]], mode: str) -> dict[str, PsiParty]:
    names = list(sets)
    parties = {n: PsiParty(n, names, mode, sets[n], workers=1) for n in names}
    results = run_local(parties)
    truth = set.intersection(*[{e for e in s if e} for s in sets.values()])
    assert all(r == {"size": len(truth)} for r in results.values())
    if mode == "align":
        orders = [[sets[n][i] for i in p.aligned] for n, p in parties.items()]
        assert all(o == orders[0] for o in orders)  # identical order at every party
        assert set(orders[0]) == truth and len(orders[0]) == len(truth)
    return parties


def test_rfc7748_vector_and_commutativity() -> None:
    # RFC 7748 section 5.2, first X25519 test vector
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    out = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert blind([u], k, hash_first=False, workers=1)[0].hex() == out
    a, b = os.urandom(32), os.urandom(32)
    els = ids(50)
    ab = blind(blind(els, a, hash_first=True, workers=1), b, hash_first=False, workers=1)
    ba = blind(blind(els, b, hash_first=True, workers=1), a, hash_first=False, workers=1)
    assert ab == ba
    assert blind(els, a, hash_first=True, workers=1) == blind(
        [hash_to_u(e) for e in els], a, hash_first=False, workers=1
    )


def test_process_pool_matches_in_process() -> None:
    k = os.urandom(32)
    els = ids(3000)
    assert blind(els, k, hash_first=True, workers=2) == blind(els, k, hash_first=True, workers=1)


@pytest.mark.parametrize("mode", ["align", "cardinality"])
@pytest.mark.parametrize("n", [2, 3])
def test_random_sets_against_python_sets(mode: str, n: int) -> None:
    pool = ids(400)
    rnd = random.Random(n)
    sets = {f"p{i}": rnd.sample(pool, rnd.randint(100, 300)) + [b""] * 3 for i in range(n)}
    run(sets, mode)


@pytest.mark.parametrize("mode", ["align", "cardinality"])
def test_edge_cases_empty_disjoint_identical(mode: str) -> None:
    same = ids(60)
    run({"a": [], "b": ids(5)}, mode)
    run({"a": [], "b": []}, mode)
    run({"a": ids(40), "b": ids(40), "c": ids(3)}, mode)
    run({"a": same, "b": list(reversed(same)), "c": same[::2] + same[1::2]}, mode)


def test_align_rows_point_at_the_input_rows_with_nulls() -> None:
    common = ids(10)
    a = [b"", *common, *ids(5)]
    b = [*ids(7), b"", b"", *common[::-1]]
    parties = run({"a": a, "b": b}, "align")
    assert 0 not in parties["a"].aligned
    assert not ({7, 8} & set(parties["b"].aligned.tolist()))


class Recorder:
    """Wraps a party and keeps every inbox it was given."""

    def __init__(self, party: PsiParty) -> None:
        self.party = party
        self.name = party.name
        self.inboxes: list[tuple[Message, ...]] = []

    def step(self, index: int, inbox: Sequence[Message]) -> StepOut:
        self.inboxes.append(tuple(inbox))
        return self.party.step(index, inbox)


def test_cardinality_gives_the_origin_no_per_row_tags() -> None:
    a, b = ids(2000), ids(1000)
    b[:500] = a[:500]
    ka, kb = os.urandom(32), os.urandom(32)
    keys = iter([ka, kb])

    def rng_for(first: bytes):  # type: ignore[no-untyped-def]
        used = [False]

        def rng(k: int) -> bytes:
            if not used[0] and k == 32:
                used[0] = True
                return first
            return os.urandom(k)

        return rng

    pa = Recorder(PsiParty("a", ["a", "b"], "cardinality", a, workers=1, rng=rng_for(next(keys))))
    pb = Recorder(PsiParty("b", ["a", "b"], "cardinality", b, workers=1, rng=rng_for(next(keys))))
    assert run_local({"a": pa, "b": pb}) == {"a": {"size": 500}, "b": {"size": 500}}
    finals = [m for box in pa.inboxes for m in box if m.kind == "psi.final"]
    assert len(finals) == 1 and finals[0].sender == "b"
    per_row = blind(blind(a, ka, hash_first=True, workers=1), kb, hash_first=False, workers=1)
    got = [finals[0].body[i : i + 32] for i in range(0, len(finals[0].body), 32)]
    assert set(got) == set(per_row)
    # shuffled: the origin's row order is lost (matches ~ 1 in expectation)
    assert sum(g == r for g, r in zip(got, per_row, strict=True)) < 10
    # the non-leader only ever receives its peer's singly blinded set and the size
    kinds_b = sorted(m.kind for box in pb.inboxes for m in box)
    assert kinds_b == ["psi.blind/1", "psi.size"]
    with pytest.raises(ProtocolError, match="align"):
        _ = pa.party.aligned


def test_hops_do_not_see_the_origins_row_order() -> None:
    a = ids(1000)
    ka = os.urandom(32)
    used = [False]

    def rng(k: int) -> bytes:
        if not used[0]:
            used[0] = True
            return ka
        return os.urandom(k)

    pa = PsiParty("a", ["a", "b"], "align", a, workers=1, rng=rng)
    sent = pa.step(1, ()).messages[0].body
    in_order = b"".join(blind(a, ka, hash_first=True, workers=1))
    assert sent != in_order
    assert sorted(sent[i : i + 32] for i in range(0, len(sent), 32)) == sorted(
        in_order[i : i + 32] for i in range(0, len(in_order), 32)
    )


def two(mode: str = "align", n: int = 20) -> tuple[PsiParty, PsiParty, list[bytes]]:
    a, b = ids(n), ids(n)
    return (
        PsiParty("a", ["a", "b"], mode, a, workers=1),
        PsiParty("b", ["a", "b"], mode, b, workers=1),
        a,
    )


def msg(kind: str, body: bytes, sender: str = "b", recipient: str = "a") -> Message:
    return Message(sender=sender, recipient=recipient, kind=kind, body=body)


def test_malformed_inbox_is_refused() -> None:
    good = blind(ids(20), os.urandom(32), hash_first=True, workers=1)
    cases: list[tuple[Sequence[Message], str]] = [
        ((), "missing"),
        ((msg("psi.blind/2", b"".join(good)),), "unexpected"),
        ((msg("psi.blind/1", b"".join(good)), msg("psi.blind/1", b"".join(good))), "unexpected"),
        ((msg("psi.blind/1", b"".join(good), sender="c"),), "unexpected"),
        ((msg("psi.blind/1", b"".join(good) + b"x"),), "whole number"),
        ((msg("psi.blind/1", b"".join(good + good[:1])),), "repeated"),
        ((msg("psi.blind/1", b"\xff" * 32),), "canonical"),
        ((msg("psi.blind/1", b"\xee" + b"\xff" * 30 + b"\x7f"),), "canonical"),
    ]
    for inbox, what in cases:
        a, _, _ = two()
        a.step(1, ())
        with pytest.raises(ProtocolError, match=what) as exc:
            a.step(2, inbox)
        assert good[0].hex() not in str(exc.value)


@pytest.mark.parametrize("u", [bytes(32), (1).to_bytes(32, "little")])
def test_small_order_point_is_refused(u: bytes) -> None:
    a, _, _ = two()
    a.step(1, ())
    pts = blind(ids(5), os.urandom(32), hash_first=True, workers=1)
    with pytest.raises(ProtocolError, match="small-order"):
        a.step(2, (msg("psi.blind/1", b"".join([*pts, u])),))


def test_wrong_tag_count_and_forged_intersection_are_refused() -> None:
    a, b, _ = two(n=20)
    out_a = a.step(1, ())
    out_b = b.step(1, ())
    a2 = a.step(2, out_b.messages)
    b2 = b.step(2, out_a.messages)
    short = b2.messages[0].body[:-32]
    with pytest.raises(ProtocolError, match="expected 20"):
        a.step(3, (msg("psi.tags", short),))
    # b's step 3 goes well; then the leader "a" sends an intersection of tags b does not hold
    b3 = b.step(3, a2.messages)
    assert b3.messages[0].kind == "psi.sorted"
    b.step(4, ())
    fake = b"".join(sorted(blind(ids(3), os.urandom(32), hash_first=True, workers=1)))
    with pytest.raises(ProtocolError, match="not this node's"):
        b.step(5, (msg("psi.common", fake, sender="a", recipient="b"),))


def test_step_order_and_results_before_done() -> None:
    a, _, _ = two()
    with pytest.raises(ProtocolError, match="out of order"):
        a.step(2, ())
    with pytest.raises(ProtocolError, match="not finished"):
        _ = a.aligned
    a.step(1, ())
    with pytest.raises(ProtocolError, match="out of order"):
        a.step(1, ())


def test_cardinality_size_larger_than_own_set_is_refused() -> None:
    _, b, _ = two("cardinality", n=5)
    b.step(1, ())
    b._index = 3  # skip the blinding steps: only the size message is under test
    with pytest.raises(ProtocolError, match="larger"):
        b.step(4, (msg("psi.size", (6).to_bytes(8, "big"), sender="a", recipient="b"),))


def test_bad_construction() -> None:
    with pytest.raises(ConfigError):
        PsiParty("a", ["a"], "align", [])
    with pytest.raises(ConfigError):
        PsiParty("a", ["a", "a"], "align", [])
    with pytest.raises(ConfigError):
        PsiParty("z", ["a", "b"], "align", [])
    with pytest.raises(ConfigError):
        PsiParty("a", ["a", "b"], "join", [])
    with pytest.raises(DataError, match="32 bytes"):
        PsiParty("a", ["a", "b"], "align", [b"short"])
    e = os.urandom(32)
    with pytest.raises(DataError, match="duplicates"):
        PsiParty("a", ["a", "b"], "align", [e, e])
    assert np.asarray(PsiParty("a", ["a", "b"], "align", []).nodes).size == 2


def test_multi_buffer_backend_equals_openssl() -> None:
    from trustspace.vertical import _x25519_mb
    from trustspace.vertical.psi import _blind_serial

    if _x25519_mb.mb8 is None:
        pytest.skip("ipp-crypto multi-buffer X25519 not available (no wheel or no AVX-512 IFMA)")
    k = os.urandom(32)
    for n in (0, 1, 7, 8, 9, 1001):
        data = os.urandom(32 * n)
        for hash_first in (True, False):
            fast = _blind_serial(k, data, hash_first)
            slow = _blind_serial(k, data, hash_first, accel=False)
            assert fast == slow
    small = os.urandom(64) + bytes(32) + os.urandom(32)
    assert _blind_serial(k, small, False)[1] == 2 == _blind_serial(k, small, False, accel=False)[1]
