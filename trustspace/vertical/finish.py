"""Finishing vertical statistics from released aggregates (pure: no data, no protocol).

``woe_iv``: weight of evidence and information value of one binned feature from the per-bin
counts of positive and negative labels, by FATE's convention (hetero feature binning,
``iv_calculator``): with ``pos_i, neg_i`` the bin's counts and ``P, N`` their totals over the
bins, ``woe_i = ln((pos_i / P) / (neg_i / N))`` and ``iv_i = (pos_i / P - neg_i / N) * woe_i``;
a bin where either count is 0 uses ``(pos_i + a) / P`` and ``(neg_i + a) / N`` instead, with
the adjustment ``a = smoothing`` (FATE's ``adjustment_factor``, 0.5); the totals are never
adjusted (``max(P, 1)``, ``max(N, 1)`` as FATE). Total IV is the sum over the bins.

``ols_from_moments``: ordinary least squares with an intercept from the means and the sample
covariance matrix of the response and regressors (what a vertical round's moments give):
the same coefficients, standard errors, t statistics, p-values and R^2 as statsmodels' OLS on
the joined rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as _st

from trustspace.errors import DataError

__all__ = ["OLSFit", "ols_from_moments", "woe_iv"]


def _counts(x: npt.ArrayLike, what: str, feature: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"woe_iv of {feature!r}: {what} must be one count per bin")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"woe_iv of {feature!r}: {what} counts must be finite and >= 0")
    return arr


def woe_iv(
    pos: npt.ArrayLike,
    neg: npt.ArrayLike,
    labels: Sequence[str],
    feature: str,
    smoothing: float = 0.5,
) -> tuple[pd.DataFrame, float]:
    """The WOE/IV table of ``feature`` (columns feature, bin, count, pos, neg, woe, iv; one
    row per bin, in order) and its total IV.

    >>> table, iv = woe_iv([10, 0, 30], [40, 20, 30], ["low", "mid", "high"], "spend")
    >>> table[["bin", "count", "woe"]].round(3).values.tolist()
    [['low', 50.0, -0.575], ['mid', 20.0, -2.903], ['high', 60.0, 0.811]]
    >>> round(iv, 4)
    1.0746

    Raises:
        DataError: mismatched lengths, negative or non-finite counts, a bad smoothing.
    """
    p = _counts(pos, "pos", feature)
    n = _counts(neg, "neg", feature)
    if p.shape != n.shape or len(labels) != p.size:
        raise DataError(
            f"woe_iv of {feature!r}: {p.size} pos, {n.size} neg counts and {len(labels)} bin "
            "labels; expected one of each per bin"
        )
    if isinstance(smoothing, bool) or not math.isfinite(smoothing) or smoothing <= 0:
        raise DataError(f"woe_iv of {feature!r}: smoothing must be a number > 0")
    ptot, ntot = max(float(p.sum()), 1.0), max(float(n.sum()), 1.0)
    zero = (p == 0) | (n == 0)
    prate = np.where(zero, p + smoothing, p) / ptot
    nrate = np.where(zero, n + smoothing, n) / ntot
    woe = np.log(prate / nrate)
    iv = (prate - nrate) * woe
    table = pd.DataFrame(
        {
            "feature": feature,
            "bin": list(labels),
            "count": p + n,
            "pos": p,
            "neg": n,
            "woe": woe,
            "iv": iv,
        }
    )
    return table, float(iv.sum())


@dataclass(frozen=True)
class OLSFit:
    """An OLS fit: ``table`` indexed by ``const`` and the regressors, with columns coef,
    std_err, t and p_value; R^2 and adjusted R^2; residual degrees of freedom and variance."""

    table: pd.DataFrame
    r_squared: float
    adj_r_squared: float
    n: int
    df_resid: int
    sigma2: float


def ols_from_moments(
    names: Sequence[str], n: int, means: npt.ArrayLike, cov: npt.ArrayLike
) -> OLSFit:
    """OLS of ``names[0]`` on ``names[1:]`` with an intercept, from ``n`` rows' means and
    sample covariance matrix (``ddof=1``, in ``names`` order), as statsmodels computes it.

    Raises:
        DataError: shapes that do not match ``names``, too few rows, a non-finite input, or
            regressors that are collinear or constant (naming them).
    """
    k = len(names) - 1
    mu = np.asarray(means, dtype=np.float64)
    c = np.asarray(cov, dtype=np.float64)
    if k < 1 or mu.shape != (k + 1,) or c.shape != (k + 1, k + 1):
        raise DataError(
            f"ols: expected a response and at least one regressor, {k + 1} means and a "
            f"{k + 1} x {k + 1} covariance matrix"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n <= k + 1:
        raise DataError(f"ols: {n} rows cannot fit {k + 1} coefficients; need more than {k + 1}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(c))):
        raise DataError("ols: the means and covariances must be finite")
    sxx = c[1:, 1:] * (n - 1)
    sxy = c[1:, 0] * (n - 1)
    syy = float(c[0, 0]) * (n - 1)
    scale = np.sqrt(np.clip(np.diag(sxx), 0.0, None))
    if np.any(scale == 0):
        bad = [names[1 + int(i)] for i in np.flatnonzero(scale == 0)]
        raise DataError(f"ols: regressor(s) {', '.join(bad)} are constant; drop them")
    corr = sxx / np.outer(scale, scale)
    if np.linalg.cond(corr) > 1e12:
        raise DataError(
            f"ols: the regressors {', '.join(names[1:])} are (nearly) collinear; drop one"
        )
    inv = np.linalg.inv(sxx)
    beta = inv @ sxy
    intercept = float(mu[0] - mu[1:] @ beta)
    sse = max(syy - float(beta @ sxy), 0.0)
    dfr = n - k - 1
    sigma2 = sse / dfr
    var_b = sigma2 * np.diag(inv)
    var_0 = sigma2 * (1.0 / n + float(mu[1:] @ inv @ mu[1:]))
    coef = np.concatenate([[intercept], beta])
    se = np.sqrt(np.concatenate([[var_0], var_b]))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    p = 2 * _st.t.sf(np.abs(t), dfr)
    r2 = 1.0 - sse / syy if syy > 0 else float("nan")
    adj = 1.0 - (1.0 - r2) * (n - 1) / dfr
    table = pd.DataFrame(
        {"coef": coef, "std_err": se, "t": t, "p_value": p},
        index=["const", *names[1:]],
    )
    return OLSFit(table, r2, adj, n, dfr, sigma2)
