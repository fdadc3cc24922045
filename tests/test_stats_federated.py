"""Federated statistics end to end, in-process: several Engines over CSV partitions, their
local vectors summed through Round.encode/decode (mod 2^64) or trustspace.secagg.simulate, the
state machine finishing the result; every figure cross-checked against pandas on the
concatenated data."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustspace import _adult, secagg, stats
from trustspace.engine import DatasetSpec, Engine
from trustspace.errors import EncodingOverflow
from trustspace.stats import Query, Result

ADULT = _adult.CSV
ADULT_COLUMNS = _adult.COLUMNS


def make_engines(
    parts: Sequence[pd.DataFrame],
    root: Path,
    columns: dict[str, str],
    name: str = "d",
    sep: str = ",",
    domains: dict[str, list[Any]] | None = None,
) -> list[Engine]:
    """One validated Engine per partition, each over its own CSV file."""
    engines = []
    for i, part in enumerate(parts):
        path = root / f"{name}_{i}.csv"
        part.to_csv(path, sep=sep, index=False)
        spec = DatasetSpec(name, path, columns=columns, delimiter=sep, domains=domains or {})
        eng = Engine({name: spec})
        eng.validate()
        engines.append(eng)
    return engines


def run(engines: Sequence[Engine], query: Query, k: int = 0, how: str = "encode") -> Result:
    """Drive the state machine; sum the nodes' vectors as the services would."""
    comp = stats.start(query, engines[0].schema(query.dataset), k)
    while (rnd := comp.next_round()) is not None:
        # every round goes through the wire format, as the services ship it
        rnd = stats.Round.from_dict(rnd.to_dict())
        local = [e.compute(rnd) for e in engines]
        if how == "encode":
            total = np.zeros(rnd.size, dtype=np.uint64)
            for v in local:
                total += rnd.encode(v)  # numpy uint64 addition wraps modulo 2^64
        elif how == "secagg":
            total = secagg.simulate(np.stack([rnd.encode(v) for v in local]), seed=rnd.index)
        else:  # plain float sum, as the Paillier path delivers it
            comp.feed(np.sum(local, axis=0))
            continue
        comp.feed(rnd.decode(total))
    return comp.result()


def close(a: Any, b: Any, rel: float = 1e-9, abs_: float = 1e-9) -> None:
    """Scalar/Series/DataFrame equality with NaN == NaN and a relative tolerance."""
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=rel, atol=abs_)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(
            a, b, check_dtype=False, check_names=False, rtol=rel, atol=abs_
        )
    elif isinstance(b, float) and math.isnan(b):
        assert math.isnan(a), (a, b)
    else:
        assert a == pytest.approx(float(b), rel=rel, abs=abs_), (a, b)


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return pd.read_csv(ADULT, sep=";")


