"""Generalization hierarchies: ARX's CSV format, builders, and coverage validation.

A hierarchy for one column is a table with one row per original value: column 0 is the value,
column ``i`` its generalization at level ``i``; the last level is usually ``*`` (suppressed).
Levels must nest: every value of level ``i`` generalizes to exactly one value of level ``i+1``
(a tree), which is what makes k-anonymity monotone over the lattice of levels.
"""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from trustspace.errors import ConfigError, DataError

TOP = "*"  # ARX's value for "fully generalized"
_MAX_SHOWN = 8  # how many offending values an error message lists

# Caps on what one request may ask for (issue 13, class 6: a request must not exhaust a server).
# A hierarchy arrives inside an analyst's signed request and every node and the aggregator build
# it, so its size is checked before any of it is copied, encoded or nested.
#: Most rows (original values) of one hierarchy. The ~42,000 US ZIP codes and ICD-10-CM's ~74,000
#: diagnosis codes fit; the largest Adult hierarchy (age) has 100. A federated request's
#: marginals round is one entry per row.
MAX_HIERARCHY_ROWS = 100_000
#: Most levels of one hierarchy, the original values (level 0) included: masking a 31-character
#: id one character per level fits; ARX's Adult hierarchies have 2 to 5 levels.
MAX_HIERARCHY_HEIGHT = 32
#: Most cells (rows x levels) of one hierarchy: every cell is a string held by the aggregator and
#: every node (~60 bytes each, so ~60 MB at the cap); a ZIP or ICD-10 hierarchy of 6 levels has
#: under 500,000.
MAX_HIERARCHY_CELLS = 1_000_000


def check_hierarchy_size(name: str, rows: int, height: int, *, source: str = "") -> None:
    """Refuse a hierarchy over the caps, from its row count and height alone (no other work).

    Raises:
        ConfigError: naming the column and the cap exceeded.
    """
    where = f"hierarchy of column {name!r}" + (f" ({source})" if source else "")
    if rows > MAX_HIERARCHY_ROWS:
        raise ConfigError(
            f"{where} has {rows} rows, more than the {MAX_HIERARCHY_ROWS} allowed "
            "(MAX_HIERARCHY_ROWS); group values (e.g. intervals or masking) before anonymizing"
        )
    if height > MAX_HIERARCHY_HEIGHT:
        raise ConfigError(
            f"{where} has {height} levels, more than the {MAX_HIERARCHY_HEIGHT} allowed "
            "(MAX_HIERARCHY_HEIGHT); use fewer, coarser levels"
        )
    if rows * height > MAX_HIERARCHY_CELLS:
        raise ConfigError(
            f"{where} has {rows} rows x {height} levels = {rows * height} cells, more than the "
            f"{MAX_HIERARCHY_CELLS} allowed (MAX_HIERARCHY_CELLS); use fewer rows or levels"
        )


def _show(values: Iterable[str]) -> str:
    vals = sorted(set(values))
    shown = ", ".join(repr(v) for v in vals[:_MAX_SHOWN])
    more = f" and {len(vals) - _MAX_SHOWN} more" if len(vals) > _MAX_SHOWN else ""
    return shown + more


