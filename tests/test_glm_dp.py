"""Differentially private OLS (``fed.ols(..., epsilon=)``, issue 16) over three Adult partitions.

One DP round of noisy sufficient statistics (X'X, X'y, y'y, n over values clamped to their
public bounds), noise added by the nodes inside secure aggregation. The reference is
statsmodels' OLS on the clamped union; the DP fit must agree within the noise it reports
(``result.dp``), not to a hard-coded tolerance. The attacks: a column without bounds, a query
beyond the budget, and a driver handing a node a DP round other than the one the signed query
calls for (narrower clamps, or finer encoding: less noise per record), refused at advertise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace._adult import CSV, SEP
from trustspace.api import Federation
from trustspace.errors import ConfigError, DataError, PolicyError, ProtocolError
from trustspace.secagg import Stage
from trustspace.stats import (
    DPSpec,
    Query,
    Round,
    Term,
    glm_dp_bounds,
    noise_plan,
    round_sensitivity,
    start,
)
from trustspace.transport import types
from trustspace.transport.ca import Credentials
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import new_query

smf = pytest.importorskip("statsmodels.formula.api")

FORMULA = "hours ~ age + C(sex) + C(race) + high + age:C(sex)"
BOUNDS = {"hours": (0.0, 99.0), "age": (17.0, 90.0), "high": (0.0, 1.0)}
#: the query's own bounds for hours (the nodes clamp to them: some records are beyond)
CLAMP = {"hours": (25.0, 45.0)}
CATEGORICAL = ("sex", "race")
COLUMNS = {"sex": "str", "age": "int", "race": "str", "hours": "float", "high": "int"}
BUDGET = {"epsilon": 150.0, "delta": 1e-5}


def _adult() -> pd.DataFrame:
    df = pd.read_csv(CSV, sep=SEP)
    df.columns = [c.replace("-", "_") for c in df.columns]
    df["high"] = (df.salary_class == ">50K").astype(int)
    rng = np.random.default_rng(161)  # test data only: a numeric response
    male = (df.sex == "Male").to_numpy()
    hours = 18 + 0.35 * df.age.to_numpy() + 6 * male + 4 * df.high.to_numpy()
    df["hours"] = (hours + rng.normal(0, 9, len(df))).round(1).clip(0, 99)
    return df[["sex", "age", "race", "hours", "high"]]


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return _adult()


@pytest.fixture(scope="module")
def fed(adult: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    parts = {f"n{i + 1}": adult.iloc[i::3] for i in range(3)}
    domains = {c: sorted(adult[c].unique().tolist()) for c in CATEGORICAL}
    with Federation.local(
        parts,
        {"min_group_size": 10, "rules": [{"analysts": ["*"], "operations": ["*"]}], "dp": BUDGET},
        columns=COLUMNS,
        domains=domains,
        bounds=BOUNDS,
        workdir=tmp_path_factory.mktemp("glmdp"),
    ) as f:
        yield f


def _clamped(df: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> pd.DataFrame:
    out = df.copy()
    for c, (lo, hi) in bounds.items():
        out[c] = out[c].clip(lo, hi)
    return out


def test_dp_ols_matches_statsmodels_on_the_clamped_union_within_its_noise(
    fed: Federation, adult: pd.DataFrame
) -> None:
    assert (adult.hours > 45).sum() > 3000 and (adult.hours < 25).sum() > 3000  # the clamp matters
    before = fed.budget()["epsilon_spent"]
    res = fed.ols("default", FORMULA, epsilon=100.0, delta=1e-6, bounds=CLAMP)
    ref = smf.ols(FORMULA, _clamped(adult, CLAMP)).fit()
    unclamped = smf.ols(FORMULA, adult).fit()
    # the nodes clamped: the unclamped fit is far beyond the noise (the clamped one within)
    bias = ((unclamped.params - ref.params) / res.dp["std"]).abs()
    assert bias.max() > 12, bias.to_dict()
    assert list(res.params.index) == list(ref.params.index)
    dp = res.dp
    assert dp is not None and dp["epsilon"] == 100.0 and dp["nodes"] == 3
    std = dp["std"]
    assert (std > 0).all()
    # the noise the fit reports explains its distance from the exact fit (6 sd: ~1e-9)
    err = (res.params - ref.params).abs()
    assert (err <= 6 * std + 1e-9).all(), (err / std).to_dict()
    # the released statistics: one noise std per entry, in data units (n: records)
    stats = dp["statistics_std"]
    p = len(ref.params)
    assert len(stats) == p * (p + 1) // 2 + p + 2 and stats["n"] > 0
    assert abs(res.nobs - ref.nobs) <= 6 * stats["n"]
    # bse: the sampling error (from the noisy statistics) plus the noise's contribution
    assert (res.bse >= std * (1 - 1e-9)).all()
    assert np.allclose(res.bse, np.sqrt(ref.bse**2 + std**2), rtol=0.05)
    assert abs(res.rsquared - ref.rsquared) < 0.01
    assert "OLS Regression Results" in res.summary()
    # the budget is charged once per node
    spent = fed.budget()["epsilon_spent"]
    assert ((spent - before) > 0).all()
    # a second query beyond what is left is refused at every node, nothing charged
    with pytest.raises(PolicyError, match="DP budget exceeded"):
        fed.ols("default", FORMULA, epsilon=100.0, delta=1e-6)
    assert (fed.budget()["epsilon_spent"] == spent).all()


def test_a_column_without_bounds_is_refused(fed: Federation) -> None:
    schema = fed.nodes["n1"].engine.schema("default")
    nob = dataclasses.replace(schema, bounds={k: v for k, v in schema.bounds.items() if k != "age"})
    with pytest.raises(ConfigError, match="column 'age' has no public bounds"):
        start(
            Query("ols", "default", ("hours", "age"), None, {"formula": "hours ~ age"}),
            nob,
            10,
            {"epsilon": 1.0, "delta": 1e-6},
        )
    with pytest.raises(ConfigError, match="column 'hours' has no public bounds"):
        start(
            Query("ols", "default", ("hours", "sex"), None, {"formula": "hours ~ C(sex)"}),
            dataclasses.replace(schema, bounds={}),
            10,
            {"epsilon": 1.0, "delta": 1e-6},
        )


def test_weights_and_dp_glm_are_refused_with_the_reason(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="weights= with epsilon= is not supported"):
        fed.ols("default", "hours ~ age", weights="high", epsilon=1.0)
    with pytest.raises(ConfigError, match="IRLS needs one noisy round per iteration"):
        fed.glm("default", "high ~ age", family="binomial", epsilon=1.0)
    with pytest.raises(ConfigError, match="bounds= clamps a DP fit"):
        fed.ols("default", "hours ~ age", bounds={"age": (20, 60)})


def test_a_noisy_design_that_is_not_positive_definite_is_refused(fed: Federation) -> None:
    """A tiny epsilon on a filter of a few records: the noise swamps X'X."""
    with pytest.raises(DataError, match=r"not positive definite.*raise epsilon"):
        fed.ols("default", FORMULA, where="age > 88", epsilon=0.05)