@pytest.fixture(scope="module")
def adult_engines(adult: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> list[Engine]:
    root = tmp_path_factory.mktemp("adult")
    cuts = [0, 9000, 21000, len(adult)]
    parts = [adult.iloc[a:b] for a, b in itertools.pairwise(cuts)]
    return make_engines(
        parts, root, ADULT_COLUMNS, "adult", ";", domains={"sex": ["Male", "Female"]}
    )


# ---------------------------------------------------------------------------------------------
# Adult split in 3 (its only numeric column is age)


@pytest.mark.parametrize("op", ["count", "sum", "mean", "var", "std", "skew", "kurt"])
@pytest.mark.parametrize("where", [None, "sex = 'Female' and race != 'White'", "age > 200"])
def test_adult_moments_equal_pandas(adult_engines, adult, op, where):
    sel = adult
    if where == "sex = 'Female' and race != 'White'":
        sel = adult[(adult.sex == "Female") & (adult.race != "White")]
    elif where == "age > 200":
        sel = adult[adult.age > 200]
    res = run(adult_engines, Query(op, "adult", "age", where=where))
    close(res.value, float(getattr(sel.age, op)()))
    assert res.suppressed is False


def test_adult_count_rows_and_columns(adult_engines, adult):
    assert run(adult_engines, Query("count", "adult", where="age >= 40")).value == float(
        (adult.age >= 40).sum()
    )
    res = run(adult_engines, Query("count", "adult", ["age", "sex"]))
    close(res.value, adult[["age", "sex"]].count())


def test_adult_describe_equals_pandas(adult_engines, adult):
    res = run(adult_engines, Query("describe", "adult", ["age"], where="education = 'Bachelors'"))
    expected = adult[adult.education == "Bachelors"][["age"]].describe()
    close(res.value, expected)
    assert list(res.value.index) == list(expected.index)
    assert res.rounds == 4  # scan, sums, centred moments + 2nd grid, 3rd grid
    for key, prec in res.precision.items():
        assert key.startswith("age/") and 0 < prec < 1e-6


def test_adult_quantiles_and_histogram(adult_engines, adult):
    qs = [0.0, 0.01, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0]
    res = run(adult_engines, Query("quantile", "adult", "age", params={"q": qs}))
    close(res.value, adult.age.quantile(qs), rel=0, abs_=1e-6)
    edges = [0, 18, 25.5, 40, 65, 90]
    res = run(adult_engines, Query("histogram", "adult", "age", params={"bins": edges}))
    counts, _ = np.histogram(adult.age, bins=edges)
    assert res.value.tolist() == counts.tolist()  # 90 falls in the last, closed bin
    res = run(
        adult_engines, Query("histogram", "adult", "age", params={"bins": 7, "range": [17, 90]})
    )
    counts, _ = np.histogram(adult.age, bins=7, range=(17, 90))
    assert res.value.tolist() == counts.tolist()


def test_adult_group_by_equals_pandas(adult_engines, adult):
    agg = {"age": ["size", "count", "sum", "mean", "var", "std"]}
    res = run(
        adult_engines,
        Query(
            "group_by", "adult", ["age"], where="race = 'White'", params={"by": "sex", "agg": agg}
        ),
    )
    expected = adult[adult.race == "White"].groupby("sex").agg(agg)
    close(res.value, expected)
    values = sorted(adult["marital-status"].unique())
    res = run(
        adult_engines,
        Query(
            "group_by",
            "adult",
            ["age"],
            params={"by": "marital-status", "agg": {"age": ["mean"]}, "values": values},
        ),
    )
    close(res.value, adult.groupby("marital-status").agg({"age": ["mean"]}))


def test_adult_secagg_simulate_and_float_paths_agree(adult_engines, adult):
    q = Query("describe", "adult", ["age"])
    a = run(adult_engines, q, how="encode").value
    b = run(adult_engines, q, how="secagg").value
    c = run(adult_engines, q, how="float").value
    close(a, b, rel=0, abs_=0)
    close(a, c, rel=1e-12)
    close(a, adult[["age"]].describe())


# ---------------------------------------------------------------------------------------------
# Disclosure control


def test_small_groups_bins_and_filtered_sets_are_suppressed(adult_engines, adult):
    k = 50
    # a filtered set below k: every statistic suppressed, never a number
    where = "native-country = 'Holand-Netherlands'"
    assert (adult["native-country"] == "Holand-Netherlands").sum() < k
    for op in ("count", "mean", "std"):
        res = run(adult_engines, Query(op, "adult", "age", where=where), k=k)
        assert res.suppressed is True and math.isnan(res.value)
    res = run(adult_engines, Query("describe", "adult", ["age"], where=where), k=k)
    assert res.value["age"].isna().all() and res.suppressed["age"].all()
    # bins below k are NaN and flagged; the others are exact
    edges = list(range(15, 95, 5))
    res = run(adult_engines, Query("histogram", "adult", "age", params={"bins": edges}), k=k)
    counts, _ = np.histogram(adult.age, bins=edges)
    assert (res.suppressed.to_numpy() == (counts < k)).all()
    kept = counts >= k
    assert (res.value.to_numpy()[kept] == counts[kept]).all()
    assert res.value[~kept].isna().all() and res.any_suppressed
    # groups below k
    countries = sorted(adult["native-country"].unique())
    res = run(
        adult_engines,
        Query(
            "group_by",
            "adult",
            ["age"],
            params={"by": "native-country", "agg": {"age": ["mean", "size"]}, "values": countries},
        ),
        k=k,
    )
    sizes = adult.groupby("native-country").size().reindex(countries)
    assert (res.suppressed[("age", "mean")].to_numpy() == (sizes < k).to_numpy()).all()
    big = sizes[sizes >= k].index
    close(res.value.loc[big, ("age", "mean")], adult.groupby("native-country").age.mean().loc[big])


def test_describe_min_max_released_within_precision_under_k(adult_engines, adult):
    res = run(adult_engines, Query("describe", "adult", ["age"]), k=10)
    desc = adult[["age"]].describe()["age"]
    for label in ("min", "25%", "50%", "75%", "max"):
        prec = res.precision[f"age/{label}"]
        assert abs(res.value.loc[label, "age"] - desc[label]) <= prec


def test_suppressed_entries_from_upstream_are_honoured(adult_engines, adult):
    """The Paillier path zeroes entries whose count is in (0, k) and says which: the machine
    must neither release them nor be misled by them."""
    k = 30
    q = Query("describe", "adult", ["age"], where="race = 'Amer-Indian-Eskimo'")
    comp = stats.start(q, adult_engines[0].schema("adult"), k)
    while (rnd := comp.next_round()) is not None:
        total = np.sum([e.compute(rnd) for e in adult_engines], axis=0)
        # governing count of each entry: the entry itself for counts
        small = np.flatnonzero(rnd.count_mask & (total > 0) & (total < k))
        total[small] = 0
        comp.feed(total, suppressed=small.tolist())
    res = comp.result()
    sel = adult[adult.race == "Amer-Indian-Eskimo"][["age"]].describe()["age"]
    for label in ("count", "mean", "std"):
        close(res.value.loc[label, "age"], sel[label])
    for label in ("min", "25%", "50%", "75%", "max"):
        assert abs(res.value.loc[label, "age"] - sel[label]) <= res.precision[f"age/{label}"]


# ---------------------------------------------------------------------------------------------
# Numeric data with nulls, extreme values and an empty partition


@pytest.fixture(scope="module")
def numeric(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, list[Engine]]:
    rng = np.random.default_rng(7)
    n = 3000
    df = pd.DataFrame(
        {
            "x": rng.normal(50, 10, n),
            "y": rng.exponential(3.0, n) - 1.0,
            "big": rng.choice([-1e12, 3.5e11, 1.0, 0.0, 2e12], n),
            "i": rng.integers(-5, 1000, n).astype("float64"),
            "g": rng.choice(["a", "b", "c"], n),
        }
    )
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[rng.random(n) < 0.3, "y"] = np.nan
    df.loc[rng.random(n) < 0.05, "i"] = np.nan
    df["i"] = df["i"].astype("Int64")
    parts = [df.iloc[:1000], df.iloc[1000:1000], df.iloc[1000:2999], df.iloc[2999:]]
    root = tmp_path_factory.mktemp("numeric")
    cols = {"x": "float", "y": "float", "big": "float", "i": "int", "g": "str"}
    return df, make_engines(parts, root, cols, domains={"g": ["a", "b", "c"]})


@pytest.mark.parametrize("op", ["count", "sum", "mean", "var", "std", "skew", "kurt"])
def test_numeric_moments_with_nulls_and_empty_partition(numeric, op):
    df, engines = numeric
    cols = ["x", "y", "big", "i"]
    res = run(engines, Query(op, "d", cols, where="g != 'c'"))
    sel = df[df.g != "c"][cols].astype("float64")
    close(res.value, getattr(sel, op)(), rel=1e-9)


def test_numeric_ddof(numeric):
    df, engines = numeric
    res = run(engines, Query("var", "d", ["x", "i"], params={"ddof": 0}))
    close(res.value, df[["x", "i"]].astype("float64").var(ddof=0))


@pytest.mark.parametrize("op", ["cov", "corr"])
def test_numeric_cov_corr_pairwise_complete(numeric, op):
    df, engines = numeric
    cols = ["x", "y", "big", "i"]
    res = run(engines, Query(op, "d", cols))
    close(res.value, getattr(df[cols].astype("float64"), op)(), rel=1e-9)


def test_numeric_describe_and_quantile(numeric):
    df, engines = numeric
    cols = ["x", "y", "big", "i"]
    res = run(engines, Query("describe", "d", cols, params={"percentiles": [0.05, 0.5, 0.95]}))
    expected = df[cols].astype("float64").describe(percentiles=[0.05, 0.5, 0.95])
    assert list(res.value.index) == list(expected.index)
    close(res.value.loc[["count", "mean", "std"]], expected.loc[["count", "mean", "std"]])
    for label in ("min", "5%", "50%", "95%", "max"):
        for c in cols:
            assert (
                abs(res.value.loc[label, c] - expected.loc[label, c])
                <= res.precision[f"{c}/{label}"]
            ), (label, c)
    res = run(engines, Query("quantile", "d", ["x", "y"], params={"q": 0.3, "precision": 1e-9}))
    exp = df[["x", "y"]].quantile(0.3)
    assert (res.value - exp).abs().max() <= 1e-9
    assert all(p <= 1e-9 for p in res.precision.values())


def test_numeric_group_by_with_nulls(numeric):
    df, engines = numeric
    agg = {"x": ["count", "mean", "std"], "i": ["sum", "var"], "y": ["size"]}
    res = run(engines, Query("group_by", "d", list(agg), params={"by": "g", "agg": agg}))
    expected = df.astype({"i": "float64"}).groupby("g").agg(agg)
    close(res.value, expected)


def test_all_null_and_no_matching_rows(numeric):
    df, engines = numeric
    for op in ("count", "sum", "mean", "var", "skew"):
        res = run(engines, Query(op, "d", "x", where="x is null"))
        close(res.value, float(getattr(df[df.x.isna()].x, op)()))
    res = run(engines, Query("describe", "d", ["x"], where="x > 1e9"))
    close(res.value, df[df.x > 1e9][["x"]].describe())


def test_constant_column_skew_is_nan_like_pandas(tmp_path):
    df = pd.DataFrame({"v": [0.1] * 9 + [np.nan]})
    engines = make_engines([df.iloc[:4], df.iloc[4:]], tmp_path, {"v": "float"})
    for op in ("var", "skew", "kurt", "std"):
        close(run(engines, Query(op, "d", "v")).value, float(getattr(df.v, op)()), abs_=1e-15)


# ---------------------------------------------------------------------------------------------
# Hypothesis: random partitions of random data


_values = st.one_of(
    st.none(),
    st.integers(-1000, 1000).map(float),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(_values, _values), min_size=0, max_size=40),
    cuts=st.lists(st.integers(0, 40), min_size=2, max_size=2),
    op=st.sampled_from(["sum", "mean", "var", "std", "skew", "kurt", "cov", "corr"]),
)
def test_hypothesis_random_partitions_equal_pandas(tmp_path, rows, cuts, op):
    df = pd.DataFrame(rows, columns=["a", "b"], dtype="float64")
    c1, c2 = sorted(min(c, len(df)) for c in cuts)
    parts = [df.iloc[:c1], df.iloc[c1:c2], df.iloc[c2:]]
    engines = make_engines(parts, tmp_path, {"a": "float", "b": "float"}, name=f"h{op}")
    res = run(engines, Query(op, f"h{op}", ["a", "b"]))
    expected = getattr(df, op)()
    # cancellation in pandas' own float arithmetic bounds how close two exact methods agree
    scale = float(np.nanmax(np.abs(df.to_numpy()))) if df.notna().any().any() else 1.0
    close(res.value, expected, rel=1e-6, abs_=1e-9 * max(scale, 1.0) ** 2)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-50, 50)), min_size=1, max_size=60),
    q=st.floats(0, 1),
)
def test_hypothesis_quantile_equals_pandas(tmp_path, values, q):
    df = pd.DataFrame({"v": pd.array(values, dtype="Int64")})
    engines = make_engines([df.iloc[::2], df.iloc[1::2]], tmp_path, {"v": "int"}, name="hq")
    res = run(engines, Query("quantile", "hq", "v", params={"q": q}))
    expected = df.v.astype("float64").quantile(q)
    if math.isnan(expected):
        assert math.isnan(res.value)
    else:
        assert abs(res.value - expected) <= res.precision[f"v/{q:g}"] + 1e-12


