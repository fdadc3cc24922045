"""Federated generalised linear models: exact IRLS over all nodes, as statsmodels' GLM on the union.

The plan (``glm_plan``; every round is one scan of each node's rows, summed securely):

- Round 0, *counts*: the model's records (rows passing the filter with no null in any column
  the model uses, as statsmodels' ``missing="drop"``), the records of every level of every
  categorical variable and of every interaction cell that defines a parameter (each must hold
  at least ``min_group_size``: else the query is refused naming the term and level), the
  records whose response is not 0/1 (binomial) or negative (poisson), whose weight is not
  positive; and octave histograms of the numeric columns (public value bounds for the
  fixed-point ranges, as the other statistics find them).
- Round 1, *sums*: the sums of y, of the weights and of weights * y (statsmodels' starting
  mean and the null model's fitted mean).
- Round 2 on, *IRLS*: at the current coefficients beta_k (round 2: statsmodels' starting
  means instead), the upper triangle of X'WX, X'Wz, the deviance, Pearson's chi2, the
  log-likelihood, the sum of the weights and of weights * y. The next coefficients are
  ``solve(X'WX, X'Wz)`` of this round's total, computed here, deterministically, so a node
  replaying the query derives every iteration's beta from the totals it was shown and refuses
  a round with any other beta (a beta chosen to give one record all the weight would isolate
  it). The null model (intercept only) is evaluated in the same rounds. The fit stops as
  statsmodels' does: when the deviance (scaled by the current scale estimate) changes by at
  most ``tol``, or after ``max_iter`` iterations (an error).

Fixed-point precision: every entry's frac_bits come from a public bound on its total (record
count x the octave bounds of the columns x the family's bound on the weights at the current
beta), so the sums are exact to about 2^-61 of the bound, far below the 1e-6 the results are
checked to (tests/test_glm.py).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.errors import ConfigError, DataError, EncodingOverflow
from trustspace.stats._quantile import ValueRange
from trustspace.stats._round import (
    OCTAVE_HALF,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    GLMColumn,
    Round,
    Term,
    Totals,
)
from trustspace.stats._schema import ColumnType, GroupValue, TableSchema

if TYPE_CHECKING:
    from trustspace.stats._machine import Computation, Result

__all__ = ["Design", "GLMResults", "parse_design"]

_LINKS = {"gaussian": "Identity", "binomial": "Logit", "poisson": "Log"}
#: Below this mean IRLS weight per record, a binomial level (or the whole model) is separated:
#: its fitted probabilities are all 0 or 1 and its coefficient diverges.
SEPARATION_WEIGHT = 1e-6
#: Most parameters a model may have (X'WX has p(p+1)/2 entries per round).
MAX_PARAMETERS = 200
_EPS = float(np.finfo(float).eps)
_C = re.compile(r"^C\(\s*`?([^`()]+?)`?\s*\)$")

Vec = npt.NDArray[np.float64]


def _bits(bound: float, what: str) -> int:
    if not math.isfinite(bound):
        raise EncodingOverflow(
            f"{what}: the model's sums are too large for a fixed-point sum; rescale the columns"
        )
    if bound <= 0:
        return 61
    return min(61 - math.frexp(bound)[1], 1100)


@dataclass(frozen=True)
class Design:
    """A formula's model: its response, its design columns (as glm terms compute them), their
    statsmodels names, and formulaic's model spec (``predict`` applies it to new rows)."""

    formula: str
    response: str
    names: tuple[str, ...]
    columns: tuple[GLMColumn, ...]
    #: the formula term each design column belongs to (for error messages)
    terms: tuple[str, ...]
    numeric: tuple[str, ...]
    levels: Mapping[str, tuple[GroupValue, ...]]
    intercept: bool
    weights: str
    offset: str
    spec: Any = field(compare=False, repr=False)

    @property
    def used(self) -> tuple[str, ...]:
        """Every column the model reads (rows with a null in any are dropped)."""
        cols = [self.response, *self.numeric, *self.levels, self.weights, self.offset]
        return tuple(dict.fromkeys(c for c in cols if c))

    @property
    def cells(self) -> tuple[GLMColumn, ...]:
        """The indicator cells whose records govern a parameter: every level of every
        categorical variable, and every interaction cell of a design column."""
        cells: list[GLMColumn] = [((c, lv),) for c, lvs in self.levels.items() for lv in lvs]
        for col in self.columns:
            ind = tuple(f for f in col if f[1] is not None)
            if len(ind) >= 2:
                cells.append(ind)
        return tuple(dict.fromkeys(cells))

    def cell_name(self, cell: GLMColumn) -> str:
        return ":".join(f"{c} = {lv!r}" for c, lv in cell)


