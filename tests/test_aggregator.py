"""The aggregator over real nodes: dropped nodes, threshold, status, Paillier disclosure control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trustspace.api import Federation, decrypt_round
from trustspace.errors import NodeError, ThresholdError
from trustspace.stats import paillier_round_total
from trustspace.transport import types

KEY_BITS = 2048


def _local(partitions: dict[str, Path], names: tuple[str, ...], tmp_path: Path) -> Federation:
    policy = {"min_group_size": 5, "rules": [{"analysts": ["*"], "operations": ["*"]}]}
    return Federation.local(
        {n: str(partitions[n]) for n in names}, policy, key_bits=KEY_BITS, workdir=tmp_path
    )


def test_stopped_node_is_excluded_and_reported(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        fed.nodes["n3"].stop(0)
        status = {n.name: n for n in fed.status()}
        assert not status["n3"].reachable and "n3" in status["n3"].detail
        assert status["n1"].reachable
        import pandas as pd

        want = len(pd.read_csv(partitions["n1"])) + len(pd.read_csv(partitions["n2"]))
        with pytest.warns(UserWarning, match=r"n3 did not answer"):
            assert fed.count() == want
        assert fed.last_info["excluded"] == ["n3"]
        assert fed.last_info["nodes"] == ["n1", "n2"]


def test_below_threshold_is_a_clean_error(partitions: dict[str, Path], tmp_path: Path) -> None:
    with _local(partitions, ("n1", "n2"), tmp_path) as fed:
        fed.nodes["n2"].stop(0)
        with pytest.raises(ThresholdError, match="at least 2 nodes, only 1 answered"):
            fed.count()


def test_single_node_space_explains_threshold(partitions: dict[str, Path], tmp_path: Path) -> None:
    fed = _local(partitions, ("n1",), tmp_path)
    with fed, pytest.raises(ThresholdError, match="this data space has only 1"):
        fed.count()


def test_no_node_reachable(partitions: dict[str, Path], tmp_path: Path) -> None:
    with _local(partitions, ("n1", "n2"), tmp_path) as fed:
        for n in fed.nodes.values():
            n.stop(0)
        with pytest.raises(NodeError, match=r"no node answered.*node n1"):
            fed.count()


def test_paillier_round_suppresses_small_groups(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    """An analyst asking for a sum over 4 records gets zeros, flagged, for every entry."""
    from trustspace.stats import Query, start

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        pk, sk = fed._keys()
        where = "age >= 88 and sex = 'F'"
        small = int(((union.age >= 88) & (union.sex == "F")).sum())
        assert 0 < small < 5
        query = Query("sum", "default", "age", where)
        schema, k = fed._schema("default")
        comp = start(query, schema, k)
        signed = fed._sign_query(query, "paillier", pk.fingerprint)
        first = comp.next_round()
        assert first is not None
        rr = fed._client.run_round(types.RoundRequest(signed, int(pk.n), first, k))
        assert rr.encrypted_vector == b""  # counts only: securely summed, never encrypted
        total = paillier_round_total(first.count_mask, rr.count_totals, None)
        comp.feed(first.decode(total), rr.suppressed)
        # rows (4 < 5) and the non-null count of age (4) are suppressed, and so is the octave
        # holding the 4 ages
        assert {0, 1} <= set(rr.suppressed) and len(rr.suppressed) == 3
        assert decrypt_round(first, rr, sk).tolist() == [0.0] * first.size
        assert comp.next_round() is None  # the sum is known to be suppressed: no 2nd round
        assert rr.nodes == 3
        with pytest.warns(UserWarning, match="suppressed"):
            assert np.isnan(fed.sum("default", "age", where, method="paillier"))
        want = union.age[union.age < 88]
        assert fed.sum("default", "age", "age < 88", method="paillier") == float(want.sum())


def test_paillier_counts_only_round_encrypts_nothing(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    """Counts are summed by secure aggregation anyway: no node is asked to encrypt them."""
    import json

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        ages = union.age[union.age < 88]
        assert fed.count(where="age < 88", method="paillier") == len(ages)
        assert fed.last_info["rounds"] == 1
        assert fed.workdir is not None
        for name in ("n1", "n2", "n3"):
            log = (fed.workdir / "audit" / f"{name}.jsonl").read_text().splitlines()
            recs = [json.loads(line) for line in log]
            assert not any(r["params"].get("method") == "paillier" for r in recs)
            assert any(r["params"].get("part") == "paillier.counts" for r in recs)


def test_configured_threshold_is_a_floor(partitions: dict[str, Path], tmp_path: Path) -> None:
    policy = {"rules": [{"analysts": ["*"], "operations": ["*"]}], "min_group_size": 5}
    parts = {n: str(p) for n, p in partitions.items()}
    fed = Federation.local(parts, policy, threshold=3, workdir=tmp_path)
    with fed:
        assert fed.count() > 0
        fed.nodes["n3"].stop(0)
        with pytest.raises(ThresholdError, match="fewer than the configured threshold 3"):
            fed.count()


def test_paillier_round_replayed_is_refused(
    partitions: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed Paillier query buys its own rounds once: a round asked for again is refused by
    the nodes (which derive and count the rounds themselves), and the aggregator caps how many
    rounds one request id may run before any node is asked."""
    from trustspace.aggregator import _paillier
    from trustspace.errors import ConfigError, ProtocolError
    from trustspace.stats import Query, start

    with _local(partitions, ("n1", "n2"), tmp_path) as fed:
        pk, _ = fed._keys()
        query = Query("count", "default")
        schema, k = fed._schema("default")
        rnd = start(query, schema, k).next_round()
        assert rnd is not None
        req = types.RoundRequest(
            fed._sign_query(query, "paillier", pk.fingerprint), int(pk.n), rnd, k
        )
        fed._client.run_round(req)
        with pytest.raises(ProtocolError, match=r"round 0 \(paillier.counts\) .* already computed"):
            fed._client.run_round(req)
        monkeypatch.setattr(_paillier, "MAX_ROUNDS_PER_REQUEST", 1)
        req = types.RoundRequest(
            fed._sign_query(query, "paillier", pk.fingerprint), int(pk.n), rnd, k
        )
        fed._client.run_round(req)
        with pytest.raises(ConfigError, match="has run 1 rounds"):
            fed._client.run_round(req)


