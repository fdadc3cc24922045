"""Hypothesis tests from released figures: chi-square on a federated contingency table, and
Student's / Welch's t-test from per-group counts, means and variances.

Both are post-processing of a disclosure-checked ``Result`` (``crosstab``, ``ttest``): the
numbers are what ``scipy.stats.chi2_contingency(observed, correction=...)`` and
``scipy.stats.ttest_ind(a, b, equal_var=...)`` give on the union of the data, since they are
computed by scipy from the same sufficient statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from trustspace.errors import DataError, DisclosureError
from trustspace.stats._machine import Result
from trustspace.stats._query import TTEST_AGGS
from trustspace.stats._schema import GroupValue

__all__ = ["Chi2Result", "TTestResult", "chi2_from_table", "ttest_from_groups"]


@dataclass(frozen=True)
class Chi2Result:
    """Pearson's chi-square test of independence (``scipy.stats.chi2_contingency``'s fields).

    Attributes:
        statistic: the test statistic (with Yates' correction if ``correction`` and dof = 1).
        pvalue: its p-value.
        dof: degrees of freedom, ``(rows - 1) * (columns - 1)``.
        expected_freq: the expected counts under independence, laid out as ``observed``.
        observed: the federated contingency table the test was computed on.
    """

    statistic: float
    pvalue: float
    dof: int
    expected_freq: pd.DataFrame
    observed: pd.DataFrame


@dataclass(frozen=True)
class TTestResult:
    """A two-sample t-test (``scipy.stats.ttest_ind``'s statistic, p-value and df).

    Attributes:
        statistic: t, for ``mean(a) - mean(b)``.
        pvalue: the two-sided p-value.
        df: degrees of freedom (Welch-Satterthwaite, or ``n_a + n_b - 2`` pooled).
        mean, count, var: per group (a Series indexed by the two levels, in test order).
        equal_var: True for Student's pooled test, False for Welch's.
    """

    statistic: float
    pvalue: float
    df: float
    mean: pd.Series[float]
    count: pd.Series[float]
    var: pd.Series[float]
    equal_var: bool


def chi2_from_table(result: Result, k: int, correction: bool = True) -> Chi2Result:
    """The chi-square test of a ``crosstab`` Result without margins.

    Raises:
        DisclosureError: a cell is suppressed (the test would be computed on a wrong table).
        DataError: a whole row or column is empty (an expected count is 0).
    """
    from scipy.stats import chi2_contingency  # type: ignore[import-untyped,unused-ignore]

    table: pd.DataFrame = result.value
    mask = np.asarray(result.suppressed, dtype=bool)
    if mask.any():
        n = int(mask.sum())
        raise DisclosureError(
            f"chi2_test({table.index.name!r} x {table.columns.name!r}): {n} of the "
            f"{mask.size} cells hold fewer than min_group_size ({k}) records and are "
            "suppressed; the test would be wrong without them. Coarsen the levels (fewer, "
            "larger categories: list fewer with values=) or restrict the rows with where="
        )
    observed = table.astype(np.int64)
    counts = observed.to_numpy()
    empty = [f"row {v!r}" for v, s in zip(table.index, counts.sum(axis=1), strict=True) if s == 0]
    empty += [
        f"column {v!r}" for v, s in zip(table.columns, counts.sum(axis=0), strict=True) if s == 0
    ]
    if empty:
        raise DataError(
            f"chi2_test: {', '.join(empty)} of the table holds no records (an expected count "
            "would be 0); leave the level out with values="
        )
    res: Any = chi2_contingency(counts, correction=correction)
    expected = pd.DataFrame(res.expected_freq, index=table.index, columns=table.columns)
    return Chi2Result(float(res.statistic), float(res.pvalue), int(res.dof), expected, observed)


def ttest_from_groups(
    result: Result, column: str, levels: Sequence[GroupValue], k: int, equal_var: bool
) -> TTestResult:
    """The t-test of ``levels[0]`` against ``levels[1]`` from a ``ttest`` Result (per-group
    count, mean and var of ``column``, laid out like ``group_by``).

    Raises:
        DisclosureError: a group holds fewer than min_group_size records.
        DataError: a group has fewer than 2 values (no variance).
    """
    from scipy.stats import ttest_ind_from_stats  # type: ignore[import-untyped,unused-ignore]

    table: pd.DataFrame = result.value
    mask: pd.DataFrame = result.suppressed
    by = table.index.name
    for v in levels:
        if v not in table.index:
            raise DataError(f"ttest({column!r} by {by!r}): group {v!r} holds no records")
        if bool(np.asarray(mask.loc[v], dtype=bool).any()):
            raise DisclosureError(
                f"ttest({column!r} by {by!r}): group {v!r} holds fewer than min_group_size "
                f"({k}) records with a value of {column!r}; refused (coarsen the groups or "
                "widen where=)"
            )
    picked = cast("pd.DataFrame", table.loc[list(levels), column]).astype("float64")
    count, mean, var = (cast("pd.Series[float]", picked[name]).rename(name) for name in TTEST_AGGS)
    few = [v for v in levels if count[v] < 2 or not math.isfinite(var[v])]
    if few:
        raise DataError(
            f"ttest({column!r} by {by!r}): group {few[0]!r} has fewer than 2 values of "
            f"{column!r}; a t-test needs a variance in each group"
        )
    (na, nb), (ma, mb), (va, vb) = count.to_numpy(), mean.to_numpy(), var.to_numpy()
    res: Any = ttest_ind_from_stats(
        ma, math.sqrt(va), na, mb, math.sqrt(vb), nb, equal_var=equal_var
    )
    if equal_var:
        df = na + nb - 2
    else:  # Welch-Satterthwaite, as scipy.stats.ttest_ind computes it
        qa, qb = va / na, vb / nb
        df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
    return TTestResult(
        float(res.statistic), float(res.pvalue), float(df), mean, count, var, equal_var
    )
