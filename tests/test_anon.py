"""Tests of trustspace.anon: hierarchies, layout, models, the exact search, Mondrian, apply.

Independent checks: pycanon (k-anonymity, distinct l-diversity, t-closeness of the released
tables), pandas group-bys (brute-force Loss and class counts per lattice node), and ARX's
published optimum figures for Adult (demos/data/adult/SOURCE.md).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycanon import anonymity as pc

from trustspace import _adult
from trustspace.anon import (
    Domain,
    EntropyLDiversity,
    Hierarchy,
    KAnonymity,
    LocalOracle,
    RecursiveCLDiversity,
    Result,
    TCloseness,
    anonymize,
    apply,
    search,
)
from trustspace.anon.domain import group_sum
from trustspace.anon.mondrian import mondrian
from trustspace.errors import ConfigError, DataError

ADULT = _adult.DIR
QI = list(_adult.QUASI_IDENTIFIERS)
# ARX 3.9 Flash optimum (SOURCE.md): (k, suppression) -> (loss, suppressed, classes)
ARX = {
    (2, 0.0): (0.590, 0, 60),
    (5, 0.0): (0.661, 0, 30),
    (50, 0.0): (0.715, 0, 12),
    (2, 0.05): (0.183, 1240, 1334),
    (5, 0.05): (0.292, 1458, 399),
    (10, 0.05): (0.344, 1484, 200),
    (50, 0.05): (0.487, 1306, 45),
}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    return pd.read_csv(ADULT / "adult.csv", sep=";", dtype=str)


@pytest.fixture(scope="module")
def hier() -> dict[str, Hierarchy]:
    return {
        c: Hierarchy.from_csv(ADULT / f"adult_hierarchy_{c}.csv", c) for c in [*QI, "salary-class"]
    }


@pytest.fixture(scope="module")
def adult_oracle(adult: pd.DataFrame, hier: dict[str, Hierarchy]) -> tuple[Domain, LocalOracle]:
    dom = Domain([hier[c] for c in QI])
    return dom, LocalOracle(dom, [adult[c].tolist() for c in QI])


def loss_pandas(
    released: pd.DataFrame, original: pd.DataFrame, hier: dict[str, Hierarchy], qi: list[str]
) -> float:
    """SOURCE.md's Loss, computed independently from the released table (suppressed = 1)."""
    n = len(original)
    total = 0.0
    for c in qi:
        present = set(original[c])
        d = len(present)
        # each released value -> number of present original values it covers
        cov: dict[str, int] = {}
        for row in hier[c].rows:
            if row[0] in present:
                for v in set(row):
                    cov[v] = cov.get(v, 0) + 1
        vals = released[c].map(cov)
        total += float(((vals - 1) / (d - 1)).sum()) if d > 1 else 0.0
        total += (n - len(released)) * 1.0  # suppressed records count 1
    return total / (n * len(qi))


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    """pycanon indexes groups positionally: give it a fresh RangeIndex."""
    return df.reset_index(drop=True)


def classes(df: pd.DataFrame, qi: list[str]) -> pd.Series:
    return df.groupby(qi, sort=False).size()


# ---------------------------------------------------------------- hierarchies
def test_arx_csv_loads_adult_hierarchies(hier: dict[str, Hierarchy]) -> None:
    assert hier["age"].height == 5 and len(hier["age"].values) == 100  # rows 1..100
    assert hier["education"].height == 4
    assert hier["age"].generalize(["39"], 2) == ["30-39"]
    assert hier["sex"].level_values(1) == ("*",)


def test_hierarchy_rejects_duplicates_and_non_nesting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"more than once: 'a'"):
        Hierarchy("col", [("a", "x"), ("a", "y")])
    with pytest.raises(ConfigError, match="must nest"):
        Hierarchy("col", [("a", "x", "p"), ("b", "x", "q")])
    with pytest.raises(ConfigError, match="row 2 has 1 levels"):
        Hierarchy("col", [("a", "x"), ("b",)])
    f = tmp_path / "h.csv"
    f.write_text("a;*\na;*\n")
    with pytest.raises(ConfigError, match=r"h\.csv.*'a'"):
        Hierarchy.from_csv(f)
    with pytest.raises(DataError, match="cannot read hierarchy file"):
        Hierarchy.from_csv(tmp_path / "missing.csv")


