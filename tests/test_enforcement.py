"""Nodes enforce what they compute: the attacks of issue 13, tried as an attacker would.

The attacker holds the aggregator's certificate (or an analyst's) and uses the project's own
clients: ``NodeClient`` with the aggregator's identity talks to the nodes directly, exactly as
a malicious aggregator process would. Every node here is a real in-process gRPC server over
mutual TLS with the policy of a real deployment (``min_group_size = 10``, ``min_nodes = 3``).

Classes (issue 13): 1 rounds nobody asked for; 2 isolating one node; 3 a substituted Paillier
key; 4 an analyst crafting Paillier rounds; 5 data values in errors; 6 work bounds (more in
test_fuzz_rpc and test_anon*); 8 a node revoking an analyst. Class 7 (the audit tail) is in
test_audit. Each refusal is also one ``deny`` line in the node's audit log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _reliability import record
from conftest import write_node_config

from trustspace.aggregator.config import load_aggregator_config
from trustspace.aggregator.server import Aggregator
from trustspace.api import Federation
from trustspace.errors import (
    DataError,
    PolicyError,
    ProtocolError,
    TrustspaceError,
)
from trustspace.node.config import load_node_config
from trustspace.node.server import Node
from trustspace.paillier import generate_keypair
from trustspace.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SecAggConfig,
    SecAggServer,
    Stage,
    UnmaskShares,
)
from trustspace.stats import Query, Round, Term, start
from trustspace.transport import types
from trustspace.transport.ca import Credentials, issue
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import QueryBody, SignedQuery, new_query, sign_query

NODES = ("n1", "n2", "n3")
K = 10  # every node's min_group_size
SENTINEL_TEXT = "zz-SENTINEL-41"  # planted in n1's data: must never appear in an error
SENTINEL_NUMBER = 8_765_432.125


@pytest.fixture(scope="module")
def space(
    tmp_path_factory: pytest.TempPathFactory, pki: Path, partitions: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("enforce")
    ca = pki / "ca"
    for name in ("carol", "dave"):
        if not (ca / name).exists():
            issue(ca, name, "analyst")
    policy = (
        f"min_group_size = {K}\nmin_nodes = 3\nrelease_rows = true\n"
        '[[policy.rules]]\nanalysts = ["alice", "carol", "dave"]\noperations = ["*"]\n'
        '[[policy.rules]]\nanalysts = ["bob"]\noperations = ["count"]\n'
    )
    nodes = {}
    for name in NODES:
        data = partitions[name]
        if name == "n1":  # plant sentinels: an unusual sex value and one unusual income
            df = pd.read_csv(data)
            df.loc[0, "sex"] = SENTINEL_TEXT
            df.loc[1, "income"] = SENTINEL_NUMBER
            data = root / "n1.csv"
            df.to_csv(data, index=False)
        cfg = write_node_config(
            root / f"{name}.toml",
            name=name,
            identity=ca / name,
            data=data,
            audit=root / f"{name}.jsonl",
            policy=policy,
        )
        if name == "n2":  # n2 alone revokes analyst dave (class 8)
            cfg.write_text(cfg.read_text().replace("[tls]\n", '[tls]\nrevoked = ["dave"]\n'))
        nodes[name] = Node(load_node_config(cfg)).start()
    agg_cfg = root / "agg.toml"
    agg_cfg.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\n'
        f'[tls]\ndir = "{ca / "agg"}"\n'
        + "".join(f'[[nodes]]\nname = "{n}"\naddress = "{nodes[n].address}"\n' for n in NODES)
    )
    agg = Aggregator(load_aggregator_config(agg_cfg)).start()
    agg_creds = Credentials.from_dir(ca / "agg")
    clients = {n: NodeClient(n, nodes[n].address, agg_creds) for n in NODES}
    try:
        yield {
            "nodes": nodes,
            "agg": agg,
            "agg_creds": agg_creds,
            "clients": clients,
            "ca": ca,
            "root": root,
        }
    finally:
        for c in clients.values():
            c.close()
        agg.stop(0)
        for n in nodes.values():
            n.stop(0)


def _creds(space: dict[str, Any], who: str) -> Credentials:
    return Credentials.from_dir(space["ca"] / who)


def _fed(space: dict[str, Any], who: str = "alice") -> Federation:
    return Federation.connect(space["agg"].address, _creds(space, who), server_name="agg")


def _schema(space: dict[str, Any]) -> Any:
    return space["nodes"]["n1"].engine.schema("default")


def _deny_lines(space: dict[str, Any], node: str) -> list[dict[str, Any]]:
    path = space["root"] / f"{node}.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in recs if r.get("decision") == "deny"]


class Session:
    """One secure-aggregation session driven by hand, as a malicious aggregator would:
    ``queries[node]`` and ``refs[node]`` may differ per node."""

    def __init__(
        self,
        space: dict[str, Any],
        queries: dict[str, SignedQuery],
        refs: dict[str, types.RoundRef],
        size: int,
    ) -> None:
        self.clients = space["clients"]
        self.names = list(queries)
        self.ids = {n: i + 1 for i, n in enumerate(self.names)}
        self.queries, self.refs = queries, refs
        self.setup = types.SecAggSetup(os.urandom(32), tuple(self.ids.values()), size)
        self.server = SecAggServer(SecAggConfig(self.setup.session_id, self.setup.client_ids, size))

    def step(self, node: str, stage: Stage, payloads: tuple[bytes, ...]) -> list[bytes]:
        ref = self.refs[node] if stage is Stage.ADVERTISE else None
        step = types.SecAggStep(
            self.queries[node], self.setup, stage, payloads, ref, self.ids[node]
        )
        out: list[bytes] = self.clients[node].secagg_step(step, 30)
        return out

    def run(self) -> np.ndarray[Any, Any]:
        adv = {n: self.step(n, Stage.ADVERTISE, ()) for n in self.names}
        by_id = {self.ids[n]: out for n, out in adv.items()}
        roster = self.server.collect_advertise(
            {c: AdvertiseKeys.from_bytes(o[0]) for c, o in by_id.items()}
        )
        roster_bytes = tuple(b for c in roster for b in by_id[c])
        names = {i: n for n, i in self.ids.items()}
        shared = {c: self.step(names[c], Stage.SHARE_KEYS, roster_bytes) for c in roster}
        routing = self.server.collect_shares(
            {
                c: {m.recipient: m for m in (EncryptedShares.from_bytes(b) for b in out)}
                for c, out in shared.items()
            }
        )
        masked = {
            r: self.step(names[r], Stage.MASKED_INPUT, tuple(m.to_bytes() for m in s.values()))
            for r, s in routing.items()
        }
        request = self.server.collect_masked(
            {c: MaskedInput.from_bytes(o[0]) for c, o in masked.items()}
        )
        unmasked = {
            c: self.step(names[c], Stage.UNMASK, (request.to_bytes(),)) for c in request.survivors
        }
        total: np.ndarray[Any, Any] = self.server.collect_unmask(
            {c: UnmaskShares.from_bytes(o[0]) for c, o in unmasked.items()}
        )
        return total


def _first_round(space: dict[str, Any], query: Query) -> Round:
    rnd = start(query, _schema(space), K).next_round()
    assert rnd is not None
    return rnd


# ---------------------------------------------------------------------- 0. the honest path
def test_honest_session_by_hand_matches_the_federation(space: dict[str, Any]) -> None:
    """The hand driver is a faithful aggregator: an honest session gives the right count
    (so the refusals below are caused by the attack, not by the driver)."""
    alice = _creds(space, "alice")
    q = new_query(alice, "count", "default", where="age > 30")
    rnd = _first_round(space, Query("count", "default", where="age > 30"))
    ref = types.RoundRef(0, K, None, rnd)
    total = Session(space, dict.fromkeys(NODES, q), dict.fromkeys(NODES, ref), rnd.size).run()
    with _fed(space) as fed:
        assert rnd.decode(total)[0] == fed.count(where="age > 30")


# ---------------------------------------------------------------------- 1. rounds nobody asked
def test_aggregator_cannot_compute_a_round_nobody_asked_for(space: dict[str, Any]) -> None:
    """With alice's genuine signed count, the aggregator asks for one record's income."""
    alice = _creds(space, "alice")
    q = new_query(alice, "count", "default")
    isolating = Round(
        "default", "age = 33 and sex = 'F'", (Term.rows(), Term.moment(["income"], [1], [0.0], 20))
    )
    before = len(_deny_lines(space, "n1"))
    ref = types.RoundRef(0, K, None, isolating)
    setup = types.SecAggSetup(os.urandom(32), (1, 2, 3), isolating.size)
    step = types.SecAggStep(q, setup, Stage.ADVERTISE, (), ref, 1)
    with pytest.raises(ProtocolError, match="not the one this node derives"):
        space["clients"]["n1"].secagg_step(step, 10)
    deny = _deny_lines(space, "n1")[before:]
    assert deny and deny[0]["query"]["operation"] == "count"  # the signed query, not a story
    assert deny[0]["query"]["where"] is None and deny[0]["signature"]
    # a query "from alice" that the aggregator signs itself is refused
    forged = QueryBody(**{**q.unverified_body().__dict__, "where": "age = 33"})
    forged_body = _canonical(forged)
    bad = SignedQuery(forged_body, q.signature, q.certificate)
    assert forged_body != q.body
    ref = types.RoundRef(
        0, K, None, _first_round(space, Query("count", "default", where="age = 33"))
    )
    step = types.SecAggStep(
        bad, types.SecAggSetup(os.urandom(32), (1, 2, 3), 1), Stage.ADVERTISE, (), ref, 1
    )
    with pytest.raises(PolicyError, match=r"'signed_query'.* does not verify"):
        space["clients"]["n1"].secagg_step(step, 10)
    with pytest.raises(TrustspaceError, match="only analyst certificates can"):
        sign_query(space["agg_creds"], q.unverified_body())
    # the aggregator's data-dependent steering is bounded by the query's own state machine:
    # a min_group_size below the node's is refused
    low = types.RoundRef(0, 1, None, _first_round(space, Query("count", "default")))
    step = types.SecAggStep(
        new_query(alice, "count", "default"),
        types.SecAggSetup(os.urandom(32), (1, 2, 3), 1),
        Stage.ADVERTISE,
        (),
        low,
        1,
    )
    with pytest.raises(PolicyError, match="below this node's 10"):
        space["clients"]["n1"].secagg_step(step, 10)
    record(
        "data safety",
        "malicious aggregator: isolating round under a genuine signed count; a forged body; "
        "a lower min_group_size",
        "each refused by the node and audited with the signed query",
        tries=3,
    )


def _canonical(body: QueryBody) -> bytes:
    from trustspace.transport.signing import canonical_json

    return canonical_json(body.to_dict())


# ---------------------------------------------------------------------- 2. isolating one node
def test_aggregator_cannot_isolate_one_node(space: dict[str, Any]) -> None:
    """n1 gets the real round, n2 and n3 the same terms under another (genuine) query of the
    same analyst with no filter: n1's vector would be its own aggregate plus a constant."""
    alice = _creds(space, "alice")
    real = Query("count", "default", where="age > 60")
    decoy = Query("count", "default", where="age > 200")  # nothing: 0 from n2 and n3
    q1 = new_query(alice, "count", "default", where=real.where)
    q2 = new_query(alice, "count", "default", where=decoy.where)
    r1, r2 = _first_round(space, real), _first_round(space, decoy)
    session = Session(
        space,
        {"n1": q1, "n2": q2, "n3": q2},
        {
            "n1": types.RoundRef(0, K, None, r1),
            "n2": types.RoundRef(0, K, None, r2),
            "n3": types.RoundRef(0, K, None, r2),
        },
        r1.size,
    )
    with pytest.raises(ProtocolError, match="advertised another round"):
        session.run()
    # and a session of n1 with fewer than min_nodes peers is refused before anything is shared
    q3 = new_query(alice, "count", "default", where=real.where)
    two = Session(
        space, {"n1": q3, "n2": q3}, dict.fromkeys(("n1", "n2"), types.RoundRef(0, K, None, r1)), 1
    )
    with pytest.raises(PolicyError, match="min_nodes = 3"):
        two.run()
    record(
        "data safety",
        "malicious aggregator: one node's real round summed with other rounds at the others; "
        "a 2-node session",
        "the roster check aborts (different round digest); min_nodes refuses",
        tries=2,
    )


