"""``VerticalView``: joint statistics over nodes holding different columns about the same people.

``fed.intersect(dataset, on=..., nodes=[...])`` returns one. Its columns are named
``node.column``; every statistic is the same state machine as a horizontal one, run over the
view's union schema, with the same disclosure control (``min_group_size`` of the strictest node
of the view; ``epsilon=`` for differential privacy). A figure that combines two nodes' columns
is computed by a secure product (the node holding the denser factor encrypts it under its own
Paillier key; the other multiplies and masks), so each node ends with an additive share and
only the secure-aggregation total is ever seen (docs/security.md, "Vertical statistics").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from trustspace.errors import ConfigError
from trustspace.stats import Query, Result
from trustspace.vertical.view import ViewRef

if TYPE_CHECKING:
    from trustspace.api import Federation
    from trustspace.vertical.finish import OLSFit

__all__ = ["VerticalView"]


def _cols(columns: str | Sequence[str]) -> tuple[str, ...]:
    return (columns,) if isinstance(columns, str) else tuple(columns)


class VerticalView:
    """The aligned intersection of several nodes' rows (see the module docstring).

    Attributes:
        size: the number of people in the intersection.
        nodes: the view's nodes, in protocol order.
        columns: every column of the view, ``node.column`` -> type.
        id: the view's id (the intersect request's id; the nodes keep the view for a while
            and forget it on restart or when their data are reloaded).
    """

    def __init__(self, fed: Federation, ref: ViewRef) -> None:
        self._fed = fed
        self.ref = ref
        self.size = ref.size
        self.nodes = ref.nodes
        self.id = ref.id
        self.dataset = ref.dataset
        self.schema = ref.union_schema()
        self.columns = {c: t.value for c, t in self.schema.columns.items()}

    def __repr__(self) -> str:
        return f"VerticalView({self.id[:12]}, nodes={list(self.nodes)}, size={self.size})"

    # ------------------------------------------------------------------ the generic driver
    def run(
        self, query: Query, *, epsilon: float | None = None, delta: float | None = None
    ) -> Result:
        """Any ``stats.Query`` over this view (its dataset is the view's)."""
        if query.dataset != self.dataset:
            raise ConfigError(f"the view is over dataset {self.dataset!r}, not {query.dataset!r}")
        from trustspace.stats import filter_columns, parse_filter
        from trustspace.vertical.terms import split_filter

        named = list(query.columns)
        if query.where:
            named += filter_columns(parse_filter(query.where))
        for c in named:
            self.ref.owner(c, f"{query.op} over view {self.id[:12]}")
        query.check(self.schema)  # here, before anything is signed: the same checks as the nodes
        split_filter(query.where, self.ref.owners())
        return self._fed.run(query, epsilon=epsilon, delta=delta, view=self.ref)

    def _value(
        self,
        op: str,
        columns: str | Sequence[str],
        where: str | None,
        params: Mapping[str, Any] | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        q = Query(op, self.dataset, _cols(columns), where, dict(params or {}))
        return self.run(q, epsilon=epsilon, delta=delta).value

    # ------------------------------------------------------------------ statistics
    def count(
        self,
        columns: str | Sequence[str] = (),
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        """People of the view passing ``where`` (no columns), or non-null counts."""
        return self._value("count", columns, where, None, epsilon, delta)

    def sum(
        self,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        return self._value("sum", columns, where, None, epsilon, delta)

    def mean(
        self,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        """E.g. ``view.mean("telco.spend", where="bank.age >= 40")``: one node's column over
        the people another node's condition selects."""
        return self._value("mean", columns, where, None, epsilon, delta)

    def var(
        self,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        ddof: int = 1,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        return self._value("var", columns, where, {"ddof": ddof}, epsilon, delta)

    def std(
        self,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        ddof: int = 1,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        return self._value("std", columns, where, {"ddof": ddof}, epsilon, delta)

    def corr(
        self,
        a: str,
        b: str | None = None,
        *more: str,
        where: str | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        """Pearson correlation: ``view.corr("bank.age", "telco.spend")`` is a float; three or
        more columns give the matrix (a DataFrame, pairwise-complete like pandas)."""
        cols = (a,) if b is None else (a, b, *more)
        if len(cols) < 2:
            raise ConfigError("corr: give two or more columns")
        m = self._value("corr", cols, where, None, epsilon, delta)
        if len(cols) == 2 and isinstance(m, pd.DataFrame):
            return float(np.asarray(m, dtype=float)[0, 1])
        return m

    def cov(
        self,
        columns: Sequence[str],
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        return cast("pd.DataFrame", self._value("cov", columns, where, None, epsilon, delta))

    def histogram(
        self,
        column: str,
        bins: int | Sequence[float] = 10,
        range: tuple[float, float] | None = None,
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.Series[float]:
        from trustspace.api import histogram_params

        params = histogram_params(bins, range)
        return cast(
            "pd.Series[float]", self._value("histogram", column, where, params, epsilon, delta)
        )

    def quantile(
        self,
        column: str,
        q: float | Sequence[float] = 0.5,
        where: str | None = None,
        *,
        precision: float | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Any:
        params: dict[str, Any] = {"q": q if isinstance(q, int | float) else list(q)}
        if precision is not None:
            params["precision"] = precision
        return self._value("quantile", column, where, params, epsilon, delta)

    def describe(
        self,
        columns: str | Sequence[str],
        where: str | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        return cast("pd.DataFrame", self._value("describe", columns, where, None, epsilon, delta))

    def crosstab(
        self,
        rows: str,
        cols: str,
        where: str | None = None,
        *,
        margins: bool = False,
        values: Mapping[str, Sequence[Any]] | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> pd.DataFrame:
        """``view.crosstab("bank.salary", "telco.region")``: like ``pd.crosstab`` over the
        joined rows, a column of one node against a column of another; the levels must be
        public (``values=`` or the nodes' declared domains), cells under ``min_group_size``
        are NaN (as ``Federation.crosstab``)."""
        params: dict[str, Any] = {"margins": margins}
        if values is not None:
            params["values"] = {k: list(v) for k, v in values.items()}
        table = cast(
            "pd.DataFrame",
            self._value("crosstab", (rows, cols), where, params, epsilon, delta),
        )
        if epsilon is None and not table.isna().to_numpy().any():
            table = table.astype("int64")
        return table

    def woe_iv(
        self,
        label: str,
        features: Sequence[str],
        bins: int = 10,
        where: str | None = None,
        *,
        edges: Mapping[str, Sequence[float]] | None = None,
        labels: Sequence[Any] | None = None,
        values: Mapping[str, Sequence[Any]] | None = None,
    ) -> pd.DataFrame:
        """Weight of evidence and information value of features against a binary label
        (FATE's hetero feature binning): ``view.woe_iv(label="bank.defaulted",
        features=["telco.spend", "telco.region"], bins=10)``.

        A numeric feature is cut at its ``bins``-quantiles over the view (released with
        their stated precision; or give ``edges={feature: [...]}``), a categorical one has a
        bin per public level. Returns one row per (feature, bin): count, pos, neg, woe, iv;
        ``table.attrs["iv"]`` holds each feature's information value. A bin whose positive or
        negative count is under ``min_group_size`` is NaN and left out of the totals
        (``trustspace.stats._woe``).
        """

        def run(params: dict[str, Any]) -> Result:
            q = Query("woe_iv", self.dataset, _cols(features), where, params)
            return self.run(q)

        return woe_iv(
            self.quantile, run, self.schema, label, features, bins, where, edges, labels, values
        )

    # ------------------------------------------------------------------ models
    def ols(self, y: str, x: Sequence[str], where: str | None = None) -> OLSFit:
        """Vertical linear regression of ``y`` on ``x`` (with an intercept) over the people of
        the view with every variable present: the record count, the means and the covariance
        matrix are three statistics over the view (cross-node products securely computed),
        and the fit is finished from them (``trustspace.vertical.finish.ols_from_moments``):
        ``fit.table`` holds coef, std_err, t and p_value as statsmodels' OLS on the joined
        rows, with ``r_squared``, ``adj_r_squared``, ``n`` and ``df_resid``.

        Raises:
            PolicyError: a figure was suppressed (fewer than ``min_group_size`` people).
        """
        from trustspace.errors import PolicyError
        from trustspace.vertical.finish import ols_from_moments

        names = [y, *x]
        if len(set(names)) != len(names) or not x:
            raise ConfigError("ols: give a response y and distinct regressors x")
        # listwise deletion: the people with every variable present. When no variable has a
        # null (the non-null counts equal the rows: one cheap count, each column at its own
        # node), the filter is left out, so that only truly cross-node figures need products
        rows = float(self.count((), where))
        nonnull = np.asarray(self.count(names, where), dtype=float)
        cond = where
        if not np.all(nonnull == rows):
            present = " and ".join(f"{c} is not null" for c in names)
            cond = present if where is None else f"({where}) and {present}"
        n = float(self.count((), cond)) if cond != where else rows
        means = np.asarray(self.mean(names, cond), dtype=float)
        cov = np.asarray(self.cov(names, cond), dtype=float)
        if not (np.isfinite(n) and np.all(np.isfinite(means)) and np.all(np.isfinite(cov))):
            raise PolicyError(
                "ols: the model's records are fewer than the strictest node's min_group_size "
                "(its figures were suppressed); nothing is fitted"
            )
        return ols_from_moments(names, int(n), means, cov)


def woe_iv(
    quantile: Any,
    run: Any,
    schema: Any,
    label: str,
    features: Sequence[str],
    bins: int,
    where: str | None,
    edges: Mapping[str, Sequence[float]] | None,
    labels: Sequence[Any] | None,
    values: Mapping[str, Sequence[Any]] | None,
) -> pd.DataFrame:
    """``woe_iv`` of a view or a federation: find quantile edges, then one woe_iv query."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1000:
        raise ConfigError(f"woe_iv: bins must be an integer 2..1000, got {bins!r}")
    features = _cols(features)
    given = dict(edges or {})
    cats = dict(values or {})
    cut: dict[str, list[float]] = {}
    for f in features:
        if f in given:
            cut[f] = [float(e) for e in given[f]]
            continue
        typ = schema.column_type(f, "woe_iv features")
        if f in cats or not typ.is_numeric or (typ.value == "int" and f in schema.domains):
            continue
        qs = [i / bins for i in range(1, bins)]
        found = quantile(f, qs, where)
        points = sorted({float(x) for x in np.asarray(found, dtype=float) if np.isfinite(x)})
        if len(points) < 2:
            raise ConfigError(
                f"woe_iv: the quantiles of {f!r} over the view give fewer than 2 distinct "
                "edges (suppressed or a constant column); give edges= for it"
            )
        cut[f] = points
    params: dict[str, Any] = {"label": label, "bins": cut}
    if labels is not None:
        params["labels"] = list(labels)
    if cats:
        params["values"] = {k: list(v) for k, v in cats.items()}
    result = run(params)
    table = cast("pd.DataFrame", result.value)
    table.attrs["iv"] = {
        k.removeprefix("iv/"): v for k, v in result.precision.items() if k.startswith("iv/")
    }
    return table
