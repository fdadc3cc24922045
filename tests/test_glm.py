"""fed.glm / fed.ols over three Adult partitions, against statsmodels on the union (issue 16).

Every fit runs through Federation.local (real nodes and aggregator over mutual TLS); the
reference is statsmodels' GLM/OLS on the concatenated partitions, compared to 1e-6 relative.
The attacks: a forged beta in an IRLS round (refused by the node, which derives beta from
the totals), a level below min_group_size, too many parameters for the records (the node
policy key), perfect separation, a singular design, a non-binary response, negative counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustspace._adult import CSV, SEP
from trustspace.api import Federation, round_total
from trustspace.errors import ConfigError, DataError, PolicyError, ProtocolError
from trustspace.stats import Query, Round, Term, parse_design, start
from trustspace.transport import types
from trustspace.transport.signing import new_query

sm = pytest.importorskip("statsmodels.api")
smf = pytest.importorskip("statsmodels.formula.api")

KEY_BITS = 2048  # the smallest Paillier key the project allows; tests only
REL = 1e-6
FAMILIES = {"gaussian": "Gaussian", "binomial": "Binomial", "poisson": "Poisson"}


def _adult() -> pd.DataFrame:
    df = pd.read_csv(CSV, sep=SEP)
    df.columns = [c.replace("-", "_") for c in df.columns]
    # Without-pay (14 records, none > 50K) separates the outcome: kept for the separation test
    df["high"] = (df.salary_class == ">50K").astype(int)
    rng = np.random.default_rng(16)  # test data only: a count response and positive weights
    df["kids"] = rng.poisson(np.exp(-1.5 + 0.03 * df.age.to_numpy()))
    df["exposure"] = rng.uniform(0.5, 2.0, len(df)).round(3)
    df["w"] = rng.uniform(0.5, 3.0, len(df)).round(2)
    df["kids_x2"] = 2 * df.kids
    return df


COLUMNS = {
    "sex": "str",
    "age": "int",
    "race": "str",
    "marital_status": "str",
    "education": "str",
    "native_country": "str",
    "workclass": "str",
    "occupation": "str",
    "salary_class": "str",
    "high": "int",
    "kids": "int",
    "exposure": "float",
    "w": "float",
    "kids_x2": "int",
}
CATEGORICAL = ("sex", "race", "marital_status", "workclass", "education")


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return _adult()


@pytest.fixture(scope="module")
def adult(full: pd.DataFrame) -> pd.DataFrame:
    """The data space of most tests: without the 14 Without-pay records, which separate the
    outcome (their own federation below shows the refusal)."""
    return full[full.workclass != "Without-pay"].reset_index(drop=True)


@pytest.fixture(scope="module")
def fed(adult: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    parts = {f"org_{i}": adult.iloc[i::3] for i in range(3)}
    domains = {c: sorted(adult[c].unique().tolist()) for c in CATEGORICAL}
    with Federation.local(
        parts,
        columns=COLUMNS,
        domains=domains,
        key_bits=KEY_BITS,
        workdir=tmp_path_factory.mktemp("glm"),
    ) as f:
        yield f


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _same(res: Any, ref: Any, *, ols: bool = False) -> None:
    assert list(res.params.index) == list(ref.params.index)
    for name in ("params", "bse", "tvalues", "pvalues"):
        assert _rel(getattr(res, name), getattr(ref, name)) < REL, name
    assert _rel(res.conf_int(), ref.conf_int()) < REL
    for name in ("llf", "aic", "scale", "df_resid", "df_model", "nobs"):
        assert _rel(getattr(res, name), getattr(ref, name)) < REL, name
    if ols:
        for name in ("rsquared", "rsquared_adj", "fvalue", "f_pvalue", "ssr"):
            assert _rel(getattr(res, name), getattr(ref, name)) < REL, name
    else:
        for name in ("deviance", "null_deviance", "pearson_chi2"):
            assert _rel(getattr(res, name), getattr(ref, name)) < REL, name
        assert res.iterations == ref.fit_history["iteration"]
        assert res.converged


def _sm_glm(formula: str, data: pd.DataFrame, family: str, **kw: Any) -> Any:
    return smf.glm(formula, data, family=getattr(sm.families, FAMILIES[family])(), **kw).fit()


def test_logistic_regression_matches_statsmodels(fed: Federation, adult: pd.DataFrame) -> None:
    """P(salary > 50K) by age, sex, race, marital status and workclass, with an interaction."""
    formula = "high ~ age + C(sex) + C(race) + C(marital_status) + C(workclass) + age:C(sex)"
    res = fed.glm("default", formula, family="binomial")
    _same(res, _sm_glm(formula, adult, "binomial"))
    text = res.summary()
    assert "Generalized Linear Model Regression Results" in text and "C(sex)[T.Male]" in text
    new = adult.iloc[:5]
    ref = _sm_glm(formula, adult, "binomial")
    assert _rel(res.predict(new), ref.predict(new)) < REL


def test_poisson_with_offset_and_gaussian_with_weights(
    fed: Federation, adult: pd.DataFrame
) -> None:
    formula = "kids ~ age + C(sex)"
    res = fed.glm("default", formula, family="poisson", offset="exposure")
    _same(res, _sm_glm(formula, adult, "poisson", offset=adult.exposure))
    formula = "age ~ C(sex) * C(race) + kids"
    res = fed.glm("default", formula, weights="w")
    _same(res, _sm_glm(formula, adult, "gaussian", var_weights=adult.w))


def test_ols_matches_statsmodels_and_paillier_gives_the_same(
    fed: Federation, adult: pd.DataFrame
) -> None:
    formula = "age ~ C(sex) + C(race) + kids + kids:C(sex)"
    ref = smf.ols(formula, adult).fit()
    res = fed.ols("default", formula)
    _same(res, ref, ols=True)
    assert "OLS Regression Results" in res.summary()
    pai = fed.ols("default", formula, method="paillier")
    _same(pai, ref, ols=True)
    res = fed.glm("default", "kids ~ age + C(sex)", family="poisson", method="paillier")
    _same(res, _sm_glm("kids ~ age + C(sex)", adult, "poisson"))
    wls = fed.ols("default", "age ~ kids + C(sex)", weights="w", where="race = 'White'")
    white = adult[adult.race == "White"]
    _same(wls, smf.wls("age ~ kids + C(sex)", white, weights=white.w).fit(), ols=True)


def test_separation_and_too_many_parameters(full: pd.DataFrame, tmp_path: Any) -> None:
    """With the Without-pay records (14, none over 50K) the outcome is quasi-separated:
    statsmodels reports a coefficient near -20 with a huge standard error; fed.glm refuses,
    naming the level. A node whose glm_min_records_per_parameter asks for 3000 records per
    parameter refuses a 14-parameter model of 30,162 records."""
    from trustspace.api import DEFAULT_LOCAL_POLICY

    df = full[["high", "age", "workclass"]]
    parts = {f"n{i}": df.iloc[i::3] for i in range(3)}
    policy = {**DEFAULT_LOCAL_POLICY, "glm_min_records_per_parameter": 3000}
    with Federation.local(
        parts,
        policy,
        columns={"high": "int", "age": "int", "workclass": "str"},
        domains={"workclass": sorted(df.workclass.unique())},
        workdir=tmp_path,
    ) as f:
        ref = _sm_glm("high ~ age + C(workclass)", df, "binomial")
        assert ref.params["C(workclass)[T.Without-pay]"] < -15  # what statsmodels reports
        with pytest.raises(DataError, match=r"separation at 'C\(workclass\)\[T.Without-pay\]'"):
            f.glm("default", "high ~ age + C(workclass)", family="binomial")
        with pytest.raises(PolicyError, match="glm_min_records_per_parameter"):
            f.glm("default", "high ~ age * C(workclass)", family="binomial")


def test_a_level_below_min_group_size_is_refused(fed: Federation) -> None:
    # 21 Married-AF-spouse records overall: fewer than 10 of them are over 60
    with pytest.raises(DataError, match="marital_status = 'Married-AF-spouse' holds fewer"):
        fed.glm("default", "high ~ age + C(marital_status)", "binomial", where="age > 60")
    # an interaction cell that defines a parameter: 3 women of race Other over 50 (every
    # level alone holds more than 10)
    with pytest.raises(DataError, match="race = 'Other':sex = 'Female' holds fewer"):
        fed.ols("default", "age ~ C(race):C(sex)", where="age > 50")


def test_bad_input_is_a_clear_error(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        fed.glm("default", "high ~ age +* C(sex)", family="binomial")
    with pytest.raises(ConfigError, match="unknown column 'salary'"):
        fed.glm("default", "salary ~ age", family="binomial")
    with pytest.raises(ConfigError, match="declares no domain"):
        fed.glm("default", "high ~ C(occupation)", family="binomial")
    with pytest.raises(ConfigError, match="not supported"):
        fed.ols("default", "age ~ np.log(kids)")
    with pytest.raises(DataError, match="'age' holds values other than 0 and 1"):
        fed.glm("default", "age ~ kids", family="binomial")
    with pytest.raises(ConfigError, match="column 'age' has no public bounds"):
        fed.ols("default", "age ~ kids", epsilon=1.0)  # DP OLS: tests/test_glm_dp.py
    with pytest.raises(DataError, match=r"columns 'kids', 'kids_x2' are collinear"):
        fed.ols("default", "age ~ kids + kids_x2 + C(sex)")
    with pytest.raises(DataError, match=r"'kids' hold no variation"):
        fed.glm("default", "age ~ kids + C(sex)", where="kids = 0")
    with pytest.raises(DataError, match="did not converge in max_iter=2"):
        fed.glm("default", "high ~ age + C(sex)", family="binomial", max_iter=2)


def test_negative_counts_for_poisson(adult: pd.DataFrame, tmp_path: Any) -> None:
    df = adult[["age", "kids", "sex"]].copy()
    df.loc[df.index[5], "kids"] = -1
    parts = {f"n{i}": df.iloc[i::3] for i in range(3)}
    cols = {"age": "int", "kids": "int", "sex": "str"}
    with (
        Federation.local(
            parts, columns=cols, domains={"sex": ["Female", "Male"]}, workdir=tmp_path
        ) as f,
        pytest.raises(DataError, match="'kids' holds negative values"),
    ):
        f.glm("default", "kids ~ age + C(sex)", family="poisson")


def test_a_forged_beta_is_refused_by_the_nodes(fed: Federation, adult: pd.DataFrame) -> None:
    """The driver of a Paillier glm (the analyst) follows the honest rounds, then asks for an
    IRLS round at a beta of its own choosing (one that gives a single record all the
    weight): every node derives beta from the totals it was shown and refuses."""
    formula = "high ~ age + C(sex)"
    schema, k = fed._schema("default")
    design = parse_design(formula, schema)
    params = {"formula": formula, "family": "binomial", "max_iter": 100, "tol": 1e-8}
    query = Query("glm", "default", design.used, None, params)
    pk, sk = fed._keys()
    signed = new_query(
        fed._client.credentials, "glm", "default", design.used, None, params,
        method="paillier", paillier_key=pk.fingerprint,
    )  # fmt: skip
    comp = start(query, schema, k)
    previous = None
    forged_round = None
    while (rnd := comp.next_round()) is not None:
        model = [t for t in rnd.terms if t.kind == "glm" and len(t.beta) == 3]
        if model:  # the first IRLS round of the model (the null model has one coefficient)
            term = model[0]
            forged = dataclasses.replace(term, beta=(-40.0, 1.0, 0.0))  # exp(age - 40)
            terms = tuple(forged if t == term else t for t in rnd.terms)
            forged_round = Round(rnd.dataset, rnd.where, terms, index=rnd.index)
            break
        rr = fed._client.run_round(types.RoundRequest(signed, int(pk.n), rnd, k, previous))
        total = round_total(rnd, rr, sk)
        comp.feed(rnd.decode(total), suppressed=rr.suppressed)
        previous = types.RoundTotal(rnd.index, tuple(int(x) for x in total), rr.suppressed)
    assert forged_round is not None
    with pytest.raises(ProtocolError, match="not the one this node derives"):
        fed._client.run_round(types.RoundRequest(signed, int(pk.n), forged_round, k, previous))
    # the refusal is the beta's: the same driver's honest rounds up to here were computed,
    # and the same fit run honestly (the library's own driver) matches statsmodels above
    assert previous is not None and previous.index == forged_round.index - 1


def test_rounds_replay_and_terms_round_trip(adult: pd.DataFrame) -> None:
    """A glm round survives to_dict/from_dict (what travels to the nodes), and its beta is
    part of what a node compares."""
    from trustspace.stats._schema import TableSchema

    schema = TableSchema(
        {"high": "int", "age": "int", "sex": "str"}, domains={"sex": ["Female", "Male"]}
    )
    design = parse_design("high ~ age * C(sex)", schema)
    assert design.names == ("Intercept", "C(sex)[T.Male]", "age", "age:C(sex)[T.Male]")
    t = Term("glm", design.used, family="binomial", design=design.columns, mode="irls",
             beta=(0.1, 0.2, 0.3, 0.4), bits=(40,) * 19)  # fmt: skip
    rnd = Round("default", None, (t,))
    assert Round.from_dict(rnd.to_dict()) == rnd
    assert dataclasses.replace(t, beta=(0.1, 0.2, 0.3, 0.5)) != t
    with pytest.raises(ConfigError, match="one coefficient per design column"):
        dataclasses.replace(t, beta=(0.1,))
    assert math.isfinite(float(len(design.cells)))


def test_columns_and_domains_are_checked(adult: pd.DataFrame, tmp_path: Any) -> None:
    """A glm query must list exactly the columns its formula reads (what a node's policy
    checks), and a value outside a column's declared domain is not silently coded as the
    reference level."""
    from trustspace.stats._schema import TableSchema

    schema = TableSchema(
        {"high": "int", "age": "int", "sex": "str"}, domains={"sex": ["Female", "Male"]}
    )
    params = {"formula": "high ~ age + C(sex)", "family": "binomial"}
    with pytest.raises(ConfigError, match="lists exactly the columns its formula"):
        start(Query("glm", "default", ("high", "age"), None, params), schema, 10)
    df = adult[["high", "age", "sex"]]
    parts = {f"n{i}": df.iloc[i::3] for i in range(3)}
    cols = {"high": "int", "age": "int", "sex": "str"}
    with (
        Federation.local(parts, columns=cols, domains={"sex": ["Male"]}, workdir=tmp_path) as f,
        pytest.raises(DataError, match="'sex' holds values outside its declared domain"),
    ):
        f.glm("default", "high ~ age + C(sex)", family="binomial")


def test_cli_glm_and_ols(
    fed: Federation, adult: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from trustspace.cli.main import main

    assert fed.workdir is not None
    base = ["query", "-a", fed.aggregator.address, "-c", str(fed.workdir / "ca" / "analyst")]
    base += ["--server-name", "aggregator"]
    formula = "high ~ age + C(sex)"
    args = [*base, "glm", "default", "--formula", formula, "--family", "binomial", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ref = _sm_glm(formula, adult, "binomial")
    assert _rel(pd.Series(out["params"])[ref.params.index], ref.params) < REL
    assert main([*base, "ols", "default", "--formula", "age ~ high"]) == 0
    assert "OLS Regression Results" in capsys.readouterr().out
    assert main([*base, "ols", "default"]) == 2
    assert "needs --formula" in capsys.readouterr().err


def test_a_malicious_aggregator_cannot_choose_beta(fed: Federation) -> None:
    """The secure-aggregation path: the aggregator (its own certificate, talking to the
    nodes directly) runs the honest rounds of alice's signed glm by hand, then asks for an
    IRLS round at a beta of its choosing: the first node refuses at the advertise stage."""
    from test_enforcement import Session

    from trustspace.transport.ca import Credentials
    from trustspace.transport.clients import NodeClient

    assert fed.workdir is not None
    agg = Credentials.from_dir(fed.workdir / "ca" / "aggregator")
    clients = {n: NodeClient(n, node.address, agg) for n, node in fed.nodes.items()}
    try:
        formula = "high ~ age + C(sex)"
        schema, k = fed._schema("default")
        design = parse_design(formula, schema)
        params = {"formula": formula, "family": "binomial", "max_iter": 100, "tol": 1e-8}
        signed = new_query(fed._client.credentials, "glm", "default", design.used, None, params)
        comp = start(Query("glm", "default", design.used, None, params), schema, k)
        space = {"clients": clients}
        previous = None
        while (rnd := comp.next_round()) is not None:
            model = [t for t in rnd.terms if t.kind == "glm" and len(t.beta) == 3]
            if model:
                forged = dataclasses.replace(model[0], beta=(-40.0, 0.0, 1.0))
                terms = tuple(forged if t == model[0] else t for t in rnd.terms)
                rnd = Round(rnd.dataset, rnd.where, terms, index=rnd.index)
                refs = dict.fromkeys(clients, types.RoundRef(rnd.index, k, previous, rnd))
                with pytest.raises(ProtocolError, match="not the one this node derives"):
                    Session(space, dict.fromkeys(clients, signed), refs, rnd.size).run()
                return
            refs = dict.fromkeys(clients, types.RoundRef(rnd.index, k, previous, rnd))
            total = Session(space, dict.fromkeys(clients, signed), refs, rnd.size).run()
            comp.feed(rnd.decode(total))
            previous = types.RoundTotal(rnd.index, tuple(int(x) for x in total))
        pytest.fail("the fit finished without an IRLS round of the model")
    finally:
        for c in clients.values():
            c.close()
