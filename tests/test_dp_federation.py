"""Differential privacy added by the nodes inside secure aggregation (issue 14), end to end.

Every test runs real nodes and an aggregator (``Federation.local``: gRPC with mutual TLS on
127.0.0.1) and attacks what a DP answer protects: the differencing attack of the issue (one
person's income from two allowed sums), budgets (exhaustion at every node, after a restart,
16 queries racing for the last of it), a policy that requires DP, and a driver that tries to
get a round computed without the noise the signed query calls for. The noise is checked
against an accounting computed here from ``dp.plan`` (not from what the result reports), and
the summed noise against its distribution.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import query_cli_args
from scipy import stats as sps

from trustspace.api import Federation
from trustspace.dp import (
    Ledger,
    discrete_gaussian_variance,
    distributed_rho,
    plan,
    rho_for,
    sigma2_for,
)
from trustspace.errors import ConfigError, PolicyError, ProtocolError, TrustspaceError
from trustspace.node.server import Node
from trustspace.node.usage import usage
from trustspace.secagg import Stage
from trustspace.stats import DPSpec, Query, TableSchema, add_noise, noise_plan, start
from trustspace.transport import types
from trustspace.transport.ca import Credentials
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import new_query

TARGET_INCOME = 52_310.0
INCOME_BOUNDS = (0.0, 200_000.0)
RULES = [{"analysts": ["*"], "operations": ["*"]}]
EPS, DELTA = 1.0, 1e-6


def _parts() -> dict[str, pd.DataFrame]:
    """Three partitions; one person (at n1) is the only one with zip 12345."""
    rng = np.random.default_rng(14)  # test data only
    parts = {}
    for i in range(1, 4):
        n = 150 + 20 * i
        parts[f"n{i}"] = pd.DataFrame(
            {
                "zip": rng.choice(["10001", "10002", "10003", "10004"], n),
                "income": rng.uniform(*INCOME_BOUNDS, n).round(2),
                "age": rng.integers(18, 90, n),
            }
        )
    parts["n1"].loc[0, ["zip", "income"]] = ["12345", TARGET_INCOME]
    return parts


def _local(tmp_path: Path, dp: dict[str, Any] | None, **kw: Any) -> Federation:
    policy: dict[str, Any] = {"min_group_size": 10, "rules": RULES}
    if dp is not None:
        policy["dp"] = dp
    return Federation.local(
        _parts(),
        policy,
        bounds={"income": INCOME_BOUNDS, "age": (18, 89)},
        columns={"zip": "str", "income": "float", "age": "int"},
        workdir=tmp_path,
        **kw,
    )


def _audit(fed: Federation, node: str) -> list[dict[str, Any]]:
    path = fed.workdir / "audit" / f"{node}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sum_sigma(t: int, n: int) -> float:
    """The accounted standard deviation of a DP sum of income over n nodes with threshold t,
    computed from the formulas (docs/dp.md), independently of ``stats._dp``."""
    m = INCOME_BOUNDS[1]  # max |x| over the bounds, the sum's sensitivity
    scale = 256 / m  # one record moves the encoded sum by <= 2^8 (+1 for rounding)
    delta_enc = 257.0
    p = plan(EPS, DELTA, delta_enc, t=t, n=n, dim=1, sensitivity_l1=delta_enc)
    return math.sqrt(n * discrete_gaussian_variance(p.node_sigma2)) / scale


# --- the differencing attack ---------------------------------------------------------------


def _attack(fed: Federation, **dp: Any) -> float:
    total = fed.sum("default", "income", **dp)
    rest = fed.sum("default", "income", where="not zip = '12345'", **dp)
    return float(total - rest)


def test_differencing_attack_recovers_one_income_exactly(tmp_path: Path) -> None:
    """The attack of the issue, so that the DP test below can fail: two allowed exact sums."""
    with _local(tmp_path, None) as fed:
        assert _attack(fed) == pytest.approx(TARGET_INCOME, abs=1e-6)


@pytest.mark.slow
def test_differencing_attack_under_dp_has_the_accounted_error(tmp_path: Path) -> None:
    trials = 200
    with _local(tmp_path, {"epsilon": 1000.0, "delta": 1e-5}, threshold=3) as fed:
        errors = np.array(
            [_attack(fed, epsilon=EPS, delta=DELTA) - TARGET_INCOME for _ in range(trials)]
        )
        reported = fed.last_result.dp if fed.last_result else None
    sigma = _sum_sigma(3, 3) * math.sqrt(2)  # two independent noisy sums
    assert reported is not None and reported["std"] == pytest.approx(sigma / math.sqrt(2), rel=1e-3)
    # the error's standard deviation is the accounted one: 200 trials estimate it to ~5% (one
    # standard error), so 25% is 5 standard errors (a false alarm about once in 10^6 runs) and
    # still fails a noise off by sqrt(2) (41%), e.g. one of the two sums left without noise
    assert np.std(errors, ddof=1) == pytest.approx(sigma, rel=0.25)
    assert abs(np.mean(errors)) < 4 * sigma / math.sqrt(trials)  # unbiased
    assert np.mean(np.abs(errors) < 1.0) < 0.01  # the value is no longer recovered


# --- the noise's distribution ----------------------------------------------------------------


def _count_round() -> tuple[Any, TableSchema]:
    schema = TableSchema({"age": "int"}, bounds={"age": (18, 89)})
    comp = start(Query("count", "d"), schema, 10, {"epsilon": EPS, "delta": DELTA})
    rnd = comp.next_round()
    assert rnd is not None
    return rnd, schema


def test_summed_noise_follows_the_stated_distribution() -> None:
    rnd, schema = _count_round()
    p = noise_plan(rnd, schema, DPSpec(EPS, DELTA), t=3, n=3)
    draws = 4000
    total = np.zeros(draws, dtype=np.uint64)
    for _ in range(3):  # three nodes, each adding its share to a zero vector
        total += add_noise(np.zeros(draws, dtype=np.uint64), p.node_sigma2)
    noise = total.view(np.int64).astype(np.float64)
    sd = math.sqrt(3 * discrete_gaussian_variance(p.node_sigma2))
    assert sps.kstest(noise / sd, "norm").pvalue > 1e-3
    # the test has power: the same draws are rejected against a 15% larger spread
    assert sps.kstest(noise / (1.15 * sd), "norm").pvalue < 1e-3
    # and the total's variance is the accounted one
    assert np.var(noise) == pytest.approx(sd * sd, rel=0.1)


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 3), (7, 10), (9, 10), (90, 100)])
def test_no_tolerated_dropout_pattern_leaves_less_noise_than_the_target(t: int, n: int) -> None:
    """Each share is sized for t survivors: any m in [t, n] shares give at least the central
    variance, and the distributed bound holds for every m."""
    rnd, schema = _count_round()
    p = noise_plan(rnd, schema, DPSpec(EPS, DELTA), t=t, n=n)
    central = sigma2_for(EPS, DELTA, 256)
    for m in range(t, n + 1):
        assert m * p.node_sigma2 >= central
    assert distributed_rho(256, p.node_sigma2, t=t, n=n) <= rho_for(EPS, DELTA)


def test_a_dropout_leaves_a_dp_answer_over_the_survivors(tmp_path: Path) -> None:
    with _local(tmp_path, {"epsilon": 10.0, "delta": 1e-5}, threshold=2) as fed:
        fed.nodes["n3"].stop(0)
        with pytest.warns(UserWarning, match="n3 did not answer"):
            fed.count(epsilon=EPS, delta=DELTA)
        dp = fed.last_result.dp if fed.last_result else None
    assert dp is not None and dp["nodes"] == 2
    # two shares, each sized for t = 2: at least the central noise of a count
    assert (dp["noise_std"] * 256) ** 2 >= float(sigma2_for(EPS, DELTA, 256)) * (1 - 1e-9)


# --- budgets ---------------------------------------------------------------------------------


def _ledger_entries(fed: Federation, node: str) -> list[Any]:
    with Ledger(fed.nodes[node].config.dp_ledger_path, recover=False) as ledger:
        return ledger.entries()


def test_budget_exhaustion_is_refused_at_every_node_and_after_a_restart(tmp_path: Path) -> None:
    with _local(tmp_path, {"epsilon": 1.0, "delta": 1e-5}) as fed:
        fed.count(epsilon=0.8)
        before = {n: _ledger_entries(fed, n) for n in fed.nodes}
        assert all(len(e) == 1 and e[0].state == "spent" for e in before.values())
        with pytest.raises(PolicyError, match=r"DP budget exceeded.*nothing was charged"):
            fed.count(epsilon=0.8)
        rid = fed.last_info.get("request_id")
        for n in fed.nodes:  # refused at every node, charged at none
            assert _ledger_entries(fed, n) == before[n]
            denied = [r for r in _audit(fed, n) if r.get("decision") == "deny"]
            assert denied and "DP budget exceeded" in denied[-1]["reason"]
        budget = fed.budget()
        assert list(budget.index) == ["n1", "n2", "n3"]
        assert (budget["epsilon_remaining"] < 0.8).all() and (budget["epsilon_spent"] > 0).all()
        # restart n1 on the same address: its ledger is on disk, the query is still refused
        old = fed.nodes["n1"]
        old.stop(0)
        again = Node(replace(old.config, listen=old.address)).start()
        try:
            fed.nodes["n1"] = again
            with pytest.raises(
                PolicyError, match=r"node n1.*DP budget exceeded|DP budget exceeded"
            ):
                fed.count(epsilon=0.8)
            left = fed.count(epsilon=0.5)  # what is left still works
            dp = fed.last_result.dp if fed.last_result else None
            assert dp is not None and abs(left - 570) < 6 * dp["std"]
        finally:
            again.stop(0)
        del rid


def test_the_ledger_is_mirrored_in_the_audit_log(tmp_path: Path) -> None:
    with _local(tmp_path, {"epsilon": 5.0, "delta": 1e-5}) as fed:
        fed.mean("default", "income", epsilon=0.5)
        rid = fed.last_info["request_id"]
        for n in fed.nodes:
            lines = [r for r in _audit(fed, n) if r.get("request_id") == rid]
            adv = [r for r in lines if r["params"].get("stage") == "advertise"]
            masked = [r for r in lines if r["params"].get("stage") == "masked_input"]
            assert adv[0]["params"]["dp"]["charge"] == "reserved"
            assert adv[0]["params"]["dp"]["epsilon"] == 0.5
            (entry,) = _ledger_entries(fed, n)
            assert adv[0]["params"]["dp"]["ledger"] == entry.request_id
            assert adv[0]["params"]["dp"]["rho"] == pytest.approx(entry.rho, rel=1e-9)
            assert masked[0]["params"]["dp_charge"] == "spent" and entry.state == "spent"
            # and metered: `trustspace usage` reads the spent rho back from the audit log
            row = usage([fed.workdir / "audit" / f"{n}.jsonl"], by="analyst").iloc[0]
            assert row["rho"] == pytest.approx(entry.rho) and row["epsilon"] == 0.5


def test_sixteen_queries_racing_for_the_last_budget_never_overspend(tmp_path: Path) -> None:
    eps_q = 0.5
    with _local(tmp_path, {"epsilon": 1.0, "delta": 1e-5}) as fed:
        barrier = threading.Barrier(16)
        ok: list[float] = []
        failed: list[BaseException] = []

        def run() -> None:
            barrier.wait()
            try:
                ok.append(fed.count(epsilon=eps_q))
            except TrustspaceError as exc:
                failed.append(exc)

        threads = [threading.Thread(target=run) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        limit = rho_for(1.0, 1e-5)
        for n in fed.nodes:
            used = sum(e.rho for e in _ledger_entries(fed, n) if e.state != "released")
            assert used <= limit
        charge = _ledger_entries(fed, "n1")[0].rho
        assert len(ok) <= int(limit // charge) and len(ok) + len(failed) == 16
        assert all(isinstance(e, PolicyError | ProtocolError) for e in failed)


# --- policy ----------------------------------------------------------------------------------


def test_a_policy_that_requires_dp(tmp_path: Path) -> None:
    dp = {"epsilon": 2.0, "delta": 1e-5, "required": True}
    with _local(tmp_path, dp) as fed:
        with pytest.raises(
            PolicyError,
            match=r"only with differential privacy.*epsilon= .*2 "
            r"remaining at delta 1e-05",
        ):
            fed.count()
        with pytest.raises(PolicyError, match="only with differential privacy"):
            fed.mean("default", "income", method="paillier")
        assert fed.count(epsilon=0.5) == pytest.approx(570, abs=100)
        assert fed.budget()["required"].all()
    with _local(tmp_path / "exact", {**dp, "exact_analysts": ["analyst"]}) as fed:
        assert fed.count() == 570  # a granted analyst gets exact answers
    rules = [
        {"analysts": ["*"], "operations": ["count"], "exact": True},  # exact counts only
        {"analysts": ["*"], "operations": ["*"]},
    ]
    policy = {"min_group_size": 10, "rules": rules, "dp": dp}
    cols = {"zip": "str", "income": "float", "age": "int"}
    with Federation.local(_parts(), policy, columns=cols, workdir=tmp_path / "rule") as fed:
        assert fed.count() == 570
        with pytest.raises(PolicyError, match="only with differential privacy"):
            fed.mean("default", "age")


def test_a_node_without_dp_policy_refuses_dp_queries(tmp_path: Path) -> None:
    with _local(tmp_path, None) as fed:
        with pytest.raises(PolicyError, match=r"no \[policy.dp\] budget"):
            fed.count(epsilon=1.0)
        assert fed.budget()["epsilon"].isna().all()


@pytest.mark.parametrize("eps", [0.0, -1.0, math.nan, math.inf, 1e9])
def test_bad_epsilon_is_refused_before_anything_is_sent(tmp_path: Path, eps: float) -> None:
    with _local(tmp_path, {"epsilon": 1.0, "delta": 1e-5}) as fed:
        with pytest.raises(ConfigError, match="epsilon"):
            fed.count(epsilon=eps)
        with pytest.raises(ConfigError, match="delta"):
            fed.count(epsilon=0.5, delta=1.5)
        # the same value signed by hand, past the client's check: refused by the nodes
        signed = new_query(
            fed._client.credentials,
            "count",
            "default",
            (),
            None,
            {},
            method="secagg",
            dp={"epsilon": eps if math.isfinite(eps) else -1.0, "delta": 1e-6},
        )
        with pytest.raises(TrustspaceError, match="epsilon"):
            fed._client.run_query(signed)
        assert all(_ledger_entries(fed, n) == [] for n in fed.nodes)


def test_dp_queries_that_cannot_be_answered_say_why(tmp_path: Path) -> None:
    with _local(tmp_path, {"epsilon": 5.0, "delta": 1e-5}) as fed:
        with pytest.raises(ConfigError, match=r"'cov' is not available with differential"):
            fed.cov("default", ["income", "age"], epsilon=1.0)
        with pytest.raises(ConfigError, match="delta= without epsilon"):
            fed.count(delta=1e-6)
    policy = {"rules": RULES, "dp": {"epsilon": 5.0, "delta": 1e-5}}
    with (
        Federation.local(_parts(), policy) as fed,
        pytest.raises(ConfigError, match=r"'income' has no public bounds.*bounds"),
    ):
        fed.mean("default", "income", epsilon=1.0)


# --- the driver cannot lower the noise -------------------------------------------------------


def test_the_driver_cannot_get_a_dp_query_computed_without_its_noise(tmp_path: Path) -> None:
    """A malicious aggregator asks the nodes for the exact round of a DP-signed query (no
    noise), or for the DP round under an exact-signed query: both are refused, and an honest
    session's noise share is the one the signed epsilon, t and n call for."""
    with _local(tmp_path, {"epsilon": 5.0, "delta": 1e-5}, threshold=3) as fed:
        fed.count(epsilon=EPS, delta=DELTA)
        rid = fed.last_info["request_id"]
        lines = [r for r in _audit(fed, "n2") if r.get("request_id") == rid]
        adv = next(r["params"]["dp"] for r in lines if "dp" in r["params"])
        rnd, schema = _count_round()
        expected = noise_plan(rnd, schema, DPSpec(EPS, DELTA), t=3, n=3).node_sigma2
        assert Fraction(adv["node_sigma2"]) == pytest.approx(float(expected), rel=1e-12)
        assert (adv["t"], adv["n"]) == (3, 3)

        creds = Credentials.from_dir(fed.workdir / "ca" / "aggregator")
        node = fed.nodes["n1"]
        client = NodeClient("n1", node.address, creds)
        schema = node.engine.schema("default")
        exact_round = start(Query("count", "default"), schema, 10).next_round()
        dp_round = start(
            Query("count", "default"), schema, 10, {"epsilon": EPS, "delta": DELTA}
        ).next_round()
        assert exact_round is not None and dp_round is not None
        try:
            for dp, rnd_asked in (
                ({"epsilon": EPS, "delta": DELTA}, exact_round),
                (None, dp_round),
            ):
                signed = new_query(fed._client.credentials, "count", "default", (), None, {}, dp=dp)
                setup = types.SecAggSetup(b"\x01" * 32, (1, 2, 3), rnd_asked.size, 3)
                ref = types.RoundRef(0, 10, None, rnd_asked, "all")
                step = types.SecAggStep(signed, setup, Stage.ADVERTISE, (), ref, 1)
                with pytest.raises(ProtocolError, match="not the one this node derives"):
                    client.secagg_step(step, 10)
        finally:
            client.close()


