"""The Paillier secure product of vertical rounds: shares that sum to the clear round for every
term kind, Paillier parts cross-checked against phe, forged or mis-sized messages refused, and
nothing but ciphertexts reaching the evaluator."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import gmpy2
import numpy as np
import phe
import pytest
from test_vertical_terms import ALL_TERMS, CLAMPED, FILTERS, OWNERS, frames

import trustspace.crypto.paillier as hz
from trustspace.crypto.paillier import _allow_insecure_test_keys, generate_keypair
from trustspace.errors import ConfigError, EncodingOverflow, ProtocolError
from trustspace.stats import Round, Term
from trustspace.vertical._party import Message, run_local
from trustspace.vertical.product import ProductParty, multiexp
from trustspace.vertical.terms import clear_round, local_factors, plan_round

NODES = ["bank", "telco"]
BITS = 512  # tests only, under the project's test switch


@pytest.fixture(autouse=True)
def small_keys() -> Iterator[None]:
    with _allow_insecure_test_keys():
        yield


def parties(rnd, fr, **kw):
    plan = plan_round(rnd, OWNERS, NODES)
    return {
        k: ProductParty(k, plan, local_factors(plan, k, fr[k]), key_bits=BITS, **kw) for k in NODES
    }


def shares_sum(ps):
    return ps["bank"].share + ps["telco"].share


def assert_within_one_unit(rnd, total, clear):
    diff = (total - rnd.encode(clear)).view(np.int64)
    assert np.abs(diff).max() <= 1, np.flatnonzero(diff)
    counts = rnd.count_mask
    assert np.array_equal(total[counts], rnd.encode(clear)[counts])  # counts are exact


@pytest.mark.parametrize("where", FILTERS[:4])
def test_shares_sum_to_the_clear_round_for_every_kind(where):
    fr = frames(200, seed=11)
    rnd = Round("v", where, ALL_TERMS + CLAMPED)
    ps = parties(rnd, fr)
    assert run_local(ps) == {"bank": None, "telco": None}
    assert_within_one_unit(rnd, shares_sum(ps), clear_round(rnd, OWNERS, fr))


def test_each_share_alone_says_nothing_of_the_counts():
    fr = frames(200, seed=5)
    rnd = Round("v", '"bank.label" = 1', (Term.bins("telco.spend", [-50, 0, 50, 100]),))
    enc = rnd.encode(clear_round(rnd, OWNERS, fr))
    seen = []
    for _ in range(2):
        ps = parties(rnd, fr)
        run_local(ps)
        assert np.array_equal(shares_sum(ps), enc)
        for k in NODES:  # masks of 40 bits over the count: neither share is near the count
            assert np.all(np.abs(ps[k].share.view(np.int64) - enc.view(np.int64)) > 2**20)
        seen.append(ps["bank"].share)
    assert not np.array_equal(seen[0], seen[1])  # fresh masks every run


def test_dp_scale_and_count_frac_bits_are_honoured():
    fr = frames(150, seed=2)
    terms = (
        Term("moment", ("telco.spend",), (1,), (0.0,), scale=3.0 * 2**10),
        Term("bins", ("telco.spend",), edges=(-50.0, 0.0, 50.0), frac_bits=8),
        Term.moment(["bank.age", "telco.spend"], [1, 1], [0.0, 0.0], -3),
    )
    rnd = Round("v", "\"bank.tier\" = 'gold'", terms)
    ps = parties(rnd, fr)
    run_local(ps)
    assert_within_one_unit(rnd, shares_sum(ps), clear_round(rnd, OWNERS, fr))


def test_three_nodes_pairwise_terms():
    fr = frames(120, seed=9)
    fr["shop"] = fr["telco"].rename(columns={"spend": "basket"})[["basket"]] * 2
    owners = {**OWNERS, "shop.basket": "shop"}
    terms = (
        Term.moment(["bank.age", "shop.basket"], [1, 1], [40.0, 0.0], 30),
        Term.bins("shop.basket", [-100, 0, 100]),
        Term.moment(["telco.spend", "shop.basket"], [1, 1], [0.0, 0.0], 30),
        Term.count("telco.spend"),
    )
    rnd = Round("v", None, terms)
    plan = plan_round(rnd, owners, ["bank", "telco", "shop"])
    ps = {
        k: ProductParty(k, plan, local_factors(plan, k, fr[k]), key_bits=BITS)
        for k in ("bank", "telco", "shop")
    }
    run_local(ps)
    total = sum((p.share for p in ps.values()), np.zeros(rnd.size, dtype=np.uint64))
    diff = (total - rnd.encode(clear_round(rnd, owners, fr))).view(np.int64)
    assert np.abs(diff).max() <= 1


class Tap:
    """A relay that records (and may rewrite) the messages between two parties."""

    def __init__(self, ps, rewrite=None):
        self.ps, self.rewrite, self.seen = ps, rewrite, []

    def run(self):
        inbox = {k: [] for k in self.ps}
        done = dict.fromkeys(self.ps, False)
        for index in range(1, 6):
            out = {k: [] for k in self.ps}
            for k, p in self.ps.items():
                if done[k]:
                    continue
                res = p.step(index, tuple(inbox[k]))
                done[k] = res.done
                for m in res.messages:
                    self.seen.append(m)
                    m2 = self.rewrite(m) if self.rewrite else m
                    if m2 is not None:
                        out[m2.recipient].append(m2)
            inbox = out
            if all(done.values()):
                return


def bins_round():
    return Round(
        "v",
        '"bank.label" = 1',
        tuple(Term.bins("telco.spend", [-50, e, 200]) for e in (0.0, 10.0, 20.0)),
    )


def test_evaluator_receives_only_fresh_ciphertexts_of_the_factor_once():
    fr = frames(100, seed=4)
    keys = generate_keypair(BITS)
    ps = parties(bins_round(), fr)
    plan = plan_round(bins_round(), OWNERS, NODES)
    ps["bank"] = ProductParty("bank", plan, local_factors(plan, "bank", fr["bank"]), keypair=keys)
    tap = Tap(ps)
    tap.run()
    to_ev = [m for m in tap.seen if m.recipient == "telco"]
    # one key and ONE encrypted label for three terms
    assert sorted(m.kind for m in to_ev) == ["prod.enc/0", "prod.key"]
    pk, sk = keys
    body = next(m.body for m in to_ev if m.kind == "prod.enc/0")
    width = pk.ciphertext_length
    head = len(body) - 100 * width
    cts = [int.from_bytes(body[o : o + width], "big") for o in range(head, len(body), width)]
    assert len(cts) == 100 and len(set(cts)) == 100  # equal labels, distinct ciphertexts
    assert all(c % int(pk.n) != 1 for c in cts)  # not the noiseless (1 + m n)
    label = (fr["bank"]["label"] == 1).to_numpy()
    assert [sk.raw_decrypt(c) for c in cts] == label.astype(int).tolist()
    # cross-check with phe: its private key (same p, q) decrypts ours, its sums agree
    ppk = phe.PaillierPublicKey(int(pk.n))
    psk = phe.PaillierPrivateKey(ppk, int(sk.p), int(sk.q))
    spend = fr["telco"]["spend"].to_numpy()
    in_bin = (spend >= -50) & (spend < 0)
    total = sum(phe.EncryptedNumber(ppk, c) for c, b in zip(cts, in_bin, strict=True) if b)
    assert psk.decrypt(total) == int((label & in_bin).sum())
    assert psk.raw_decrypt(cts[0]) == sk.raw_decrypt(cts[0])
    total = shares_sum(ps)
    rnd = bins_round()
    assert np.array_equal(total, rnd.encode(clear_round(rnd, OWNERS, fr)))


def test_multiexp_matches_pow():
    m = gmpy2.mpz(2**127 - 1)
    rng = np.random.default_rng(0)
    bases = [int(x) for x in rng.integers(2, 2**62, 300)]
    mant, shift = rng.integers(0, 2**62, 300), rng.integers(0, 60, 300)
    exps = [int(x) << int(s) for x, s in zip(mant, shift, strict=True)]
    want = gmpy2.mpz(1)
    for b, e in zip(bases, exps, strict=True):
        want = want * gmpy2.powmod(b, e, m) % m
    assert multiexp(bases, exps, m) == want
    assert multiexp([], [], m) == 1
    with pytest.raises(ValueError, match=">= 0"):
        multiexp([3], [-1], m)


def _truncate(m: Message) -> Message | None:
    if m.kind == "prod.enc/0":
        return dataclasses.replace(m, body=m.body[:-1])
    return m


def _out_of_range(m: Message) -> Message | None:
    if m.kind == "prod.enc/0":
        width = 2 * BITS // 8  # a whole ciphertext of 0xff.. >= n**2
        return dataclasses.replace(m, body=m.body[:-width] + b"\xff" * width)
    return m


def _drop_key(m: Message) -> Message | None:
    return None if m.kind == "prod.key" else m


def _extra(m: Message) -> Message | None:
    return dataclasses.replace(m, kind="prod.enc/7") if m.kind == "prod.enc/0" else m


def _short_result(m: Message) -> Message | None:
    return dataclasses.replace(m, body=m.body[:-3]) if m.kind.startswith("prod.res/") else m


def _wrong_term(m: Message) -> Message | None:
    return dataclasses.replace(m, kind="prod.res/9") if m.kind == "prod.res/1" else m


@pytest.mark.parametrize(
    ("rewrite", "match"),
    [
        (_truncate, "ciphertext bytes, expected"),
        (_out_of_range, "out of range"),
        (_drop_key, "no Paillier key from bank"),
        (_extra, "do not match the round's plan"),
        (_short_result, "bytes, expected"),
        (_wrong_term, "unexpected 'prod.res/9'"),
    ],
)
def test_forged_or_mis_sized_messages_are_refused(rewrite, match):
    ps = parties(bins_round(), frames(60, seed=1))
    with pytest.raises(ProtocolError, match=match):
        Tap(ps, rewrite).run()


def test_a_non_unit_ciphertext_is_refused_and_errors_carry_no_values():
    fr = frames(60, seed=1)
    keys = generate_keypair(BITS)
    pk, sk = keys
    plan = plan_round(bins_round(), OWNERS, NODES)
    ps = {
        "bank": ProductParty("bank", plan, local_factors(plan, "bank", fr["bank"]), keypair=keys),
        "telco": ProductParty("telco", plan, local_factors(plan, "telco", fr["telco"])),
    }
    width = pk.ciphertext_length

    def forge(m):
        if m.kind == "prod.enc/0":
            return dataclasses.replace(m, body=m.body[:-width] + int(sk.p).to_bytes(width, "big"))
        return m

    with pytest.raises(ProtocolError, match="not a unit") as exc:
        Tap(ps, forge).run()
    assert str(int(sk.p)) not in str(exc.value)


def test_steps_out_of_order_and_stray_messages():
    ps = parties(bins_round(), frames(40))
    with pytest.raises(ProtocolError, match="step 2 out of order"):
        ps["bank"].step(2, ())
    stray = Message("telco", "bank", "prod.key", b"x")
    with pytest.raises(ProtocolError, match="unexpected message"):
        ps["bank"].step(1, (stray,))
    with pytest.raises(ProtocolError, match="not done"):
        _ = ps["telco"].share
    ps = parties(bins_round(), frames(40))
    bad_key = Message("bank", "telco", "prod.key", b"TSPK\x01\x00\x01\x07")
    ps["telco"].step(1, ())
    with pytest.raises(ProtocolError, match="unusable Paillier key"):
        ps["telco"].step(2, (bad_key,))


def test_views_of_different_length_are_refused():
    fr, short = frames(60), frames(59)
    rnd = bins_round()
    plan = plan_round(rnd, OWNERS, NODES)
    ps = {
        "bank": ProductParty("bank", plan, local_factors(plan, "bank", fr["bank"]), key_bits=BITS),
        "telco": ProductParty("telco", plan, local_factors(plan, "telco", short["telco"])),
    }
    with pytest.raises(ProtocolError, match="aligned views differ"):
        run_local(ps)


def test_keys_below_2048_bits_need_the_test_switch():
    fr = frames(40)
    plan = plan_round(bins_round(), OWNERS, NODES)
    party = ProductParty("bank", plan, local_factors(plan, "bank", fr["bank"]), key_bits=1024)
    depth = hz._insecure_depth
    hz._insecure_depth = 0
    try:
        with pytest.raises(ConfigError, match="too small"):
            party.step(1, ())
    finally:
        hz._insecure_depth = depth


def test_a_value_beyond_the_fixed_point_range_is_refused_without_the_value():
    fr = frames(40)
    fr["telco"].loc[3, "spend"] = 1e300
    rnd = Round("v", '"bank.label" = 1', (Term.moment(["telco.spend"], [1], [0.0], 40),))
    ps = parties(rnd, fr)
    with pytest.raises(EncodingOverflow, match="term 0") as exc:
        run_local(ps)
    assert "1e+300" not in str(exc.value)


def test_cache_reuses_an_encryption_across_rounds_of_a_view_only_when_it_is_the_same(
    monkeypatch,
):
    fr = frames(80, seed=6)
    keys = generate_keypair(BITS)
    cache: dict = {}
    calls = []
    real = hz.PrivateKey.encrypt_many

    def counting(self, values, *a, **kw):
        calls.append(len(list(values)))
        return real(self, values, *a, **kw)

    monkeypatch.setattr(hz.PrivateKey, "encrypt_many", counting)

    def run(rnd):
        plan = plan_round(rnd, OWNERS, NODES)
        ps = {
            "bank": ProductParty(
                "bank", plan, local_factors(plan, "bank", fr["bank"]), keypair=keys, cache=cache
            ),
            "telco": ProductParty("telco", plan, local_factors(plan, "telco", fr["telco"])),
        }
        run_local(ps)
        assert np.array_equal(shares_sum(ps), rnd.encode(clear_round(rnd, OWNERS, fr)))

    run(bins_round())
    run(Round("v", '"bank.label" = 1', (Term.grid("telco.spend", 0, 10, 4),), index=1))
    assert calls == [80]  # the label indicator once for both rounds
    run(Round("v", '"bank.label" = 0', (Term.grid("telco.spend", 0, 10, 4),), index=2))
    assert calls == [80, 80]  # another filter: another factor
