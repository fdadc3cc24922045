"""A node's local aggregates of a generalised linear model term (``Term`` kind ``glm``), in SQL.

One DuckDB statement per term over the rows that pass the round's filter and have no null in
any column the model uses (statsmodels' ``missing="drop"``). The layers of the statement:
the design columns (numeric columns, indicators ``column = level`` bound as parameters, and
their products), the linear predictor ``eta = X beta + offset``, the family's mean ``mu``
(clipped as statsmodels clips it, so that no logarithm of 0 is taken), the IRLS weight ``W`` and
``W z``; then the sums. The formulas follow statsmodels' ``GLM._fit_irls`` and its families
(``stats._glm`` documents the entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from trustspace.engine._sql import quote_ident
from trustspace.errors import ConfigError
from trustspace.stats import ColumnType, TableSchema, Term

__all__ = ["fill_glm", "glm_sql"]

#: statsmodels' FLOAT_EPS (np.finfo(float).eps): where it clips probabilities and means.
_EPS = float(np.finfo(float).eps)


def _lit(x: float) -> str:
    return f"CAST({float(x)!r} AS DOUBLE)"


def num_sql(col: str, schema: TableSchema, clamp: Sequence[float] = ()) -> str:
    """Column ``col`` as a DOUBLE, clamped to ``clamp = (low, high)`` when given (finite floats,
    which Term checks, written as SQL number literals)."""
    q = quote_ident(col)
    x = q if schema.columns[col] is ColumnType.FLOAT else f"CAST({q} AS DOUBLE)"
    if clamp:
        lo, hi = clamp
        # a clamped null stays null: DuckDB's greatest()/least() skip NULL arguments, so
        # greatest(NULL, lo) would be lo and count a missing value as the low bound
        x = f"CASE WHEN {q} IS NULL THEN NULL ELSE least(greatest({x}, {_lit(lo)}), {_lit(hi)}) END"
    return x


def glm_sql(t: Term, schema: TableSchema, src: str, where: str) -> tuple[str, list[Any], int]:
    """The statement computing glm term ``t`` (its ``?`` parameters before the source's and
    the filter's), and the number of entries it returns."""
    y = t.columns[0]
    for c in t.columns:
        schema.column_type(c, "glm term")
    for c in (y, t.weights, t.offset):
        if c and not schema.columns[c].is_numeric:
            raise ConfigError(f"glm term: column {c!r} is {schema.columns[c].value}, not numeric")
    params: list[Any] = []
    xs: list[str] = []
    # a dp term (DP OLS, stats._dp) clamps every numeric value to its column's public bounds
    clamp: dict[str, tuple[float, float]] = {}
    if t.mode == "dp":
        pairs = zip(t.clamp[::2], t.clamp[1::2], strict=True)
        clamp = dict(zip(t.columns, pairs, strict=True))

    def number(c: str) -> str:
        return num_sql(c, schema, clamp.get(c, ()))

    for col in t.design:
        factors = []
        for c, level in col:
            if level is None:
                if not schema.columns[c].is_numeric:
                    raise ConfigError(f"glm term: column {c!r} is not numeric")
                factors.append(number(c))
            else:
                factors.append(f"CAST({quote_ident(c)} = ? AS DOUBLE)")
                params.append(level)
        xs.append(" * ".join(factors) if factors else _lit(1.0))
    complete = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in t.columns)
    cond = f"WHERE {complete}" + (f" AND ({where[6:]})" if where else "")
    base_cols = [f"{x} AS __x{j}" for j, x in enumerate(xs)]
    base_cols.append(f"{number(y)} AS __y")
    base_cols.append(f"{num_sql(t.weights, schema)} AS __w" if t.weights else f"{_lit(1.0)} AS __w")
    base_cols.append(f"{num_sql(t.offset, schema)} AS __o" if t.offset else f"{_lit(0.0)} AS __o")
    base = f"SELECT {', '.join(base_cols)} FROM {src} AS t {cond}"  # noqa: S608 - quoted, ? values
    p = len(xs)
    eps = _lit(_EPS)
    if t.mode == "counts":
        aggs = ["count(*)"]
        aggs += [f"count_if(__x{j} = 1)" for j in range(p)]
        if t.family == "binomial":
            aggs.append("count_if(__y <> 0 AND __y <> 1)")
        elif t.family == "poisson":
            aggs.append("count_if(__y < 0)")
        else:
            aggs.append("0")
        aggs.append("count_if(__w <= 0)" if t.weights else "0")
        sql = f"SELECT {', '.join(aggs)} FROM ({base})"  # noqa: S608 - generated
        return sql, params, p + 3
    if t.mode == "dp":  # the sufficient statistics of OLS over the clamped values
        aggs = [f"sum(__x{i} * __x{j})" for i in range(p) for j in range(i, p)]
        aggs += [f"sum(__x{j} * __y)" for j in range(p)]
        aggs += ["sum(__y * __y)", "count(*)"]
        sql = f"SELECT {', '.join(aggs)} FROM ({base})"  # noqa: S608 - generated
        return sql, params, p * (p + 1) // 2 + p + 2
    if t.mode == "sums":
        sql = f"SELECT fsum(__y), fsum(__w), fsum(__w * __y) FROM ({base})"  # noqa: S608
        return sql, params, 3
    fam = t.family
    if t.mode == "start":
        # statsmodels' starting_mu: (y + mean(y)) / 2, binomial (y + 0.5) / 2; eta = link(mu)
        mu = f"((__y + {_lit(0.5 if fam == 'binomial' else t.start)}) / 2)"
        if fam == "gaussian":
            eta = mu
        elif fam == "binomial":
            clipped = f"least(greatest({mu}, {eps}), 1 - {eps})"
            eta = f"ln({clipped} / (1 - {clipped}))"
        else:
            eta = f"ln(greatest({mu}, {eps}))"
        layer2 = f"SELECT *, {eta} AS __eta, {mu} AS __mu FROM ({base})"  # noqa: S608
    else:
        terms = []
        for j, b in enumerate(t.beta):  # finite floats (Term checks), exact as repr literals
            terms.append(f"{_lit(b)} * __x{j}")
        eta = " + ".join([*terms, "__o"])
        if fam == "gaussian":
            mu = "__eta"
        elif fam == "binomial":
            mu = "1 / (1 + exp(-__eta))"
        else:
            mu = "exp(__eta)"
        inner = f"SELECT *, {eta} AS __eta FROM ({base})"  # noqa: S608
        layer2 = f"SELECT *, {mu} AS __mu FROM ({inner})"  # noqa: S608
    if fam == "gaussian":
        pclip, weight, var = "__mu", "__w", _lit(1.0)
        dev = "(__y - __mu) * (__y - __mu)"
        llf = "ln(__w)" if t.weights else _lit(0.0)
    elif fam == "binomial":
        pclip = f"least(greatest(__mu, {eps}), 1 - {eps})"
        weight = "__w * __p * (1 - __p)"
        var = "(__p * (1 - __p))"
        dev = (
            f"2 * (__y * ln(greatest(__y / (__mu + 1e-20), {eps})) + (1 - __y) * "
            f"ln(greatest((1 - __y) / (1 - __mu + 1e-20), {eps})))"
        )
        llf = "__w * (__y * ln(__p / (1 - __p)) + ln(1 - __p))"
    else:
        pclip = f"greatest(__mu, {eps})"
        weight = "__w * __mu"
        var = "__p"
        dev = f"2 * (__y * ln(greatest(__y / __p, {eps})) - (__y - __mu))"
        llf = "__w * (__y * ln(__p) - __mu - lgamma(__y + 1))"
    layer3 = f"SELECT *, {pclip} AS __p FROM ({layer2})"  # noqa: S608
    # W z = W (eta - offset) + w (y - mu) (canonical links: W g'(mu) = w); the identity link's
    # is w (y - offset) itself, the same at every beta (so the fit repeats bit for bit once it
    # has converged, as statsmodels' does)
    wz = (
        "__w * (__y - __o)"
        if fam == "gaussian"
        else f"{weight} * (__eta - __o) + __w * (__y - __mu)"
    )
    layer4 = f"SELECT *, {weight} AS __iw, {wz} AS __wz FROM ({layer3})"  # noqa: S608
    # fsum (compensated summation): a sum that does not depend on the order DuckDB's threads
    # add the rows in, so an iteration's totals, and so the convergence test and the number of
    # iterations, repeat from run to run (a plain sum differs in its last bits between runs)
    aggs = [f"fsum(__iw * __x{i} * __x{j})" for i in range(p) for j in range(i, p)]
    aggs += [f"fsum(__wz * __x{j})" for j in range(p)]
    aggs += [
        f"fsum(__w * {dev})",
        f"fsum(__w * (__y - __mu) * (__y - __mu) / {var})",
        f"fsum({llf})",
        "fsum(__w)",
        "fsum(__w * __y)",
    ]
    sql = f"SELECT {', '.join(aggs)} FROM ({layer4})"  # noqa: S608 - generated
    return sql, params, p * (p + 1) // 2 + p + 5


def fill_glm(row: Sequence[Any], out: npt.NDArray[np.float64]) -> None:
    """Write a glm statement's one row into ``out`` (a sum over no rows is NULL: 0)."""
    out[:] = [float(v) if v is not None else 0.0 for v in row]