# ---------------------------------------------------------------------- 3. substituted key
def test_aggregator_cannot_substitute_its_paillier_key(space: dict[str, Any]) -> None:
    alice_pk, _ = generate_keypair(2048)
    evil_pk, _ = generate_keypair(2048)
    alice = _creds(space, "alice")
    query = Query("sum", "default", "income")
    q = new_query(
        alice, "sum", "default", ("income",), method="paillier", paillier_key=alice_pk.fingerprint
    )
    comp = start(query, _schema(space), K)
    first = comp.next_round()
    assert first is not None
    fed_total = sum(np.asarray(n.engine.compute(first)) for n in space["nodes"].values())
    comp.feed(fed_total)
    second = comp.next_round()
    assert second is not None and second.moment_round() is not None
    prev = types.RoundTotal(0, tuple(int(x) for x in first.encode(fed_total)))
    ref = types.RoundRef(1, K, prev, second)
    for name in NODES:
        with pytest.raises(PolicyError, match="not the one the analyst signed"):
            space["clients"][name].paillier_stats(
                types.PaillierRequest(q, int(evil_pk.n), ref, 3), 30
            )
    # an 8192-bit odd "key" whose fingerprint the analyst did sign is still refused at once
    big = (1 << 8191) | 1
    from trustspace.paillier import PublicKey

    q_big = new_query(
        alice, "sum", "default", ("income",), method="paillier",
        paillier_key=PublicKey(big).fingerprint,
    )  # fmt: skip
    with pytest.raises(PolicyError, match="8192-bit Paillier modulus is not allowed"):
        space["clients"]["n1"].paillier_stats(types.PaillierRequest(q_big, big, ref, 3), 30)
    record(
        "data safety",
        "malicious aggregator: PaillierStats under its own key; an 8192-bit odd modulus",
        "refused by every node (the key's fingerprint is signed by the analyst)",
        tries=4,
    )