def test_declared_bounds_replace_the_octave_round(tmp_path, adult):
    parts = [adult.iloc[:10000], adult.iloc[10000:]]
    engines = []
    for i, part in enumerate(parts):
        path = tmp_path / f"b{i}.csv"
        part.to_csv(path, sep=";", index=False)
        spec = DatasetSpec(
            "adult", path, columns=ADULT_COLUMNS, delimiter=";", bounds={"age": (0, 120)}
        )
        engines.append(Engine({"adult": spec}))
        engines[-1].validate()
    q = Query("describe", "adult", ["age"], where="sex = 'Male'")
    comp = stats.start(q, engines[0].schema("adult"), 0)
    first = comp.next_round()
    assert first is not None and all(t.kind != "octaves" for t in first.terms)
    res = run(engines, q)
    close(res.value, adult[adult.sex == "Male"][["age"]].describe())
    res = run(
        engines,
        Query(
            "group_by",
            "adult",
            ["age"],
            params={"by": "sex", "agg": {"age": ["mean", "std"]}, "values": ["Male", "Female"]},
        ),
    )
    close(res.value, adult.groupby("sex").agg({"age": ["mean", "std"]}))


def test_tiny_and_huge_magnitudes(tmp_path):
    df = pd.DataFrame({"v": [1e-300, 0.0, 2.5e-200, -1e-310, 3.0]})
    engines = make_engines([df.iloc[:2], df.iloc[2:]], tmp_path, {"v": "float"}, name="t")
    for op in ("sum", "mean", "std"):
        close(run(engines, Query(op, "t", "v")).value, float(getattr(df.v, op)()), rel=1e-12)
    res = run(engines, Query("describe", "t", ["v"]))
    close(res.value.loc[["count", "mean", "std"]], df.describe().loc[["count", "mean", "std"]])
    for label in ("min", "25%", "50%", "75%", "max"):
        assert (
            abs(res.value.loc[label, "v"] - df.v.describe()[label]) <= res.precision[f"v/{label}"]
        )
    big = pd.DataFrame({"v": [1.0, 1e40]})
    engines = make_engines([big], tmp_path, {"v": "float"}, name="h")
    with pytest.raises(EncodingOverflow, match=r"column 'v': values of magnitude 2\^128"):
        run(engines, Query("mean", "h", "v"))


