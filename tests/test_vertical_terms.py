"""Vertical rounds in the clear: the filter split per node, the term plan, and every term kind
computed from the nodes' factors against the engine over the joined table (the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import ConfigError
from trustspace.stats import And, Compare, Round, Term
from trustspace.vertical.terms import (
    Dense,
    OneHot,
    clear_round,
    local_factors,
    plan_round,
    split_filter,
)

OWNERS = {
    "bank.age": "bank",
    "bank.label": "bank",
    "bank.tier": "bank",
    "telco.spend": "telco",
    "telco.region": "telco",
    "telco.vip": "telco",
}
TYPES = {
    "bank.age": "float",
    "bank.label": "int",
    "bank.tier": "str",
    "telco.spend": "float",
    "telco.region": "str",
    "telco.vip": "bool",
}


def frames(n: int = 400, seed: int = 3) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    bank = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "label": rng.integers(0, 2, n),
            "tier": rng.choice(["gold", "basic", "x"], n).astype(object),
        }
    )
    telco = pd.DataFrame(
        {
            "spend": rng.normal(10, 60, n),  # negative values too
            "region": rng.choice(["N", "S", "E", "W"], n).astype(object),
            "vip": rng.integers(0, 2, n).astype(bool).astype(object),
        }
    )
    bank.loc[rng.choice(n, 30, replace=False), "age"] = np.nan
    bank.loc[rng.choice(n, 20, replace=False), "tier"] = None
    telco.loc[rng.choice(n, 25, replace=False), "spend"] = np.nan
    telco.loc[rng.choice(n, 15, replace=False), "region"] = None
    telco.loc[rng.choice(n, 10, replace=False), "vip"] = None
    telco.loc[0, "spend"] = 0.0
    telco.loc[1, "spend"] = 100.0  # exactly on an edge and the last edge
    telco.loc[2, "spend"] = 1e-300
    return {"bank": bank, "telco": telco}


def joined_engine(tmp_path: Path, fr: dict[str, pd.DataFrame]) -> Engine:
    joined = pd.concat([f.add_prefix(f"{node}.") for node, f in fr.items()], axis=1)
    path = tmp_path / "joined.parquet"
    joined.astype({"telco.vip": "boolean"}).to_parquet(path)
    eng = Engine({"v": DatasetSpec("v", path, format="parquet", columns=TYPES)})
    eng.validate()
    return eng


ALL_TERMS = (
    Term.rows(),
    Term.count("telco.spend"),
    Term.count("bank.age", "telco.spend"),
    Term.moment(["telco.spend"], [1], [0.0], 40),
    Term.moment(["telco.spend"], [2], [3.5], 30),
    Term.moment(["bank.age", "telco.spend"], [1, 1], [40.0, 10.0], 30),
    Term.moment(["bank.age", "telco.spend"], [2, 0], [40.0, 0.0], 30),
    Term.moment(["bank.age"], [3], [50.0], 20),
    Term.octaves("telco.spend"),
    Term.grid("telco.spend", -100.0, 25.0, 8),
    Term.grid("bank.age", 20.0, 10.0, 5),
    Term.bins("telco.spend", [-50.0, 0.0, 25.0, 100.0]),
    Term.cells("bank.label", "telco.region", [0, 1], ["N", "S", "E"]),
    Term.cells("telco.region", "bank.tier", ["N", "W"], ["gold", "basic"]),
    Term.cells("telco.region", "telco.vip", ["N", "S"], [True, False]),
)

FILTERS = [
    None,
    '"bank.label" = 1',
    "\"telco.region\" in ('N', 'S') and \"bank.age\" >= 40",
    'not ("bank.age" < 30 or "bank.tier" = \'gold\') and "telco.spend" is not null',
    '"telco.vip" = true and not "telco.spend" > 20 and "bank.tier" is null',
    '"bank.tier" != \'x\' and ("telco.region" = \'W\' or "telco.spend" < 0)',
]


@pytest.mark.parametrize("where", FILTERS)
def test_every_kind_equals_the_engine_on_the_joined_table(tmp_path, where):
    fr = frames()
    rnd = Round("v", where, ALL_TERMS)
    expected = joined_engine(tmp_path, fr).compute(rnd)
    got = clear_round(rnd, OWNERS, fr)
    counts = rnd.count_mask
    np.testing.assert_array_equal(got[counts], expected[counts])
    np.testing.assert_allclose(got[~counts], expected[~counts], rtol=1e-12, atol=1e-9)
    assert got[rnd.term_slice(0)][0] > 0


CLAMPED = (
    Term("moment", ("telco.spend",), (1,), (0.0,), frac_bits=40, clamp=(-20.0, 50.0)),
    Term("bins", ("telco.spend",), edges=(-10.0, 0.0, 10.0), clamp=(-5.0, 5.0)),
)


def test_clamped_terms_equal_the_engine_on_non_null_rows(tmp_path):
    # on null rows the engine's least(greatest(x, lo), hi) yields lo (DuckDB's greatest skips
    # NULLs), which contradicts Term's "rows where the columns are non-null"; compare where
    # both agree, and check the null rows are not counted here
    fr = frames()
    rnd = Round("v", '"telco.spend" is not null and "bank.label" = 0', CLAMPED)
    expected = joined_engine(tmp_path, fr).compute(rnd)
    np.testing.assert_allclose(clear_round(rnd, OWNERS, fr), expected, rtol=1e-12)
    free = clear_round(Round("v", '"bank.label" = 0', CLAMPED), OWNERS, fr)
    np.testing.assert_allclose(free, expected, rtol=1e-12)


def test_date_and_int_filters_with_nulls_equal_the_engine(tmp_path):
    fr = frames(300, seed=8)
    rng = np.random.default_rng(8)
    days = pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, 300), unit="D")
    fr["bank"]["opened"] = pd.Series(days).where(rng.random(300) > 0.1)  # datetime64 + NaT
    fr["telco"]["plan"] = pd.array(rng.integers(0, 4, 300), dtype="Int64")
    fr["telco"].loc[:20, "plan"] = pd.NA
    owners = {**OWNERS, "bank.opened": "bank", "telco.plan": "telco"}
    joined = pd.concat([f.add_prefix(f"{k}.") for k, f in fr.items()], axis=1)
    joined["bank.opened"] = joined["bank.opened"].dt.date.where(joined["bank.opened"].notna())
    joined = joined.astype({"telco.vip": "boolean"})
    path = tmp_path / "j.parquet"
    joined.to_parquet(path)
    types = {**TYPES, "bank.opened": "date", "telco.plan": "int"}
    eng = Engine({"v": DatasetSpec("v", path, format="parquet", columns=types)})
    eng.validate()
    where = '"bank.opened" >= \'2021-01-01\' and not "telco.plan" in (1, 2)'
    terms = (Term.rows(), Term.cells("telco.plan", "bank.label", [0, 3], [0, 1]),
             Term.moment(["telco.spend"], [1], [0.0], 40))  # fmt: skip
    rnd = Round("v", where, terms)
    np.testing.assert_allclose(clear_round(rnd, owners, fr), eng.compute(rnd), rtol=1e-12)


def test_split_filter_groups_conjuncts_per_node_under_own_names():
    parts = split_filter(
        '"bank.age" >= 40 and ("telco.region" = \'N\' and "bank.tier" = \'gold\')', OWNERS
    )
    assert parts["bank"] == And((Compare("age", ">=", 40, 1), Compare("tier", "=", "gold", 48)))
    assert parts["telco"] == Compare("region", "=", "N", 23)
    assert split_filter(None, OWNERS) == {"bank": None, "telco": None}


@pytest.mark.parametrize(
    "where",
    [
        '"bank.age" >= 40 or "telco.spend" > 1',
        'not ("bank.age" >= 40 and "telco.spend" > 1)',
        '"bank.age" > 1 and ("telco.vip" = true or "bank.label" = 0)',
    ],
)
def test_a_conjunct_across_nodes_is_refused(where):
    with pytest.raises(ConfigError, match="only with `and`"):
        split_filter(where, OWNERS)


def test_unknown_column_and_misnamed_owner_are_refused():
    with pytest.raises(ConfigError, match=r"unknown column 'bank.salary'"):
        split_filter('"bank.salary" > 1', OWNERS)
    with pytest.raises(ConfigError, match="unknown column 'spend'"):
        plan_round(Round("v", None, (Term.count("spend"),)), OWNERS, ["bank", "telco"])
    with pytest.raises(ConfigError, match=r"names that node.s columns bank.<column>"):
        plan_round(Round("v", None, (Term.rows(),)), {"age": "bank"}, ["bank", "telco"])


def test_plan_refuses_three_nodes_glm_and_groups():
    owners = {**OWNERS, "shop.basket": "shop"}
    rnd = Round(
        "v", '"bank.label" = 1', (Term.moment(["telco.spend", "shop.basket"], [1, 1], [0, 0], 20),)
    )
    with pytest.raises(ConfigError, match=r"touches 3 nodes \(bank, telco, shop\)"):
        plan_round(rnd, owners, ["bank", "telco", "shop"])
    glm = Term("glm", ("bank.label", "telco.spend"), family="gaussian", mode="counts",
               design=((("telco.spend", None),),))  # fmt: skip
    with pytest.raises(ConfigError, match="glm terms are not computed"):
        plan_round(Round("v", None, (glm,)), OWNERS, ["bank", "telco"])
    grouped = Round("v", None, (Term.rows(),), "bank.tier", ("gold",))
    with pytest.raises(ConfigError, match="grouped rounds"):
        plan_round(grouped, OWNERS, ["bank", "telco"])


def test_encryptor_rule():
    rnd = Round(
        "v",
        '"bank.label" = 1',
        (
            Term.rows(),  # bank only
            Term.moment(["telco.spend"], [1], [0.0], 40),  # dense telco vs bank indicator
            Term.bins("telco.spend", [0, 1, 2]),  # 4 slots vs bank's 1
            Term.cells("telco.region", "bank.tier", ["N", "S", "E"], ["a", "b"]),  # 3 vs 2
            Term.moment(["bank.age", "telco.spend"], [1, 1], [0, 0], 20),  # dense x dense
        ),
    )
    plan = plan_round(rnd, OWNERS, ["bank", "telco"])
    got = [(t.nodes, t.encryptor, t.evaluator) for t in plan.terms]
    assert got == [
        (("bank",), None, None),
        (("bank", "telco"), "telco", "bank"),
        (("bank", "telco"), "bank", "telco"),
        (("bank", "telco"), "bank", "telco"),
        (("bank", "telco"), "bank", "telco"),
    ]
    # no filter: a count of a telco column is telco's own; rows() is the first node's
    plan = plan_round(Round("v", None, (Term.rows(), Term.count("telco.spend"))), OWNERS,
                      ["bank", "telco"])  # fmt: skip
    assert [t.nodes for t in plan.terms] == [("bank",), ("telco",)]


def test_factor_shapes_and_missing_column():
    fr = frames(50)
    rnd = Round(
        "v",
        '"bank.label" = 1',
        (Term.moment(["telco.spend"], [1], [0.0], 40), Term.bins("telco.spend", [0, 1, 2])),
    )
    plan = plan_round(rnd, OWNERS, ["bank", "telco"])
    b, t = local_factors(plan, "bank", fr["bank"]), local_factors(plan, "telco", fr["telco"])
    assert isinstance(b[0], OneHot) and b[0].size == 1
    assert isinstance(t[0], Dense) and isinstance(t[1], OneHot) and t[1].size == 4
    assert np.array_equal(b[0].index >= 0, (fr["bank"]["label"] == 1).to_numpy())
    with pytest.raises(ConfigError, match=r"node 'telco'.*'spend'"):
        local_factors(plan, "telco", fr["telco"].drop(columns=["spend"]))