def _dp_round(schema: Any, eps: float) -> Round:
    q = Query("ols", "default", ("hours", "age", "sex"), None, {"formula": "hours ~ age + C(sex)"})
    rnd = start(q, schema, 10, {"epsilon": eps, "delta": 1e-6}).next_round()
    assert rnd is not None
    return rnd


def test_the_sensitivity_follows_from_the_clamps_and_the_encoding(fed: Federation) -> None:
    schema = fed.nodes["n1"].engine.schema("default")
    rnd = _dp_round(schema, 1.0)
    (term,) = rnd.terms
    assert term.mode == "dp" and len(term.bits) == term.size == 3 * 4 // 2 + 3 + 2
    for m, b in zip(glm_dp_bounds(term), term.bits, strict=True):
        assert 128 < m * 2**b <= 256  # one record: at most 2^8 encoded units per entry
    l2, _ = round_sensitivity(rnd, schema)
    assert 128 * np.sqrt(term.size) < l2 <= 257 * np.sqrt(term.size) * (1 + 1e-9)
    # a narrower clamp on the wire means smaller bounds: a forged round is not "the same"
    narrow = dataclasses.replace(term, clamp=(0.0, 1.0, 17.0, 18.0, 0.0, 1.0))
    # design: Intercept, C(sex)[T.Male], age: X'X[Intercept, age] moves by at most B_age
    assert glm_dp_bounds(term)[2] == 90 and glm_dp_bounds(narrow)[2] == 18
    b = glm_dp_bounds(term)  # ..., X'y[age] (B_age B_hours), y'y, n
    assert (b[-3], b[-2], b[-1]) == (90 * 99, 99 * 99, 1)
    assert Term.from_dict(term.to_dict()) == term