def test_coverage_error_names_column_and_values() -> None:
    h = Hierarchy("zip", [("123", "12*", "*")])
    with pytest.raises(DataError, match=r"column 'zip'.*2 value\(s\).*'456', '789'"):
        h.check_covers(["123", "456", "789", "456"])


def test_builders() -> None:
    iv = Hierarchy.intervals("age", [0, 7, 23, 99], widths=(5, 10, 50))
    assert iv.generalize(["23"], 1) == ["20-24"]
    assert iv.generalize(["23"], 3) == ["0-49"]
    assert iv.generalize(["99"], 4) == ["*"]
    with pytest.raises(ConfigError, match="must nest"):
        Hierarchy.intervals("age", [1], widths=(5, 7))
    mk = Hierarchy.masking("zip", ["13053", "13068", "1305"])
    assert mk.generalize(["13053", "1305"], 2) == ["130**", "13**"]
    assert mk.height == 6 and mk.level_values(5) == ("*",)
    dt = Hierarchy.dates("d", ["2021-02-03", "2021-11-30"], levels=("month", "quarter", "year"))
    assert dt.generalize(["2021-11-30"], 2) == ["2021-Q4"]
    with pytest.raises(DataError, match="not an ISO date"):
        Hierarchy.dates("d", ["03/02/2021"])
    gr = Hierarchy.grouping("edu", [{"BSc": "UG", "MSc": "PG"}, {"UG": "Higher", "PG": "Higher"}])
    assert gr.generalize(["MSc"], 2) == ["Higher"]
    with pytest.raises(ConfigError, match="no parent"):
        Hierarchy.grouping("edu", [{"BSc": "UG"}, {"PG": "Higher"}])


# ---------------------------------------------------------------- layout
def test_layout_is_the_documented_mixed_radix_index() -> None:
    a = Hierarchy("a", [("x", "*"), ("y", "*"), ("z", "*")])
    b = Hierarchy("b", [("1", "lo", "*"), ("2", "lo", "*"), ("3", "hi", "*")])
    dom = Domain([a, b], "s", ["p", "q"])
    o = LocalOracle(dom, [["y", "z", "y"], ["3", "1", "3"], ["q", "p", "p"]])
    keys, counts = o.histogram((0, 1))
    # key = (g_a * r_b + g_b) * r_s + s ; at levels (0, 1): r_b = 2 (lo, hi), r_s = 2
    expect: dict[int, int] = {}
    for ga, gb, s in [(1, 1, 1), (2, 0, 0), (1, 1, 0)]:
        k = (ga * 2 + gb) * 2 + s
        expect[k] = expect.get(k, 0) + 1
    assert dict(zip(keys.tolist(), counts.tolist(), strict=True)) == expect
    assert dom.size((0, 1)) == 3 * 2 * 2
    assert all(k < dom.size((0, 1)) for k in keys.tolist())
    assert dom.labels(keys, (0, 1))[0] == ("y", "hi")


# ---------------------------------------------------------------- Adult vs ARX
@pytest.mark.parametrize(("k", "supp"), sorted(ARX))
def test_adult_optimum_not_worse_than_arx(
    k: int,
    supp: float,
    adult: pd.DataFrame,
    hier: dict[str, Hierarchy],
    adult_oracle: tuple[Domain, LocalOracle],
) -> None:
    dom, oracle = adult_oracle
    r = search(oracle, dom, [KAnonymity(k)], suppression_limit=supp, metric="loss")
    arx_loss, arx_supp, arx_classes = ARX[(k, supp)]
    assert r.metrics["loss"] <= arx_loss + 5e-4  # ARX prints 3 decimals
    assert r.suppressed_records <= math.floor(supp * len(adult))
    if supp == 0.0 or k != 5:  # both reach the same optimum (k=5, 5%: ours is lower)
        assert round(r.metrics["loss"], 3) == arx_loss
        assert (r.suppressed_records, r.n_classes) == (arx_supp, arx_classes)
    else:
        assert r.metrics["loss"] < arx_loss - 0.01
    out = apply(adult, r, hier)
    assert len(out) == len(adult) - r.suppressed_records
    assert pc.k_anonymity(_canon(out), QI) >= k  # independent check
    assert classes(out, QI).size == r.n_classes
    assert loss_pandas(out, adult, hier, QI) == pytest.approx(r.metrics["loss"], abs=1e-9)