class Hierarchy:
    """A generalization hierarchy for one column (immutable after construction).

    Args:
        name: the column it generalizes (used in error messages).
        rows: one row per original value: ``(value, level1, level2, ...)``, all rows the same
            length.
        source: where the rows came from (a file name), for error messages.

    Raises:
        ConfigError: rows of different lengths, an empty hierarchy, a value listed twice,
            levels that do not nest (a value of level ``i`` with two parents at level ``i+1``),
            or more rows, levels or cells than ``MAX_HIERARCHY_ROWS``, ``MAX_HIERARCHY_HEIGHT``
            or ``MAX_HIERARCHY_CELLS`` (checked first, before any other work).

    >>> h = Hierarchy("sex", [("Male", "*"), ("Female", "*")])
    >>> h.height, h.level_values(1)
    (2, ('*',))
    >>> h.generalize(["Female", "Male"], 1)
    ['*', '*']
    """

    def __init__(self, name: str, rows: Sequence[Sequence[str]], *, source: str = "") -> None:
        self.name = name
        self.source = source
        where = f"hierarchy of column {name!r}" + (f" ({source})" if source else "")
        if not rows:
            raise ConfigError(f"{where} is empty; give at least one row 'value;...;*'")
        width = len(rows[0])
        check_hierarchy_size(name, len(rows), width, source=source)
        if width < 1:
            raise ConfigError(f"{where}: row 1 is empty")
        for i, row in enumerate(rows):
            if len(row) != width:
                raise ConfigError(
                    f"{where}: row {i + 1} has {len(row)} levels but row 1 has {width}; "
                    "every row needs the same number of levels"
                )
        values = [str(r[0]) for r in rows]
        dup = [v for v, c in Counter(values).items() if c > 1]
        if dup:
            raise ConfigError(
                f"{where}: values listed more than once: {_show(dup)}; "
                "each original value must appear in exactly one row"
            )
        self._rows = tuple(tuple(str(c) for c in r) for r in rows)
        self._index = {v: i for i, v in enumerate(values)}
        # per level: the distinct values (in first-appearance order) and each row's code
        self._level_values: list[tuple[str, ...]] = []
        self._codes: list[npt.NDArray[np.int64]] = []
        for lvl in range(width):
            uniq: dict[str, int] = {}
            codes = np.fromiter(
                (uniq.setdefault(r[lvl], len(uniq)) for r in self._rows),
                dtype=np.int64,
                count=len(self._rows),
            )
            self._level_values.append(tuple(uniq))
            self._codes.append(codes)
        for lvl in range(width - 1):
            parent = np.full(len(self._level_values[lvl]), -1, dtype=np.int64)
            lo, hi = self._codes[lvl], self._codes[lvl + 1]
            parent[lo] = hi
            bad = np.nonzero(parent[lo] != hi)[0]
            if bad.size:
                v = self._rows[int(bad[0])][lvl]
                raise ConfigError(
                    f"{where}: level {lvl} value {v!r} generalizes to more than one value at "
                    f"level {lvl + 1}; levels must nest (one parent per value)"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        name: str | None = None,
        *,
        sep: str = ";",
        encoding: str = "utf-8",
    ) -> Hierarchy:
        """Load a hierarchy in ARX's CSV format (``;``-separated, one row per value).

        Raises:
            DataError: the file cannot be read.
            ConfigError: the rows do not form a valid hierarchy.
        """
        p = Path(path)
        try:
            with p.open(newline="", encoding=encoding) as fh:
                rows = [r for r in csv.reader(fh, delimiter=sep) if r]
        except OSError as exc:
            raise DataError(
                f"cannot read hierarchy file {str(p)!r}: {exc.strerror or exc}; "
                "check the path given for this column"
            ) from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"hierarchy file {str(p)!r} is not {encoding} text: {exc}") from exc
        return cls(name if name is not None else p.stem, rows, source=str(p))

    @classmethod
    def intervals(
        cls,
        name: str,
        values: Iterable[object],
        widths: Sequence[int] = (5, 10, 20),
        *,
        start: int = 0,
    ) -> Hierarchy:
        """Integer intervals of growing width, then ``*`` (like ARX's age hierarchy).

        Level ``i`` maps ``v`` to ``"lo-hi"`` with ``lo = start + w*floor((v-start)/w)`` and
        ``hi = lo + w - 1``. Each width must be a multiple of the previous one so levels nest.

        >>> Hierarchy.intervals("age", [3, 17, 42], widths=(5, 10)).generalize(["17"], 2)
        ['10-19']
        """
        ws = [int(w) for w in widths]
        if any(w <= 0 for w in ws):
            raise ConfigError(f"interval widths for column {name!r} must be positive: {ws}")
        for a, b in itertools.pairwise(ws):
            if b % a:
                raise ConfigError(
                    f"interval widths for column {name!r} must nest (each a multiple of the "
                    f"previous one); {b} is not a multiple of {a}"
                )
        try:
            ints = sorted({int(str(x)) for x in values})
        except ValueError as exc:
            raise DataError(
                f"column {name!r}: interval hierarchies need integer values ({exc}); "
                "use an ARX hierarchy file or a grouping for other values"
            ) from exc
        rows = []
        for v in ints:
            row = [str(v)]
            for w in ws:
                lo = start + w * ((v - start) // w)
                row.append(f"{lo}-{lo + w - 1}")
            row.append(TOP)
            rows.append(row)
        return cls(name, rows, source="intervals")

    @classmethod
    def masking(
        cls, name: str, values: Iterable[object], *, levels: int | None = None, char: str = "*"
    ) -> Hierarchy:
        """Mask characters from the right, one more per level (zip codes, ids), then ``*``.

        >>> Hierarchy.masking("zip", ["47677", "47602"]).generalize(["47677"], 2)
        ['476**']
        """
        vals = sorted({str(v) for v in values})
        longest = max((len(v) for v in vals), default=0)
        n = longest if levels is None else int(levels)
        rows = []
        for v in vals:
            row = [v]
            for i in range(1, n):
                keep = max(len(v) - i, 0)
                row.append(v[:keep] + char * (len(v) - keep))
            row.append(TOP)
            rows.append(row)
        return cls(name, rows, source="masking")

    @classmethod
    def dates(
        cls,
        name: str,
        values: Iterable[object],
        levels: Sequence[str] = ("month", "year", "decade"),
    ) -> Hierarchy:
        """ISO dates (``YYYY-MM-DD``) generalized to month, quarter, year, decade, then ``*``.

        >>> Hierarchy.dates("dob", ["1987-06-05"]).generalize(["1987-06-05"], 3)
        ['1980-1989']
        """
        order = ("month", "quarter", "year", "decade")
        lv = list(levels)
        if any(x not in order for x in lv) or lv != sorted(lv, key=order.index):
            raise ConfigError(
                f"date levels for column {name!r} must be a subsequence of {order}; got {lv}"
            )
        rows = []
        for s in sorted({str(v) for v in values}):
            try:
                d = _dt.date.fromisoformat(s)
            except ValueError as exc:
                raise DataError(f"column {name!r}: {s!r} is not an ISO date (YYYY-MM-DD)") from exc
            fmt = {
                "month": f"{d.year:04d}-{d.month:02d}",
                "quarter": f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}",
                "year": f"{d.year:04d}",
                "decade": f"{d.year // 10 * 10:04d}-{d.year // 10 * 10 + 9:04d}",
            }
            rows.append([s, *(fmt[x] for x in lv), TOP])
        return cls(name, rows, source="dates")

    @classmethod
    def grouping(cls, name: str, groups: Sequence[Mapping[str, str]]) -> Hierarchy:
        """Explicit groupings: ``groups[0]`` maps values to level-1 groups, ``groups[1]`` maps
        level-1 groups to level-2 groups, and so on; ``*`` is added on top.

        >>> h = Hierarchy.grouping("edu", [{"BSc": "Higher", "MSc": "Higher", "GCSE": "School"}])
        >>> h.generalize(["MSc", "GCSE"], 1)
        ['Higher', 'School']
        """
        if not groups:
            raise ConfigError(f"grouping for column {name!r} needs at least one level")
        rows = []
        for v, g in groups[0].items():
            row = [str(v), str(g)]
            for lvl, mapping in enumerate(groups[1:], start=2):
                if row[-1] not in mapping:
                    raise ConfigError(
                        f"grouping for column {name!r}: level-{lvl - 1} group {row[-1]!r} "
                        f"has no parent in level {lvl}; add it to groups[{lvl - 1}]"
                    )
                row.append(str(mapping[row[-1]]))
            row.append(TOP)
            rows.append(row)
        return cls(name, rows, source="grouping")

    # ------------------------------------------------------------------ queries
    @property
    def height(self) -> int:
        """Number of levels, including the original values (level 0)."""
        return len(self._level_values)

    @property
    def values(self) -> tuple[str, ...]:
        """The original values (level 0), in row order: the public base domain of the column."""
        return self._level_values[0]

    @property
    def rows(self) -> tuple[tuple[str, ...], ...]:
        return self._rows

    def level_values(self, level: int) -> tuple[str, ...]:
        """The distinct values of ``level`` in a fixed order (code ``i`` is the ``i``-th)."""
        return self._level_values[level]

    def codes(self, level: int) -> npt.NDArray[np.int64]:
        """For each original value (row), the code of its generalization at ``level``."""
        return self._codes[level]

    def encode(
        self, column: Sequence[object], *, where: str = "", reveal: bool = True
    ) -> npt.NDArray[np.int64]:
        """Codes (row indices) of a data column's values; validates coverage.

        Raises:
            DataError: a value of the column is not in the hierarchy (the message names the
                column, how many values are missing and, with ``reveal``, which: a node
                passes ``reveal=False``, since its errors leave it and must carry no data).
        """
        uniq = list(dict.fromkeys(column))  # C loops only: this runs on every row
        local = {v: i for i, v in enumerate(uniq)}
        inv = np.fromiter(map(local.__getitem__, column), dtype=np.int64, count=len(column))
        idx = self._index
        missing = [str(v) for v in uniq if str(v) not in idx]
        if missing:
            src = f" ({self.source})" if self.source else ""
            which = f": {_show(missing)}" if reveal else " (not shown: they are local data)"
            raise DataError(
                f"column {self.name!r}{where}: {len(missing)} value(s) in the data are not in "
                f"its hierarchy{src}{which}; add a row for each of them"
            )
        table = np.fromiter((idx[str(v)] for v in uniq), dtype=np.int64, count=len(uniq))
        return table[inv] if len(inv) else inv

    def check_covers(self, column: Iterable[object], *, where: str = "") -> None:
        """Check that every value of ``column`` is covered by exactly one row.

        Raises:
            DataError: naming the column and the values that are missing.
        """
        col = list(column)
        self.encode(col, where=where)

    def generalize(self, column: Sequence[object], level: int) -> list[str]:
        """The values of ``column`` generalized to ``level``."""
        codes = self.encode(column)
        names = self._level_values[level]
        lv = self._codes[level]
        return [names[c] for c in lv[codes].tolist()]

    def __repr__(self) -> str:
        return f"Hierarchy({self.name!r}, values={len(self.values)}, height={self.height})"

    def __eq__(self, other: object) -> bool:
        """Equal when the column name and the rows are (where they were read from is not
        compared), so that a spec read back from its JSON equals the one sent."""
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return self.name == other.name and self._rows == other._rows

    def __hash__(self) -> int:
        return hash((self.name, self._rows))