def parse_design(formula: str, schema: TableSchema, weights: str = "", offset: str = "") -> Design:
    """Parse an R/patsy-style formula with formulaic against the dataset's public schema.

    Numeric columns, ``C(column)`` (and str/bool columns, which are categorical by
    themselves) with the levels of the column's declared ``domains`` (sorted, the first the
    reference, as patsy's Treatment coding), interactions ``a:b`` and ``a*b``, ``- 1``.

    Raises:
        ConfigError: the formula does not parse, names an unknown column, a categorical
            column without a declared domain, or an expression other than a column or C().
    """
    from formulaic import Formula, model_matrix

    if not isinstance(formula, str) or "~" not in formula:
        raise ConfigError(
            f"formula {formula!r}: expected 'response ~ terms', e.g. 'y ~ age + C(sex)'"
        )
    try:
        parsed = Formula(formula)
        lhs, rhs = parsed.lhs, parsed.rhs
    except Exception as exc:  # formulaic raises its own parser errors
        raise ConfigError(
            f"formula {formula!r} does not parse ({exc}); write it like 'y ~ x1 + C(x2) + x1:x3'"
        ) from None
    lhs_terms = list(lhs)
    if len(lhs_terms) != 1 or len(lhs_terms[0].factors) != 1:
        raise ConfigError(f"formula {formula!r}: the left side must be one response column")
    response = _column(lhs_terms[0].factors[0].expr, schema, formula)
    if not schema.columns[response].is_numeric:
        raise ConfigError(
            f"formula {formula!r}: the response {response!r} is "
            f"{schema.columns[response].value}; it must be numeric (recode it as 0/1 for "
            "binomial)"
        )
    numeric: list[str] = []
    levels: dict[str, tuple[GroupValue, ...]] = {}
    factor_var: dict[str, str] = {}
    for term in rhs:
        for f in term.factors:
            expr = str(f.expr)
            if f.eval_method.value == "literal":
                continue
            m = _C.match(expr) if f.eval_method.value == "python" else None
            if f.eval_method.value == "python" and m is None:
                raise ConfigError(
                    f"formula {formula!r}: term {expr!r} is not supported; use columns, "
                    "C(column) and their interactions (a:b, a*b)"
                )
            col = _column(m.group(1) if m else expr, schema, formula)
            typ = schema.columns[col]
            if m is None and typ.is_numeric:
                numeric.append(col)
                factor_var[expr] = col
                continue
            if typ is ColumnType.DATE or typ is ColumnType.FLOAT:
                raise ConfigError(
                    f"formula {formula!r}: C({col}) needs a str, int or bool column; {col!r} "
                    f"is {typ.value}"
                )
            domain = schema.domains.get(col) if typ is not ColumnType.BOOL else (False, True)
            if not domain:
                raise ConfigError(
                    f"formula {formula!r}: {col!r} is categorical but the dataset declares no "
                    f"domain (its public list of levels) for it; declare one in the dataset spec"
                )
            levels[col] = tuple(sorted(domain, key=lambda v: (str(type(v)), v)))
            factor_var[expr] = col
    for extra in (weights, offset):
        if extra:
            _column(extra, schema, formula)
            if not schema.columns[extra].is_numeric:
                raise ConfigError(f"weights/offset column {extra!r} must be numeric")
    # formulaic's model matrix on a probe frame holding every level: its column names are
    # statsmodels' names, and each column's factors are read off its values
    probe = _probe(numeric, levels, response)
    try:
        mm = model_matrix(rhs, probe)
    except Exception as exc:
        raise ConfigError(f"formula {formula!r}: {exc}") from None
    spec = mm.model_spec
    all_names = [str(c) for c in mm.columns]
    values = np.asarray(mm, dtype=np.float64)
    # patsy's (statsmodels') column order: terms grouped by their numeric factors (groups in
    # order of first appearance, none first), by degree within a group, then as written
    written = [str(t) for t in Formula(formula, _ordering="none").rhs]
    groups: list[frozenset[str]] = [frozenset()]
    keyed = []
    for st in spec.structure:
        facs = [str(f.expr) for f in st.term.factors if f.eval_method.value != "literal"]
        num = frozenset(e for e in facs if factor_var[e] not in levels)
        keyed.append(
            (num, len(facs), written.index(str(st.term)) if str(st.term) in written else 0, st)
        )
    for t in written:
        for num, _, _, st in keyed:
            if str(st.term) == t and num not in groups:
                groups.append(num)
    for num, *_ in keyed:
        if num not in groups:
            groups.append(num)
    keyed.sort(key=lambda x: (groups.index(x[0]), x[1], x[2]))
    columns: list[GLMColumn] = []
    term_of: list[str] = []
    ordered: list[str] = []
    for _, _, _, st in keyed:
        facs = [str(f.expr) for f in st.term.factors if f.eval_method.value != "literal"]
        for name in st.columns:
            v = values[:, all_names.index(str(name))]
            factors: list[tuple[str, GroupValue | None]] = []
            for expr in facs:
                var = factor_var[expr]
                if var in levels:
                    nz = probe[var][v != 0]
                    seen = set(nz.tolist())
                    if len(seen) == 1:
                        factors.append((var, _plain(next(iter(seen)))))
                else:
                    factors.append((var, None))
            columns.append(tuple(factors))
            term_of.append(str(st.term))
            ordered.append(str(name))
    names = tuple(ordered)
    values = values[:, [all_names.index(n) for n in names]]
    mine = np.column_stack([_evaluate(c, probe) for c in columns])
    if mine.shape != values.shape or not np.allclose(mine, values):
        raise ConfigError(
            f"formula {formula!r}: its coding is not one this engine computes; use numeric "
            "columns, C(column) (treatment coding) and their interactions"
        )
    if len(columns) > MAX_PARAMETERS:
        raise ConfigError(
            f"formula {formula!r}: {len(columns)} parameters, more than {MAX_PARAMETERS}"
        )
    return Design(
        formula,
        response,
        names,
        tuple(columns),
        tuple(term_of),
        tuple(dict.fromkeys(numeric)),
        levels,
        "Intercept" in names,
        weights,
        offset,
        spec,
    )


