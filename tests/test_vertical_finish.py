"""Finishing vertical statistics: WOE/IV by a direct formula on the joined frame (FATE's
convention, zero cells adjusted), OLS from moments against statsmodels on the joined rows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from trustspace.errors import DataError
from trustspace.stats._woe import woe_table
from trustspace.vertical.finish import ols_from_moments


def joined(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    spend = rng.gamma(2.0, 50.0, n)
    p = 1 / (1 + np.exp(-(spend - 100) / 40))
    label = (rng.random(n) < p).astype(int)
    return pd.DataFrame({"bank.defaulted": label, "telco.spend": spend})


def fate_woe(df, feature, label, edges, a=0.5):
    """WOE/IV written out per bin from the joined rows (FATE's iv_calculator)."""
    b = pd.cut(df[feature], edges, right=False, labels=False)
    rows, ptot, ntot = [], df[label].sum(), (1 - df[label]).sum()
    total = 0.0
    for i in range(len(edges) - 1):
        sel = df[b == i]
        pos, neg = int(sel[label].sum()), int((1 - sel[label]).sum())
        if pos == 0 or neg == 0:
            pr, nr = (pos + a) / ptot, (neg + a) / ntot
        else:
            pr, nr = pos / ptot, neg / ntot
        w = math.log(pr / nr)
        rows.append((pos, neg, w, (pr - nr) * w))
        total += (pr - nr) * w
    return rows, total


def test_woe_iv_equals_the_direct_formula_including_empty_cells():
    df = joined()
    edges = [0, 20, 50, 80, 120, 200, 1000, 5000]  # the last bin is empty, others lopsided
    b = pd.cut(df["telco.spend"], edges, right=False, labels=False)
    pos = np.bincount(b[df["bank.defaulted"] == 1], minlength=len(edges) - 1)
    neg = np.bincount(b[df["bank.defaulted"] == 0], minlength=len(edges) - 1)
    labels = [f"[{a}, {c})" for a, c in itertools.pairwise(edges)]
    table, iv = woe_table("telco.spend", labels, pos, neg, 0)  # k = 0: nothing suppressed
    want, total = fate_woe(df, "telco.spend", "bank.defaulted", edges)
    assert (pos == 0).any() or (neg == 0).any()
    np.testing.assert_allclose(table[["pos", "neg", "woe", "iv"]].to_numpy(), want, rtol=1e-12)
    assert iv == pytest.approx(total, rel=1e-12)
    assert table["count"].tolist() == (pos + neg).tolist()
    assert table.index.get_level_values("bin").tolist() == labels
    assert set(table.index.get_level_values("feature")) == {"telco.spend"}


def test_woe_suppresses_small_cells_and_leaves_them_out_of_the_totals():
    pos, neg = np.array([50.0, 3.0, 40.0]), np.array([60.0, 70.0, 2.0])
    table, iv = woe_table("f", ["a", "b", "c"], pos, neg, 10)
    assert table["woe"].isna().tolist() == [False, True, True]
    # the one released bin holds all released positives and negatives: its woe is ln(1) = 0
    assert table["woe"].iloc[0] == 0.0 and iv == 0.0
    assert np.isnan(table["pos"].iloc[1]) and np.isnan(table["neg"].iloc[2])


def test_ols_from_moments_equals_statsmodels():
    rng = np.random.default_rng(1)
    n = 500
    x1, x2 = rng.normal(40, 10, n), rng.normal(0, 1, n) * 3 + 1
    y = 2.0 + 0.3 * x1 - 1.5 * x2 + rng.normal(0, 2, n)
    df = pd.DataFrame({"telco.spend": y, "bank.age": x1, "bank.score": x2})
    names = list(df.columns)
    fit = ols_from_moments(names, n, df.mean().to_numpy(), df.cov().to_numpy())
    ref = sm.OLS(df["telco.spend"], sm.add_constant(df[["bank.age", "bank.score"]])).fit()
    np.testing.assert_allclose(fit.table["coef"], ref.params, rtol=1e-9)
    np.testing.assert_allclose(fit.table["std_err"], ref.bse, rtol=1e-8)
    np.testing.assert_allclose(fit.table["t"], ref.tvalues, rtol=1e-8)
    np.testing.assert_allclose(fit.table["p_value"], ref.pvalues, rtol=1e-6, atol=1e-300)
    assert fit.r_squared == pytest.approx(ref.rsquared, rel=1e-10)
    assert fit.adj_r_squared == pytest.approx(ref.rsquared_adj, rel=1e-10)
    assert fit.df_resid == ref.df_resid and fit.sigma2 == pytest.approx(ref.scale, rel=1e-10)
    assert list(fit.table.index) == ["const", "bank.age", "bank.score"]


def test_ols_refuses_collinear_constant_and_too_few_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=50)
    df = pd.DataFrame({"y": x + rng.normal(size=50), "a": x, "b": 2 * x})
    with pytest.raises(DataError, match="collinear"):
        ols_from_moments(list(df), 50, df.mean().to_numpy(), df.cov().to_numpy())
    df["b"] = 1.0
    with pytest.raises(DataError, match="b are constant"):
        ols_from_moments(list(df), 50, df.mean().to_numpy(), df.cov().to_numpy())
    with pytest.raises(DataError, match="3 rows cannot fit 3"):
        ols_from_moments(list(df), 3, df.mean().to_numpy(), df.cov().to_numpy())
    with pytest.raises(DataError, match="covariance matrix"):
        ols_from_moments(list(df), 50, df.mean().to_numpy(), np.eye(2))
