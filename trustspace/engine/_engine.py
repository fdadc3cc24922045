"""Engine: a node's local query engine over its own CSV/Parquet files (DuckDB, out of core)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace.engine._check import check_header, locate_bad_field
from trustspace.engine._spec import DatasetSpec
from trustspace.engine._sql import quote_ident, where_clause
from trustspace.errors import ConfigError, DataError
from trustspace.stats import OCTAVE_HALF, OCTAVE_OFFSET, ColumnType, Round, TableSchema, Term

__all__ = ["Engine"]

_Filler = Callable[[tuple[Any, ...], npt.NDArray[np.float64]], None]


class Engine:
    """A node's local engine: validates its datasets and computes rounds, one scan each.

    Args:
        specs: dataset name -> DatasetSpec.

    Every query reads the file through DuckDB with the declared column types (CSV) or casts
    (Parquet), so nothing is loaded into pandas and files larger than memory work. Filters
    are compiled to parameterised SQL (see ``compile_filter``). Thread-safe: each call uses
    its own cursor on a shared in-memory DuckDB database.
    """

    def __init__(self, specs: Mapping[str, DatasetSpec]) -> None:
        if not isinstance(specs, Mapping):
            raise ConfigError("Engine: expected a mapping of dataset name -> DatasetSpec")
        for name, spec in specs.items():
            if not isinstance(spec, DatasetSpec):
                raise ConfigError(f"Engine: dataset {name!r} is not a DatasetSpec")
            if spec.name != name:
                raise ConfigError(f"Engine: dataset key {name!r} names a spec called {spec.name!r}")
        self._specs = dict(specs)
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()

    # --- housekeeping ---------------------------------------------------------------------
    def close(self) -> None:
        """Release the DuckDB database."""
        self._con.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:  # creating a cursor is not itself thread-safe; using one is
            cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @property
    def datasets(self) -> tuple[str, ...]:
        """The dataset names this engine serves."""
        return tuple(self._specs)

    def spec(self, name: str) -> DatasetSpec:
        """The spec of dataset ``name``; ConfigError naming the known datasets."""
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs) or "(none)"
            raise ConfigError(f"unknown dataset {name!r}; this node serves: {known}") from None

    def schema(self, name: str) -> TableSchema:
        """The public schema (column types, declared domains) of dataset ``name``."""
        return self.spec(name).schema

    def _source(self, spec: DatasetSpec) -> tuple[str, list[Any]]:
        """A parameterised FROM source reading the file with the declared types."""
        if spec.format == "csv":
            sql = (
                "read_csv(?, delim = ?, header = ?, columns = ?, nullstr = ?, quote = '\"', "
                "escape = '\"', auto_detect = false, strict_mode = true)"
            )
            return sql, [
                str(spec.path),
                spec.delimiter,
                spec.header,
                spec.duckdb_columns,
                list(spec.null_values),
            ]
        casts = ", ".join(
            f"CAST({quote_ident(c)} AS {t}) AS {quote_ident(c)}"
            for c, t in spec.duckdb_columns.items()
        )
        return f"(SELECT {casts} FROM read_parquet(?))", [str(spec.path)]  # noqa: S608 - schema identifiers quoted, values are ? params

    # --- start-up check -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every dataset: file present, header, every value parses as its type.

        One typed DuckDB scan per file; only on failure a streaming pass locates the line.

        Raises:
            DataError: naming the file, line and column of the first problem and what to do.
        """
        for spec in self._specs.values():
            self._validate(spec)

    def _validate(self, spec: DatasetSpec) -> None:
        path = Path(spec.path)
        if not path.is_file():
            raise DataError(
                f"{path}: dataset {spec.name!r}: file not found; check the dataset's path "
                "(relative paths are resolved against the node's working directory)"
            )
        if spec.format == "csv":
            check_header(spec)
        else:
            self._check_parquet(spec)
        src, params = self._source(spec)
        floats = [c for c, t in spec.columns.items() if t is ColumnType.FLOAT]
        checks = ", ".join(
            f"count(*) FILTER (WHERE NOT isfinite({quote_ident(c)}))" for c in floats
        )
        sql = f"SELECT count(*){', ' + checks if checks else ''} FROM {src}"  # noqa: S608 - schema identifiers quoted, values are ? params
        try:
            with self._cursor() as cur:
                row = cur.execute(sql, params).fetchone()
        except duckdb.Error as e:
            located = locate_bad_field(spec) if spec.format == "csv" else None
            if located is not None:
                raise located from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: dataset {spec.name!r}: cannot be read: {first}") from None
        assert row is not None
        for c, bad in zip(floats, row[1:], strict=True):
            if bad:
                located = locate_bad_field(spec) if spec.format == "csv" else None
                if located is not None:
                    raise located
                raise DataError(
                    f"{path}: column {c!r}: {bad} value(s) are infinite or NaN; statistics "
                    "need finite numbers (leave the field empty for a missing value)"
                )

    def _check_parquet(self, spec: DatasetSpec) -> None:
        try:
            with self._cursor() as cur:
                desc = cur.execute(
                    "DESCRIBE SELECT * FROM read_parquet(?)", [str(spec.path)]
                ).fetchall()
        except duckdb.Error as e:
            raise DataError(
                f"{spec.path}: not a readable Parquet file ({str(e).splitlines()[0]})"
            ) from None
        have = {r[0]: str(r[1]) for r in desc}
        for c, typ in spec.columns.items():
            if c not in have:
                raise DataError(
                    f"{spec.path}: missing column {c!r}; the file has: {', '.join(have)}"
                )
            t = have[c].upper()
            ok = {
                ColumnType.INT: any(x in t for x in ("INT",)),
                ColumnType.FLOAT: any(
                    x in t for x in ("INT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")
                ),
                ColumnType.STR: t == "VARCHAR",
                ColumnType.BOOL: t == "BOOLEAN",
                ColumnType.DATE: t == "DATE",
            }[ColumnType(typ)]
            if not ok:
                raise DataError(
                    f"{spec.path}: column {c!r} is stored as {have[c]} but the spec declares "
                    f"{ColumnType(typ).value}; fix the declared type"
                )

    # --- rounds ---------------------------------------------------------------------------
    def compute(self, rnd: Round) -> npt.NDArray[np.float64]:
        """This node's local vector for ``rnd`` (float64, the round's layout), in one query.

        Raises:
            ConfigError: unknown dataset, unknown column, or a bad filter (names the position).
        """
        spec = self.spec(rnd.dataset)
        schema = spec.schema
        for t in rnd.terms:
            for c in t.columns:
                typ = schema.column_type(c, f"round {rnd.index}")
                if not typ.is_numeric and not (t.kind == "moment" and not any(t.powers)):
                    raise ConfigError(
                        f"round {rnd.index}: column {c!r} is {typ.value}, not numeric"
                    )
        if rnd.group_column is not None:
            schema.column_type(rnd.group_column, f"round {rnd.index} group_column")
        where, wparams = where_clause(rnd.where, schema)
        src, sparams = self._source(spec)

        selects: list[str] = []
        params: list[Any] = []
        fillers: list[_Filler] = []
        for t, off in zip(rnd.terms, rnd.offsets(), strict=True):
            _compile_term(t, off, schema, selects, params, fillers)

        out = np.zeros(rnd.size, dtype=np.float64)
        block = rnd.term_size
        if rnd.group_column is None:
            sql = f"SELECT {', '.join(selects)} FROM {src} AS t {where}"  # noqa: S608 - schema identifiers quoted, values are ? params
            with self._cursor() as cur:
                row = cur.execute(sql, params + sparams + wparams).fetchone()
            assert row is not None
            for fill in fillers:
                fill(row, out[:block])
            return out
        g = quote_ident(rnd.group_column)
        cond = f"{g} IS NOT NULL" + (f" AND ({where[6:]})" if where else "")
        sql = f"SELECT {g}, {', '.join(selects)} FROM {src} AS t WHERE {cond} GROUP BY {g}"  # noqa: S608 - schema identifiers quoted, values are ? params
        index = {v: i for i, v in enumerate(rnd.group_values)}
        other = len(rnd.group_values)
        with self._cursor() as cur:
            rows = cur.execute(sql, params + sparams + wparams).fetchall()
        for r in rows:
            gi = index.get(r[0], other)
            if isinstance(r[0], bool) != isinstance(
                rnd.group_values[gi] if gi < other else r[0], bool
            ):
                gi = other  # True == 1 in Python; a bool group never matches an int value
            part = np.zeros(block)
            for fill in fillers:
                fill(r[1:], part)
            out[gi * block : (gi + 1) * block] += part
        return out

    # --- anonymization access -------------------------------------------------------------
    def tuple_histogram(
        self, dataset: str, columns: Sequence[str], where: str | None = None
    ) -> tuple[list[tuple[Any, ...]], npt.NDArray[np.int64]]:
        """Distinct tuples of ``columns`` (nulls as None) and their counts, in sorted order."""
        spec = self.spec(dataset)
        cols = self._columns(spec, columns)
        wsql, wparams = where_clause(where, spec.schema)
        src, sparams = self._source(spec)
        q = ", ".join(quote_ident(c) for c in cols)
        sql = f"SELECT {q}, count(*) FROM {src} AS t {wsql} GROUP BY ALL ORDER BY ALL"  # noqa: S608 - schema identifiers quoted, values are ? params
        with self._cursor() as cur:
            rows = cur.execute(sql, sparams + wparams).fetchall()
        return [tuple(r[:-1]) for r in rows], np.array([r[-1] for r in rows], dtype=np.int64)

    def rows(
        self, dataset: str, columns: Sequence[str] | None = None, where: str | None = None
    ) -> pd.DataFrame:
        """This node's own rows of ``dataset`` (optionally some columns, filtered) as pandas."""
        spec = self.spec(dataset)
        cols = self._columns(spec, columns if columns is not None else list(spec.columns))
        wsql, wparams = where_clause(where, spec.schema)
        src, sparams = self._source(spec)
        q = ", ".join(quote_ident(c) for c in cols)
        with self._cursor() as cur:
            sql = f"SELECT {q} FROM {src} AS t {wsql}"  # noqa: S608 - quoted names, ? values
            df: pd.DataFrame = cur.execute(sql, sparams + wparams).df()
        return df

    @staticmethod
    def _columns(spec: DatasetSpec, columns: Sequence[str]) -> list[str]:
        cols = [columns] if isinstance(columns, str) else list(columns)
        if not cols:
            raise ConfigError("expected at least one column")
        for c in cols:
            spec.schema.column_type(c, f"dataset {spec.name!r}")
        return cols