def _plain(v: Any) -> GroupValue:
    if isinstance(v, np.generic):
        return v.item()  # type: ignore[no-any-return]
    return v  # type: ignore[no-any-return]


def _column(name: str, schema: TableSchema, formula: str) -> str:
    name = name.strip().strip("`")
    if name not in schema.columns:
        raise ConfigError(
            f"formula {formula!r}: unknown column {name!r}; the dataset has: "
            f"{', '.join(schema.columns)}"
        )
    return name


def _probe(
    numeric: Sequence[str], levels: Mapping[str, Sequence[GroupValue]], response: str
) -> pd.DataFrame:
    """Rows holding every combination of levels (up to 4096, else random ones), with
    numeric values that are not 0 or 1."""
    rng = np.random.default_rng(0)  # a probe of the coding only; no data, no secrets
    cats = list(levels)
    combos = math.prod(len(v) for v in levels.values()) if cats else 1
    if combos <= 4096:
        rows = list(itertools.product(*(levels[c] for c in cats))) if cats else [()]
    else:
        rows = [
            tuple(lv[int(rng.integers(len(lv)))] for lv in levels.values()) for _ in range(4096)
        ]
    n = len(rows)
    frame: dict[str, Any] = {}
    for i, c in enumerate(cats):
        frame[c] = pd.Categorical([r[i] for r in rows], categories=list(levels[c]))
    for c in numeric:
        frame[c] = rng.uniform(1.5, 2.5, n)
    if response not in frame:
        frame[response] = np.zeros(n)
    return pd.DataFrame(frame)


def _evaluate(col: GLMColumn, frame: pd.DataFrame) -> Vec:
    out = np.ones(len(frame))
    for c, lv in col:
        if lv is None:
            out = out * np.asarray(frame[c], dtype=np.float64)
        else:
            out = out * (np.asarray(frame[c].astype(object)) == lv).astype(np.float64)
    return out


# --------------------------------------------------------------------------- the plan
@dataclass
class _Bounds:
    """Public bounds: the model's records and each column's value range."""

    n: float
    ranges: dict[str, ValueRange]

    @property
    def col(self) -> dict[str, float]:
        return {c: max(r.maxabs, _EPS) for c, r in self.ranges.items()}

    def x(self, column: GLMColumn) -> float:
        return math.prod(self.col[c] for c, lv in column if lv is None)

    def interval(self, column: GLMColumn) -> tuple[float, float]:
        """The range of a design column's values (interval arithmetic)."""
        lo, hi = 1.0, 1.0
        for c, lv in column:
            r = (0.0, 1.0) if lv is not None else (self.ranges[c].lo, self.ranges[c].hi)
            ends = [lo * r[0], lo * r[1], hi * r[0], hi * r[1]]
            lo, hi = min(ends), max(ends)
        return lo, hi

    def linear(self, cols: Sequence[GLMColumn], beta: Vec) -> tuple[float, float]:
        """The range of X beta."""
        lo = hi = 0.0
        for col, b in zip(cols, beta, strict=True):
            a, z = self.interval(col)
            lo += min(a * b, z * b)
            hi += max(a * b, z * b)
        return lo, hi


def _range(scan: Totals, column: str, schema: TableSchema) -> ValueRange:
    """The column's declared bounds, else the range of its octaves: a value counted in octave
    e lies in [2^e, 2^(e+1)) (a relative 1e-9 of slack covers log2's rounding next to a
    power of two). Tighter bounds give finer fixed-point sums: declare them when known."""
    from trustspace.stats._machine import _octave_range

    if column in schema.bounds:
        return ValueRange(*schema.bounds[column])
    wide = _octave_range(scan[Term.octaves(column)], column)  # checks the magnitudes
    keys = np.flatnonzero(scan[Term.octaves(column)] != 0) - OCTAVE_HALF
    if keys.size == 0:
        return wide
    ends = []
    for key in (int(keys[0]), int(keys[-1])):
        if key == 0:
            ends += [0.0, 0.0]
            continue
        e = abs(key) - OCTAVE_OFFSET
        lo = 0.0 if e <= OCTAVE_MIN_EXP else math.ldexp(1.0, e) * (1 - 1e-9)
        hi = math.ldexp(1.0, e + 1) * (1 + 1e-9)
        ends += [lo, hi] if key > 0 else [-hi, -lo]
    return ValueRange(min(ends), max(ends))


class _Fit:
    """One IRLS sequence (the model, or the null model) advanced round by round."""

    def __init__(self, design: tuple[GLMColumn, ...], beta: Vec | None) -> None:
        self.design = design
        self.beta = beta  # None: statsmodels' starting means
        self.prev_crit = math.inf
        self.prev_scale = 1.0
        self.prev_a: Vec | None = None
        self.iteration = 0
        self.done = False
        self.final: dict[str, Any] = {}