def test_adult_l_diversity_and_t_closeness_checked_by_pycanon(
    adult: pd.DataFrame, hier: dict[str, Hierarchy]
) -> None:
    rel = anonymize(adult, QI, hier, k=5, l=2, sensitive="salary-class", suppression_limit=0.02)
    assert pc.k_anonymity(_canon(rel.data), QI) >= 5
    assert pc.l_diversity(_canon(rel.data), QI, ["salary-class"]) >= 2
    assert rel.result.suppressed_records <= 0.02 * len(adult)
    rel = anonymize(adult, QI, hier, k=3, t=0.15, sensitive="salary-class", suppression_limit=0.0)
    assert pc.k_anonymity(_canon(rel.data), QI) >= 3
    assert pc.t_closeness(_canon(rel.data), QI, ["salary-class"]) <= 0.15 + 1e-9


def _entropy_ok(df: pd.DataFrame, qi: list[str], sa: str, l: float) -> bool:  # noqa: E741
    for _, g in df.groupby(qi):
        p = g[sa].value_counts(normalize=True).to_numpy()
        if -(p * np.log(p)).sum() < math.log(l) - 1e-9:
            return False
    return True


def _recursive_ok(df: pd.DataFrame, qi: list[str], sa: str, c: float, l: int) -> bool:  # noqa: E741
    for _, g in df.groupby(qi):
        r = sorted(g[sa].value_counts().tolist(), reverse=True)
        if not r[0] < c * sum(r[l - 1 :]):
            return False
    return True


def test_entropy_and_recursive_diversity_with_suppression(
    adult: pd.DataFrame, hier: dict[str, Hierarchy]
) -> None:
    sub = adult.iloc[:4000]
    qi = QI[:5]
    rel = anonymize(
        sub, qi, hier, k=4, l=1.5, diversity="entropy", sensitive="salary-class",
        suppression_limit=0.05,
    )  # fmt: skip
    assert rel.result.suppressed_records <= 200
    assert _entropy_ok(rel.data, qi, "salary-class", 1.5)
    assert pc.k_anonymity(_canon(rel.data), qi) >= 4
    rel = anonymize(
        sub, qi, hier, k=2, l=2, c=3, diversity="recursive", sensitive="salary-class",
        suppression_limit=0.05,
    )  # fmt: skip
    assert _recursive_ok(rel.data, qi, "salary-class", 3, 2)


# ---------------------------------------------------------------- exactness (brute force)
def _brute(
    df: pd.DataFrame,
    hier: dict[str, Hierarchy],
    qi: list[str],
    models: list[object],
    supp: float,
    sensitive: str | None,
) -> float:
    """Min Loss over all lattice nodes, computed with pandas (independent of the search)."""
    n = len(df)
    best = math.inf
    overall = df[sensitive].value_counts(normalize=True) if sensitive else None
    for levels in itertools.product(*(range(hier[c].height) for c in qi)):
        g = df.copy()
        for c, lv in zip(qi, levels, strict=True):
            g[c] = hier[c].generalize(df[c].tolist(), lv)
        bad = pd.Series(False, index=g.index)
        for _key, grp in g.groupby(qi):
            viol = False
            for m in models:
                if isinstance(m, KAnonymity):
                    viol |= len(grp) < m.k
                elif isinstance(m, EntropyLDiversity):
                    p = grp[sensitive].value_counts(normalize=True).to_numpy()
                    viol |= -(p * np.log(p)).sum() < math.log(m.l) - 1e-9
                elif isinstance(m, RecursiveCLDiversity):
                    r = sorted(grp[sensitive].value_counts().tolist(), reverse=True)
                    viol |= not r[0] < m.c * sum(r[m.l - 1 :])
                elif isinstance(m, TCloseness):
                    assert overall is not None
                    p = grp[sensitive].value_counts(normalize=True)
                    p = p.reindex(overall.index, fill_value=0.0)
                    viol |= 0.5 * (p - overall).abs().sum() > m.t + 1e-9
            if viol:
                bad[grp.index] = True
        if bad.sum() > math.floor(supp * n + 1e-9):
            continue
        best = min(best, loss_pandas(g[~bad], df, hier, qi))
    return best


small_tables = st.integers(min_value=12, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 9), min_size=n, max_size=n),
        st.lists(st.sampled_from("abcde"), min_size=n, max_size=n),
        st.lists(st.sampled_from(["x1", "x2", "y1", "y2"]), min_size=n, max_size=n),
        st.lists(st.sampled_from(["s", "t", "u"]), min_size=n, max_size=n),
    )
)

