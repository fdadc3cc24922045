"""A round of a statistics computation: the local aggregates every node computes, their vector
layout, and the exact fixed-point encoding used to sum them by secure aggregation mod 2^64.

Encoding (``Round.encode`` / ``Round.decode``): every term carries ``frac_bits`` f, chosen by the
state machine from a public bound B on the magnitude of the term's *total* (record counts from
an earlier round times a power-of-two bound on the values): f = 61 - ceil(log2 B). A node's
local value v (|v| <= B, since every node's part is bounded by the total's bound) is sent as
round(v * 2^f) in two's complement modulo 2^64. The sum over N nodes is then below
2^61 + N/2 < 2^63 in magnitude, so it never wraps and decodes exactly to
sum_i round(v_i * 2^f) / 2^f. Each node adds at most 2^-(f+1) of rounding error, so the decoded
total is within N * 2^-(f+1) of the float sum: about 2^-61 relative to the declared bound,
finer than float64 whenever the bound is within 2^8 of the value. Record counts use f = 0
(exact integers; at most 2^53 rows per node and MAX_NODES nodes keep them below 2^63).
Invariant: ``decode(sum_i encode(v_i) mod 2^64) == sum_i v_i`` within that precision.

Why not ``trustspace.secagg.FixedPointEncoder``: it has one scale and one clipping bound per
vector (scale_bits 0..52, values clipped). A round mixes exact record counts with sums whose
magnitudes differ by hundreds of binary orders, so every entry needs its own power-of-two
scale (possibly negative), and statistics must never be clipped silently: an entry beyond
its declared range raises EncodingOverflow instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from trustspace.errors import ConfigError, DataError, EncodingOverflow
from trustspace.stats._schema import GroupValue, _check_group_value

__all__ = [
    "GLM_FAMILIES",
    "MAX_NODES",
    "OCTAVE_MAX_EXP",
    "OCTAVE_MIN_EXP",
    "OCTAVE_OFFSET",
    "OCTAVE_SIZE",
    "GLMColumn",
    "Round",
    "Term",
    "TermKind",
    "Totals",
    "octave_key",
]

#: Most nodes whose record counts can be summed without wrapping 2^63 (2^53 rows each).
MAX_NODES = 1024
#: Largest |encoded| a node may send: 2^61 leaves room for MAX_NODES rounding errors below 2^63.
ENCODED_LIMIT = 2.0**61
#: Most rows a node may count exactly (float64 integers; 2^53 * MAX_NODES < 2^63).
COUNT_LIMIT = 2.0**53
#: Octave key of x != 0: sign(x) * (clamp(floor(log2|x|), MIN, MAX + 1) + OCTAVE_OFFSET).
#: Exponents below OCTAVE_MIN_EXP share the lowest slot ("tiny": the range then reaches 0);
#: exponent OCTAVE_MAX_EXP + 1 ("huge", |x| >= 2^128) is refused by the state machine. 515
#: slots per column instead of the 4,200 float64's full exponent range would need.
OCTAVE_MIN_EXP = -128
OCTAVE_MAX_EXP = 127
OCTAVE_OFFSET = 1 - OCTAVE_MIN_EXP
OCTAVE_HALF = OCTAVE_MAX_EXP + 1 + OCTAVE_OFFSET
OCTAVE_SIZE = 2 * OCTAVE_HALF + 1


def octave_key(x: float) -> int:
    """The octave slot offset (from OCTAVE_HALF) of a value, as the engine computes it.

    >>> octave_key(0.0), octave_key(1.0), octave_key(-3.0), octave_key(1e-300), octave_key(1e300)
    (0, 129, -130, 1, 257)
    """
    if x == 0:
        return 0
    e = min(max(math.floor(math.log2(abs(x))), OCTAVE_MIN_EXP), OCTAVE_MAX_EXP + 1)
    return int(math.copysign(e + OCTAVE_OFFSET, x))


TermKind = Literal["moment", "octaves", "grid", "bins", "cells", "marginal", "glm"]
_KINDS = ("moment", "octaves", "grid", "bins", "cells", "marginal", "glm")
#: Most columns a ``marginal`` term crosses.
MAX_MARGINAL_COLUMNS = 3
#: What a ``glm`` term computes (see ``Term`` and ``stats._glm``).
GLM_MODES = ("counts", "sums", "start", "irls", "dp")
GLM_FAMILIES = ("gaussian", "binomial", "poisson")
#: A design column of a glm term: the product of its factors, each ``(column, level)``: the
#: value of a numeric column (level None) or the indicator ``column = level``; () is 1.
GLMColumn = tuple[tuple[str, GroupValue | None], ...]
#: Most entries a round may hold (a guard against absurd queries, e.g. 10^7 histogram bins).
MAX_ROUND_SIZE = 5_000_000
#: Most cells a ``cells`` term (a contingency table) may count.
MAX_CELLS = 10_000


def _finite(x: object, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ConfigError(f"{where}: expected a finite number, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class Term:
    """One local aggregate over the rows that pass the round's filter.

    Kinds and their entries in the round vector:

    - ``moment``: 1 entry, sum over rows where every one of ``columns`` is non-null of
      prod_i (x_i - centers[i]) ** powers[i]. No columns: the number of rows (``count(*)``);
      all powers 0: the number of rows where all the columns are non-null (a record count).
    - ``octaves``: OCTAVE_SIZE record counts of the non-null values of ``columns[0]`` by
      signed binary exponent (slot OCTAVE_HALF holds the zeros): a public range for later bins.
    - ``grid``: nbins + 2 record counts: values below ``start``, then nbins bins
      [start + i*width, start + (i+1)*width), then values >= start + nbins*width.
    - ``bins``: len(edges) + 1 record counts with numpy.histogram's semantics: values below
      edges[0], then bins [e_i, e_i+1) (the last one closed), then values above edges[-1].
    - ``cells``: the record counts of a two-way contingency table, row-major: entry
      ``i * len(levels[1]) + j`` counts the rows whose ``columns[0]`` equals ``levels[0][i]``
      and whose ``columns[1]`` equals ``levels[1][j]`` (bound as ``?`` parameters). Rows with
      another value, or a null, in either column are not counted anywhere.
    - ``marginal``: the record counts of a 1- to 3-way contingency table (row-major, the last
      column fastest): column ``j`` is either categorical, binned by its ``levels[j]`` as a
      ``cells`` term, or numeric, binned by ``cuts[j]`` (edges, numpy.histogram's bins: the
      last closed; ``levels[j]`` then empty). A row with a null, an unlisted level or a value
      outside the edges in any column is not counted (the measurement a synthesizer needs).

    ``frac_bits`` is the fixed-point precision of the moment entries (counts use 0, except in
    differentially private rounds, whose counts carry ``stats._dp.DP_BITS`` so that one record
    moves every term by about the same number of encoded units).
    """

    kind: TermKind
    columns: tuple[str, ...] = ()
    powers: tuple[int, ...] = ()
    centers: tuple[float, ...] = ()
    start: float = 0.0
    width: float = 0.0
    nbins: int = 0
    edges: tuple[float, ...] = ()
    frac_bits: int = 0
    #: ``(low, high)``: the values are clamped to it before they are used (public bounds a
    #: differentially private query gives); empty: used as they are
    clamp: tuple[float, ...] = ()
    #: > 0: a moment is encoded as ``round(v * scale)`` instead of ``round(v * 2^frac_bits)``
    #: (DP rounds: one record then moves every term by the same 2^8 units, see stats._dp)
    scale: float = 0.0
    #: ``cells``: the public levels of each of the two columns, in the table's order
    #: (``marginal``: per column, its levels, or () for a column binned by ``cuts``)
    levels: tuple[tuple[GroupValue, ...], ...] = ()
    #: ``marginal``: per column, the bin edges of a numeric column, or () for a categorical one
    cuts: tuple[tuple[float, ...], ...] = ()
    #: glm terms (``stats._glm``): the family, the design columns (``mode`` counts: the cells
    #: to count), the coefficients the linear predictor uses (``mode`` irls), the weights and
    #: offset columns ("" for none), what the term computes, and each entry's frac_bits
    #: (mode ``dp``, DP OLS: X'X, X'y, y'y and n with every column clamped to its pair of
    #: ``clamp``, one ``[low, high]`` per column; see stats._dp)
    family: str = ""
    design: tuple[GLMColumn, ...] = ()
    beta: tuple[float, ...] = ()
    weights: str = ""
    offset: str = ""
    mode: str = ""
    bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"term 'kind': {self.kind!r} is not one of {', '.join(_KINDS)}")
        if self.kind == "glm":
            self._check_glm()
            return
        if self.family or self.design or self.beta or self.mode or self.bits:
            raise ConfigError("term: only a glm term has family, design, beta, mode or bits")
        if self.scale:
            sc = _finite(self.scale, "term 'scale'")
            if sc <= 0 or self.kind != "moment" or self.is_count or self.frac_bits:
                raise ConfigError(
                    "term 'scale': a positive scale, on a moment of values with frac_bits 0"
                )
        if self.clamp:
            if len(self.clamp) != 2:
                raise ConfigError("term 'clamp': expected [low, high]")
            lo, hi = (_finite(v, "term 'clamp'") for v in self.clamp)
            if not lo < hi:
                raise ConfigError("term 'clamp': low must be below high")
            if self.kind not in ("moment", "bins") or (self.kind == "moment" and self.is_count):
                raise ConfigError("term 'clamp': only a moment of values or bins clamp values")
            object.__setattr__(self, "clamp", (lo, hi))
        for c in self.columns:
            if not isinstance(c, str) or not c:
                raise ConfigError(f"term 'columns': {c!r} is not a column name")
        if not isinstance(self.frac_bits, int) or not -1100 <= self.frac_bits <= 1100:
            raise ConfigError(f"term 'frac_bits': {self.frac_bits!r} out of range")
        if self.kind == "moment":
            n = len(self.columns)
            if len(self.powers) != n or len(self.centers) != n:
                raise ConfigError("term: 'columns', 'powers' and 'centers' must have equal lengths")
            for p in self.powers:
                if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 4:
                    raise ConfigError(f"term 'powers': {p!r} is not an integer 0..4")
            for center in self.centers:
                _finite(center, "term 'centers'")
            return
        if self.levels and self.kind not in ("cells", "marginal"):
            raise ConfigError("term 'levels': only a cells or marginal term lists levels")
        if self.cuts and self.kind != "marginal":
            raise ConfigError("term 'cuts': only a marginal term has cuts")
        if self.kind == "cells":
            self._check_cells()
            return
        if self.kind == "marginal":
            self._check_marginal()
            return
        if len(self.columns) != 1:
            raise ConfigError(f"term: a {self.kind} term reads exactly one column")
        if self.kind == "grid":
            _finite(self.start, "term 'start'")
            w = _finite(self.width, "term 'width'")
            if w <= 0:
                raise ConfigError("term 'width': must be > 0")
            if isinstance(self.nbins, bool) or not isinstance(self.nbins, int):
                raise ConfigError("term 'nbins': expected an integer")
            if not 1 <= self.nbins <= MAX_ROUND_SIZE:
                raise ConfigError(f"term 'nbins': {self.nbins} not in 1..{MAX_ROUND_SIZE}")
        elif self.kind == "bins":
            if len(self.edges) < 2:
                raise ConfigError("term 'edges': need at least two edges")
            e = [_finite(x, "term 'edges'") for x in self.edges]
            if any(b <= a for a, b in itertools.pairwise(e)):
                raise ConfigError("term 'edges': must be strictly increasing")

    def _check_cells(self) -> None:
        if len(self.columns) != 2 or self.columns[0] == self.columns[1]:
            raise ConfigError("term: a cells term reads exactly two distinct columns")
        if len(self.levels) != 2:
            raise ConfigError("term 'levels': a cells term lists the levels of both columns")
        levels = []
        for col, values in zip(self.columns, self.levels, strict=True):
            if not isinstance(values, tuple | list) or not values:
                raise ConfigError(f"term 'levels' of {col!r}: expected a non-empty list")
            vals = tuple(
                _check_group_value(v, f"term 'levels' of {col!r} [{i}]")
                for i, v in enumerate(values)
            )
            # True == 1 in Python: compare with the type, so [1, True] are two levels
            if len({(type(v), v) for v in vals}) != len(vals):
                raise ConfigError(f"term 'levels' of {col!r}: levels must be distinct")
            levels.append(vals)
        object.__setattr__(self, "levels", tuple(levels))
        cells = len(levels[0]) * len(levels[1])
        if cells > MAX_CELLS:
            raise ConfigError(
                f"term: a table of {len(levels[0])} x {len(levels[1])} = {cells} cells exceeds "
                f"the limit of {MAX_CELLS}; coarsen the levels or list fewer (values=)"
            )

    def _check_marginal(self) -> None:
        cols = self.columns
        if not 1 <= len(cols) <= MAX_MARGINAL_COLUMNS or len(set(cols)) != len(cols):
            raise ConfigError(
                f"term: a marginal term crosses 1..{MAX_MARGINAL_COLUMNS} distinct columns"
            )
        if len(self.levels) != len(cols) or len(self.cuts) != len(cols):
            raise ConfigError("term: a marginal term gives levels and cuts for each column")
        levels, cuts = [], []
        for col, values, edges in zip(cols, self.levels, self.cuts, strict=True):
            if not isinstance(values, tuple | list) or not isinstance(edges, tuple | list):
                raise ConfigError(f"term 'levels'/'cuts' of {col!r}: expected lists")
            if bool(values) == bool(edges):
                raise ConfigError(
                    f"term marginal column {col!r}: give either its levels or its cuts"
                )
            vals = tuple(
                _check_group_value(v, f"term 'levels' of {col!r} [{i}]")
                for i, v in enumerate(values)
            )
            if len({(type(v), v) for v in vals}) != len(vals):
                raise ConfigError(f"term 'levels' of {col!r}: levels must be distinct")
            e = tuple(_finite(x, f"term 'cuts' of {col!r}") for x in edges)
            if edges and (len(e) < 2 or any(b <= a for a, b in itertools.pairwise(e))):
                raise ConfigError(f"term 'cuts' of {col!r}: need 2+ strictly increasing edges")
            levels.append(vals)
            cuts.append(e)
        object.__setattr__(self, "levels", tuple(levels))
        object.__setattr__(self, "cuts", tuple(cuts))
        size = self.size
        if size > MAX_CELLS:
            shape = " x ".join(str(n) for n in self.shape)
            raise ConfigError(
                f"term: a marginal of {', '.join(cols)} would have {shape} = {size} cells, more "
                f"than the limit of {MAX_CELLS}; use fewer bins or levels, or fewer columns"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """A marginal term's table shape (cells per column)."""
        return tuple(
            len(lv) if lv else len(cu) - 1 for lv, cu in zip(self.levels, self.cuts, strict=True)
        )

    def _check_glm(self) -> None:
        if self.mode not in GLM_MODES:
            raise ConfigError(f"term 'mode': {self.mode!r} is not one of {', '.join(GLM_MODES)}")
        if self.family not in GLM_FAMILIES:
            raise ConfigError(
                f"term 'family': {self.family!r} is not one of {', '.join(GLM_FAMILIES)}"
            )
        if not self.columns:
            raise ConfigError("term 'columns': a glm term reads its response column first")
        for c in self.columns:
            if not isinstance(c, str) or not c:
                raise ConfigError(f"term 'columns': {c!r} is not a column name")
        design = []
        for col in self.design:
            if not isinstance(col, list | tuple):
                raise ConfigError("term 'design': expected a list of columns (lists of factors)")
            factors = []
            for f in col:
                if not isinstance(f, list | tuple) or len(f) != 2 or f[0] not in self.columns:
                    raise ConfigError(
                        f"term 'design': factor {f!r} is not [column, level] of a term column"
                    )
                lvl = None if f[1] is None else _check_group_value(f[1], "term 'design' level")
                factors.append((str(f[0]), lvl))
            design.append(tuple(factors))
        object.__setattr__(self, "design", tuple(design))
        if not self.design and self.mode != "sums":
            raise ConfigError("term 'design': a glm term needs at least one design column")
        object.__setattr__(self, "beta", tuple(_finite(b, "term 'beta'") for b in self.beta))
        if self.mode == "irls" and len(self.beta) != len(self.design):
            raise ConfigError("term 'beta': one coefficient per design column")
        if self.mode != "irls" and self.beta:
            raise ConfigError("term 'beta': only an irls glm term has coefficients")
        for name in (self.weights, self.offset):
            if name and name not in self.columns:
                raise ConfigError(f"term: weights/offset column {name!r} is not a term column")
        _finite(self.start, "term 'start'")
        if self.mode == "counts":
            if self.bits:
                raise ConfigError("term 'bits': a glm counts term is exact (no bits)")
        elif len(self.bits) != self.size:
            raise ConfigError(f"term 'bits': expected {self.size} entries")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or not -1100 <= b <= 1100:
                raise ConfigError(f"term 'bits': {b!r} out of range")
        if self.mode == "dp":
            # differentially private OLS: every column clamped to its (low, high), 2 per column
            if self.family != "gaussian" or self.weights or self.offset:
                raise ConfigError("term: a glm dp term is gaussian, without weights or offset")
            if len(self.clamp) != 2 * len(self.columns):
                raise ConfigError("term 'clamp': a glm dp term gives [low, high] per column")
            cl = tuple(_finite(v, "term 'clamp'") for v in self.clamp)
            if any(not lo < hi for lo, hi in zip(cl[::2], cl[1::2], strict=True)):
                raise ConfigError("term 'clamp': low must be below high")
            object.__setattr__(self, "clamp", cl)
        elif self.clamp:
            raise ConfigError("term 'clamp': only a glm dp term clamps its columns")
        if self.scale or self.frac_bits or self.powers or self.edges:
            raise ConfigError("term: a glm term takes no scale, frac_bits, powers, edges")

    @property
    def glm_p(self) -> int:
        """The number of design columns of a glm term."""
        return len(self.design)

    # --- constructors -------------------------------------------------------------------
    @classmethod
    def cells(
        cls,
        rows: str,
        cols: str,
        row_levels: Sequence[GroupValue],
        col_levels: Sequence[GroupValue],
    ) -> Term:
        """Counts of the rows in each cell of the two-way table of ``rows`` x ``cols``."""
        return cls("cells", (rows, cols), levels=(tuple(row_levels), tuple(col_levels)))

    @classmethod
    def marginal(
        cls,
        columns: Sequence[str],
        levels: Sequence[Sequence[GroupValue]],
        cuts: Sequence[Sequence[float]],
    ) -> Term:
        """Counts of a 1- to 3-way table: per column its levels, or its bin edges (``cuts``)."""
        return cls(
            "marginal",
            tuple(columns),
            levels=tuple(tuple(v) for v in levels),
            cuts=tuple(tuple(float(e) for e in c) for c in cuts),
        )

    @classmethod
    def rows(cls) -> Term:
        """The number of rows that pass the filter."""
        return cls("moment")

    @classmethod
    def count(cls, *columns: str) -> Term:
        """The number of rows where all ``columns`` are non-null."""
        return cls("moment", tuple(columns), (0,) * len(columns), (0.0,) * len(columns))

    @classmethod
    def moment(
        cls,
        columns: Sequence[str],
        powers: Sequence[int],
        centers: Sequence[float],
        frac_bits: int,
    ) -> Term:
        """Sum of prod (x_i - c_i)^p_i over rows where all ``columns`` are non-null."""
        return cls(
            "moment",
            tuple(columns),
            tuple(powers),
            tuple(float(c) for c in centers),
            frac_bits=frac_bits,
        )

    @classmethod
    def octaves(cls, column: str) -> Term:
        """Counts of the values of ``column`` by signed binary exponent."""
        return cls("octaves", (column,))

    @classmethod
    def grid(cls, column: str, start: float, width: float, nbins: int) -> Term:
        """Counts over equal-width bins with under- and overflow."""
        return cls("grid", (column,), start=float(start), width=float(width), nbins=nbins)

    @classmethod
    def bins(cls, column: str, edges: Sequence[float]) -> Term:
        """Counts over explicit edges (numpy.histogram semantics) with under- and overflow."""
        return cls("bins", (column,), edges=tuple(float(e) for e in edges))

    # --- layout ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of vector entries this term fills."""
        if self.kind == "moment":
            return 1
        if self.kind == "octaves":
            return OCTAVE_SIZE
        if self.kind == "grid":
            return self.nbins + 2
        if self.kind == "cells":
            return len(self.levels[0]) * len(self.levels[1])
        if self.kind == "marginal":
            return math.prod(self.shape)
        if self.kind == "glm":
            p = len(self.design)
            if self.mode == "counts":
                return p + 3
            if self.mode == "sums":
                return 3
            if self.mode == "dp":  # X'X (upper triangle), X'y, y'y, n (stats._dp)
                return p * (p + 1) // 2 + p + 2
            return p * (p + 1) // 2 + p + 5
        return len(self.edges) + 1

    @property
    def is_count(self) -> bool:
        """True if every entry is a record count (governs disclosure, encoded exactly)."""
        if self.kind == "glm":
            return self.mode == "counts"
        return self.kind != "moment" or all(p == 0 for p in self.powers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict holding only the fields this kind uses."""
        d: dict[str, Any] = {"kind": self.kind, "columns": list(self.columns)}
        if self.kind == "glm":
            d.update(
                family=self.family,
                design=[[list(f) for f in col] for col in self.design],
                beta=list(self.beta),
                weights=self.weights,
                offset=self.offset,
                mode=self.mode,
                bits=list(self.bits),
                start=self.start,
            )
            if self.clamp:
                d["clamp"] = list(self.clamp)
            return d
        if self.kind == "moment":
            d.update(powers=list(self.powers), centers=list(self.centers), frac_bits=self.frac_bits)
        elif self.kind == "grid":
            d.update(start=self.start, width=self.width, nbins=self.nbins)
        elif self.kind == "bins":
            d.update(edges=list(self.edges))
        elif self.kind == "cells":
            d.update(levels=[list(v) for v in self.levels])
        elif self.kind == "marginal":
            d.update(levels=[list(v) for v in self.levels], cuts=[list(c) for c in self.cuts])
        if self.kind != "moment" and self.frac_bits:
            d["frac_bits"] = self.frac_bits  # DP rounds scale their counts (stats._dp)
        if self.clamp:
            d["clamp"] = list(self.clamp)
        if self.scale:
            d["scale"] = self.scale
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Term:
        """Rebuild a term; ConfigError naming an unknown, missing or bad key."""
        if not isinstance(data, Mapping):
            raise ConfigError("term: expected a dict")
        kind = data.get("kind")
        if kind not in _KINDS:
            raise ConfigError(f"term 'kind': {kind!r} is not one of {', '.join(_KINDS)}")
        allowed = {
            "moment": {"kind", "columns", "powers", "centers", "frac_bits"},
            "octaves": {"kind", "columns"},
            "grid": {"kind", "columns", "start", "width", "nbins"},
            "bins": {"kind", "columns", "edges"},
            "cells": {"kind", "columns", "levels"},
            "marginal": {"kind", "columns", "levels", "cuts"},
            "glm": {"kind", "columns", "family", "design", "beta", "weights", "offset", "mode"}
            | {"bits", "start"},
        }[kind]
        optional = (
            {"clamp"}
            if kind == "glm"
            else ({"frac_bits"} if kind != "moment" else {"scale"}) | {"clamp"}
        )
        extra = set(data) - allowed - optional
        if extra:
            raise ConfigError(f"term: unknown key(s) {sorted(extra)} for kind {kind!r}")
        missing = allowed - set(data)
        if missing:
            raise ConfigError(f"term: missing key(s) {sorted(missing)} for kind {kind!r}")
        kw: dict[str, Any] = {}
        for key in ("columns", "powers", "centers", "edges", "clamp", "design", "beta", "bits"):
            if key in data:
                if not isinstance(data[key], list | tuple):
                    raise ConfigError(f"term {key!r}: expected a list")
                kw[key] = tuple(data[key])
        if "cuts" in data:
            cu = data["cuts"]
            if not isinstance(cu, list | tuple) or not all(isinstance(v, list | tuple) for v in cu):
                raise ConfigError("term 'cuts': expected a list of lists of edges")
            kw["cuts"] = tuple(tuple(v) for v in cu)
        if "levels" in data:
            lv = data["levels"]
            if not isinstance(lv, list | tuple) or not all(isinstance(v, list | tuple) for v in lv):
                raise ConfigError("term 'levels': expected a list of two lists of levels")
            kw["levels"] = tuple(tuple(v) for v in lv)
        for key in ("start", "width", "scale"):
            if key in data:
                kw[key] = _finite(data[key], f"term {key!r}")
        for key in ("family", "weights", "offset", "mode"):
            if key in data:
                if not isinstance(data[key], str):
                    raise ConfigError(f"term {key!r}: expected a string")
                kw[key] = data[key]
        if kind == "glm":
            kw["bits"] = tuple(kw.get("bits", ()))
        for key in ("nbins", "frac_bits"):
            if key in data:
                v = data[key]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"term {key!r}: expected an integer, got {v!r}")
                kw[key] = v
        return cls(kind, **kw)


@dataclass(frozen=True)
class Round:
    """The local aggregates every node computes in one round, in a fixed vector layout.

    Layout: the terms' entries are concatenated in order. With ``group_column`` set, the
    terms are computed per group: block g (0-based, ``len(group_values) + 1`` blocks) holds all
    terms over the rows whose group column equals ``group_values[g]``; the last block collects
    the rows whose non-null value is not in the list. Rows with a null group value are skipped
    (as pandas' groupby does by default).

    A term appears at most once (ValueError otherwise): a repeated term asks the same question
    twice and would make "the entries of this term" ambiguous. Code reads a vector by term
    (``view(total)[term]``, see ``Totals``), never by position.

    A node computes the float64 vector with ``Engine.compute(round)``; the vectors are summed
    over the nodes (secure aggregation of ``encode`` outputs; Paillier for the entries of
    ``moment_round``, the counts by secure aggregation); the total is fed to
    the state machine.

    >>> r = Round("adult", "age > 30", (Term.rows(), Term.moment(["age"], [1], [0.0], 40)))
    >>> r.size, r.count_mask.tolist()
    (2, [True, False])
    >>> total = (r.encode(np.array([3.0, 100.25])) + r.encode(np.array([2.0, -0.5])))
    >>> r.decode(total).tolist()
    [5.0, 99.75]
    >>> Round.from_dict(r.to_dict()) == r
    True
    """

    dataset: str
    where: str | None
    terms: tuple[Term, ...]
    group_column: str | None = None
    group_values: tuple[GroupValue, ...] = ()
    index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("round 'dataset': expected a non-empty string")
        if self.where is not None and not isinstance(self.where, str):
            raise ConfigError("round 'where': expected a string or None")
        if not self.terms or not all(isinstance(t, Term) for t in self.terms):
            raise ConfigError("round 'terms': expected a non-empty list of terms")
        first: dict[Term, int] = {}
        for i, t in enumerate(self.terms):
            j = first.setdefault(t, i)
            if j != i:
                raise ConfigError(
                    f"round 'terms[{i}]': repeats terms[{j}] ({t.kind} of {list(t.columns)}); "
                    "a round lists each term once"
                )
        if self.group_column is None and self.group_values:
            raise ConfigError("round 'group_values': given without 'group_column'")
        if self.group_column is not None and any(t.kind == "glm" for t in self.terms):
            raise ConfigError("round 'terms': a grouped round holds no glm terms")
        if self.group_column is not None:
            if any(t.kind != "moment" for t in self.terms):
                raise ConfigError("round 'terms': a grouped round holds moment terms only")
            vals = tuple(
                _check_group_value(v, f"round 'group_values[{i}]'")
                for i, v in enumerate(self.group_values)
            )
            if len(set(vals)) != len(vals):
                raise ConfigError("round 'group_values': values must be distinct")
            object.__setattr__(self, "group_values", vals)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ConfigError("round 'index': expected an integer >= 0")
        if self.size > MAX_ROUND_SIZE:
            raise ConfigError(f"round: {self.size} entries exceed the limit of {MAX_ROUND_SIZE}")

    @property
    def n_groups(self) -> int:
        """Number of blocks: 1, or ``len(group_values) + 1`` (the last one is 'other')."""
        return 1 if self.group_column is None else len(self.group_values) + 1

    @property
    def term_size(self) -> int:
        """Entries per block (the sum of the terms' sizes)."""
        return sum(t.size for t in self.terms)

    @property
    def size(self) -> int:
        """Length of the round's vector."""
        return self.term_size * self.n_groups

    def offsets(self) -> list[int]:
        """Start of each term within a block."""
        out, pos = [], 0
        for t in self.terms:
            out.append(pos)
            pos += t.size
        return out

    @cached_property
    def _positions(self) -> dict[Term, int]:
        return {t: i for i, t in enumerate(self.terms)}

    def index_of(self, term: Term) -> int:
        """The position of ``term`` in ``terms``; ConfigError naming it if it is not there."""
        try:
            return self._positions[term]
        except KeyError:
            raise ConfigError(f"round {self.index}: it holds no term {term.to_dict()}") from None

    def term_slice(self, term: int | Term, group: int = 0) -> slice:
        """The slice of the round vector holding ``term`` (a Term, or its index in ``terms``)
        of block ``group``."""
        i = self.index_of(term) if isinstance(term, Term) else term
        start = group * self.term_size + self.offsets()[i]
        return slice(start, start + self.terms[i].size)

    def view(self, total: npt.ArrayLike) -> Totals:
        """``total`` (a vector in this round's layout) to be read by term."""
        return Totals(self, total)

    @property
    def count_mask(self) -> npt.NDArray[np.bool_]:
        """True at the entries that are record counts (these govern disclosure control)."""
        block = np.concatenate([np.full(t.size, t.is_count) for t in self.terms])
        return np.tile(block, self.n_groups)

    def moment_round(self) -> Round | None:
        """The round of this round's non-count terms (same filter, groups and index), or None.

        Its vector is this round's vector at ``~count_mask``, in order: the Paillier path
        encrypts only these entries, since the record counts are summed by secure aggregation
        anyway (to enforce ``min_group_size``).

        >>> r = Round("d", None, (Term.rows(), Term.moment(["x"], [1], [0.0], 40)), "g", ("a",))
        >>> m = r.moment_round()
        >>> m.size, (~r.count_mask).sum().item(), Round("d", None, (Term.rows(),)).moment_round()
        (2, 2, None)
        """
        terms = tuple(t for t in self.terms if not t.is_count)
        if not terms:
            return None
        return Round(
            self.dataset, self.where, terms, self.group_column, self.group_values, self.index
        )

    def counts_round(self) -> Round:
        """The record counts governing the entries (same filter, groups and index): count
        terms as they are, every other term replaced by the count of its columns' non-null
        rows, each once (``governing_counts`` spreads its total back over this round's
        layout). The Paillier path sums these by secure aggregation before any node encrypts."""
        return Round(
            self.dataset,
            self.where,
            tuple(dict.fromkeys(_governing(t) for t in self.terms)),
            self.group_column,
            self.group_values,
            self.index,
        )

    def governing_counts(self, counts: Round, total: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Every entry's governing record count, in this round's layout, from the decoded
        ``total`` of ``counts`` (``self.counts_round()``).

        >>> x1, x2 = Term.moment(["x"], [1], [0.0], 40), Term.moment(["x"], [2], [0.0], 40)
        >>> r = Round("d", None, (Term.rows(), x1, x2))
        >>> c = r.counts_round()
        >>> len(c.terms), r.governing_counts(c, [10.0, 7.0]).tolist()
        (2, [10.0, 7.0, 7.0])
        """
        tot = np.asarray(total, dtype=np.float64)
        out = np.zeros(self.size, dtype=np.float64)
        for g in range(self.n_groups):
            for t in self.terms:
                out[self.term_slice(t, g)] = tot[counts.term_slice(_governing(t), g)]
        return out

    def count_terms_round(self) -> Round | None:
        """The round of this round's count terms alone (same filter, groups, index), or None."""
        terms = tuple(t for t in self.terms if t.is_count)
        if not terms:
            return None
        return Round(
            self.dataset, self.where, terms, self.group_column, self.group_values, self.index
        )

    @property
    def frac_bits(self) -> npt.NDArray[np.int64]:
        """The fixed-point fractional bits of every entry."""
        block = np.concatenate(
            [
                np.asarray(t.bits, dtype=np.int64)
                if t.bits
                else np.full(t.size, t.frac_bits, dtype=np.int64)
                for t in self.terms
            ]
        )
        return np.tile(block, self.n_groups)

    @property
    def scales(self) -> npt.NDArray[np.float64]:
        """Each entry's explicit scale (``Term.scale``), 0 where it is ``2^frac_bits``."""
        block = np.concatenate([np.full(t.size, t.scale, dtype=np.float64) for t in self.terms])
        return np.tile(block, self.n_groups)

    @property
    def units(self) -> npt.NDArray[np.float64]:
        """Encoded units per unit of each entry: its scale, or ``2^frac_bits``."""
        sc = self.scales
        return np.where(sc > 0, sc, np.ldexp(1.0, self.frac_bits))

    def check_vector(self, vec: npt.ArrayLike, what: str = "vector") -> npt.NDArray[np.float64]:
        """``vec`` as float64 after checking its shape and that it is finite (else DataError)."""
        arr = np.asarray(vec, dtype=np.float64)
        if arr.shape != (self.size,):
            raise DataError(
                f"round {self.index}: {what} has shape {arr.shape}, expected ({self.size},)"
            )
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise DataError(f"round {self.index}: {what} entry {bad} is not finite")
        return arr

    def encode(self, local: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Fixed-point encode a node's local vector for summation modulo 2^64.

        Raises:
            EncodingOverflow: an entry exceeds the round's declared bound (the data changed
                between rounds, or the node is not honest); the message names the entry.
        """
        arr = self.check_vector(local, "local vector")
        sc = self.scales
        scaled = np.rint(np.where(sc > 0, arr * sc, np.ldexp(arr, self.frac_bits)))
        limit = np.where(self.count_mask, COUNT_LIMIT, ENCODED_LIMIT)
        over = np.abs(scaled) > limit
        if np.any(over):
            i = int(np.flatnonzero(over)[0])
            raise EncodingOverflow(  # never the value: a node's error leaves the node
                f"round {self.index}: entry {i} of {self.size} exceeds the declared fixed-point "
                f"range (2^{61 - int(self.frac_bits[i])}); re-run the query from the start"
            )
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, total: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Decode the modulo-2^64 sum of ``encode`` outputs into the float64 total."""
        arr = np.asarray(total)
        if arr.shape != (self.size,):
            raise DataError(
                f"round {self.index}: total has shape {arr.shape}, expected ({self.size},)"
            )
        if arr.dtype != np.uint64:
            if not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"round {self.index}: total must be an integer array mod 2^64")
            arr = arr.astype(np.uint64)
        ints = arr.view(np.int64).astype(np.float64)
        sc = self.scales
        return np.where(sc > 0, ints / np.where(sc > 0, sc, 1.0), np.ldexp(ints, -self.frac_bits))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``from_dict`` reverses it)."""
        return {
            "dataset": self.dataset,
            "where": self.where,
            "terms": [t.to_dict() for t in self.terms],
            "group_column": self.group_column,
            "group_values": list(self.group_values),
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Round:
        """Rebuild a round; ConfigError naming an unknown, missing or bad key."""
        if not isinstance(data, Mapping):
            raise ConfigError("round: expected a dict")
        keys = {"dataset", "where", "terms", "group_column", "group_values", "index"}
        extra = set(data) - keys
        if extra:
            raise ConfigError(f"round: unknown key(s) {sorted(extra)}; allowed: {sorted(keys)}")
        missing = keys - set(data)
        if missing:
            raise ConfigError(f"round: missing key(s) {sorted(missing)}")
        if not isinstance(data["terms"], list | tuple):
            raise ConfigError("round 'terms': expected a list")
        if not isinstance(data["group_values"], list | tuple):
            raise ConfigError("round 'group_values': expected a list")
        gc = data["group_column"]
        if gc is not None and not isinstance(gc, str):
            raise ConfigError("round 'group_column': expected a string or null")
        terms = []
        for i, t in enumerate(data["terms"]):
            try:
                terms.append(Term.from_dict(t))
            except ValueError as e:
                raise ConfigError(f"round 'terms[{i}]': {e}") from None
        return cls(
            dataset=data["dataset"],
            where=data["where"],
            terms=tuple(terms),
            group_column=gc,
            group_values=tuple(data["group_values"]),
            index=data["index"],
        )


class Totals:
    """A vector in a round's layout (a node's local vector, or the total over the nodes), read
    by term rather than by position, so a plan that adds, drops or reorders terms cannot read
    the wrong entries.

    ``view[term]`` is the entries of ``term`` (ungrouped rounds), ``view.scalar(term)`` the one
    entry of a moment term, ``view.per_group(term)`` the entry of a moment term in every group
    block of a grouped round. A term the round does not hold raises ConfigError naming it.

    >>> age_sum = Term.moment(["age"], [1], [0.0], 40)
    >>> r = Round("d", None, (Term.rows(), Term.count("age"), age_sum, Term.bins("age", [0, 50])))
    >>> view = r.view([10.0, 9.0, 391.5, 0.0, 7.0, 2.0])
    >>> view.scalar(Term.count("age")), view.scalar(age_sum), view[Term.bins("age", [0, 50])]
    (9.0, 391.5, array([0., 7., 2.]))
    >>> view.scalar(Term.count("sex"))
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: round 0: it holds no term {'kind': 'moment', ...}
    >>> g = Round("d", None, (Term.rows(), age_sum), "sex", ("M", "F"))
    >>> g.view([4.0, 150.0, 5.0, 200.5, 1.0, 41.0]).per_group(age_sum).tolist()
    [150.0, 200.5, 41.0]
    """

    def __init__(self, rnd: Round, vector: npt.ArrayLike) -> None:
        arr = np.asarray(vector, dtype=np.float64)
        if arr.shape != (rnd.size,):
            raise ConfigError(
                f"round {rnd.index}: vector has shape {arr.shape}, expected ({rnd.size},)"
            )
        self.round, self.vector = rnd, arr

    def __getitem__(self, term: Term) -> npt.NDArray[np.float64]:
        """The entries of ``term`` (a view into the vector) in an ungrouped round."""
        self._ungrouped(term)
        return self.vector[self.round.term_slice(term)]

    def scalar(self, term: Term) -> float:
        """The single entry of a moment term in an ungrouped round."""
        self._ungrouped(term)
        if term.kind != "moment":
            raise ConfigError(
                f"round {self.round.index}: {term.kind} of {list(term.columns)} has "
                f"{term.size} entries; read it with view[term]"
            )
        return float(self.vector[self.round.term_slice(term).start])

    def per_group(self, term: Term) -> npt.NDArray[np.float64]:
        """The entry of a moment term in each group block of a grouped round (the last block
        holds the rows of the values not listed)."""
        rnd = self.round
        if rnd.group_column is None:
            raise ConfigError(f"round {rnd.index}: not grouped; read it with view[term]")
        start = rnd.term_slice(term).start  # grouped rounds hold one-entry moment terms only
        return self.vector[start :: rnd.term_size]

    def _ungrouped(self, term: Term) -> None:
        if self.round.group_column is not None:
            raise ConfigError(
                f"round {self.round.index}: grouped by {self.round.group_column!r}; "
                f"read {term.kind} of {list(term.columns)} with per_group(term)"
            )


def _governing(term: Term) -> Term:
    """The record-count term that governs ``term``'s entries (itself for a count term)."""
    return term if term.is_count else Term.count(*term.columns)