def _glm_term(
    fam: str,
    design: Design,
    cols: tuple[GLMColumn, ...],
    beta: Vec | None,
    ybar: float,
    bounds: _Bounds,
) -> Term:
    """The IRLS term at ``beta`` (None: start), with every entry's frac_bits from public
    bounds."""
    n, bc = bounds.n, bounds.col
    by = bc[design.response]
    bw = bc[design.weights] if design.weights else 1.0
    bo = bc[design.offset] if design.offset else 0.0
    bx = [bounds.x(c) for c in cols]
    if beta is None:
        if fam == "gaussian":
            e = by
        elif fam == "binomial":
            e = math.log(3.0)
        else:
            e = 37.0 + abs(math.log(max(by, _EPS)))
        eta_minus_off = e + bo
        m_lo = max(ybar / 2, _EPS) if fam == "poisson" else 0.0
    else:
        xlo, xhi = bounds.linear(cols, beta)
        olo, ohi = (
            (bounds.ranges[design.offset].lo, bounds.ranges[design.offset].hi)
            if design.offset
            else (0.0, 0.0)
        )
        eta_minus_off = max(abs(xlo), abs(xhi))
        e = max(abs(xlo + olo), abs(xhi + ohi))
        if fam == "poisson":  # exp of the range of eta, not of its largest magnitude
            e = xhi + ohi
            m_lo = math.exp(xlo + olo) if xlo + olo > -700 else 0.0
    if fam == "gaussian":
        m, wmax = e, bw
        dev = (by + m) ** 2
        pearson = dev
        llf = 750.0 if design.weights else 0.0
    elif fam == "binomial":
        m, wmax = 1.0, bw / 4
        dev = 2 * 46.1
        pearson = 1.0 / max(min(1 / (1 + math.exp(e)), 0.5), _EPS) + 1.0
        llf = 2 * max(e, 37.0) + 1
    else:
        if beta is None:
            m_lo = max(ybar / 2, _EPS)
        if e > 700:
            raise EncodingOverflow(
                "poisson: the linear predictor may exceed exp's range at these coefficients; "
                "rescale the columns"
            )
        m = math.exp(e) if beta is not None else by
        wmax = bw * m
        # y ln(y / mu) <= y (ln y - ln mu_min), with ln(eps) where statsmodels clips
        logs = abs(math.log(max(by, 1.0))) + abs(math.log(max(m_lo, 1e-300))) + abs(math.log(m))
        dev = 2 * (by * (logs + 37.0) + by + m)
        # (y - mu)^2 / mu = y^2 / mu - 2y + mu <= y^2 / mu_min + mu_max
        pearson = by * by / max(m_lo, _EPS) + m
        llf = by * (abs(e) + min(abs(math.log(max(m_lo, 1e-300))), 700.0)) + m
        llf += by * math.log(by + 2) + 1
    # gaussian: W z = w (y - offset), whatever beta is (the same bits at every iteration)
    wz = bw * (by + bo) if fam == "gaussian" else wmax * eta_minus_off + bw * (by + m)
    p = len(cols)
    bits = [_bits(n * wmax * bx[i] * bx[j], "X'WX") for i in range(p) for j in range(i, p)]
    bits += [_bits(n * bx[j] * wz, "X'Wz") for j in range(p)]
    bits += [
        _bits(n * bw * dev, "deviance"),
        _bits(n * bw * pearson, "Pearson chi2"),
        _bits(n * max(llf, 1.0) * (1.0 if fam == "gaussian" else bw), "log-likelihood"),
        _bits(n * bw, "sum of weights"),
        _bits(n * bw * by, "weighted sum of y"),
    ]
    return Term(
        "glm",
        design.used,
        family=fam,
        design=cols,
        beta=() if beta is None else tuple(float(b) for b in beta),
        weights=design.weights,
        offset=design.offset,
        mode="start" if beta is None else "irls",
        bits=tuple(bits),
        start=float(ybar) if beta is None and fam != "binomial" else 0.0,
    )


@dataclass
class _Entries:
    a: Vec
    b: Vec
    dev: float
    pearson: float
    llf: float
    sw: float
    swy: float


def _read(totals: Totals, term: Term) -> _Entries:
    v = totals[term]
    p = term.glm_p
    a = np.zeros((p, p))
    iu = np.triu_indices(p)
    k = len(iu[0])
    a[iu] = v[:k]
    a = a + np.triu(a, 1).T
    b = v[k : k + p]
    dev, pearson, llf, sw, swy = (float(x) for x in v[k + p : k + p + 5])
    return _Entries(a, np.array(b), dev, pearson, llf, sw, swy)


def _check_rank(a: Vec, design: Design, what: str = "design") -> None:
    d = np.sqrt(np.clip(np.diag(a), 0, None))
    zero = [design.names[i] for i in range(len(d)) if not d[i] > 0]
    if zero:
        raise DataError(
            f"singular {what}: the column(s) {', '.join(map(repr, zero))} hold no variation "
            "in the model's records (all zero); drop them from the formula"
        )
    c = a / np.outer(d, d)
    w, v = np.linalg.eigh(c)
    if w[0] <= 1e-10 * max(w[-1], 1.0):
        vec = np.abs(v[:, 0])
        bad = [design.names[i] for i in np.flatnonzero(vec > 0.1 * vec.max())]
        raise DataError(
            f"singular {what}: the columns {', '.join(map(repr, bad))} are collinear (one is "
            "a linear combination of the others in the model's records); drop one of them "
            "from the formula"
        )