# --- the CLI and the operator's side --------------------------------------------------------


def test_trustspace_query_epsilon_and_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.cli.main import main

    with _local(tmp_path, {"epsilon": 5.0, "delta": 1e-5}) as fed:
        base = query_cli_args(fed)
        assert main([*base, "mean", "default", "age", "--epsilon", "0.5", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["dp"]["epsilon"] == 0.5 and out["dp"]["delta"] == 1e-6
        truth = float(pd.concat(_parts().values()).age.mean())
        assert abs(out["value"]["data"] - truth) < 6 * out["dp"]["std"]["data"]
        assert main([*base, "budget", "default", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["node"] for r in rows] == ["n1", "n2", "n3"]
        assert all(0 < r["epsilon_spent"] < 5.0 for r in rows)
        assert main([*base, "count", "default", "--epsilon", "-1"]) != 0
        assert "epsilon = -1.0: must be a finite number in (0, 100]" in capsys.readouterr().err


def test_a_corrupt_ledger_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    from trustspace.errors import LedgerError

    with _local(tmp_path, {"epsilon": 5.0, "delta": 1e-5}) as fed:
        old = fed.nodes["n2"]
        path = old.config.dp_ledger_path
        old.stop(0)
        path.write_bytes(b"not a database" * 100)
        for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            extra.unlink(missing_ok=True)
        with pytest.raises(LedgerError, match=r"ledger .*n2.*corrupt or not a trustspace"):
            Node(old.config)


@pytest.mark.parametrize(
    ("dp", "match"),
    [
        ({"epsilon": 0, "delta": 1e-5}, r"key policy.dp.epsilon = 0: must be a finite number > 0"),
        ({"epsilon": math.nan, "delta": 1e-5}, r"policy.dp.epsilon = nan"),
        ({"epsilon": 1.0, "delta": 1.0}, r"policy.dp.delta = 1.0: must be in \(0, 1\)"),
        ({"epsilon": 1.0}, r"policy.dp.delta is missing"),
        ({"epsilon": 1.0, "delta": 1e-5, "colluders": -1}, r"policy.dp.colluders = -1"),
        ({"epsilon": 1.0, "delta": 1e-5, "requird": True}, r"requird"),
        (
            {"epsilon": 1.0, "delta": 1e-5, "analysts": {"bob": {"epsilon": -2}}},
            r"policy.dp.analysts.bob.epsilon = -2",
        ),
        ({"epsilon": "1", "delta": 1e-5}, r"policy.dp.epsilon = '1': expected"),
    ],
)
def test_bad_dp_policy_is_a_clear_config_error(dp: dict[str, Any], match: str) -> None:
    from trustspace.node.config import policy_from_dict

    with pytest.raises(ConfigError, match=match):
        policy_from_dict({"rules": RULES, "dp": dp}, "node.toml")


def test_per_analyst_budgets_and_colluders(tmp_path: Path) -> None:
    dp = {
        "epsilon": 1.0,
        "delta": 1e-5,
        "colluders": 1,
        "analysts": {"analyst": {"epsilon": 4.0}},
    }
    with _local(tmp_path, dp, threshold=3) as fed:
        assert (fed.budget()["epsilon"] == 4.0).all()  # the override, delta inherited
        assert (fed.budget()["delta"] == 1e-5).all()
        fed.count(epsilon=EPS, delta=DELTA)
        rid = fed.last_info["request_id"]
        lines = [r for r in _audit(fed, "n1") if r.get("request_id") == rid]
        adv = next(r["params"]["dp"] for r in lines if "dp" in r["params"])
        rnd, schema = _count_round()
        # one colluder may subtract its own noise: the share is sized for t - 1 = 2 unknown
        assert adv["colluders"] == 1
        two = noise_plan(rnd, schema, DPSpec(EPS, DELTA), t=3, n=3, colluders=1).node_sigma2
        assert Fraction(adv["node_sigma2"]) == pytest.approx(float(two), rel=1e-12)
        assert 2 * two >= sigma2_for(EPS, DELTA, 256)
    with pytest.raises(ConfigError, match="no share of noise the analyst cannot subtract"):
        noise_plan(rnd, schema, DPSpec(EPS, DELTA), t=2, n=3, colluders=2)


def test_bounds_in_the_query_are_clamped_to_by_the_nodes(tmp_path: Path) -> None:
    union = pd.concat(_parts().values())
    clipped = union.income.clip(1_000.0, 50_000.0)
    policy = {"rules": RULES, "dp": {"epsilon": 1000.0, "delta": 1e-5}}
    cols = {"zip": "str", "income": "float", "age": "int"}
    with Federation.local(_parts(), policy, columns=cols, workdir=tmp_path) as fed:  # no bounds
        bounds = {"income": (1_000.0, 50_000.0)}
        total = fed.sum("default", "income", epsilon=100.0, bounds=bounds)
        sd = fed.last_result.dp["std"] if fed.last_result and fed.last_result.dp else 0.0
        assert abs(total - clipped.sum()) < 6 * sd + 1  # the clamped sum, not the raw one
        assert abs(total - union.income.sum()) > 1e5
        mean = fed.mean("default", "income", epsilon=100.0, bounds=bounds)
        assert mean == pytest.approx(clipped.mean(), abs=50)
        q = fed.quantile("default", "income", 0.5, epsilon=100.0, bounds=bounds)
        assert 1_000.0 <= q <= 50_000.0
        # one person moves a clamped sum by at most the bound: the attack now gives <= 50,000
        rest = fed.sum("default", "income", where="not zip = '12345'", epsilon=100.0, bounds=bounds)
        assert abs((total - rest) - min(TARGET_INCOME, 50_000.0)) < 9 * sd + 1
        with pytest.raises(ConfigError, match="bounds in a query clamp the values of a"):
            fed.sum("default", "income", bounds=bounds)
        with pytest.raises(ConfigError, match=r"params.bounds.income'.*low must be below"):
            fed.sum("default", "income", epsilon=1.0, bounds={"income": (5.0, 1.0)})


# --- the Paillier path ------------------------------------------------------------------------


def test_dp_on_the_paillier_path(tmp_path: Path) -> None:
    """Every node adds the whole central noise to what it encrypts (and to its record counts),
    so even one node's ciphertext handed alone to the key holder is DP; one charge per node."""
    from trustspace.paillier import EncryptedVector
    from trustspace.stats import join_words, paillier_noise_plan

    union = pd.concat(_parts().values())
    with _local(tmp_path, {"epsilon": 20.0, "delta": 1e-5}, key_bits=2048) as fed:
        mean = fed.mean("default", "income", epsilon=EPS, delta=DELTA, method="paillier")
        dp = fed.last_result.dp if fed.last_result else None
        assert dp is not None and dp["nodes"] == 3
        assert abs(mean - union.income.mean()) < 6 * dp["std"]
        count = fed.count(epsilon=EPS, delta=DELTA, method="paillier")
        dp = fed.last_result.dp if fed.last_result else None
        assert dp is not None
        central = math.sqrt(float(sigma2_for(EPS, DELTA, 256))) / 256
        assert dp["std"] == pytest.approx(math.sqrt(3) * central, rel=1e-3)  # 3 full shares
        assert abs(count - 570) < 6 * dp["std"]
        for n in fed.nodes:  # one charge per query at every node, both parts included
            entries = _ledger_entries(fed, n)
            assert [e.state for e in entries] == ["spent", "spent"]
        # the key holder and the aggregator together: one node's ciphertext alone is noisy
        pk, sk = fed._keys()
        creds = Credentials.from_dir(fed.workdir / "ca" / "aggregator")
        node = fed.nodes["n1"]
        client = NodeClient("n1", node.address, creds)
        schema = node.engine.schema("default")
        query = Query("sum", "default", "income")
        exact = float(_parts()["n1"].income.sum())
        errors = []
        try:
            for _ in range(10):
                comp = start(query, schema, 10, {"epsilon": EPS, "delta": DELTA})
                rnd = comp.next_round()
                assert rnd is not None
                signed = new_query(
                    fed._client.credentials,
                    "sum",
                    "default",
                    ("income",),
                    None,
                    {},
                    method="paillier",
                    paillier_key=pk.fingerprint,
                    dp={"epsilon": EPS, "delta": DELTA},
                )
                ref = types.RoundRef(0, 10, None, rnd, "all")
                raw = client.paillier_stats(types.PaillierRequest(signed, int(pk.n), ref, 3), 60)
                words = np.asarray(sk.decrypt_vector(EncryptedVector.from_bytes(pk, raw)))
                alone = float(rnd.decode(join_words(words))[0])
                errors.append(alone - exact)
        finally:
            client.close()
        share = paillier_noise_plan(rnd, schema, DPSpec(EPS, DELTA)).node_sigma2
        sd = math.sqrt(float(share)) * INCOME_BOUNDS[1] / 256  # the whole central noise
        rms = math.sqrt(float(np.mean(np.square(errors))))
        assert all(e != 0 for e in errors) and 0.35 * sd < rms < 2.5 * sd


def test_every_dp_statistic_agrees_with_pandas_at_a_large_epsilon(tmp_path: Path) -> None:
    """At epsilon 100 the noise is small: each DP figure is within a few of its reported
    standard deviations of pandas (plus the quantiles' bin width), laid out as pandas does."""
    union = pd.concat(_parts().values())
    with _local(tmp_path, {"epsilon": 1e4, "delta": 1e-5}, threshold=3) as fed:
        kw: dict[str, Any] = {"epsilon": 100.0}

        def close(got: Any, want: Any, slack: float = 0.0, rows: Any = None) -> None:
            dp = fed.last_result.dp if fed.last_result else None
            assert dp is not None
            std = dp["std"] if rows is None else dp["std"].loc[rows]
            err = np.abs(np.asarray(got, dtype=float) - np.asarray(want, dtype=float))
            assert np.all(err <= 6 * np.asarray(std, dtype=float) + slack), (got, want)

        close(fed.count(**kw), len(union))
        close(fed.count("default", ["age", "income"], **kw), union[["age", "income"]].count())
        close(fed.sum("default", "income", **kw), union.income.sum())
        close(fed.mean("default", ["age", "income"], **kw), union[["age", "income"]].mean())
        close(fed.var("default", "age", **kw), union.age.var())
        close(fed.std("default", "income", ddof=0, **kw), union.income.std(ddof=0))
        hist = fed.histogram("default", "age", bins=5, range=(18, 89), **kw)
        want, _ = np.histogram(union.age, bins=5, range=(18, 89))
        close(hist, want)
        assert list(hist.index.left) == pytest.approx(list(np.linspace(18, 89, 6)[:-1]))
        width = (INCOME_BOUNDS[1] - INCOME_BOUNDS[0]) / 64
        q = fed.quantile("default", "income", [0.25, 0.5], **kw)
        close(q, union.income.quantile([0.25, 0.5]), width)
        d = fed.describe("default", ["age", "income"], **kw)
        assert list(d.index) == list(union[["age", "income"]].describe().index)
        rows = ["count", "mean", "std"]
        close(d.loc[rows], union[["age", "income"]].describe().loc[rows], rows=rows)
        g = fed.group_by(
            "default",
            "zip",
            {"income": ["size", "count", "sum", "mean", "std"]},
            **kw,
            values=["10001", "10002", "10003", "10004", "12345"],
        )
        want_g = union.groupby("zip").agg({"income": ["size", "count", "sum", "mean", "std"]})
        assert list(g.index) == list(want_g.index) and list(g.columns) == list(want_g.columns)
        others = ["10001", "10002", "10003", "10004"]
        close(g.loc[others], want_g.loc[others], rows=others)


def test_dp_mean_leaves_nulls_out_of_the_clamped_sums(tmp_path: Path) -> None:
    """A clamped value of a null is still null: DuckDB's greatest(NULL, lo) is lo, which once
    counted every null row as the low bound in DP sums (found by the vertical cross-check)."""
    rng = np.random.default_rng(21)  # test data only
    parts = {}
    for i in range(1, 4):
        v = rng.normal(50, 5, 300).round(2)
        frame = pd.DataFrame({"x": v})
        frame.loc[:99, "x"] = np.nan  # a third of the rows are null
        parts[f"n{i}"] = frame
    policy = {"min_group_size": 10, "rules": RULES, "dp": {"epsilon": 100.0, "delta": 1e-5}}
    with Federation.local(
        parts, policy, bounds={"x": (10.0, 100.0)}, columns={"x": "float"}, workdir=tmp_path
    ) as fed:
        r = fed.run(Query("mean", "default", ("x",), None, {}), epsilon=20.0)
    exact = float(pd.concat(parts.values()).x.mean())  # over the non-null values
    assert abs(float(r.value) - exact) <= 6 * float(r.dp["std"]) + 1e-9