def test_paillier_reuses_governing_counts_of_earlier_rounds(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    """A sum whose non-null count an earlier round of the request summed is checked against
    that count, without summing it again (no second secure-aggregation session); a small one
    is suppressed without any node encrypting it."""
    import json
    import warnings

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        rids = {}
        for where, name in (("age >= 88 and sex = 'F'", "small"), ("age < 88", "large")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = fed.sum("default", "age", where, method="paillier")
            rids[name] = fed.last_info["request_id"]
            ages = union.age[union.eval(where.replace(" = ", " == "))]
            if name == "small":
                assert 0 < len(ages) < 5
                assert np.isnan(got)
            else:
                assert got == float(ages.sum())
        assert fed.workdir is not None
        lines = [
            json.loads(line)
            for line in (fed.workdir / "audit" / "n1.jsonl").read_text().splitlines()
        ]
        for rid in rids.values():
            stages = [
                ln["params"].get("stage") or ln["params"].get("method")
                for ln in lines
                if ln.get("request_id") == rid
            ]
            assert stages.count("advertise") == 1  # only the first round was securely summed
        # the small sum is suppressed from its first round's count: nothing is encrypted
        assert [
            ln["params"].get("method") for ln in lines if ln.get("request_id") == rids["small"]
        ].count("paillier") == 0
        assert [
            ln["params"].get("method") for ln in lines if ln.get("request_id") == rids["large"]
        ].count("paillier") == 1


def test_failed_query_forgets_its_plan(partitions: dict[str, Path], tmp_path: Path) -> None:
    """A query that fails after planning leaves no plan behind (no stale participants kept
    until the plan cache expires)."""
    from trustspace.errors import ConfigError

    with _local(partitions, ("n1", "n2"), tmp_path) as fed:
        service = fed.aggregator.service
        with pytest.raises(ConfigError, match="unknown column"):
            fed.mean("default", "no_such_column")
        fed.nodes["n2"].stop(0)
        with pytest.raises(ThresholdError):
            fed.count()
        assert service._plans == {}
