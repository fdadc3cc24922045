"""SecAgg+ rounds: exact sums under dropouts at every stage, clean aborts, attacks refused."""

from __future__ import annotations

import itertools
import math
import secrets

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from trustspace import secagg
from trustspace.crypto import shamir
from trustspace.errors import ConfigError, DataError, ProtocolError, ThresholdError
from trustspace.secagg import (
    EncryptedShares,
    MaskedInput,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    UnmaskRequest,
    UnmaskShares,
)
from trustspace.secagg._params import (
    ETA,
    SIGMA,
    binomial_tail_ge,
    binomial_tail_lt,
    choose_parameters,
)
from trustspace.secagg.simulate import STAGES, deterministic_rng


def _expected(inputs: np.ndarray, dropped_before_masking: set[int]) -> np.ndarray:
    keep = [i for i in range(len(inputs)) if i not in dropped_before_masking]
    return inputs[keep].sum(axis=0, dtype=inputs.dtype)  # numpy wraps like the modulus


def _must_abort(cfg: SecAggConfig, drops: dict[str, set[int]]) -> bool:
    """Independent predicate: a round must abort iff some client that shared its keys keeps
    fewer than t live share holders among those that answer the unmask request (with the
    consistency round, those that signed are a superset of those that answer)."""
    ids = [i + 1 for i in range(cfg.n)]
    gone: set[int] = set()
    live = {}
    for stage in (*STAGES[:3], "consistency", STAGES[3]):
        gone |= {i + 1 for i in drops.get(stage, set())}
        live[stage] = {c for c in ids if c not in gone}
    u2, answering = live[STAGES[1]], live[STAGES[3]]
    if not u2:
        return True
    return any(len((cfg.neighbors_of(c) | {c}) & answering) < cfg.t for c in u2)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 14),
    length=st.integers(1, 40),
    bits=st.sampled_from([32, 64]),
    sparse=st.booleans(),
    data=st.data(),
)
def test_exact_sum_under_random_dropouts(
    n: int, length: int, bits: int, sparse: bool, data: st.DataObject
) -> None:
    dtype = np.uint32 if bits == 32 else np.uint64
    inputs = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 2**bits - 1), min_size=length, max_size=length),
                min_size=n,
                max_size=n,
            )
        ),
        dtype=dtype,
    )
    neighbors = data.draw(st.integers(2, max(2, n - 3))) if sparse and n >= 6 else None
    order = data.draw(st.permutations(range(n)))
    consistency = data.draw(st.booleans())
    stages = (*STAGES[:3], "consistency", STAGES[3]) if consistency else STAGES
    limit = data.draw(st.sampled_from([n // 3, n // 3, n]))  # mostly survivable rounds
    cut = sorted(
        data.draw(st.lists(st.integers(0, limit), min_size=len(stages), max_size=len(stages)))
    )
    drops = {
        stage: set(order[a:b]) for stage, a, b in zip(stages, [0, *cut[:-1]], cut, strict=True)
    }
    seed = data.draw(st.binary(min_size=1, max_size=8))
    kwargs = {
        "neighbors": neighbors,
        "dropouts": {s: sorted(v) for s, v in drops.items()},
        "consistency_check": consistency,
    }
    # the config simulate builds: same ids and parameters, the session id decides the graph
    cfg = SecAggConfig(
        session_id=deterministic_rng(seed + b"/client/" + str(n).encode())(32),
        client_ids=tuple(range(1, n + 1)),
        vector_length=length,
        neighbors=neighbors,
        modulus_bits=bits,
        consistency_check=consistency,
    )
    abort = _must_abort(cfg, drops)
    event("abort" if abort else "exact sum")
    if abort:
        with pytest.raises(ThresholdError, match="stage"):
            secagg.simulate(inputs, seed=seed, **kwargs)
    else:
        out = secagg.simulate(inputs, seed=seed, **kwargs)
        before = drops["advertise"] | drops[STAGES[1]] | drops["masked_input"]
        assert out.dtype == dtype
        assert np.array_equal(out, _expected(inputs, before))


def test_sparse_graph_round_with_dropouts_at_every_stage() -> None:
    rng = np.random.default_rng(7)
    inputs = rng.integers(0, 2**63, size=(60, 500), dtype=np.uint64)
    drops = {"advertise": [0, 1], "share": [2], "masked_input": [3, 4, 5], "unmask": [6, 7]}
    out = secagg.simulate(inputs, threshold=12, neighbors=20, dropouts=drops)
    assert np.array_equal(out, _expected(inputs, {0, 1, 2, 3, 4, 5}))
    out2 = secagg.simulate(inputs, threshold=12, neighbors=20, dropouts=drops, seed=3, wire=False)
    assert np.array_equal(out2, out)


def test_signed_inputs_wrap_like_the_modulus() -> None:
    inputs = np.array([[-1, 5], [2, -7], [3, 1]], dtype=np.int64)
    out = secagg.simulate(inputs, seed=1)
    assert out.astype(np.int64).tolist() == [4, -1]


def test_below_threshold_aborts_with_stage_and_counts() -> None:
    inputs = np.ones((5, 3), dtype=np.uint32)  # complete graph, t = 3
    with pytest.raises(ThresholdError, match=r"stage masked_input: 2 of 5 clients .* t=3"):
        secagg.simulate(inputs, dropouts={"masked_input": [0, 1, 2]})
    with pytest.raises(ThresholdError, match=r"stage advertise: 2 of 5"):
        secagg.simulate(inputs, dropouts={"advertise": [0, 1, 2]})
    with pytest.raises(ThresholdError, match=r"stage unmask: client \d+ has 2 live share holders"):
        secagg.simulate(inputs, dropouts={"unmask": [0, 1, 2]})


def test_server_gives_no_partial_sum_after_an_abort() -> None:
    _cfg, clients, server = _round(5)
    roster = server.collect_advertise({c: cl.advertise() for c, cl in clients.items()})
    routed = server.collect_shares({c: cl.share_keys(roster) for c, cl in clients.items()})
    masked = {c: clients[c].masked_input(np.ones(4, np.uint64), routed[c]) for c in (1, 2)}
    with pytest.raises(ThresholdError):
        server.collect_masked(masked)
    with pytest.raises(ProtocolError, match="expecting 'failed'"):
        server.collect_unmask({})


def _round(n: int, length: int = 4, **kw: object) -> tuple[SecAggConfig, dict, SecAggServer]:
    cfg = SecAggConfig(secrets.token_bytes(32), tuple(range(1, n + 1)), length, **kw)  # type: ignore[arg-type]
    clients = {c: SecAggClient(cfg, c) for c in cfg.client_ids}
    return cfg, clients, SecAggServer(cfg)


def _to_masked(clients: dict, server: SecAggServer, vectors: dict) -> dict:
    roster = server.collect_advertise({c: cl.advertise() for c, cl in clients.items()})
    routed = server.collect_shares({c: cl.share_keys(roster) for c, cl in clients.items()})
    return {c: clients[c].masked_input(vectors[c], routed[c]) for c in vectors}


def test_both_shares_of_one_client_are_never_revealed() -> None:
    cfg, clients, server = _round(5)
    vectors = {c: np.full(4, c, np.uint64) for c in clients}
    masked = _to_masked(clients, server, vectors)
    victim = 3
    honest = UnmaskRequest(cfg.session_id, tuple(sorted(masked)), ())
    # 1. one request naming the victim both alive and dropped cannot even be built or parsed
    with pytest.raises(ProtocolError, match="both survivor and dropped"):
        UnmaskRequest(cfg.session_id, honest.survivors, (victim,))
    forged = honest.to_bytes()[:-8] + (1).to_bytes(4, "big") + victim.to_bytes(8, "big")
    forged += (0).to_bytes(4, "big")  # no signatures
    with pytest.raises(ProtocolError, match="both survivor and dropped"):
        UnmaskRequest.from_bytes(forged)
    # 2. the victim, told it dropped, refuses to reveal anything
    lie = UnmaskRequest(cfg.session_id, tuple(c for c in masked if c != victim), (victim,))
    with pytest.raises(ProtocolError, match="refusing to reveal key shares"):
        clients[victim].unmask(lie)
    # 3. a client asked twice (first "alive", then "dropped") answers only once
    first = clients[1].unmask(honest)
    assert victim in dict(first.seed_shares) and not first.key_shares
    with pytest.raises(ProtocolError, match="each stage runs once"):
        clients[1].unmask(lie)
    # 4. split views: some holders told "alive", the others "dropped"; with t > (k + 1) / 2
    #    the aggregator never gets t seed shares AND t key shares of the victim
    others = [c for c in cfg.client_ids if c != victim]
    for k in range(len(others) + 1):
        for alive_view in itertools.combinations(others, k):
            seed_holders = len(alive_view) + 1  # the victim itself answers "alive" only
            key_holders = len(others) - len(alive_view)
            assert not (seed_holders >= cfg.t and key_holders >= cfg.t)


def test_split_view_attack_recovers_at_most_one_secret() -> None:
    cfg, clients, server = _round(5)  # t = 3: a strict majority of 5 holders
    masked = _to_masked(clients, server, {c: np.full(4, c, np.uint64) for c in clients})
    victim, others = 5, [1, 2, 3, 4]
    alive_req = UnmaskRequest(cfg.session_id, tuple(sorted(masked)), ())
    dead_req = UnmaskRequest(cfg.session_id, (1, 2, 3, 4), (victim,))
    seed_pts, key_pts = {}, {}
    for c in others[:2]:
        seed_pts[c] = dict(clients[c].unmask(alive_req).seed_shares)[victim]
    seed_pts[victim] = dict(clients[victim].unmask(alive_req).seed_shares)[victim]
    for c in others[2:]:
        key_pts[c] = dict(clients[c].unmask(dead_req).key_shares)[victim]
    assert len(seed_pts) == 3 and len(key_pts) == 2
    shamir.combine(seed_pts, cfg.t, 32)  # one secret: fine, the victim is masked by pairs too
    with pytest.raises(ValueError, match="needs 3 shares"):
        shamir.combine(key_pts, cfg.t, 32)


def test_unmask_request_inconsistent_with_what_the_client_saw_is_refused() -> None:
    cfg, clients, server = _round(5)
    masked = _to_masked(clients, server, {c: np.zeros(4, np.uint64) for c in clients})
    sid = cfg.session_id
    with pytest.raises(ProtocolError, match="neither or both"):
        clients[1].unmask(UnmaskRequest(sid, (1, 2, 3, 4), ()))  # peer 5 vanished
    with pytest.raises(ProtocolError, match="non-participants"):
        clients[2].unmask(UnmaskRequest(sid, (1, 2, 3, 4, 5, 99), ()))
    with pytest.raises(ThresholdError, match="2 survivors listed"):
        clients[3].unmask(UnmaskRequest(sid, (3, 4), (1, 2, 5)))
    assert clients[4].unmask(UnmaskRequest(sid, tuple(sorted(masked)), ())).sender == 4


def _shared(n: int) -> tuple[SecAggConfig, dict, SecAggServer, dict]:
    cfg, clients, server = _round(n)
    roster = server.collect_advertise({c: cl.advertise() for c, cl in clients.items()})
    return cfg, clients, server, {c: cl.share_keys(roster) for c, cl in clients.items()}


def test_messages_from_another_session_are_refused() -> None:
    cfg_a, clients_a, server_a, shares_a = _shared(4)
    cfg_b, clients_b, server_b = _round(4)
    adv_b = {c: cl.advertise() for c, cl in clients_b.items()}
    # the aggregator refuses another session's keys
    with pytest.raises(ProtocolError, match="another session"):
        SecAggServer(cfg_b).collect_advertise({1: SecAggClient(cfg_a, 1).advertise()})
    # a client refuses a roster entry from another session
    roster_b = server_b.collect_advertise(adv_b)
    mixed = {**roster_b, 2: SecAggClient(cfg_a, 2).advertise()}
    with pytest.raises(ProtocolError, match="another session"):
        clients_b[1].share_keys(mixed)
    # a replayed ciphertext: as is, or relabelled with this session's header (AEAD fails)
    _cfg_c, clients_c, _, shares_c = _shared(4)
    received = {s: shares_c[s][1] for s in (2, 3, 4)}
    replayed = shares_a[2][1]
    with pytest.raises(ProtocolError, match="another session"):
        SecAggClient.masked_input(clients_c[1], np.zeros(4, np.uint64), {**received, 2: replayed})
    cfg_d, clients_d, _, shares_d = _shared(4)
    relabelled = EncryptedShares(cfg_d.session_id, 2, 1, replayed.sealed)
    with pytest.raises(ProtocolError, match="failed authentication"):
        clients_d[1].masked_input(
            np.zeros(4, np.uint64), {2: relabelled, 3: shares_d[3][1], 4: shares_d[4][1]}
        )
    # the aggregator refuses a masked input from another session
    routed_a = server_a.collect_shares(shares_a)
    masked_a = {c: clients_a[c].masked_input(np.zeros(4, np.uint64), routed_a[c]) for c in (1,)}
    _cfg_e, _clients_e, server_e, shares_e = _shared(4)
    server_e.collect_shares(shares_e)
    with pytest.raises(ProtocolError, match="another session"):
        server_e.collect_masked(masked_a)


def test_roster_tampering_is_refused() -> None:
    cfg, clients, server = _round(4)
    adv = {c: cl.advertise() for c, cl in clients.items()}
    roster = server.collect_advertise(adv)
    reflected = dict(roster)
    reflected[2] = type(roster[2])(cfg.session_id, 2, roster[1].cipher_pk, roster[2].mask_pk)
    with pytest.raises(ProtocolError, match="appears twice"):
        clients[3].share_keys(reflected)
    swapped = dict(roster)
    swapped[1] = type(roster[1])(cfg.session_id, 1, roster[1].mask_pk, roster[1].cipher_pk)
    with pytest.raises(ProtocolError, match="alters this client's own keys"):
        clients[1].share_keys(swapped)


def test_wrong_share_from_a_client_aborts_without_a_sum() -> None:
    cfg, clients, server = _round(5)
    masked = _to_masked(clients, server, {c: np.ones(4, np.uint64) for c in (1, 2, 3, 4)})
    req = server.collect_masked(
        {c: MaskedInput.from_bytes(m.to_bytes()) for c, m in masked.items()}
    )
    answers = {c: clients[c].unmask(req) for c in req.survivors}
    evil = answers[1]
    key_shares = tuple((o, bytes(shamir.SHARE_BYTES)) for o, _ in evil.key_shares)
    answers[1] = UnmaskShares(cfg.session_id, 1, evil.seed_shares, key_shares)
    with pytest.raises(ProtocolError, match="reconstructed secret is invalid"):
        server.collect_unmask(answers)


def test_input_errors_are_reported_and_retryable() -> None:
    _cfg, clients, server = _round(3, length=4)
    roster = server.collect_advertise({c: cl.advertise() for c, cl in clients.items()})
    routed = server.collect_shares({c: cl.share_keys(roster) for c, cl in clients.items()})
    with pytest.raises(DataError, match="1-D vector of 4"):
        clients[1].masked_input(np.zeros(5, np.uint64), routed[1])
    with pytest.raises(DataError, match="FixedPointEncoder"):
        clients[1].masked_input(np.zeros(4), routed[1])
    assert clients[1].masked_input(np.zeros(4, np.uint64), routed[1]).length == 4


def test_config_validation() -> None:
    sid = bytes(16)
    with pytest.raises(ConfigError, match="session_id"):
        SecAggConfig(b"short", (1, 2, 3), 4)
    with pytest.raises(ConfigError, match="distinct"):
        SecAggConfig(sid, (1, 2, 2), 4)
    with pytest.raises(ConfigError, match=r"1 \.\. 2"):
        SecAggConfig(sid, (0, 1, 2), 4)
    with pytest.raises(ConfigError, match=">= 2 clients"):
        SecAggConfig(sid, (1,), 4)
    with pytest.raises(ConfigError, match="modulus_bits"):
        SecAggConfig(sid, (1, 2, 3), 4, modulus_bits=16)
    with pytest.raises(ConfigError, match=r"threshold must be in 3 \.\. 4"):
        SecAggConfig(sid, (1, 2, 3, 4), 4, threshold=2)  # 2 of 4 lets both secrets leak
    cfg = SecAggConfig(sid, tuple(range(1, 101)), 4, neighbors=11)
    assert cfg.k == 12 and 2 * cfg.t > cfg.k + 1


@pytest.mark.parametrize("n", [5, 40, 100, 1000, 5000])
def test_chosen_parameters_meet_the_documented_bounds(n: int) -> None:
    delta, gamma = 0.1, 0.05
    k, t = choose_parameters(n, delta, gamma)
    if k < n - 1:
        assert k % 2 == 0
        assert n * binomial_tail_lt(k, 1 - delta, t) <= 2.0**-ETA
        assert n * binomial_tail_ge(k, gamma, 2 * t - (k + 1)) <= 2.0**-SIGMA
        assert n * (gamma + delta) ** (k // 2) <= 2.0**-SIGMA
        # minimality of t: one less breaks the privacy bound
        assert n * binomial_tail_ge(k, gamma, 2 * (t - 1) - (k + 1)) > 2.0**-SIGMA
    else:
        assert t == (n + int(gamma * n)) // 2 + 1
    if n >= 1000:
        assert k < n - 1  # large rounds use the sparse graph


@pytest.mark.parametrize(("k", "p"), [(12, 0.05), (40, 0.9), (7, 0.5), (30, 0.0)])
def test_binomial_tails_match_exact_rationals(k: int, p: float) -> None:
    from fractions import Fraction

    q = Fraction(p)
    pmf = [math.comb(k, i) * q**i * (1 - q) ** (k - i) for i in range(k + 1)]
    for a in range(k + 2):
        lo, hi = float(sum(pmf[:a])), float(sum(pmf[a:]))
        assert binomial_tail_lt(k, p, a) == pytest.approx(lo, rel=1e-9, abs=1e-300)
        assert binomial_tail_ge(k, p, a) == pytest.approx(hi, rel=1e-9, abs=1e-300)


def test_parameters_for_hopeless_fractions_fall_back_quickly_to_the_complete_graph() -> None:
    assert choose_parameters(100_000, 0.45, 0.45) == (99_999, 72_501)
    cfg = SecAggConfig(bytes(16), tuple(range(1, 3001)), 1, dropout_fraction=0.45,
                       corrupt_fraction=0.45)  # fmt: skip
    assert cfg.k == 2999 and len(cfg.neighbors_of(17)) == 2999 and 17 not in cfg.neighbors_of(17)


def test_neighbor_graph_is_regular_symmetric_and_session_bound() -> None:
    ids = tuple(range(1, 51))
    a = SecAggConfig(bytes(16), ids, 1, neighbors=8)
    b = SecAggConfig(bytes([1]) * 16, ids, 1, neighbors=8)
    for c in ids:
        assert len(a.neighbors_of(c)) == 8 and c not in a.neighbors_of(c)
        assert all(c in a.neighbors_of(p) for p in a.neighbors_of(c))
    assert any(a.neighbors_of(c) != b.neighbors_of(c) for c in ids)
    assert SecAggConfig(bytes(16), ids, 1, neighbors=8).neighbors_of(7) == a.neighbors_of(7)


# -- optional consistency round and identity-bound keys ------------------------------------


def test_consistency_round_gives_the_exact_sum_with_dropouts() -> None:
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, 2**32, size=(9, 7), dtype=np.uint32)
    drops = {"share": [0], "masked_input": [1], "consistency": [2], "unmask": [3]}
    out = secagg.simulate(inputs, consistency_check=True, dropouts=drops, seed=4)
    assert np.array_equal(out, _expected(inputs, {0, 1}))
    with pytest.raises(ThresholdError, match="stage consistency: 4 of 8 survivors signed"):
        secagg.simulate(
            inputs,
            consistency_check=True,
            dropouts={"masked_input": [0], "consistency": [1, 2, 3, 4]},
        )
    with pytest.raises(ConfigError, match="unknown dropout stages"):
        secagg.simulate(inputs, dropouts={"consistency": [1]})  # no such stage without it


def _consistent_round(n: int) -> tuple[SecAggConfig, dict, SecAggServer, UnmaskRequest]:
    cfg, clients, server = _round(n, consistency_check=True)
    masked = _to_masked(clients, server, {c: np.full(4, c, np.uint64) for c in clients})
    return cfg, clients, server, server.collect_masked(masked)


def test_consistency_round_refuses_split_views_and_bad_signatures() -> None:
    cfg, clients, server, req = _consistent_round(6)  # t = 4
    sigs = {c: clients[c].consistency(req) for c in req.survivors}
    final = server.collect_consistency(sigs)
    assert len(final.signatures) == 6
    # a list other than the one the client signed (here: client 6 "dropped")
    other = UnmaskRequest(cfg.session_id, (1, 2, 3, 4, 5), (6,), final.signatures)
    with pytest.raises(ProtocolError, match="split view"):
        clients[1].unmask(other)
    # too few signatures
    few = UnmaskRequest(cfg.session_id, final.survivors, final.dropped, final.signatures[:3])
    with pytest.raises(ThresholdError, match="3 valid survivor-list signatures"):
        clients[2].unmask(few)
    # a forged signature
    bad = ((1, bytes(64)), *final.signatures[1:])
    with pytest.raises(ProtocolError, match=r"invalid survivor-list signature .* client 1"):
        clients[3].unmask(UnmaskRequest(cfg.session_id, final.survivors, final.dropped, bad))
    assert clients[4].unmask(final).sender == 4
    # the aggregator checks signatures too
    cfg2, clients2, server2, req2 = _consistent_round(5)
    sigs2 = {c: clients2[c].consistency(req2) for c in req2.survivors}
    sigs2[2] = type(sigs2[2])(cfg2.session_id, 2, sigs2[1].signature)
    with pytest.raises(ProtocolError, match="signature of client 2 does not verify"):
        server2.collect_consistency(sigs2)


def test_identity_signatures_stop_key_substitution() -> None:
    from trustspace.crypto import keyagreement as ka

    cfg = SecAggConfig(secrets.token_bytes(32), (1, 2, 3, 4), 4)
    ident = {c: ka.signing_keypair() for c in cfg.client_ids}

    def signer(c: int):
        return lambda payload: ka.sign(ident[c][0], payload)

    def verifier(c: int, payload: bytes, sig: bytes) -> bool:
        return ka.verify(ident[c][1], sig, payload)

    clients = {
        c: SecAggClient(cfg, c, identity_signer=signer(c), identity_verifier=verifier)
        for c in cfg.client_ids
    }
    server = SecAggServer(cfg)
    roster = server.collect_advertise({c: cl.advertise() for c, cl in clients.items()})
    # the aggregator swaps in its own mask key for client 2 (to learn the pair masks)
    _, evil_pk = ka.generate_keypair()
    forged = dict(roster)
    forged[2] = type(roster[2])(
        cfg.session_id, 2, roster[2].cipher_pk, evil_pk, roster[2].sign_pk, roster[2].identity_sig
    )
    with pytest.raises(ProtocolError, match="not signed by its identity"):
        clients[1].share_keys(forged)
    out = {c: clients[c].share_keys(roster) for c in (2, 3, 4)}
    assert all(len(v) == 3 for v in out.values())


def test_simulate_reports_bad_inputs() -> None:
    with pytest.raises(DataError, match="one common length"):
        secagg.simulate([np.zeros(3, np.uint64), np.zeros(4, np.uint64)])
    with pytest.raises(DataError, match="FixedPointEncoder"):
        secagg.simulate(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match=r"dropouts\['unmask'\] must be indices in 0 .. 2"):
        secagg.simulate(np.zeros((3, 2), np.uint64), dropouts={"unmask": [3]})
    with pytest.raises(DataError, match="no inputs"):
        secagg.simulate([])


def test_server_refuses_malformed_client_behaviour() -> None:
    cfg, clients, server = _round(5, neighbors=2)  # sparse: each client has 2 neighbours
    adv = {c: cl.advertise() for c, cl in clients.items()}
    with pytest.raises(ProtocolError, match="client 9 is not a participant"):
        SecAggServer(cfg).collect_advertise({**adv, 9: adv[1]})
    with pytest.raises(ProtocolError, match="signed as sender 1"):
        SecAggServer(cfg).collect_advertise({**adv, 2: adv[1]})
    roster = server.collect_advertise(adv)
    shares = {c: cl.share_keys(roster) for c, cl in clients.items()}
    outsider = next(c for c in cfg.client_ids if c != 1 and c not in cfg.neighbors_of(1))
    stray = {**shares, 1: {**shares[1], outsider: shares[2][next(iter(shares[2]))]}}
    for bad, why in ((stray, "expected its 2 live neighbours"), ({**shares, 7: {}}, "without")):
        fresh = SecAggServer(cfg)
        fresh.collect_advertise(adv)
        with pytest.raises(ProtocolError, match=why):
            fresh.collect_shares(bad)
    routed = server.collect_shares({c: shares[c] for c in (1, 2, 3, 4, 5)})
    masked = {c: clients[c].masked_input(np.zeros(4, np.uint64), routed[c]) for c in clients}
    wrong_len = MaskedInput(cfg.session_id, 1, 64, bytes(8 * 5))
    with pytest.raises(ProtocolError, match=r"sent 5 values modulo 2\^64, expected 4"):
        server.collect_masked({**masked, 1: wrong_len})
    server = SecAggServer(cfg)
    server.collect_advertise(adv)
    server.collect_shares(shares)
    request = server.collect_masked(masked)
    answers = {c: clients[c].unmask(request) for c in request.survivors}
    bogus = UnmaskShares(cfg.session_id, 1, ((outsider, bytes(66)),), ())
    with pytest.raises(ProtocolError, match="cannot hold or that was not requested"):
        server.collect_unmask({**answers, 1: bogus})


def test_crafted_seed_share_is_detected_with_a_spare_share() -> None:
    cfg, clients, server = _round(5)  # t = 3, 5 holders of every seed: spares exist
    masked = _to_masked(clients, server, {c: np.ones(4, np.uint64) for c in clients})
    req = server.collect_masked(masked)
    answers = {c: clients[c].unmask(req) for c in req.survivors}
    # client 1 shifts client 2's seed by +5 (Shamir is linear), a valid-looking 32-byte seed
    holders = tuple(sorted(answers))[: cfg.t]
    w1 = shamir.lagrange_at_zero(holders)[holders.index(1)]
    seeds = dict(answers[1].seed_shares)
    y = shamir.decode_share(seeds[2])
    seeds[2] = ((y + 5 * pow(w1, -1, shamir.PRIME)) % shamir.PRIME).to_bytes(66, "little")
    answers[1] = UnmaskShares(cfg.session_id, 1, tuple(sorted(seeds.items())), ())
    with pytest.raises(ProtocolError, match="reconstructed secret is invalid"):
        server.collect_unmask(answers)
