"""Contingency tables and t-tests over three nodes of Adult, against pandas and scipy on the union.

Attacks: a margin that gives a suppressed cell back by subtraction (checked for every linear
combination of the released figures, not only the obvious one), a forged round asking for
other cells than the signed query implies, a chi-square or t-test over a suppressed cell or
group, and bad input (unknown columns and levels, no public levels, too many cells).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from conftest import query_cli_args as _cli

from trustspace.api import Federation
from trustspace.cli.main import main
from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import ConfigError, DisclosureError, PolicyError, ProtocolError
from trustspace.stats import Query, Round, TableSchema, Term, replay, start
from trustspace.transport import serde, types

ADULT = Path(__file__).resolve().parent.parent / "demos" / "data" / "adult" / "adult.csv"
K = 10
CATEGORIES = ("sex", "race", "workclass", "salary-class", "marital-status")


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return pd.read_csv(ADULT, sep=";")


@pytest.fixture(scope="module")
def fed(adult: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    parts = {f"org_{i}": adult.iloc[i::3] for i in range(3)}
    domains = {c: sorted(adult[c].unique().tolist()) for c in CATEGORIES}
    policy = {
        "min_group_size": K,
        "rules": [{"analysts": ["*"], "operations": ["*"]}],
        "dp": {"epsilon": 10.0, "delta": 1e-5},
    }
    with Federation.local(
        parts,
        policy,
        key_bits=2048,
        domains=domains,
        bounds={"age": (17, 90)},
        workdir=tmp_path_factory.mktemp("xtab"),
    ) as f:
        yield f


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------- exact, as pandas
@pytest.mark.parametrize("method", ["secagg", "paillier"])
def test_crosstab_equals_pandas_on_the_union(
    fed: Federation, adult: pd.DataFrame, method: str
) -> None:
    got = fed.crosstab("default", "sex", "race", method=method)
    pd.testing.assert_frame_equal(got, pd.crosstab(adult.sex, adult.race))
    got = fed.crosstab("default", "race", "salary-class", margins=True, method=method)
    want = pd.crosstab(adult.race, adult["salary-class"], margins=True)
    pd.testing.assert_frame_equal(got, want)
    assert (got.dtypes == "int64").all() and got.index.name == "race"
    assert got.columns.name == "salary-class"
    assert not fed.last_result.any_suppressed


def test_crosstab_with_where_and_listed_levels(fed: Federation, adult: pd.DataFrame) -> None:
    got = fed.crosstab("default", "race", "salary-class", "age < 50 and sex = 'Male'")
    sub = adult[(adult.age < 50) & (adult.sex == "Male")]
    pd.testing.assert_frame_equal(got, pd.crosstab(sub.race, sub["salary-class"]))
    # values= lists the levels: others are not counted, and the margins add up the listed
    levels = {"workclass": ["Private", "Local-gov"], "sex": ["Male", "Female"]}
    got = fed.crosstab("default", "workclass", "sex", margins=True, values=levels)
    sub = adult[adult.workclass.isin(levels["workclass"])]
    pd.testing.assert_frame_equal(got, pd.crosstab(sub.workclass, sub.sex, margins=True))
    # an int column is a category too, with public levels
    got = fed.crosstab("default", "age", "sex", "age >= 30", values={"age": [30, 31, 32]})
    sub = adult[adult.age.isin([30, 31, 32])]
    pd.testing.assert_frame_equal(got, pd.crosstab(sub.age, sub.sex))


@pytest.mark.parametrize("correction", [True, False])
def test_chi2_test_equals_scipy(fed: Federation, adult: pd.DataFrame, correction: bool) -> None:
    for rows, cols, where in (
        ("sex", "salary-class", None),  # dof 1: Yates' correction applies
        ("race", "salary-class", "age >= 30"),
        ("marital-status", "salary-class", None),
    ):
        sub = adult if where is None else adult.query(where)
        want = st.chi2_contingency(pd.crosstab(sub[rows], sub[cols]), correction=correction)
        got = fed.chi2_test("default", rows, cols, where, correction=correction)
        assert got.statistic == pytest.approx(want.statistic, rel=1e-9)
        assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
        assert got.dof == want.dof
        np.testing.assert_allclose(got.expected_freq.to_numpy(), want.expected_freq, rtol=1e-9)
        assert list(got.expected_freq.index) == sorted(sub[rows].unique())


@pytest.mark.parametrize("equal_var", [False, True])
def test_ttest_equals_scipy(fed: Federation, adult: pd.DataFrame, equal_var: bool) -> None:
    a, b = adult.age[adult.sex == "Female"], adult.age[adult.sex == "Male"]
    want = st.ttest_ind(a, b, equal_var=equal_var)
    got = fed.ttest("default", "age", by="sex", equal_var=equal_var)
    assert got.statistic == pytest.approx(want.statistic, rel=1e-9)
    assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert got.df == pytest.approx(want.df, rel=1e-9)
    assert got.mean["Female"] == pytest.approx(a.mean(), rel=1e-12)
    assert got.count.tolist() == [len(a), len(b)]
    # a by-column of many levels, two of them named, in that order, with a filter
    sub = adult[adult.age >= 30]
    a = sub.age[sub.race == "White"]
    b = sub.age[sub.race == "Black"]
    want = st.ttest_ind(a, b, equal_var=equal_var)
    got = fed.ttest(
        "default", "age", "race", ("White", "Black"), equal_var=equal_var, where="age >= 30"
    )
    assert got.statistic == pytest.approx(want.statistic, rel=1e-9)
    assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert list(got.mean.index) == ["White", "Black"]


def test_ttest_on_the_paillier_path(fed: Federation, adult: pd.DataFrame) -> None:
    got = fed.ttest("default", "age", "sex", method="paillier")
    a, b = adult.age[adult.sex == "Female"], adult.age[adult.sex == "Male"]
    want = st.ttest_ind(a, b, equal_var=False)
    assert got.statistic == pytest.approx(want.statistic, rel=1e-9)
    assert fed.last_result.op == "ttest"


# ---------------------------------------------------------------------- disclosure control
def _released_functionals(table: pd.DataFrame, cells: tuple[int, int]) -> np.ndarray:
    """Every released figure of a margined table as a linear functional of the cells."""
    r, c = cells
    rows = []
    for i in range(r + 1):
        for j in range(c + 1):
            if np.isnan(table.iat[i, j]):
                continue
            f = np.zeros((r, c))
            if i < r and j < c:
                f[i, j] = 1
            elif i < r:
                f[i, :] = 1
            elif j < c:
                f[:, j] = 1
            else:
                f[:, :] = 1
            rows.append(f.ravel())
    return np.array(rows)


def _recoverable(functionals: np.ndarray, cell: int) -> bool:
    """True if some linear combination of the released figures equals the cell."""
    e = np.zeros(functionals.shape[1])
    e[cell] = 1
    rank = np.linalg.matrix_rank(functionals)
    return bool(np.linalg.matrix_rank(np.vstack([functionals, e])) == rank)


def test_small_cells_are_suppressed_and_margins_cannot_give_them_back(
    fed: Federation, adult: pd.DataFrame
) -> None:
    where = "age >= 70"
    levels = {"race": ["Asian-Pac-Islander", "Black", "White"]}
    with pytest.warns(UserWarning, match="suppressed"):
        got = fed.crosstab("default", "sex", "race", where, margins=True, values=levels)
    sub = adult[(adult.age >= 70) & adult.race.isin(levels["race"])]
    true = pd.crosstab(sub.sex, sub.race, margins=True)
    assert true.loc["Female", "Asian-Pac-Islander"] < K  # the one small cell
    mask = fed.last_result.suppressed
    assert mask.loc["Female", "Asian-Pac-Islander"] and np.isnan(
        got.loc["Female", "Asian-Pac-Islander"]
    )
    # the naive attack: the Female margin minus her other cells would be the small cell
    assert np.isnan(got.loc["Female", "All"]) and np.isnan(got.loc["All", "Asian-Pac-Islander"])
    assert np.isnan(got.loc["All", "All"])
    # every other figure is released, and right
    released = ~mask.to_numpy()
    assert released.sum() == true.size - 4
    np.testing.assert_array_equal(got.to_numpy()[released], true.to_numpy()[released])
    # no linear combination of the released figures recovers the suppressed cell; with the
    # true margins released (the attack) it would: the check can fail
    f = _released_functionals(got, (2, 3))
    assert not _recoverable(f, 0 * 3 + 0)
    assert _recoverable(_released_functionals(true.astype(float), (2, 3)), 0)


def test_no_suppressed_cell_is_recoverable_in_a_sparse_table(
    fed: Federation, adult: pd.DataFrame
) -> None:
    got = _quiet(fed.crosstab, "default", "sex", "workclass", "age >= 70", margins=True)
    mask = fed.last_result.suppressed.to_numpy()
    r, c = got.shape[0] - 1, got.shape[1] - 1
    assert mask[:r, :c].sum() >= 2
    f = _released_functionals(got, (r, c))
    for cell in np.flatnonzero(mask[:r, :c].ravel()):
        assert not _recoverable(f, int(cell))
    # the released margins are sums of released cells (and right)
    sub = adult[adult.age >= 70]
    true = pd.crosstab(sub.sex, sub.workclass, margins=True).reindex_like(got)
    ok = ~mask
    np.testing.assert_array_equal(got.to_numpy()[ok], true.to_numpy()[ok])
    # the Paillier path (small counts zeroed at the aggregator) suppresses the same figures
    pail = _quiet(
        fed.crosstab, "default", "sex", "workclass", "age >= 70", margins=True, method="paillier"
    )
    pd.testing.assert_frame_equal(pail, got)


def test_chi2_and_ttest_refuse_small_cells_and_groups(fed: Federation) -> None:
    with pytest.raises(DisclosureError, match=r"suppressed; the test would be wrong.*Coarsen"):
        fed.chi2_test("default", "sex", "race", "age >= 70")
    with pytest.raises(DisclosureError, match="group 'Other' holds fewer than min_group_size"):
        fed.ttest("default", "age", "race", ("White", "Other"), where="age >= 70")


# ---------------------------------------------------------------------- rounds the nodes check
def test_replay_derives_the_one_cells_round(fed: Federation) -> None:
    schema = TableSchema({"a": "str", "b": "bool"}, domains={"a": ["y", "x"]})
    q = Query("crosstab", "d", ("a", "b"), "a != 'z'", {"margins": True})
    rnd = replay(q, schema, K, [])
    assert rnd is not None and rnd.terms == (Term.cells("a", "b", ("x", "y"), (False, True)),)
    assert replay(q, schema, K, [np.zeros(4)]) is None  # one round, then finished
    with pytest.raises(ProtocolError, match="finished after 1 rounds"):
        replay(q, schema, K, [np.zeros(4), np.zeros(4)])
    assert serde.round_from_proto(serde.round_to_proto(rnd)) == rnd


def test_a_forged_round_asking_for_other_cells_is_refused(fed: Federation) -> None:
    """The driver (here the analyst on the Paillier path) asks the nodes for cells the signed
    crosstab does not imply: one small cell alone, another column, a finer filter."""
    pk, _ = fed._keys()
    query = Query("crosstab", "default", ("sex", "race"), "age >= 70")
    honest = start(query, TableSchema.from_dict(_schema(fed)), K).next_round()
    assert honest is not None
    (sexes, races) = honest.terms[0].levels
    forged = (
        # one small cell alone
        Round("default", "age >= 70", (Term.cells("sex", "race", ["Female"], ["Other"]),)),
        # another column than signed
        Round("default", "age >= 70", (Term.cells("sex", "workclass", sexes, ["Private"]),)),
        # the signed cells in another order (the answer would be read as other cells)
        Round("default", "age >= 70", (Term.cells("sex", "race", sexes[::-1], races),)),
    )
    for rnd in forged:
        signed = fed._sign_query(query, "paillier", pk.fingerprint)
        with pytest.raises(ProtocolError, match="is not the one this node derives"):
            fed._client.run_round(types.RoundRequest(signed, int(pk.n), rnd, K))
    # a finer filter than signed: the aggregator refuses it already
    finer = Round("default", "age >= 70 and age < 71", honest.terms)
    signed = fed._sign_query(query, "paillier", pk.fingerprint)
    with pytest.raises(ProtocolError, match="does not belong to the query"):
        fed._client.run_round(types.RoundRequest(signed, int(pk.n), finer, K))
    signed = fed._sign_query(query, "paillier", pk.fingerprint)
    rr = fed._client.run_round(types.RoundRequest(signed, int(pk.n), honest, K))
    assert len(rr.count_totals) == honest.size


def _schema(fed: Federation) -> dict[str, Any]:
    for n in fed.status():
        for d in n.datasets:
            if d.name == "default":
                return d.schema
    raise AssertionError("no schema")


# ---------------------------------------------------------------------- differential privacy
def test_dp_crosstab_is_within_its_reported_error(fed: Federation, adult: pd.DataFrame) -> None:
    got = fed.crosstab("default", "sex", "race", margins=True, epsilon=1.0)
    dp = fed.last_result.dp
    assert dp is not None and dp["epsilon"] == 1.0
    true = pd.crosstab(adult.sex, adult.race, margins=True).astype(float)
    std = dp["std"]
    assert (std.to_numpy() > 0).all()
    # one cell's noise is a count's; a margin adds the noise of its cells
    assert std.iat[0, 0] == pytest.approx(dp["noise_std"], rel=1e-6)
    assert std.iat[0, -1] == pytest.approx(dp["noise_std"] * np.sqrt(5), rel=1e-6)
    assert (np.abs(got - true).to_numpy() <= 5 * std.to_numpy()).all()
    assert not np.array_equal(got.to_numpy(), true.to_numpy())  # noisy
    # margins are sums of the noisy cells (post-processing), nothing suppressed
    cells = got.iloc[:-1, :-1].to_numpy()
    np.testing.assert_allclose(got.iloc[:-1, -1], cells.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(got.iloc[-1, :-1], cells.sum(axis=0), rtol=1e-12)
    assert not fed.last_result.any_suppressed


# ---------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_what_to_do(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="unknown column 'rase'"):
        fed.crosstab("default", "sex", "rase")
    with pytest.raises(ConfigError, match=r"needs the public levels of 'education'.*values="):
        fed.crosstab("default", "sex", "education")
    with pytest.raises(ConfigError, match="3 cannot be a level of 'sex', which is str"):
        fed.crosstab("default", "sex", "race", values={"sex": ["Male", 3]})
    with pytest.raises(
        ConfigError, match=r"'Whte' is not a level of 'race' \(did you mean 'White'"
    ):
        fed.crosstab("default", "sex", "race", values={"race": ["Black", "Whte"]})
    with pytest.raises(ConfigError, match="'Men' is not a level of 'sex'"):
        fed.ttest("default", "age", "sex", ("Men", "Female"))
    with pytest.raises(ConfigError, match="'occupation' is not one of the table's columns"):
        fed.crosstab("default", "sex", "race", values={"occupation": ["x"]})
    with pytest.raises(ConfigError, match=r"12000 cells, more than the limit of 10000"):
        fed.crosstab(
            "default",
            "education",
            "occupation",
            values={
                "education": [f"e{i}" for i in range(200)],
                "occupation": [f"o{i}" for i in range(60)],
            },
        )
    with pytest.raises(ConfigError, match=r"ttest compares two groups, but 'race' has 5 levels"):
        fed.ttest("default", "age", "race")
    with pytest.raises(ConfigError, match="exactly 2 values"):
        fed.ttest("default", "age", "race", ("White",))
    with pytest.raises(ConfigError, match="ttest needs numeric columns; 'sex' is str"):
        fed.ttest("default", "sex", "race", ("White", "Black"))
    with pytest.raises(ConfigError, match="crosstab takes exactly two columns"):
        Query("crosstab", "default", ("sex",))
    schema = TableSchema({"x": "float", "s": "str"}, domains={"s": ["a"]})
    with pytest.raises(ConfigError, match="cannot use 'x' of type float as a category"):
        Query("crosstab", "d", ("s", "x")).check(schema)
    with pytest.raises(ConfigError, match="only a cells or marginal term lists levels"):
        Term("bins", ("x",), edges=(0.0, 1.0), levels=(("a",),))


def test_engine_counts_int_bool_and_str_cells_with_nulls(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)  # test data only
    df = pd.DataFrame(
        {
            "n": rng.integers(0, 4, 500),
            "b": rng.choice([True, False], 500),
            "s": rng.choice(["u", "v", "w'; DROP TABLE t; --"], 500),
        }
    ).astype({"n": "Int64", "b": "boolean"})
    df.loc[rng.choice(500, 40, replace=False), "n"] = pd.NA
    df.loc[rng.choice(500, 40, replace=False), "s"] = None
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    spec = DatasetSpec("d", path, "csv", {"n": "int", "b": "bool", "s": "str"})
    with Engine({"d": spec}) as engine:
        engine.validate()
        for rows, cols, lr, lc in (
            ("n", "b", [0, 1, 2, 3], [False, True]),
            ("s", "n", ["u", "w'; DROP TABLE t; --", "v"], [3, 0]),
        ):
            rnd = Round("d", None, (Term.cells(rows, cols, lr, lc),))
            got = engine.compute(rnd).reshape(len(lr), len(lc))
            want = pd.crosstab(df[rows], df[cols]).reindex(index=lr, columns=lc, fill_value=0)
            np.testing.assert_array_equal(got, want.to_numpy())


# ---------------------------------------------------------------------- command line
def test_cli_crosstab_chi2_and_ttest(
    fed: Federation, adult: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_cli(fed), "crosstab", "default", "sex", "salary-class", "--margins"]) == 0
    out = capsys.readouterr().out
    assert "30162" in out and "30162.0" not in out and "All" in out
    args = ["chi2", "default", "sex", "race", "--levels", "race=White,Black", "--no-correction"]
    assert main([*_cli(fed), *args]) == 0
    sub = adult[adult.race.isin(["White", "Black"])]
    want = st.chi2_contingency(pd.crosstab(sub.sex, sub.race), correction=False)
    line = capsys.readouterr().out.splitlines()[0].split()
    assert line[0] == "statistic" and float(line[1]) == pytest.approx(want.statistic, rel=1e-12)
    assert main([*_cli(fed), "ttest", "default", "age", "--by", "sex", "--equal-var"]) == 0
    out = capsys.readouterr().out
    assert "df         30160" in out


def test_node_policies_allow_crosstab_and_ttest_by_name(
    partitions: dict[str, Path], union: pd.DataFrame, tmp_path: Path
) -> None:
    """A rule naming only ``crosstab`` on sex and age: the table is served, a t-test (or a
    group_by giving the same counts) is not, nor a table over another column."""
    rule = {"analysts": ["*"], "operations": ["crosstab"], "columns": ["sex", "age"]}
    policy = {"min_group_size": 1, "rules": [rule]}
    parts = {k: str(v) for k, v in partitions.items()}
    with Federation.local(parts, policy, domains={"sex": ["F", "M"]}, workdir=tmp_path) as f:
        both = pd.crosstab(union.age, union.sex).min(axis=1)
        ages = [int(a) for a in both[both > 0].index[:3]]  # no empty (suppressed) cell
        got = f.crosstab("default", "age", "sex", values={"age": ages})
        sub = union[union.age.isin(ages)]
        pd.testing.assert_frame_equal(got, pd.crosstab(sub.age, sub.sex))
        with pytest.raises(PolicyError, match="may not run 'ttest'"):
            f.ttest("default", "age", "sex")
        with pytest.raises(PolicyError, match="may not run 'group_by'"):
            f.group_by("default", "sex", {"age": "count"})
        with pytest.raises(PolicyError, match="may not read column"):
            f.crosstab("default", "sex", "age", "income > 0", values={"age": [30]})