SMALL_HIER = {
    "num": Hierarchy.intervals("num", range(10), widths=(2, 4)),
    "let": Hierarchy.grouping("let", [{"a": "ab", "b": "ab", "c": "cde", "d": "cde", "e": "cde"}]),
    "xy": Hierarchy.masking("xy", ["x1", "x2", "y1", "y2"]),
}


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=small_tables,
    k=st.integers(1, 6),
    supp=st.sampled_from([0.0, 0.1, 0.3]),
    extra=st.sampled_from(["none", "entropy", "recursive", "t"]),
)
def test_search_is_exact_and_output_satisfies_models(
    table: tuple[list[int], list[str], list[str], list[str]], k: int, supp: float, extra: str
) -> None:
    df = pd.DataFrame(
        {"num": [str(v) for v in table[0]], "let": table[1], "xy": table[2], "sa": table[3]}
    )
    qi = ["num", "let", "xy"]
    models: list[object] = [KAnonymity(k)]
    if extra == "entropy":
        models.append(EntropyLDiversity(1.5))
    elif extra == "recursive":
        models.append(RecursiveCLDiversity(2.0, 2))
    elif extra == "t":
        models.append(TCloseness(0.3))
    expected = _brute(df, SMALL_HIER, qi, models, supp, "sa")
    dom = Domain([SMALL_HIER[c] for c in qi], "sa", sorted(set(table[3])))
    oracle = LocalOracle(dom, [df[c].tolist() for c in [*qi, "sa"]])
    if math.isinf(expected):
        with pytest.raises(DataError, match="no generalization satisfies"):
            search(oracle, dom, models, suppression_limit=supp)  # type: ignore[arg-type]
        return
    r = search(oracle, dom, models, suppression_limit=supp)  # type: ignore[arg-type]
    assert r.metrics["loss"] == pytest.approx(expected, abs=1e-12)
    out = apply(df, r, SMALL_HIER)
    assert len(out) == len(df) - r.suppressed_records <= len(df)
    assert r.suppressed_records <= math.floor(supp * len(df) + 1e-9)
    if len(out):
        assert classes(out, qi).min() >= k
        assert classes(out, qi).size == r.n_classes
    kept = df.loc[out.index]
    for c, lv in zip(qi, r.levels, strict=True):  # released = the original's level-lv value
        assert out[c].tolist() == SMALL_HIER[c].generalize(kept[c].tolist(), lv)
    assert loss_pandas(out, df, SMALL_HIER, qi) == pytest.approx(r.metrics["loss"], abs=1e-12)


@pytest.mark.parametrize("metric", ["entropy", "discernibility", "aecs"])
def test_other_metrics_match_exhaustive_evaluation(metric: str) -> None:
    rng = np.random.default_rng(7)  # test data only, not cryptographic
    n = 80
    df = pd.DataFrame(
        {
            "num": rng.integers(0, 10, n).astype(str),
            "let": rng.choice(list("abcde"), n),
            "xy": rng.choice(["x1", "x2", "y1", "y2"], n),
        }
    )
    qi = ["num", "let", "xy"]
    dom = Domain([SMALL_HIER[c] for c in qi])
    oracle = LocalOracle(dom, [df[c].tolist() for c in qi])
    r = search(oracle, dom, [KAnonymity(3)], suppression_limit=0.1, metric=metric)
    values = []
    for levels in itertools.product(*(range(h) for h in dom.heights)):
        g = df.copy()
        for c, lv in zip(qi, levels, strict=True):
            g[c] = SMALL_HIER[c].generalize(df[c].tolist(), lv)
        sizes = g.groupby(qi).size()
        supp = int(sizes[sizes < 3].sum())
        if supp > 8:
            continue
        kept = sizes[sizes >= 3]
        if metric == "discernibility":
            values.append(float((kept**2).sum() + supp * n))
        elif metric == "aecs":
            values.append(float(kept.sum() / kept.size))
        else:
            ent = 0.0
            for c, lv in zip(qi, levels, strict=True):
                h = SMALL_HIER[c]
                gen = pd.Series(h.generalize(df[c].tolist(), lv))
                orig = df[c].reset_index(drop=True)
                keep_rows = ~g.set_index(qi).index.isin(sizes[sizes < 3].index)
                # P(original | generalized) over the whole table; suppressed records: P(original)
                co = orig.map(orig.value_counts())
                cg = gen.map(gen.value_counts()).where(keep_rows, n)
                ent += float(-np.log2(co / cg).sum())
            values.append(ent)
    assert r.metrics[metric] == pytest.approx(min(values), rel=1e-9)