def test_a_forged_dp_round_is_refused_by_the_node(fed: Federation) -> None:
    """A malicious aggregator hands n1 the DP OLS round with narrower clamps (each record then
    moves the statistics less, so less noise per data unit), with finer encoding (more
    units per record, so the noise is relatively smaller than the node's accounting assumes)
    or with the moments of another column: each is refused at advertise, nothing computed."""
    schema = fed.nodes["n1"].engine.schema("default")
    eps, delta = 1.0, 1e-6
    rnd = _dp_round(schema, eps)
    (term,) = rnd.terms
    forged_terms = [
        dataclasses.replace(term, clamp=(0.0, 1.0, 17.0, 18.0, 0.0, 1.0)),
        dataclasses.replace(term, bits=tuple(b + 4 for b in term.bits)),
        dataclasses.replace(
            term, columns=("age", "hours", "sex"), clamp=(17.0, 90.0, 0.0, 80.0, 0.0, 1.0)
        ),
    ]
    # the noise a node would add follows the round it is given: the forgeries change it
    honest = noise_plan(rnd, schema, DPSpec(eps, delta), t=3, n=3).node_sigma2
    assert honest > 0
    creds = Credentials.from_dir(fed.workdir / "ca" / "aggregator")
    node = fed.nodes["n1"]
    client = NodeClient("n1", node.address, creds)
    try:
        for forged in forged_terms:
            bad = Round(rnd.dataset, rnd.where, (forged,), index=rnd.index)
            signed = new_query(
                fed._client.credentials,
                "ols",
                "default",
                ("hours", "age", "sex"),
                None,
                {"formula": "hours ~ age + C(sex)"},
                dp={"epsilon": eps, "delta": delta},
            )
            setup = types.SecAggSetup(b"\x02" * 32, (1, 2, 3), bad.size, 3)
            ref = types.RoundRef(0, 10, None, bad, "all")
            step = types.SecAggStep(signed, setup, Stage.ADVERTISE, (), ref, 1)
            with pytest.raises(ProtocolError, match="not the one this node derives"):
                client.secagg_step(step, 10)
    finally:
        client.close()


def test_dp_ols_on_the_paillier_path(fed: Federation, adult: pd.DataFrame) -> None:
    """Every node adds the whole central noise to its encrypted statistics (no threshold bounds
    how many ciphertexts the aggregator sums): the fit agrees with the clamped union within the
    noise it reports, which is larger than the secure-aggregation fit's."""
    formula = "hours ~ age + C(sex)"
    res = fed.ols("default", formula, epsilon=20.0, delta=1e-6, method="paillier")
    ref = smf.ols(formula, adult).fit()
    assert res.dp is not None and res.dp["nodes"] == 3
    assert ((res.params - ref.params).abs() <= 6 * res.dp["std"] + 1e-9).all()


def test_cli_dp_ols(
    fed: Federation, adult: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from trustspace.cli.main import main

    assert fed.workdir is not None
    base = ["query", "-a", fed.aggregator.address, "-c", str(fed.workdir / "ca" / "analyst")]
    base += ["--server-name", "aggregator", "--epsilon", "20", "--delta", "1e-7"]
    assert main([*base, "ols", "default", "--formula", "hours ~ age", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dp"]["epsilon"], out["dp"]["delta"], out["dp"]["nodes"]) == (20.0, 1e-7, 3)
    ref = smf.ols("hours ~ age", adult).fit()
    err = (pd.Series(out["params"]) - ref.params).abs()
    assert (err <= 6 * pd.Series(out["dp"]["std"])).all()
    assert main([*base, "ols", "default", "--formula", "hours ~ age"]) == 0
    cap = capsys.readouterr()
    assert "OLS Regression Results" in cap.out and "differentially private" in cap.err


def test_the_reported_noise_is_the_accounted_noise(fed: Federation, adult: pd.DataFrame) -> None:
    """The noise std of every released statistic, recomputed here from ``noise_plan`` (the
    nodes' shares for threshold 2 of 3) and the round's encoding, is the one reported; and the
    fit is not exact (the noise is there)."""
    from trustspace.dp import discrete_gaussian_variance

    schema = fed.nodes["n1"].engine.schema("default")
    eps, delta = 10.0, 1e-6
    res = fed.ols("default", "hours ~ age + C(sex)", epsilon=eps, delta=delta)
    assert res.dp is not None
    rnd = _dp_round(schema, eps)
    share = noise_plan(rnd, schema, DPSpec(eps, delta), t=2, n=3).node_sigma2
    entry = np.sqrt(3 * discrete_gaussian_variance(share)) / rnd.units
    assert np.allclose(res.dp["statistics_std"].to_numpy(), entry, rtol=1e-9)
    ref = smf.ols("hours ~ age + C(sex)", adult).fit()
    assert (res.params - ref.params).abs().max() > 1e-6