def glm_plan(comp: Computation) -> Generator[Round, Vec, Result]:
    """The rounds of a ``glm`` or ``ols`` query (see the module docstring)."""
    q, schema, k = comp.query, comp.schema, comp.k
    ols = q.op == "ols"
    fam = "gaussian" if ols else str(q.params.get("family", "gaussian"))
    design = query_design(q, schema)
    max_iter = int(q.params.get("max_iter", 100))
    tol = float(q.params.get("tol", 1e-8))
    p = len(design.columns)
    # Round 0: counts and octave bounds
    # the records of each design column's cell (its indicator factors; all records for a
    # column without any), the bad responses and the bad weights
    counts = Term(
        "glm",
        design.used,
        family=fam,
        design=tuple(tuple(f for f in col if f[1] is not None) for col in design.columns),
        weights=design.weights,
        offset=design.offset,
        mode="counts",
    )
    cells = design.cells
    cell_term = Term("glm", design.used, family=fam, design=cells or ((),), mode="counts",
                     weights=design.weights, offset=design.offset)  # fmt: skip
    ranged = [c for c in (design.response, *design.numeric, design.weights, design.offset) if c]
    ranged = list(dict.fromkeys(ranged))
    scan = yield from comp._ask(
        [counts, cell_term, *(Term.octaves(c) for c in ranged if c not in schema.bounds)]
    )
    cv = scan[counts]
    n = float(cv[0])
    comp.model_size = (n, p)
    if n == 0 or not comp._safe(n):
        raise DataError(
            f"{q.op}: the model's records (rows passing the filter with no missing value in "
            f"{', '.join(design.used)}) are fewer than min_group_size {k}; widen the filter"
        )
    if n <= p:
        raise DataError(
            f"{q.op}: {p} parameters for the model's records are too many (at least one more "
            "record than parameters is needed); simplify the formula"
        )
    cc = scan[cell_term]
    for var, lvs in design.levels.items():
        listed = sum(float(cc[1 + cells.index(((var, lv),))]) for lv in lvs)
        if listed != n:
            raise DataError(
                f"{q.op}: column {var!r} holds values outside its declared domain in the "
                "model's records (they would be coded as the reference level); add them to "
                "the dataset's domain or exclude them with where="
            )
    for i, cell in enumerate(cells):
        if not comp._safe(float(cc[1 + i])) or cc[1 + i] == 0:
            raise DataError(
                f"{q.op}: {design.cell_name(cell)} holds fewer than min_group_size ({k}) of "
                "the model's records, so its parameter would describe too few people (refused, "
                "not suppressed); merge the level with another in the data and its declared "
                "domain, drop the term, or widen the filter"
            )
    if cv[p + 1] > 0:
        what = "values other than 0 and 1" if fam == "binomial" else "negative values"
        need = "a 0/1 response" if fam == "binomial" else "counts >= 0"
        raise DataError(
            f"{q.op}: the response {design.response!r} holds {what}; family {fam!r} needs "
            f"{need}; recode the column"
        )
    if cv[p + 2] > 0:
        raise DataError(
            f"{q.op}: the weights column {design.weights!r} holds values <= 0; weights must be "
            "positive"
        )
    bounds = _Bounds(n, {c: _range(scan, c, schema) for c in ranged})
    by = bounds.col[design.response]
    bw = bounds.col[design.weights] if design.weights else 1.0
    if ols:
        return (yield from _ols(comp, design, bounds))
    # Round 1: sums of y (the starting means), of w and w*y (the null model's mean)
    sums = Term(
        "glm",
        design.used,
        family=fam,
        weights=design.weights,
        offset=design.offset,
        mode="sums",
        design=design.columns,
        bits=(_bits(n * by, "sum of y"), _bits(n * bw, "sum of weights"),
              _bits(n * bw * by, "sum of w*y")),
    )  # fmt: skip
    st = yield from comp._ask([sums])
    sy, sw, swy = (float(x) for x in st[sums])
    ybar = sy / n
    mu0 = swy / sw
    link = _link(fam)
    intercept_only: tuple[GLMColumn, ...] = ((),)
    fit = _Fit(design.columns, None)
    null = _Fit(intercept_only, np.array([link(mu0 if not design.offset else ybar)]))
    null_design = Design(design.formula, design.response, ("Intercept",), intercept_only,
                         ("1",), (), {}, True, design.weights, design.offset, None)  # fmt: skip
    df_resid = n - p
    while not fit.done or not null.done:
        terms: list[Term] = []
        if not fit.done:
            terms.append(_glm_term(fam, design, fit.design, fit.beta, ybar, bounds))
        if not null.done:
            terms.append(_glm_term(fam, null_design, null.design, null.beta, ybar, bounds))
        totals = yield from comp._ask(terms)
        if not fit.done:
            _step(fit, _read(totals, terms[0]), fam, design, df_resid, max_iter, tol, cv[1 : p + 1])
        if not null.done:
            e = _read(totals, terms[-1])
            if not design.offset:  # the null fit is the weighted mean itself (statsmodels)
                null.done = True
                null.final = {"dev": e.dev, "llf": e.llf, "pearson": e.pearson}
            else:
                _step(null, e, fam, null_design, n - 1, max_iter, tol, None)
    return _finish(comp, design, fam, fit, null, n)