def test_precision_beyond_float_resolution_terminates(tmp_path):
    df = pd.DataFrame({"v": [1.0, 1.0 + 2**-52, 2.0, 3.0, 1e-310]})
    engines = make_engines([df], tmp_path, {"v": "float"}, name="p")
    res = run(engines, Query("quantile", "p", "v", params={"q": [0.25, 0.5], "precision": 1e-300}))
    assert res.rounds < 15
    close(res.value, df.v.quantile([0.25, 0.5]), rel=0, abs_=1e-15)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["p", "q", "r", None]), _values, _values), max_size=40),
    split=st.integers(0, 40),
    k=st.sampled_from([0, 1, 3]),
)
def test_hypothesis_group_by_equals_pandas(tmp_path, rows, split, k):
    df = pd.DataFrame(rows, columns=["g", "a", "b"]).astype({"a": "float64", "b": "float64"})
    parts = [df.iloc[:split], df.iloc[split:]]
    engines = make_engines(parts, tmp_path, {"g": "str", "a": "float", "b": "float"}, name="hg")
    agg = {"a": ["size", "count", "sum", "mean"], "b": ["var", "std"]}
    res = run(
        engines,
        Query(
            "group_by",
            "hg",
            ["a", "b"],
            params={"by": "g", "agg": agg, "values": ["r", "q", "p", "s"]},
        ),
        k=k,
    )
    expected = df.groupby("g").agg(agg) if len(df.dropna(subset=["g"])) else None
    got, sup = res.value, res.suppressed
    for g in ["p", "q", "r", "s"]:
        size = int((df.g == g).sum())
        if k == 0 and size == 0:
            assert g not in got.index  # pandas lists observed groups only
            continue
        for c, f in got.columns:
            n = size if f == "size" else int(((df.g == g) & df[c].notna()).sum())
            if size < k or n < k:
                assert sup.loc[g, (c, f)] and math.isnan(got.loc[g, (c, f)])
            else:
                assert not sup.loc[g, (c, f)]
                want = expected.loc[g, (c, f)]
                scale = float(np.nanmax(np.abs(df[c].to_numpy()), initial=1.0))
                close(float(got.loc[g, (c, f)]), float(want), rel=1e-6, abs_=1e-9 * scale**2)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.one_of(st.none(), st.floats(-1e4, 1e4)), min_size=0, max_size=50),
    k=st.integers(0, 6),
)
def test_hypothesis_describe_under_k(tmp_path, values, k):
    df = pd.DataFrame({"v": values}, dtype="float64")
    engines = make_engines(
        [df.iloc[::3], df.iloc[1::3], df.iloc[2::3]], tmp_path, {"v": "float"}, name="hd"
    )
    res = run(engines, Query("describe", "hd", ["v"]), k=k)
    want = df.describe()["v"]
    n = int(df.v.count())
    if n < k:
        assert res.value["v"].isna().all() and res.suppressed["v"].all()
        return
    assert not res.suppressed["v"].any()
    close(
        res.value.loc[["count", "mean", "std"], "v"],
        want[["count", "mean", "std"]],
        rel=1e-9,
        abs_=1e-7,
    )
    for label in ("min", "25%", "50%", "75%", "max"):
        if n == 0:
            assert math.isnan(res.value.loc[label, "v"])
        else:
            assert abs(res.value.loc[label, "v"] - want[label]) <= res.precision[f"v/{label}"]


