"""Finishing vertical statistics from released aggregates (pure: no data, no protocol).

(Weight of evidence and information value are a statistic of their own: ``trustspace.stats._woe``.)

``ols_from_moments``: ordinary least squares with an intercept from the means and the sample
covariance matrix of the response and regressors (what a vertical round's moments give):
the same coefficients, standard errors, t statistics, p-values and R^2 as statsmodels' OLS on
the joined rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as _st

from trustspace.errors import DataError

__all__ = ["OLSFit", "ols_from_moments"]


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