def _link(fam: str) -> Any:
    if fam == "gaussian":
        return lambda m: float(m)
    if fam == "binomial":
        return lambda m: math.log(min(max(m, _EPS), 1 - _EPS) / (1 - min(max(m, _EPS), 1 - _EPS)))
    return lambda m: math.log(max(m, _EPS))


def _step(
    fit: _Fit,
    e: _Entries,
    fam: str,
    design: Design,
    df_resid: float,
    max_iter: int,
    tol: float,
    col_counts: Vec | None,
) -> None:
    """Take one round's entries: converged (statsmodels' test), or the next beta."""
    # statsmodels scales the deviance it tests by the scale estimated one iteration earlier
    # (at the start: the starting means' own)
    scale = e.pearson / df_resid if fam == "gaussian" else 1.0
    used = scale if fit.iteration == 0 else fit.prev_scale
    crit = e.dev / used if used > 0 else e.dev
    if fit.iteration >= 1 and abs(crit - fit.prev_crit) <= tol:
        fit.done = True
        assert fit.prev_a is not None
        fit.final = {"a": fit.prev_a, "dev": e.dev, "llf": e.llf, "pearson": e.pearson,
                     "converged": True, "sw": e.sw}  # fmt: skip
        if fam == "binomial" and col_counts is not None:
            _check_separation(e, design, col_counts)
        return
    if fit.iteration >= max_iter:
        if fam == "binomial" and col_counts is not None:
            _check_separation(e, design, col_counts)
        raise DataError(
            f"glm: IRLS did not converge in max_iter={max_iter} iterations (deviance still "
            f"changing by more than tol={tol:g}); raise max_iter, loosen tol, rescale the "
            "numeric columns or simplify the formula"
        )
    _check_rank(e.a, design)
    d = np.sqrt(np.diag(e.a))
    beta = np.linalg.solve(e.a / np.outer(d, d), e.b / d) / d
    if not np.all(np.isfinite(beta)):
        raise DataError("glm: the coefficients are not finite; the design is singular")
    fit.beta = beta
    fit.prev_crit, fit.prev_a, fit.prev_scale = crit, e.a, scale
    fit.iteration += 1


def _check_separation(e: _Entries, design: Design, counts: Vec) -> None:
    """Perfect or quasi separation: the mean IRLS weight w*mu*(1-mu) of a level's records (or
    of all records) vanishes, since their fitted probabilities are all 0 or 1."""
    sw = max(e.sw, 1e-300)
    if design.intercept and e.a[0, 0] / sw < SEPARATION_WEIGHT:
        raise DataError(
            "glm: perfect separation: the model predicts every record's response exactly "
            "(fitted probabilities 0 or 1), so the coefficients diverge; remove the term that "
            "separates the outcome"
        )
    for j, col in enumerate(design.columns):
        # X'WX_jj of an indicator column is the sum of the IRLS weights of its records
        indicator = bool(col) and all(lv is not None for _, lv in col)
        if indicator and e.a[j, j] / max(float(counts[j]), 1.0) < SEPARATION_WEIGHT:
            raise DataError(
                f"glm: perfect or quasi separation at {design.names[j]!r} (term "
                f"{design.terms[j]!r}): the fitted probabilities of its records are all 0 "
                "or 1, so its coefficient diverges; merge the level with another (in the "
                "data and its declared domain) or drop the term"
            )


def _finish(comp: Computation, design: Design, fam: str, fit: _Fit, null: _Fit, n: float) -> Result:
    from trustspace.stats._machine import Result

    p = len(design.columns)
    assert fit.beta is not None
    cov = np.linalg.inv(fit.final["a"])
    df_resid = n - p
    pearson = fit.final["pearson"]
    scale = pearson / df_resid if fam == "gaussian" else 1.0
    dev = fit.final["dev"]
    if fam == "gaussian":
        sl = dev / n
        llf = (
            -dev / (2 * sl) - n / 2 * (math.log(sl) + math.log(2 * math.pi)) + fit.final["llf"] / 2
        )
        nd = null.final["dev"]
        sl0 = nd / n
        llnull = -nd / (2 * sl0) - n / 2 * (math.log(sl0) + math.log(2 * math.pi))
        llnull += null.final["llf"] / 2
    else:
        llf, llnull = fit.final["llf"], null.final["llf"]
    figures = {
        "deviance": dev,
        "null_deviance": null.final["dev"],
        "pearson_chi2": pearson,
        "llf": llf,
        "llnull": llnull,
        "scale": scale,
        "nobs": n,
        "df_resid": df_resid,
        "df_model": p - 1,
        "iterations": float(fit.iteration),
        "converged": 1.0,
    }
    return _result(comp, design, fit.beta, cov, figures, Result)


def _result(
    comp: Computation,
    design: Design,
    beta: Vec,
    cov: Vec,
    figures: Mapping[str, float],
    result_cls: Any,
) -> Result:
    names = list(design.names)
    value = pd.DataFrame(np.column_stack([beta, cov]), index=names, columns=["coef", *names])
    suppressed = pd.DataFrame(False, index=names, columns=["coef", *names])
    out: Result = result_cls(
        comp.query.op, value, suppressed, {f"model/{k}": float(v) for k, v in figures.items()},
        comp.rounds,
    )  # fmt: skip
    return out