@pytest.mark.parametrize("grid_bins", [16, 64, 4096])
def test_grid_bins_trade_rounds_for_vector_length(adult_engines, adult, grid_bins):
    res = run(adult_engines, Query("describe", "adult", ["age"], params={"grid_bins": grid_bins}))
    close(res.value, adult[["age"]].describe(), rel=0, abs_=1e-6)
    default = run(adult_engines, Query("describe", "adult", ["age"]))
    assert (res.rounds > default.rounds) == (grid_bins < 1024)
    for key, prec in res.precision.items():
        assert prec <= default.precision[key] * 1.0001


def test_sparse_tails_release_the_run_of_bins_holding_k(tmp_path):
    """A min/max/percentile whose own bin holds fewer than k records is released as the lower
    edge of the narrowest run of bins around it holding k records, not left at the range."""
    rng = np.random.default_rng(5)  # test data only
    df = pd.DataFrame({"v": np.round(rng.lognormal(10.5, 0.6, 6000), 2)})
    engines = make_engines([df.iloc[::3], df.iloc[1::3], df.iloc[2::3]], tmp_path, {"v": "float"})
    res = run(engines, Query("describe", "d", ["v"]), k=10)
    want = df.describe()["v"]
    span = 2.0 ** math.ceil(math.log2(want["max"]))  # the octave range's width at most
    for label in ("min", "25%", "50%", "75%", "max"):
        value, prec = res.value.loc[label, "v"], res.precision[f"v/{label}"]
        assert value <= want[label] + 1e-9 < value + prec + 2e-9, label
        assert prec < span / 4, (label, prec)  # before: the whole range for min and max
    top_k = np.sort(df.v.to_numpy())[-10]  # the run released for max holds >= k records
    assert res.value.loc["max", "v"] <= top_k