# ---------------------------------------------------------------- federated contract
def test_summed_local_histograms_give_the_same_release(
    adult: pd.DataFrame, hier: dict[str, Hierarchy], adult_oracle: tuple[Domain, LocalOracle]
) -> None:
    """Three partitions, one oracle that adds their histograms (what secure aggregation
    computes): same optimum as on the union; each part applies it alone; union = whole."""
    dom, whole = adult_oracle
    parts = [adult.iloc[i::3] for i in range(3)]
    locals_ = [LocalOracle(dom, [p[c].tolist() for c in QI]) for p in parts]

    class Summed:
        def marginals(self) -> list[np.ndarray]:
            ms = [o.marginals() for o in locals_]
            return [sum(col) for col in zip(*ms, strict=True)]  # type: ignore[misc]

        def sensitive_counts(self) -> None:
            return None

        def histogram(self, levels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
            if dom.size(levels) > 2_000_000:  # sparse sums for the huge low nodes
                hs = [o.histogram(levels) for o in locals_]
                keys = np.concatenate([h[0] for h in hs])
                return group_sum(keys, np.concatenate([h[1] for h in hs]))
            total = sum(o.dense(levels) for o in locals_)  # the secure-aggregation sum
            keys = np.flatnonzero(total)
            return keys, total[keys]

    fed = search(Summed(), dom, [KAnonymity(5)], suppression_limit=0.05)
    loc = search(whole, dom, [KAnonymity(5)], suppression_limit=0.05)
    assert (fed.levels, fed.suppressed_classes, fed.metrics) == (
        loc.levels,
        loc.suppressed_classes,
        loc.metrics,
    )
    sent = Result.from_json(fed.to_json())  # what the driver sends to every node
    union = pd.concat([apply(p, sent, hier) for p in parts]).sort_index()
    whole_out = apply(adult, loc, hier)
    assert pc.k_anonymity(_canon(union), QI) >= 5
    assert sorted(map(tuple, union.to_numpy().tolist())) == sorted(
        map(tuple, whole_out.to_numpy().tolist())
    )


def test_max_domain_skips_large_nodes(adult_oracle: tuple[Domain, LocalOracle]) -> None:
    dom, oracle = adult_oracle
    r = search(oracle, dom, [KAnonymity(5)], suppression_limit=0.05, max_domain=100_000)
    assert r.nodes_skipped > 0
    assert dom.size(r.levels) <= 100_000
    assert r.metrics["loss"] >= 0.2748 - 1e-4  # optimum among fewer nodes cannot be lower


# ---------------------------------------------------------------- Mondrian
def test_mondrian_on_adult_is_k_anonymous_and_beats_full_domain(
    adult: pd.DataFrame, hier: dict[str, Hierarchy]
) -> None:
    rel = anonymize(adult, QI, hier, k=5, method="mondrian")
    assert len(rel.data) == len(adult)
    assert pc.k_anonymity(_canon(rel.data), QI) >= 5
    assert classes(rel.data, QI).size == rel.result.n_classes
    assert loss_pandas(rel.data, adult, hier, QI) == pytest.approx(
        rel.result.metrics["loss"], abs=1e-9
    )
    assert rel.result.metrics["loss"] < 0.1  # ARX local recoding: 0.076; full-domain: 0.27
    # non-QI columns are untouched and rows keep their order
    assert rel.data["salary-class"].tolist() == adult["salary-class"].tolist()


def test_mondrian_with_l_diversity(adult: pd.DataFrame, hier: dict[str, Hierarchy]) -> None:
    sub = adult.iloc[:3000]
    rel = anonymize(sub, QI, hier, k=3, l=2, sensitive="salary-class", method="mondrian")
    assert pc.k_anonymity(_canon(rel.data), QI) >= 3
    assert pc.l_diversity(_canon(rel.data), QI, ["salary-class"]) >= 2


def test_mondrian_refuses_impossible_models(hier: dict[str, Hierarchy]) -> None:
    df = pd.DataFrame({"sex": ["Male", "Female"]})
    dom = Domain([hier["sex"]])
    with pytest.raises(DataError, match="fully generalized table violates"):
        mondrian(LocalOracle(dom, [df["sex"].tolist()]), dom, [KAnonymity(3)])


# ---------------------------------------------------------------- API errors
def test_api_errors_are_clear(adult: pd.DataFrame, hier: dict[str, Hierarchy]) -> None:
    small = adult.iloc[:50]
    with pytest.raises(DataError, match="'nope' is not a column"):
        anonymize(small, ["nope"], {"nope": hier["sex"]})
    with pytest.raises(ConfigError, match="has no hierarchy"):
        anonymize(small, ["age"], {})
    with pytest.raises(ConfigError, match="need sensitive="):
        anonymize(small, QI, hier, l=2)
    with pytest.raises(ConfigError, match="k must be an integer"):
        anonymize(small, QI, hier, k=0)
    with pytest.raises(ConfigError, match="unknown method"):
        anonymize(small, QI, hier, method="greedy")
    with pytest.raises(ConfigError, match="suppressed must be one of"):
        anonymize(small, QI, hier, suppressed="hide")
    with pytest.raises(ConfigError, match="unknown metric"):
        anonymize(small, QI, hier, metric="precision")
    with pytest.raises(DataError, match="no generalization satisfies"):
        anonymize(small, QI, hier, k=51)
    with pytest.raises(DataError, match=r"column 'sex'.*'Robot'"):
        bad = small.copy()
        bad.loc[bad.index[0], "sex"] = "Robot"
        anonymize(bad, QI, hier, k=2)


def test_mask_mode_keeps_rows(adult: pd.DataFrame, hier: dict[str, Hierarchy]) -> None:
    sub = adult.iloc[:2000]
    rel = anonymize(sub, QI, hier, k=5, suppression_limit=0.05, suppressed="mask")
    assert len(rel.data) == len(sub)
    starred = (rel.data[QI] == "*").all(axis=1).sum()
    assert starred >= rel.result.suppressed_records


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    table=small_tables,
    k=st.integers(1, 5),
    l=st.sampled_from([None, 2]),
)
def test_mondrian_releases_ancestors_and_satisfies_models(
    table: tuple[list[int], list[str], list[str], list[str]],
    k: int,
    l: int | None,  # noqa: E741
) -> None:
    df = pd.DataFrame(
        {"num": [str(v) for v in table[0]], "let": table[1], "xy": table[2], "sa": table[3]}
    )
    qi = ["num", "let", "xy"]
    try:
        rel = anonymize(
            df, qi, SMALL_HIER, k=k, l=l, sensitive="sa" if l else None, method="mondrian"
        )
    except DataError:
        # only when even the fully generalized table violates the models
        assert len(df) < k or (l is not None and df["sa"].nunique() < l)
        return
    out = rel.data
    assert len(out) == len(df)
    assert classes(out, qi).min() >= k
    if l is not None:
        assert out.groupby(qi)["sa"].nunique().min() >= l
    for c in qi:  # every released value generalizes the original one
        ancestors = {row[0]: set(row) for row in SMALL_HIER[c].rows}
        assert all(r in ancestors[o] for o, r in zip(df[c], out[c], strict=True))
    assert out["sa"].tolist() == df["sa"].tolist()