def _ols(comp: Computation, design: Design, bounds: _Bounds) -> Generator[Round, Vec, Result]:
    """OLS/WLS in one round: X'WX, X'Wy, sum w y^2, sum w, sum w y at beta = 0."""
    from trustspace.stats._machine import Result

    term = _glm_term("gaussian", design, design.columns, np.zeros(len(design.columns)), 0.0, bounds)
    totals = yield from comp._ask([term])
    e = _read(totals, term)
    _check_rank(e.a, design)
    d = np.sqrt(np.diag(e.a))
    beta = np.linalg.solve(e.a / np.outer(d, d), e.b / d) / d
    cov = np.asarray(np.linalg.inv(e.a), dtype=np.float64)
    n = bounds.n
    p = len(design.columns)
    yy = e.dev  # sum w y^2 (at beta = 0 the residual is y)
    ssr = max(yy - 2 * float(beta @ e.b) + float(beta @ e.a @ beta), 0.0)
    centered = max(yy - e.swy**2 / e.sw, 0.0)
    figures = {
        "ssr": ssr,
        "centered_tss": centered,
        "uncentered_tss": yy,
        "sum_log_w": e.llf,
        "nobs": n,
        "df_resid": n - p,
        "df_model": p - 1 if design.intercept else p,
        "scale": ssr / (n - p),
        "iterations": 0.0,
        "converged": 1.0,
    }
    return _result(comp, design, beta, cov, figures, Result)


def query_design(q: Any, schema: TableSchema) -> Design:
    """The design of a glm/ols query, after checking that the query's columns are exactly
    the ones the formula reads (the columns a node's policy checks)."""
    design = parse_design(
        str(q.params.get("formula", "")),
        schema,
        str(q.params.get("weights") or ""),
        str(q.params.get("offset") or ""),
    )
    if set(q.columns) != set(design.used):
        raise ConfigError(
            f"query 'columns': a {q.op} query lists exactly the columns its formula, weights "
            f"and offset read ({', '.join(design.used)}), got {', '.join(q.columns)}"
        )
    return design


