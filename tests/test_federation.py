"""Federation.local end to end: real gRPC servers over mTLS on 127.0.0.1, both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trustspace.api import Federation, infer_columns
from trustspace.errors import ConfigError, DataError, PolicyError
from trustspace.node.audit import verify

KEY_BITS = 2048  # the smallest key the Paillier module allows; tests only


@pytest.fixture(scope="module")
def fed(
    partitions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("fed")
    policy = {"min_group_size": 5, "rules": [{"analysts": ["*"], "operations": ["*"]}]}
    with Federation.local(
        {k: str(v) for k, v in partitions.items()},
        policy,
        key_bits=KEY_BITS,
        workdir=work,
        domains={"sex": ["F", "M"]},
    ) as f:
        yield f


def test_infer_columns(partitions: dict[str, Path]) -> None:
    assert infer_columns(partitions["n1"]) == {"age": "int", "income": "float", "sex": "str"}
    with pytest.raises(DataError, match="not found"):
        infer_columns(partitions["n1"].with_name("missing.csv"))


def test_count_and_mean_secagg_match_pandas(fed: Federation, union: Any) -> None:
    assert fed.count() == len(union)
    assert fed.count("default", where="age >= 40 and sex = 'F'") == int(
        ((union.age >= 40) & (union.sex == "F")).sum()
    )
    assert fed.mean("default", "age") == pytest.approx(union.age.mean(), rel=1e-12)
    assert fed.sum("default", "income") == pytest.approx(union.income.sum(), rel=1e-9)
    assert fed.last_info["nodes"] == ["n1", "n2", "n3"]


def test_var_and_corr_secagg(fed: Federation, union: Any) -> None:
    assert fed.var("default", "income") == pytest.approx(union.income.var(), rel=1e-9)
    corr = fed.corr("default", ["age", "income"])
    assert np.allclose(corr.to_numpy(), union[["age", "income"]].corr().to_numpy(), atol=1e-9)


def test_paillier_suppressed_counts_reach_the_state_machine(fed: Federation) -> None:
    with pytest.warns(UserWarning, match="suppressed"):
        value = fed.mean("default", "age", where="age >= 88 and sex = 'F'", method="paillier")
    assert np.isnan(value)


def test_declared_bounds(partitions: dict[str, Path], union: Any, tmp_path: Path) -> None:
    parts = {k: str(v) for k, v in list(partitions.items())[:2]}
    policy = {"min_group_size": 5, "rules": [{"analysts": ["*"], "operations": ["*"]}]}
    with Federation.local(parts, policy, bounds={"age": (0, 120)}, workdir=tmp_path) as f:
        import pandas as pd

        two = pd.concat([pd.read_csv(p) for p in parts.values()])
        assert f.mean("default", "age") == pytest.approx(two.age.mean(), rel=1e-12)
    with pytest.raises(DataError, match="age"):
        Federation.local(parts, policy, bounds={"age": (0, 50)}, workdir=tmp_path / "x")


def test_paillier_path_matches_pandas(fed: Federation, union: Any) -> None:
    assert fed.count("default", where="sex = 'M'", method="paillier") == int(
        (union.sex == "M").sum()
    )
    assert fed.mean("default", "income", method="paillier") == pytest.approx(
        union.income.mean(), rel=1e-9
    )


def test_group_by_secagg(fed: Federation, union: Any) -> None:
    got = fed.group_by("default", "sex", {"age": "mean"}, values=["F", "M"])
    want = union.groupby("sex").agg({"age": ["mean"]})
    assert np.allclose(got.loc[["F", "M"]].to_numpy(dtype=float), want.to_numpy(), rtol=1e-9)


def test_bad_query_is_a_clear_error(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="unknown column 'salary'"):
        fed.mean("default", "salary")
    with pytest.raises(ConfigError, match="no dataset 'nope'"):
        fed.count("nope")


def test_small_group_is_suppressed(fed: Federation, union: Any) -> None:
    where = "age >= 88 and sex = 'F'"
    assert 0 < ((union.age >= 88) & (union.sex == "F")).sum() < 5  # below min_group_size
    with pytest.warns(UserWarning, match="suppressed"):
        value = fed.mean("default", "age", where=where)
    assert fed.last_result is not None and fed.last_result.any_suppressed
    assert np.isnan(value)


def test_audit_logs_every_request_and_verify(fed: Federation) -> None:
    fed.count()
    assert fed.workdir is not None
    for node in ("n1", "n2", "n3"):
        log = fed.workdir / "audit" / f"{node}.jsonl"
        assert verify(log).ok
        recs = [json.loads(line) for line in log.read_text().splitlines()]
        counted = [r for r in recs if r["operation"] == "count" and r["decision"] == "allow"]
        assert counted and counted[-1]["requester"] == "analyst"
        assert counted[-1]["via"] == "aggregator" and counted[-1]["outcome"] == "ok"


def test_anonymize_needs_quasi_identifiers(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="quasi-identifier"):
        fed.anonymize("default", {}, k=5)


def test_status_lists_nodes(fed: Federation) -> None:
    st = fed.status()
    assert [n.name for n in st] == ["n1", "n2", "n3"]
    assert all(n.reachable and n.min_group_size == 5 for n in st)


def test_policy_refusal_names_node_and_rule(partitions: dict[str, Path], tmp_path: Path) -> None:
    open_rule = {"analysts": ["*"], "operations": ["*"]}
    policy = {
        "n1": {"rules": [open_rule]},
        "n2": {"rules": [{"analysts": ["*"], "operations": ["count"]}]},
        "n3": {"rules": [open_rule]},
    }
    with Federation.local(
        {k: str(v) for k, v in partitions.items()}, policy, key_bits=KEY_BITS, workdir=tmp_path
    ) as f:
        with pytest.raises(PolicyError) as info:
            f.mean("default", "age")
        msg = str(info.value)
        assert "n2" in msg and "operations" in msg and "'mean'" in msg
        assert getattr(info.value, "rule", "") == "operations"
        with pytest.raises(PolicyError, match="n2"):
            f.mean("default", "age", method="paillier")
    log = tmp_path / "audit" / "n2.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    denied = [r for r in recs if r["decision"] == "deny"]
    assert denied and denied[0]["operation"] == "mean" and "operations" in denied[0]["reason"]
    assert verify(log).ok


def test_local_rejects_empty_and_bad_policy(partitions: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="at least one partition"):
        Federation.local({})
    with pytest.raises(ConfigError, match="min_group_size"):
        Federation.local({"n1": str(partitions["n1"])}, {"min_group_size": -1})


def test_rate_limit_over_the_network(partitions: dict[str, Path], tmp_path: Path) -> None:
    policy = {
        "rules": [{"analysts": ["*"], "operations": ["*"]}],
        "rate_limit": {"per_minute": 1, "burst": 2},
    }
    parts = {k: str(v) for k, v in list(partitions.items())[:2]}
    with Federation.local(parts, policy, key_bits=KEY_BITS, workdir=tmp_path) as f:
        f.count()  # one round: one work unit
        f.count()
        with pytest.raises(PolicyError) as info:
            f.count()
        assert getattr(info.value, "rule", "") == "rate_limit"
        assert "work units per minute" in str(info.value)


def test_cli_query_against_local_federation(
    fed: Federation, union: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from trustspace.cli.main import main

    assert fed.workdir is not None
    base = [
        "query",
        "-a",
        fed.aggregator.address,
        "-c",
        str(fed.workdir / "ca" / "analyst"),
        "--server-name",
        "aggregator",
    ]
    assert main([*base, "count", "default", "--where", "sex = 'F'", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["value"]["data"] == int((union.sex == "F").sum())
    assert out["nodes"] == ["n1", "n2", "n3"]
    assert main([*base, "status"]) == 0
    assert "n2" in capsys.readouterr().out
    assert main([*base, "mean", "default", "nosuch"]) == 2
    assert "unknown column 'nosuch'" in capsys.readouterr().err


def test_group_by_fluent_form(fed: Federation, union: Any) -> None:
    got = fed.group_by("default", "sex").agg({"age": "mean"})  # values from the domain
    want = union.groupby("sex")["age"].mean()
    assert got[("age", "mean")].loc["F"] == pytest.approx(want["F"], rel=1e-12)


def test_group_by_keeps_the_order_of_its_aggregations(fed: Federation, union: Any) -> None:
    """The signed body sorts the keys of 'agg' ("income" < "age" was refused as not the
    query's columns); the answer keeps the analyst's order."""
    got = fed.group_by("default", "sex").agg({"income": "mean", "age": ["count", "mean"]})
    want = union.groupby("sex").agg({"income": ["mean"], "age": ["count", "mean"]})
    assert list(got.columns) == list(want.columns)
    assert got.loc["F", ("age", "count")] == want.loc["F", ("age", "count")]
    assert got.loc["M", ("income", "mean")] == pytest.approx(
        want.loc["M", ("income", "mean")], rel=1e-12
    )


def test_paillier_result_without_a_node_says_so(
    partitions: dict[str, Path], tmp_path: Path
) -> None:
    """The Paillier path learns only how many nodes are in a result: with one node down it
    still warns (as the secure-aggregation path does by name), and the figure is the others'."""
    import pandas as pd

    with Federation.local(
        {k: str(v) for k, v in partitions.items()}, key_bits=KEY_BITS, workdir=tmp_path
    ) as f:
        f.nodes["n3"].stop(0)
        with pytest.warns(UserWarning, match=r"only 2 of the 3 nodes \(n1, n2, n3\)"):
            got = f.mean("default", "age", method="paillier")
        assert f.last_info["nodes"] == 2 and f.last_info["excluded_count"] == 1
    rest = pd.concat([pd.read_csv(partitions[n]) for n in ("n1", "n2")])
    assert got == pytest.approx(rest.age.mean(), rel=1e-12)