def _num(col: str, schema: TableSchema) -> str:
    q = quote_ident(col)
    return f"CAST({q} AS DOUBLE)" if schema.columns[col] is not ColumnType.FLOAT else q


def _compile_term(
    t: Term,
    off: int,
    schema: TableSchema,
    selects: list[str],
    params: list[Any],
    fillers: list[_Filler],
) -> None:
    """Append the SELECT expressions of one term and a filler writing its result entries."""
    pos = len(selects)
    if t.kind == "moment":
        if not t.columns:
            selects.append("count(*)")
        else:
            cond = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in t.columns)
            if not any(t.powers):
                selects.append(f"count(*) FILTER (WHERE {cond})")
            else:
                factors = []
                for c, p, center in zip(t.columns, t.powers, t.centers, strict=True):
                    for _ in range(p):
                        factors.append(f"({_num(c, schema)} - ?)")
                        params.append(center)
                selects.append(f"fsum({' * '.join(factors)}) FILTER (WHERE {cond})")

        def fill_one(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            out[off] = float(row[pos] or 0.0)

        fillers.append(fill_one)
        return
    col = t.columns[0]
    x, q = _num(col, schema), quote_ident(col)
    if t.kind == "octaves":
        selects.append(
            f"histogram(CASE WHEN {x} = 0 THEN 0 WHEN {x} > 0 "
            f"THEN CAST(floor(log2({x})) AS INTEGER) + {OCTAVE_OFFSET} "
            f"ELSE -(CAST(floor(log2(-{x})) AS INTEGER) + {OCTAVE_OFFSET}) END) "
            f"FILTER (WHERE {q} IS NOT NULL)"
        )

        def fill_oct(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            for key, cnt in (row[pos] or {}).items():
                out[off + OCTAVE_HALF + int(key)] += cnt

        fillers.append(fill_oct)
        return
    if t.kind == "grid":
        a, w, nb = t.start, t.width, t.nbins
        b = a + nb * w
        selects.append(f"count(*) FILTER (WHERE {x} < ?)")
        selects.append(
            f"histogram(CAST(floor(({x} - ?) * ?) AS BIGINT)) FILTER (WHERE {x} >= ? AND {x} < ?)"
        )
        selects.append(f"count(*) FILTER (WHERE {x} >= ?)")
        params.extend([a, a, 1.0 / w, a, b, b])

        def fill_grid(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            out[off] = row[pos]
            for key, cnt in (row[pos + 1] or {}).items():
                out[off + 1 + min(max(int(key), 0), nb - 1)] += cnt
            out[off + nb + 1] = row[pos + 2]

        fillers.append(fill_grid)
        return
    edges = t.edges
    nb = len(edges) - 1
    idx = " + ".join(f"CAST({x} >= ? AS INTEGER)" for _ in edges[1:-1]) or "0"
    selects.append(f"count(*) FILTER (WHERE {x} < ?)")
    selects.append(f"histogram({idx}) FILTER (WHERE {x} >= ? AND {x} <= ?)")
    selects.append(f"count(*) FILTER (WHERE {x} > ?)")
    params.extend([edges[0], *edges[1:-1], edges[0], edges[-1], edges[-1]])

    def fill_bins(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
        out[off] = row[pos]
        for key, cnt in (row[pos + 1] or {}).items():
            out[off + 1 + min(int(key), nb - 1)] += cnt
        out[off + nb + 1] = row[pos + 2]

    fillers.append(fill_bins)