# --------------------------------------------------------------------------- results
class GLMResults:
    """The fitted model, laid out as statsmodels' GLMResults / RegressionResults.

    ``params``, ``bse``, ``tvalues``, ``pvalues`` (pandas Series indexed by statsmodels' term
    names), ``conf_int()``, ``cov_params()``, ``deviance``, ``null_deviance``, ``llf``,
    ``aic``, ``bic``, ``nobs``, ``df_resid``, ``df_model``, ``scale``, ``pearson_chi2``,
    ``iterations``, ``converged``, ``summary()`` and ``predict(new_rows)``. OLS results
    (``fed.ols``) add ``rsquared``, ``rsquared_adj``, ``fvalue``, ``f_pvalue`` and ``ssr``,
    and use Student's t (GLM: the normal distribution), as statsmodels does.
    """

    def __init__(self, result: Result, design: Design, family: str, *, ols: bool = False) -> None:
        self.result, self.design, self.family, self.ols = result, design, family, ols
        v = result.value
        names = list(design.names)
        f = {k.removeprefix("model/"): float(x) for k, x in result.precision.items()}
        self._f = f
        self.params: pd.Series[float] = pd.Series(v["coef"].to_numpy(), index=names)
        self.normalized_cov_params = pd.DataFrame(v[names].to_numpy(), index=names, columns=names)
        self.nobs = f["nobs"]
        self.df_resid = f["df_resid"]
        self.df_model = f["df_model"]
        self.scale = f["scale"]
        self.iterations = int(f["iterations"])
        self.converged = bool(f["converged"])
        self.rounds = result.rounds
        #: a DP fit (``fed.ols(..., epsilon=)``): privacy and the noise (``Result.dp``); else None
        self.dp = result.dp
        if ols:
            self.ssr = f["ssr"]
            n = self.nobs
            tss = f["centered_tss"] if design.intercept else f["uncentered_tss"]
            self.centered_tss = f["centered_tss"]
            self.rsquared = 1 - self.ssr / tss
            self.rsquared_adj = 1 - (n - int(design.intercept)) / self.df_resid * (
                1 - self.rsquared
            )
            ess = tss - self.ssr
            self.ess = ess
            self.mse_model = ess / self.df_model
            self.mse_resid = self.ssr / self.df_resid
            self.fvalue = self.mse_model / self.mse_resid
            from scipy import stats

            self.f_pvalue = float(stats.f.sf(self.fvalue, self.df_model, self.df_resid))
            self.llf = (
                -n / 2 * math.log(2 * math.pi) - n / 2 * math.log(self.ssr / n) - n / 2
                + f["sum_log_w"] / 2
            )  # fmt: skip
            k = self.df_model + int(design.intercept)
            self.aic = -2 * self.llf + 2 * k
            self.bic = -2 * self.llf + math.log(n) * k
        else:
            self.deviance = f["deviance"]
            self.null_deviance = f["null_deviance"]
            self.pearson_chi2 = f["pearson_chi2"]
            self.llf = f["llf"]
            self.llnull = f["llnull"]
            self.aic = -2 * self.llf + 2 * (self.df_model + 1)
            self.bic = self.deviance - self.df_resid * math.log(self.nobs)

    def cov_params(self) -> pd.DataFrame:
        return self.normalized_cov_params * self.scale

    @property
    def bse(self) -> pd.Series[float]:
        return pd.Series(np.sqrt(np.diag(self.cov_params())), index=self.params.index)

    @property
    def tvalues(self) -> pd.Series[float]:
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series[float]:
        from scipy import stats

        t = np.abs(self.tvalues.to_numpy())
        pv = 2 * stats.t.sf(t, self.df_resid) if self.ols else 2 * stats.norm.sf(t)
        return pd.Series(pv, index=self.params.index)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        from scipy import stats

        q = stats.t.ppf(1 - alpha / 2, self.df_resid) if self.ols else stats.norm.ppf(1 - alpha / 2)
        lo = self.params - q * self.bse
        hi = self.params + q * self.bse
        return pd.DataFrame({0: lo, 1: hi})

    def predict(self, exog: pd.DataFrame, offset: Any = None, *, linear: bool = False) -> Any:
        """The fitted mean (``linear=True``: the linear predictor) for new rows, with the
        formula's coding (formulaic's model spec) applied to them."""
        mm = self.design.spec.get_model_matrix(exog)
        x = np.asarray(mm[list(self.design.names)], dtype=np.float64)
        eta = x @ self.params.to_numpy()
        if offset is not None:
            eta = eta + np.asarray(offset, dtype=np.float64)
        if linear or self.family == "gaussian":
            mu = eta
        elif self.family == "binomial":
            mu = 1 / (1 + np.exp(-eta))
        else:
            mu = np.exp(eta)
        return pd.Series(mu, index=exog.index[: len(mu)] if len(mu) == len(exog) else None)

    def summary(self, alpha: float = 0.05) -> str:
        """A text table laid out like statsmodels' ``summary()``."""
        width = 78
        title = (
            "OLS Regression Results" if self.ols else "Generalized Linear Model Regression Results"
        )
        if self.ols:
            left = [
                ("Dep. Variable:", self.design.response),
                ("Model:", "WLS" if self.design.weights else "OLS"),
                ("Method:", "Least Squares"),
                ("No. Observations:", f"{self.nobs:.0f}"),
                ("Df Residuals:", f"{self.df_resid:.0f}"),
                ("Df Model:", f"{self.df_model:.0f}"),
                ("Covariance Type:", "nonrobust"),
            ]
            right = [
                ("R-squared:", f"{self.rsquared:.3f}"),
                ("Adj. R-squared:", f"{self.rsquared_adj:.3f}"),
                ("F-statistic:", f"{self.fvalue:.4g}"),
                ("Prob (F-statistic):", f"{self.f_pvalue:.3g}"),
                ("Log-Likelihood:", f"{self.llf:.5g}"),
                ("AIC:", f"{self.aic:.4g}"),
                ("BIC:", f"{self.bic:.4g}"),
            ]
        else:
            cs = 1 - math.exp(2 * (self.llnull - self.llf) / self.nobs)
            left = [
                ("Dep. Variable:", self.design.response),
                ("Model:", "GLM"),
                ("Model Family:", self.family.capitalize()),
                ("Link Function:", _LINKS[self.family]),
                ("Method:", "IRLS"),
                ("No. Iterations:", f"{self.iterations:d}"),
                ("Covariance Type:", "nonrobust"),
            ]
            right = [
                ("No. Observations:", f"{self.nobs:.0f}"),
                ("Df Residuals:", f"{self.df_resid:.0f}"),
                ("Df Model:", f"{self.df_model:.0f}"),
                ("Scale:", f"{self.scale:#8.5g}"),
                ("Log-Likelihood:", f"{self.llf:.5g}"),
                ("Deviance:", f"{self.deviance:#8.5g}"),
                ("Pearson chi2:", f"{self.pearson_chi2:#6.3g}"),
                ("Pseudo R-squ. (CS):", f"{cs:#6.4g}"),
            ]
        lines = [title.center(width), "=" * width]
        rows = max(len(left), len(right))
        left += [("", "")] * (rows - len(left))
        right += [("", "")] * (rows - len(right))
        for (lk, lv), (rk, rv) in zip(left, right, strict=True):
            lines.append(f"{lk:<20}{lv:>18}   {rk:<20}{rv:>17}")
        lines.append("=" * width)
        stat = "t" if self.ols else "z"
        names = list(self.params.index)
        nw = max(16, *(len(s) for s in names))
        ci = self.conf_int(alpha)
        lo_h, hi_h = f"[{alpha / 2:.3f}", f"{1 - alpha / 2:.3f}]"
        lines.append(
            f"{'':<{nw}} {'coef':>10} {'std err':>10} {stat:>10} {'P>|' + stat + '|':>8} "
            f"{lo_h:>10} {hi_h:>10}"
        )
        lines.append("-" * max(width, nw + 65))
        bse, tv, pv = self.bse, self.tvalues, self.pvalues
        for name in names:
            lines.append(
                f"{name:<{nw}} {self.params[name]:>10.4f} {bse[name]:>10.3f} {tv[name]:>10.3f} "
                f"{pv[name]:>8.3f} {ci.loc[name, 0]:>10.3f} {ci.loc[name, 1]:>10.3f}"
            )
        lines.append("=" * max(width, nw + 65))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.design.formula!r} ({self.family})>"