# ---------------------------------------------------------------------- 4. crafted rounds
def test_analyst_cannot_craft_paillier_rounds(space: dict[str, Any]) -> None:
    """bob may only count: a round named count whose terms are moments is refused, and so is
    any round beyond what the signed query's state machine asks for."""
    pk, _ = generate_keypair(2048)
    bob = _creds(space, "bob")
    with _fed(space, "bob") as fed:
        assert fed.count() > 0
        q = new_query(bob, "count", "default", method="paillier", paillier_key=pk.fingerprint)
        terms = [Term.moment(["age"], [p], [49.0], 40) for p in range(1, 5)]
        moments = Round("default", None, (*terms, Term.moment(["income"], [1], [0.0], 20)))
        client = fed._client
        with pytest.raises(ProtocolError, match="not the one this node derives"):
            client.run_round(types.RoundRequest(q, int(pk.n), moments, K))
        with pytest.raises(PolicyError, match="may not run 'mean'"):
            fed.mean("default", "age")
        # the honest count round, then a second round that the count query does not have
        first = _first_round(space, Query("count", "default"))
        q2 = new_query(bob, "count", "default", method="paillier", paillier_key=pk.fingerprint)
        rr = client.run_round(types.RoundRequest(q2, int(pk.n), first, K))
        prev = types.RoundTotal(0, tuple(int(c) for c in rr.count_totals), rr.suppressed)
        extra = Round("default", None, (Term.rows(),), index=1)
        with pytest.raises(ProtocolError, match="round 1 does not exist"):
            client.run_round(types.RoundRequest(q2, int(pk.n), extra, K, prev))
    # the aggregator asks for "the record counts" of a Paillier count with a crafted count
    # round (a fine histogram of income): refused before any vector is computed
    q3 = new_query(bob, "count", "default", method="paillier", paillier_key=pk.fingerprint)
    grid = Round("default", None, (Term.rows(), Term.grid("income", 0.0, 100.0, 1000)))
    ref = types.RoundRef(0, K, None, grid, "paillier.counts")
    step = types.SecAggStep(
        q3, types.SecAggSetup(os.urandom(32), (1, 2, 3), grid.size), Stage.ADVERTISE, (), ref, 1
    )
    with pytest.raises(ProtocolError, match="record-count round asked for in round 0 is not"):
        space["clients"]["n1"].secagg_step(step, 10)
    record(
        "data safety",
        "analyst allowed only count: a 'count' round of moment terms; a mean; an extra round",
        "refused (nodes derive the rounds from the signed query)",
        tries=3,
    )


