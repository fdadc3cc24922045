"""The aggregator over real nodes: dropped nodes, threshold, status, Paillier disclosure control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trustspace.api import Federation, decrypt_round
from trustspace.errors import NodeError, ThresholdError
from trustspace.paillier import EncryptedVector
from trustspace.stats import Round, Term, join_words
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
    """A dishonest analyst asking for a sum over 4 records gets zeros, flagged."""
    from trustspace.stats import Query

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        pk, sk = fed._keys()
        where = "age >= 88 and sex = 'F'"
        small = int(((union.age >= 88) & (union.sex == "F")).sum())
        assert 0 < small < 5
        query = Query("sum", "default", "age", where)
        rnd = Round(
            "default",
            where,
            (Term.rows(), Term.moment(["age"], [1], [0.0], 40), Term.grid("age", 0.0, 50.0, 2)),
        )
        rr = fed._client.run_round(types.RoundRequest(query.to_dict(), rnd, int(pk.n), "req-1"))
        # only the sum is encrypted (two words); the counts come as securely summed totals
        ev = EncryptedVector.from_bytes(pk, rr.encrypted_vector)
        assert len(ev) == 2
        words = np.asarray(sk.decrypt_vector(ev))
        assert join_words(words.astype(np.int64)).tolist() == [0]
        total = decrypt_round(rnd, rr, sk)
        # rows (4 < 5) and the age sum (governed by the non-null count, 4) are suppressed;
        # the grid: [<0]=0, [0,50)=0, [50,100)=4 -> suppressed, [>=100]=0
        assert set(rr.suppressed) == {0, 1, 4}
        assert total.tolist() == [0.0] * rnd.size
        assert rr.nodes == 3
        big = Round("default", "age < 88", (Term.rows(), Term.moment(["age"], [1], [0.0], 40)))
        rr = fed._client.run_round(
            types.RoundRequest(
                Query("sum", "default", "age", "age < 88").to_dict(),
                big,
                int(pk.n),
                "req-2",
            )
        )
        assert rr.suppressed == ()
        want = union.age[union.age < 88]
        assert decrypt_round(big, rr, sk).tolist() == [float(len(want)), float(want.sum())]


def test_paillier_counts_only_round_encrypts_nothing(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    """Counts are summed by secure aggregation anyway: no node is asked to encrypt them."""
    import json

    from trustspace.stats import Query

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        pk, sk = fed._keys()
        rnd = Round("default", "age < 88", (Term.rows(), Term.grid("age", 0.0, 50.0, 2)))
        query = Query("count", "default", (), "age < 88")
        rr = fed._client.run_round(types.RoundRequest(query.to_dict(), rnd, int(pk.n), "req-3"))
        assert rr.encrypted_vector == b""
        ages = union.age[union.age < 88]
        want = [len(ages), 0, int((ages < 50).sum()), int((ages >= 50).sum()), 0]
        assert list(rr.count_totals) == want
        assert decrypt_round(rnd, rr, sk).tolist() == [float(w) for w in want]
        assert fed.count(where="age < 88", method="paillier") == len(ages)
        assert fed.workdir is not None
        for name in ("n1", "n2", "n3"):
            log = (fed.workdir / "audit" / f"{name}.jsonl").read_text().splitlines()
            assert not any(json.loads(line)["params"].get("method") == "paillier" for line in log)


def test_configured_threshold_is_a_floor(partitions: dict[str, Path], tmp_path: Path) -> None:
    policy = {"rules": [{"analysts": ["*"], "operations": ["*"]}], "min_group_size": 5}
    parts = {n: str(p) for n, p in partitions.items()}
    fed = Federation.local(parts, policy, threshold=3, workdir=tmp_path)
    with fed:
        assert fed.count() > 0
        fed.nodes["n3"].stop(0)
        with pytest.raises(ThresholdError, match="fewer than the configured threshold 3"):
            fed.count()


def test_request_id_reuse_is_bounded(
    partitions: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reusing one Paillier request id (one rate-limit token) works only for a few rounds."""
    from trustspace.aggregator import _paillier
    from trustspace.errors import ConfigError
    from trustspace.stats import Query

    monkeypatch.setattr(_paillier, "MAX_ROUNDS_PER_REQUEST", 2)
    with _local(partitions, ("n1", "n2"), tmp_path) as fed:
        pk, _ = fed._keys()
        rnd = Round("default", None, (Term.rows(),))
        req = types.RoundRequest(Query("count", "default").to_dict(), rnd, int(pk.n), "x")
        fed._client.run_round(req)
        fed._client.run_round(req)
        with pytest.raises(ConfigError, match="has run 2 rounds"):
            fed._client.run_round(req)


def test_paillier_reuses_governing_counts_of_earlier_rounds(
    partitions: dict[str, Path], union: Any, tmp_path: Path
) -> None:
    """A sum whose non-null count an earlier round of the request summed is suppressed from
    that count, without summing it again (no second secure-aggregation session)."""
    import json

    from trustspace.stats import Query

    with _local(partitions, ("n1", "n2", "n3"), tmp_path) as fed:
        pk, sk = fed._keys()
        for where, rid in (("age >= 88 and sex = 'F'", "small"), ("age < 88", "large")):
            query = Query("sum", "default", "age", where)
            first = Round("default", where, (Term.count("age"),))
            fed._client.run_round(types.RoundRequest(query.to_dict(), first, int(pk.n), rid))
            second = Round("default", where, (Term.moment(["age"], [1], [0.0], 40),), index=1)
            rr = fed._client.run_round(types.RoundRequest(query.to_dict(), second, int(pk.n), rid))
            ages = union.age[union.eval(where.replace(" = ", " == "))]
            if rid == "small":
                assert 0 < len(ages) < 5
                assert rr.suppressed == (0,)
                assert decrypt_round(second, rr, sk).tolist() == [0.0]
            else:
                assert rr.suppressed == ()
                assert decrypt_round(second, rr, sk).tolist() == [float(ages.sum())]
        assert fed.workdir is not None
        lines = [
            json.loads(line)
            for line in (fed.workdir / "audit" / "n1.jsonl").read_text().splitlines()
        ]
        for rid in ("small", "large"):
            stages = [
                ln["params"].get("stage") or ln["params"].get("method")
                for ln in lines
                if ln.get("request_id") == rid
            ]
            assert stages.count("advertise") == 1  # only the first round was securely summed
            assert stages.count("paillier") == 1


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
