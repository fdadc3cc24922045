"""The public domain a synthetic table is drawn over: per column its levels (a categorical
column's declared domain) or its bins (a numeric column cut on its declared bounds)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustspace.errors import ConfigError
from trustspace.stats import MAX_CELLS, ColumnType, TableSchema

__all__ = ["Column", "SynthDomain", "synth_domain"]

#: Bins of a numeric column unless the analyst says otherwise.
DEFAULT_BINS = 8
#: Most columns one synthesis crosses (its selection step measures every pair).
MAX_COLUMNS = 24


@dataclass(frozen=True)
class Column:
    """One column of the domain: ``levels`` (categorical) or ``edges`` (numeric bins)."""

    name: str
    type: ColumnType
    levels: tuple[Any, ...] = ()
    edges: tuple[float, ...] = ()
    #: a numeric column's declared bounds: no synthetic value falls outside them
    bounds: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return len(self.levels) if self.levels else len(self.edges) - 1


@dataclass(frozen=True)
class SynthDomain:
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.size for c in self.columns)

    def cuts(self) -> dict[str, list[float]]:
        return {c.name: list(c.edges) for c in self.columns if c.edges}

    def values(self) -> dict[str, list[Any]]:
        return {c.name: list(c.levels) for c in self.columns if c.levels}

    def __getitem__(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def synth_domain(
    schema: TableSchema,
    columns: Sequence[str],
    bins: int | Mapping[str, int | Sequence[float]] = DEFAULT_BINS,
) -> SynthDomain:
    """The domain of ``columns``: a str or bool column (or an int one with a declared domain)
    by its public levels, a numeric one by ``bins`` equal bins over its declared bounds (or
    the edges ``bins={column: [...]}`` gives).

    Raises:
        ConfigError: a column without public levels or bounds, fewer than two or too many
            columns, or a pair whose table would exceed the node's cell limit (naming its
            size).
    """
    cols = list(columns)
    if len(cols) < 2 or len(set(cols)) != len(cols):
        raise ConfigError("synthesize: give two or more distinct columns")
    if len(cols) > MAX_COLUMNS:
        raise ConfigError(
            f"synthesize: {len(cols)} columns, more than {MAX_COLUMNS} (the selection step "
            f"measures every pair: {len(cols) * (len(cols) - 1) // 2} tables)"
        )
    per = dict(bins) if isinstance(bins, Mapping) else {}
    default = bins if isinstance(bins, int) and not isinstance(bins, bool) else DEFAULT_BINS
    out = []
    for c in cols:
        typ = schema.column_type(c, "synthesize columns")
        if c in per or (typ.is_numeric and c not in schema.domains and typ is not ColumnType.DATE):
            out.append(_binned(schema, c, typ, per.get(c, default)))
        elif typ is ColumnType.BOOL:
            out.append(Column(c, typ, levels=tuple(schema.domains.get(c, (False, True)))))
        elif c in schema.domains:
            out.append(Column(c, typ, levels=tuple(schema.domains[c])))
        else:
            raise ConfigError(
                f"synthesize: column {c!r} ({typ.value}) has no public domain: declare its "
                f"levels ([datasets.NAME.domains] {c} = [...]) or, if numeric, its bounds"
            )
    dom = SynthDomain(tuple(out))
    for a, b in itertools.combinations(dom.columns, 2):
        cells = a.size * b.size
        if cells > MAX_CELLS:
            raise ConfigError(
                f"synthesize: the table of {a.name!r} x {b.name!r} would have {a.size} x "
                f"{b.size} = {cells} cells, more than the {MAX_CELLS} a node counts; use "
                "fewer bins or coarser levels (the whole domain has "
                f"{math.prod(dom.shape):,} cells)"
            )
    return dom


def _binned(schema: TableSchema, c: str, typ: ColumnType, spec: Any) -> Column:
    if not typ.is_numeric or typ is ColumnType.DATE:
        raise ConfigError(f"synthesize: bins= for {c!r}, which is {typ.value}, not numeric")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if c not in schema.bounds:
            raise ConfigError(
                f"synthesize: numeric column {c!r} has no public bounds to bin: declare them "
                f"([datasets.NAME.bounds] {c} = [low, high]) or give bins={{{c!r}: [edges]}}"
            )
        if not 1 <= spec <= 1000:
            raise ConfigError(f"synthesize: bins for {c!r}: {spec} not in 1..1000")
        lo, hi = schema.bounds[c]
        edges = tuple(float(e) for e in np.linspace(lo, hi, spec + 1))
    else:
        edges = tuple(float(e) for e in spec)
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ConfigError(f"synthesize: bins for {c!r}: need 2+ increasing edges")
    return Column(c, typ, edges=edges, bounds=schema.bounds.get(c))