# ---------------------------------------------------------------------- 5. values in errors
def _no_sentinel(text: str) -> None:
    assert SENTINEL_TEXT not in text
    assert "8765432" not in text and "8.765432" not in text


def test_errors_that_leave_a_node_carry_no_data_values(
    space: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted values (a category and an income at n1) never appear in what the caller gets,
    whatever error the node raises on its request paths."""
    from trustspace.anon.hierarchy import Hierarchy

    seen: list[str] = []
    with _fed(space) as fed:
        # hierarchy coverage: n1 holds a value the hierarchy does not cover
        sex = Hierarchy("sex", [["F", "*"], ["M", "*"]])
        age = Hierarchy("age", [[str(a), "*"] for a in range(0, 120)])
        with pytest.raises(DataError) as info:
            fed.anonymize("default", {"sex": sex, "age": age}, k=2)
        seen.append(str(info.value))
        assert "n1" in seen[-1] and "1 value(s)" in seen[-1]
        # a sensitive attribute whose declared domain misses the planted value
        with pytest.raises(TrustspaceError) as info2:
            fed.anonymize("default", {"age": age}, k=2, l=2, sensitive="sex",
                          sensitive_values=["F", "M"])  # fmt: skip
        seen.append(str(info2.value))
        assert "1 value(s) not in its declared domain" in seen[-1]
        # an encoding overflow at the node (its data changed between rounds: the local
        # aggregate now exceeds the declared range)
        node = space["nodes"]["n1"]
        real = node.engine.compute

        def huge(rnd: Any, tag: Any = None) -> Any:
            out = np.asarray(real(rnd, tag=tag), dtype=np.float64).copy()
            out[-1] = SENTINEL_NUMBER * 1e12
            return out

        monkeypatch.setattr(node.engine, "compute", huge)
        with pytest.raises(TrustspaceError) as info3:
            fed.sum("default", "income")
        seen.append(str(info3.value))
        assert "exceeds the declared fixed-point range" in seen[-1]
        monkeypatch.setattr(node.engine, "compute", real)
        # a filter the node cannot parse, a column it does not have, a group the policy hides
        for call in (
            lambda: fed.count(where="sex = 'zz-SENTINEL-41' and"),
            lambda: fed.mean("default", "salary"),
        ):
            with pytest.raises(TrustspaceError) as info4:
                call()
            seen.append(str(info4.value))
    for text in seen[:3]:
        _no_sentinel(text)
    # every deny/error line at n1 is local (may name values); what left the node did not
    record(
        "data safety",
        "errors with planted values: hierarchy coverage, sensitive domain, encoding overflow",
        "the caller's message names node, column and count, never the value",
        tries=len(seen),
    )


# ---------------------------------------------------------------------- replays
def test_replayed_and_expired_queries_are_refused(space: dict[str, Any]) -> None:
    alice = _creds(space, "alice")
    query = Query("count", "default", where="age > 50")
    rnd = _first_round(space, query)
    q = new_query(alice, "count", "default", where=query.where)
    ref = types.RoundRef(0, K, None, rnd)
    Session(space, dict.fromkeys(NODES, q), dict.fromkeys(NODES, ref), rnd.size).run()
    with pytest.raises(ProtocolError, match="already computed"):
        Session(space, dict.fromkeys(NODES, q), dict.fromkeys(NODES, ref), rnd.size).run()
    # the same request id under another body
    other = new_query(alice, "count", "default", request_id=q.unverified_body().request_id)
    with pytest.raises(PolicyError, match="used by another query"):
        Session(
            space,
            dict.fromkeys(NODES, other),
            dict.fromkeys(
                NODES, types.RoundRef(0, K, None, _first_round(space, Query("count", "default")))
            ),
            1,
        ).run()
    # expired (signed two hours ago for one hour)
    import time

    old = new_query(alice, "count", "default", now=time.time() - 7200, lifetime_s=3600)
    with pytest.raises(ProtocolError, match="expired"):
        Session(space, dict.fromkeys(NODES, old), dict.fromkeys(NODES, ref), rnd.size).run()
    record(
        "data safety",
        "replays: a finished query again, its request id under another body, an expired query",
        "refused by the nodes",
        tries=3,
    )


# ---------------------------------------------------------------------- 8. node revokes analyst
def test_a_node_revokes_an_analyst_on_its_own(space: dict[str, Any]) -> None:
    """n2 lists dave in tls.revoked; the aggregator does not: n2 alone refuses him."""
    with (
        _fed(space, "dave") as fed,
        pytest.raises(PolicyError, match=r"node n2 .*'signed_query'.*revoked (here|at this node)"),
    ):
        fed.count()
    with _fed(space, "carol") as fed:
        assert fed.count() > 0
    deny = _deny_lines(space, "n2")
    assert any(r["requester"] == "" and "revoked" in r["reason"] for r in deny[-3:])
    record(
        "identity",
        "an analyst revoked at one node only (tls.revoked at n2)",
        "n2 refuses his signed queries; other analysts are served",
    )