def test_quick_rejection_is_a_lower_bound(adult_oracle: tuple[Domain, LocalOracle]) -> None:
    dom, oracle = adult_oracle
    nodes = list(itertools.product(*(range(h) for h in dom.heights)))[::97]
    for k in (2, 5, 50):
        for levels in nodes:
            _, counts = oracle.histogram(levels)
            exact = int(counts[counts < k].sum())
            quick = oracle.undersized(levels, k)
            assert quick <= exact
            if len(counts) < 200:  # few classes in 2^16 buckets: collisions are rare
                assert quick >= exact - 2 * k


def test_ordered_t_closeness_on_a_numeric_attribute(
    adult: pd.DataFrame, hier: dict[str, Hierarchy]
) -> None:
    sub = adult.iloc[:3000]
    qi = ["sex", "race", "marital-status", "education", "workclass"]
    # numeric: ordered distance
    rel = anonymize(sub, qi, hier, k=3, t=0.12, sensitive="age", suppression_limit=0.0)
    assert "ordered" in rel.result.models[1]
    data = rel.data.assign(age=rel.data["age"].astype(int))
    assert pc.k_anonymity(_canon(data), qi) >= 3
    assert pc.t_closeness(_canon(data), qi, ["age"]) <= 0.12 + 1e-9
    # the same table without ordered distance is a different (categorical) model
    eq = anonymize(
        sub, qi, hier, k=3, t=0.12, sensitive="age", ordered=False, suppression_limit=0.0
    )
    assert "equal" in eq.result.models[1]
