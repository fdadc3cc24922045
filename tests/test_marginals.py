"""``fed.marginals``: several 1- to 3-way tables in one round, exact (k-suppressed) or under DP.

The measurement a synthesizer of the union fits its model to (issue 19): each table is
checked against pandas on the union, its DP noise against what the accounting says, and the
bad requests are refused naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from trustspace import Federation
from trustspace.errors import ConfigError
from trustspace.stats import Query, Term
from trustspace.transport.serde import term_from_proto, term_to_proto

AGE_CUTS = [17, 30, 45, 60, 91]
H_CUTS = [0.0, 35.0, 45.0, 100.0]
DOMAINS = {"sex": ["F", "M"], "edu": ["a", "b", "c"]}


def _part(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)  # test data only
    df = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(17, 91, n),
            "edu": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]),
            "h": rng.normal(40, 8, n).round(1),
        }
    )
    df.loc[rng.random(n) < 0.05, "h"] = np.nan
    df.loc[rng.random(n) < 0.02, "h"] = 120.0  # outside the cuts: in no cell
    df.loc[rng.random(n) < 0.02, "h"] = 100.0  # the last edge: in the last (closed) bin
    return df


@pytest.fixture(scope="module")
def space() -> Iterator[tuple[Federation, pd.DataFrame]]:
    parts = {f"n{i}": _part(500, i) for i in range(3)}
    union = pd.concat(parts.values(), ignore_index=True)
    with Federation.local(parts, domains=DOMAINS, bounds={"age": (17, 90), "h": (0, 150)}) as fed:
        yield fed, union


def _codes(union: pd.DataFrame) -> pd.DataFrame:
    """Each row's cell index per column (-1: in no cell), written here independently."""
    out = pd.DataFrame(index=union.index)
    out["sex"] = union.sex.map({"F": 0, "M": 1}).fillna(-1).astype(int)
    out["edu"] = union.edu.map({"a": 0, "b": 1, "c": 2}).fillna(-1).astype(int)
    for col, cuts in (("age", AGE_CUTS), ("h", H_CUTS)):
        x = union[col].to_numpy(dtype=float)
        idx = np.searchsorted(cuts, x, side="right") - 1
        idx[x == cuts[-1]] = len(cuts) - 2
        idx[(x < cuts[0]) | (x > cuts[-1]) | np.isnan(x)] = -1
        out[col] = idx
    return out


def _reference(union: pd.DataFrame, cols: list[str]) -> np.ndarray:
    shape = {"sex": 2, "edu": 3, "age": len(AGE_CUTS) - 1, "h": len(H_CUTS) - 1}
    codes = _codes(union)[cols]
    codes = codes[(codes >= 0).all(axis=1)]
    table = np.zeros([shape[c] for c in cols])
    np.add.at(table, tuple(codes[c].to_numpy() for c in cols), 1)
    return table.ravel()


def test_exact_marginals_equal_pandas(space: tuple[Federation, pd.DataFrame]) -> None:
    fed, union = space
    ms = [["sex"], ["edu"], ["sex", "age"], ["age", "edu", "h"], ["h"]]
    out = fed.marginals("default", ms, cuts={"age": AGE_CUTS, "h": H_CUTS})
    assert list(out) == [tuple(m) for m in ms]
    for m in ms:
        got = out[tuple(m)]
        want = _reference(union, m)
        shown = ~got.attrs["suppressed"]
        assert np.array_equal(got.to_numpy()[shown], want[shown]), m
        assert (want[~shown] < 10).all()  # only cells under min_group_size are withheld
    sex_age = out[("sex", "age")]
    assert sex_age.index.names == ["sex", "age"]
    assert sex_age.index[0] == ("F", pd.Interval(17, 30, closed="left"))
    assert sex_age.index[-1] == ("M", pd.Interval(60, 91, closed="both"))
    assert out[("edu",)].index.tolist() == ["a", "b", "c"]  # "d" is not a listed level
    # the 3-way table's suppressed cells are there: 1,500 rows over 36 cells
    assert out[("age", "edu", "h")].attrs["suppressed"].any()


def test_a_filter_restricts_every_table(space: tuple[Federation, pd.DataFrame]) -> None:
    fed, union = space
    out = fed.marginals("default", [["sex", "edu"]], where="age >= 40")
    want = _reference(union[union.age >= 40], ["sex", "edu"])
    assert np.array_equal(out[("sex", "edu")].to_numpy(), want)


def test_dp_marginals_are_one_measurement(space: tuple[Federation, pd.DataFrame]) -> None:
    """m tables in one round: one charge to each node's budget, each cell's noise std
    sqrt(m) times a single table's at the same epsilon, and the truth within 6 std."""
    fed, union = space
    before = fed.budget("default")["rho_spent"].to_numpy()
    one = fed.marginals(
        "default", [["sex", "age"]], cuts={"age": AGE_CUTS}, epsilon=1.0, delta=1e-6
    )
    mid = fed.budget("default")["rho_spent"].to_numpy()
    ms = [["sex", "age"], ["sex"], ["edu"], ["edu", "age"]]
    four = fed.marginals("default", ms, cuts={"age": AGE_CUTS}, epsilon=1.0, delta=1e-6)
    after = fed.budget("default")["rho_spent"].to_numpy()
    assert (mid > before).all() and np.allclose(after - mid, mid - before, rtol=1e-9)
    s1, s4 = one[("sex", "age")].attrs["std"], four[("sex", "age")].attrs["std"]
    assert s4 / s1 == pytest.approx(2.0, rel=0.02)
    for m in ms:
        got, want = four[tuple(m)].to_numpy(), _reference(union, m)
        assert not four[tuple(m)].attrs["suppressed"].any()  # DP: nothing withheld
        assert np.all(np.abs(got - want) < 6 * s4), m
    assert not np.array_equal(
        np.round(one[("sex", "age")].to_numpy()), _reference(union, ["sex", "age"])
    )


def test_a_marginal_term_travels_and_rebuilds() -> None:
    t = Term.marginal(["a", "b", "c"], [["x", "y"], [], [1, 2, 3]], [[], [0, 1, 2.5], []])
    assert t.size == 2 * 2 * 3 and t.shape == (2, 2, 3)
    assert Term.from_dict(t.to_dict()) == t
    assert term_from_proto(term_to_proto(t)) == t


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"marginals": [["sex", "age", "edu", "h"]]}, r"1\.\.3 distinct columns"),
        ({"marginals": [["h"]]}, r"numeric column 'h' needs its bin edges"),
        ({"marginals": [["sex"]], "cuts": {"sex": [0, 1]}}, r"'sex' is str; only a numeric"),
        ({"marginals": [["sex"], ["sex"]]}, "listed twice"),
        ({"marginals": [["age"]], "cuts": {"age": [30, 20]}}, "strictly increasing"),
        (
            {
                "marginals": [["age", "h"]],
                "cuts": {"age": list(range(0, 201)), "h": list(range(0, 101))},
            },
            r"200 x 100 = 20000 cells, more than the limit of 10000",
        ),
    ],
)
def test_bad_marginals_are_refused(
    space: tuple[Federation, pd.DataFrame], kw: dict, match: str
) -> None:
    fed, _ = space
    with pytest.raises(ConfigError, match=match):
        fed.marginals("default", kw["marginals"], cuts=kw.get("cuts"))


def test_a_column_without_public_levels_is_named() -> None:
    parts = {f"n{i}": _part(60, i) for i in range(3)}
    with (
        Federation.local(parts) as fed,  # no domains declared
        pytest.raises(ConfigError, match=r"needs the public levels of 'edu'"),
    ):
        fed.marginals("default", [["edu"]])


def test_marginals_are_not_computed_over_a_vertical_view() -> None:
    from trustspace.stats import Round
    from trustspace.vertical.terms import plan_round

    t = Term.marginal(["bank.sex", "telco.edu"], [["F", "M"], ["a"]], [[], []])
    rnd = Round("d", None, (t,))
    with pytest.raises(ConfigError, match="marginal terms are not computed on vertical views"):
        plan_round(rnd, {"bank.sex": "bank", "telco.edu": "telco"}, ["bank", "telco"])


def test_the_query_checks_its_shape_before_any_round() -> None:
    with pytest.raises(ConfigError, match="every column must be in a marginal"):
        Query("marginals", "d", ("a", "b"), None, {"marginals": [["a"]]})
    with pytest.raises(ConfigError, match=r"params.marginals'?: expected a list of 1..64"):
        Query("marginals", "d", ("a",), None, {"marginals": [["a"]] * 65})


def test_a_crafted_marginal_cannot_isolate_a_record(space: tuple[Federation, pd.DataFrame]) -> None:
    """An analyst narrows a table to one person (a filter on exact values, a bin around one
    value): every cell under min_group_size is withheld, and so is a crafted raw query's."""
    fed, union = space
    one = union.dropna().iloc[0]
    where = f"sex = '{one.sex}' and edu = '{one.edu}' and age = {int(one.age)}"
    out = fed.marginals("default", [["sex", "edu", "h"]], where, cuts={"h": [one.h, one.h + 0.05]})
    table = out[("sex", "edu", "h")]
    assert table.attrs["suppressed"].all() and table.isna().all()
    q = Query(
        "marginals",
        "default",
        ("h",),
        where,
        {"marginals": [["h"]], "cuts": {"h": [float(one.h), float(one.h) + 0.05]}},
    )
    res = fed.run(q)
    assert res.value.isna().all() and bool(res.suppressed.all())
