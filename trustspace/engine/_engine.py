"""Engine: a node's local query engine over its own data: CSV/Parquet files (DuckDB, out of
core), PostgreSQL tables and Spark tables, with one query compiler for all three.

Every statement is built once, in DuckDB's SQL, by the code below; a file dataset runs it in
the embedded DuckDB, a PostgreSQL or Spark dataset runs it at its source, translated by
sqlglot (``_dialect.translate``). Only the statement's aggregates come back."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd

from trustspace._cancel import cancellable as _cancellable
from trustspace.engine._check import check_format, check_header, locate_bad_field
from trustspace.engine._dialect import translate
from trustspace.engine._glm import fill_glm, glm_sql, num_sql
from trustspace.engine._sources import PG_TYPES, SPARK_TYPES, Backend, open_backend
from trustspace.engine._spec import DatasetSpec
from trustspace.engine._sql import quote_ident, where_clause
from trustspace.errors import ConfigError, DataError
from trustspace.stats import (
    OCTAVE_HALF,
    OCTAVE_MAX_EXP,
    OCTAVE_MIN_EXP,
    OCTAVE_OFFSET,
    ColumnType,
    Round,
    TableSchema,
    Term,
)

__all__ = ["Engine"]

_Filler = Callable[[tuple[Any, ...], npt.NDArray[np.float64]], None]

#: Seconds between attempts to reach a source that was unavailable.
RETRY_S = 5.0


class Engine:
    """A node's local engine: validates its datasets and computes rounds, one scan each.

    Args:
        specs: dataset name -> DatasetSpec.
        database: where DuckDB keeps the loaded tables: ``":memory:"`` (default) or a file
            path, for data larger than memory (DuckDB pages it from disk).
        load: if True (default), ``validate()`` loads each file once into DuckDB's own
            compressed columnar storage with the declared types (the typed read *is* the
            check), and every round scans that snapshot; if False, every round re-reads the
            file (slower, but always the file's current content).

    Nothing is loaded into pandas. Filters are compiled to parameterised SQL (see
    ``compile_filter``). Thread-safe: each call uses its own cursor on one DuckDB database, or
    its own pooled connection / job at a PostgreSQL or Spark source.

    A PostgreSQL or Spark dataset that cannot be reached or does not match its declaration
    at ``validate()`` is *unavailable*: the error is kept (``unavailable``), a statement on it
    raises it again (after a new attempt, at most every ``RETRY_S`` seconds), and the other
    datasets are served as usual.
    """

    def __init__(
        self,
        specs: Mapping[str, DatasetSpec],
        *,
        database: str | Path = ":memory:",
        load: bool = True,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_directory: str | Path | None = None,
        node: str | None = None,
    ) -> None:
        if not isinstance(specs, Mapping):
            raise ConfigError("Engine: expected a mapping of dataset name -> DatasetSpec")
        for name, spec in specs.items():
            if not isinstance(spec, DatasetSpec):
                raise ConfigError(f"Engine: dataset {name!r} is not a DatasetSpec")
            if spec.name != name:
                raise ConfigError(f"Engine: dataset key {name!r} names a spec called {spec.name!r}")
        self._specs = dict(specs)
        self._who = f"node {node}: " if node else ""
        config: dict[str, Any] = {}
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        if threads is not None:
            config["threads"] = threads
        if temp_directory is not None:
            config["temp_directory"] = str(temp_directory)
        self._con = duckdb.connect(str(database), config=config)
        self._lock = threading.Lock()
        self._load = load
        self._loaded: dict[str, str] = {}  # dataset -> quoted table name of its snapshot
        self._backends: dict[str, Backend] = {}  # dataset -> its live PostgreSQL/Spark source
        #: dataset -> why its source is unavailable (checked again at most every RETRY_S)
        self.unavailable: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}

    # --- housekeeping ---------------------------------------------------------------------
    def close(self) -> None:
        """Release the DuckDB database and the sources' connections."""
        for b in self._backends.values():
            b.close()
        self._backends.clear()
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

    def row_count(self, name: str) -> int | None:
        """Rows of dataset ``name`` in its loaded snapshot (cheap: DuckDB keeps the count);
        None when the engine reads the file at every round (``load=False``) or before
        ``validate()``, where counting would mean reading the whole file."""
        table = self._loaded.get(self.spec(name).name)
        if table is None:  # also: a PostgreSQL or Spark source (counting is a scan there)
            return None
        with self._cursor() as cur:
            row = cur.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - quoted
        return int(row[0]) if row is not None else None

    def _source(self, spec: DatasetSpec) -> tuple[str, list[Any]]:
        """A parameterised FROM source: the loaded snapshot, the file read with types, or the
        PostgreSQL / Spark table."""
        if spec.source is not None:
            return self._backend(spec).from_sql(), []
        table = self._loaded.get(spec.name)
        if table is not None:
            return table, []
        return self._file_source(spec)

    def _file_source(self, spec: DatasetSpec) -> tuple[str, list[Any]]:
        """A parameterised FROM source reading the file with the declared types."""
        if spec.format == "csv":
            # Integers are read as text and checked by a strict pattern before the cast:
            # DuckDB's own CSV cast would silently round '4.5' to 5.
            raw = {c: ("VARCHAR" if t == "BIGINT" else t) for c, t in spec.duckdb_columns.items()}
            read = (
                "read_csv(?, delim = ?, header = ?, columns = ?, nullstr = ?, quote = '\"', "
                "escape = '\"', auto_detect = false, strict_mode = true)"
            )
            params: list[Any] = [
                str(spec.path),
                spec.delimiter,
                spec.header,
                raw,
                list(spec.null_values),
            ]
            ints = [c for c, t in spec.duckdb_columns.items() if t == "BIGINT"]
            if not ints:
                return read, params
            fields = []
            for c in spec.columns:
                q = quote_ident(c)
                if c in ints:
                    fields.append(
                        f"CAST(CASE WHEN {q} IS NULL OR regexp_full_match({q}, ?) THEN trim({q}) "
                        f"ELSE error('not an integer') END AS BIGINT) AS {q}"
                    )
                else:
                    fields.append(q)
            pattern = [r"\s*[-+]?[0-9]+\s*"] * len(ints)
            return f"(SELECT {', '.join(fields)} FROM {read})", pattern + params  # noqa: S608
        casts = ", ".join(
            f"CAST({quote_ident(c)} AS {t}) AS {quote_ident(c)}"
            for c, t in spec.duckdb_columns.items()
        )
        return f"(SELECT {casts} FROM read_parquet(?))", [str(spec.path)]  # noqa: S608 - schema identifiers quoted, values are ? params

    def _backend(self, spec: DatasetSpec) -> Backend:
        """The live source of a PostgreSQL / Spark dataset; after a failure, a new attempt at
        most every RETRY_S seconds, else the kept error (DataError)."""
        backend = self._backends.get(spec.name)
        if backend is not None:
            return backend
        with self._lock:
            if spec.name in self.unavailable and time.monotonic() < self._retry_at[spec.name]:
                raise DataError(self.unavailable[spec.name])
        self._validate_source(spec)
        return self._backends[spec.name]

    def _exec(
        self, spec: DatasetSpec, sql: str, params: Sequence[Any], tag: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Every row of one statement (DuckDB's SQL) over dataset ``spec``: here, or at its
        source in its dialect. Cancelled with the current call (``_sources.CancelScope``)."""
        if spec.source is None:
            with self._cursor() as cur, _cancellable(cur.interrupt):
                return cur.execute(sql, list(params)).fetchall()
        backend = self._backend(spec)
        return backend.query(translate(sql, spec.kind), list(params), tag)

    def _frame(
        self, spec: DatasetSpec, sql: str, params: Sequence[Any], names: Sequence[str]
    ) -> pd.DataFrame:
        """A statement's rows (its columns ``names``) as pandas, with the dtypes DuckDB gives
        every source's rows."""
        if spec.source is None:
            with self._cursor() as cur:
                df: pd.DataFrame = cur.execute(sql, list(params)).df()
            return df
        rows = self._exec(spec, sql, params)
        raw = (
            pd.DataFrame.from_records(rows, columns=list(names))
            if rows
            else pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
        )
        types = spec.duckdb_columns
        casts = ", ".join(
            f"CAST({quote_ident(n)} AS {types[n]}) AS {quote_ident(n)}" for n in names
        )
        with self._cursor() as cur:
            cur.register("__rows", raw)
            try:
                out: pd.DataFrame = cur.execute(f"SELECT {casts} FROM __rows").df()  # noqa: S608
            finally:
                cur.unregister("__rows")
        return out

    # --- start-up check -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every dataset: file present, header, every value parses as its type.

        One typed DuckDB scan per file; only on failure a streaming pass locates the line.

        Raises:
            DataError: naming the file, line and column of the first problem and what to do.
        """
        for spec in self._specs.values():
            if spec.source is None:
                self._validate(spec)
            else:
                # kept in self.unavailable; the other datasets are served
                with contextlib.suppress(DataError):
                    self._validate_source(spec)

    def _validate_source(self, spec: DatasetSpec) -> None:
        """Connect to a PostgreSQL / Spark source, check its columns and types against the
        declaration and its values (finite floats, declared bounds) in one statement there.
        On failure the error is kept in ``unavailable`` and raised."""
        assert spec.source is not None
        where = f"{self._who}dataset {spec.name!r} ({spec.location})"
        try:
            backend = open_backend(spec.source, f"{self._who}dataset {spec.name!r}")
            try:
                self._check_source_columns(spec, backend.columns())
                checks, bparams = self._value_checks(spec)
                sql = f"SELECT {', '.join(['count(*)', *checks])} FROM {backend.from_sql()} AS t"  # noqa: S608
                row = backend.query(translate(sql, spec.kind), bparams)[0]
                self._value_problems(spec, row, where)
            except BaseException:
                backend.close()
                raise
        except (DataError, ConfigError) as exc:
            with self._lock:
                self.unavailable[spec.name] = str(exc)
                self._retry_at[spec.name] = time.monotonic() + RETRY_S
                stale = self._backends.pop(spec.name, None)  # no statement goes there now
            if stale is not None:
                stale.close()
            raise DataError(str(exc)) from None
        with self._lock:
            old = self._backends.pop(spec.name, None)
            self._backends[spec.name] = backend
            self.unavailable.pop(spec.name, None)
        if old is not None:
            old.close()

    def recheck_sources(self) -> dict[str, str]:
        """Check every PostgreSQL / Spark dataset against its source again (a reload: the
        table may have been altered since start); dataset -> why it is now unavailable."""
        out: dict[str, str] = {}
        for spec in self._specs.values():
            if spec.source is None:
                continue
            try:
                self._validate_source(spec)
            except DataError as exc:
                out[spec.name] = str(exc)
        return out

    def _check_source_columns(self, spec: DatasetSpec, have: Mapping[str, str]) -> None:
        where = f"{self._who}dataset {spec.name!r} ({spec.location})"
        accepted = PG_TYPES if spec.kind == "postgresql" else SPARK_TYPES
        for c, typ in spec.columns.items():
            if c not in have:
                raise DataError(
                    f"{where}: has no column {c!r} (it has: {', '.join(have) or 'none'}); fix "
                    "the declared columns or the table"
                )
            t = ColumnType(typ).value
            got = have[c].lower()
            if not any(got == a or got.startswith(a + "(") for a in accepted[t]):
                raise DataError(
                    f"{where}: column {c!r} is {have[c]} at the source but declared {t}; fix "
                    f"the declared type (a {t} column is one of: {', '.join(accepted[t])})"
                )

    @staticmethod
    def _value_checks(spec: DatasetSpec) -> tuple[list[str], list[Any]]:
        floats = [c for c, t in spec.columns.items() if t is ColumnType.FLOAT]
        checks = [f"count_if(NOT isfinite({quote_ident(c)}))" for c in floats]
        checks += [f"count_if({quote_ident(c)} < ? OR {quote_ident(c)} > ?)" for c in spec.bounds]
        return checks, [v for c in spec.bounds for v in spec.bounds[c]]

    @staticmethod
    def _value_problems(spec: DatasetSpec, row: Sequence[Any], where: str) -> None:
        floats = [c for c, t in spec.columns.items() if t is ColumnType.FLOAT]
        bounded = list(spec.bounds)
        problems = [
            f"column {c!r}: {bad} value(s) are infinite or NaN; statistics need finite "
            "numbers (leave the field empty for a missing value)"
            for c, bad in zip(floats, row[1 : 1 + len(floats)], strict=True)
            if bad
        ] + [
            f"column {c!r}: {bad} value(s) outside the declared bounds {list(spec.bounds[c])}; "
            "fix the data or widen the bounds"
            for c, bad in zip(bounded, row[1 + len(floats) :], strict=True)
            if bad
        ]
        if problems:
            raise DataError(f"{where}: {problems[0]}")

    def _validate(self, spec: DatasetSpec) -> None:
        path = spec.file
        if not path.is_file():
            raise DataError(
                f"{path}: dataset {spec.name!r}: file not found (looked for {path.absolute()}); "
                "check the dataset's path (in a node config, a relative path is relative to "
                "the config file's directory)"
            )
        check_format(spec)
        if spec.format == "csv":
            check_header(spec)
        else:
            self._check_parquet(spec)
        src, params = self._file_source(spec)
        checks, bparams = self._value_checks(spec)
        table = quote_ident(f"dataset:{spec.name}")
        try:
            with self._cursor() as cur:
                if self._load and spec.snapshot:
                    load = f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {src}"  # noqa: S608
                    cur.execute(load, params)
                    src, params = table, []
                sql = f"SELECT {', '.join(['count(*)', *checks])} FROM {src}"  # noqa: S608
                row = cur.execute(sql, bparams + params).fetchone()
        except duckdb.Error as e:
            located = locate_bad_field(spec) if spec.format == "csv" else None
            if located is not None:
                raise located from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: dataset {spec.name!r}: cannot be read: {first}") from None
        assert row is not None
        try:
            self._value_problems(spec, row, str(path))
        except DataError:
            located = locate_bad_field(spec) if spec.format == "csv" else None
            if located is not None:
                raise located from None
            raise
        if self._load and spec.snapshot:
            self._loaded[spec.name] = table

    def _check_parquet(self, spec: DatasetSpec) -> None:
        try:
            with self._cursor() as cur:
                desc = cur.execute(
                    "DESCRIBE SELECT * FROM read_parquet(?)", [str(spec.file)]
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
    def compute(self, rnd: Round, tag: str | None = None) -> npt.NDArray[np.float64]:
        """This node's local vector for ``rnd`` (float64, the round's layout), in one query
        (at the dataset's source; ``tag``, the request id, names its Spark jobs).

        Raises:
            ConfigError: unknown dataset, unknown column, or a bad filter (names the position).
        """
        spec = self.spec(rnd.dataset)
        schema = spec.schema
        for t in rnd.terms:
            for c in t.columns:
                typ = schema.column_type(c, f"round {rnd.index}")
                if t.kind == "cells":
                    if typ in (ColumnType.FLOAT, ColumnType.DATE):
                        raise ConfigError(
                            f"round {rnd.index}: column {c!r} is {typ.value}; a table's "
                            "columns are str, int or bool"
                        )
                    continue
                if t.kind == "marginal":
                    j = t.columns.index(c)
                    binned = bool(t.cuts[j])
                    if binned != typ.is_numeric or typ is ColumnType.DATE:
                        raise ConfigError(
                            f"round {rnd.index}: column {c!r} is {typ.value}; a marginal bins "
                            "a numeric column by cuts and a str, int or bool one by levels"
                        )
                    continue
                if t.kind == "glm":
                    continue  # glm_sql checks its own columns (categorical factors are fine)
                if not typ.is_numeric and not (t.kind == "moment" and not any(t.powers)):
                    raise ConfigError(
                        f"round {rnd.index}: column {c!r} is {typ.value}, not numeric"
                    )
        if rnd.group_column is not None:
            schema.column_type(rnd.group_column, f"round {rnd.index} group_column")
        where, wparams = where_clause(rnd.where, schema)
        src, sparams = self._source(spec)

        out = np.zeros(rnd.size, dtype=np.float64)
        plan = _Plan(schema)
        for t, off in zip(rnd.terms, rnd.offsets(), strict=True):
            if t.kind == "glm":  # one statement per model term (rounds with one are ungrouped)
                gsql, gparams, size = glm_sql(t, schema, src, where)
                grow = self._exec(spec, gsql, gparams + sparams + wparams, tag)[0]
                fill_glm(grow, out[off : off + size])
            else:
                plan.add(t, off)
        if not plan.selects and not plan.keyed:
            return out
        if not plan.selects and rnd.group_column is None:
            # an aggregate keeps the statement to one row: the keyed counts below are a scalar
            # subquery, which alone would be repeated on every row of the source
            plan.agg("count(*)")
        selects, params, fillers = plan.selects, plan.params, plan.fillers
        if plan.keyed:
            # Histogram-like terms: one GROUP BY over (term, key) of the in-range rows, as a
            # scalar subquery of the same statement (DuckDB's hash aggregate is several times
            # faster than its histogram() aggregate for many distinct keys).
            parts: list[str] = []
            kparams: list[Any] = []
            also = f" AND {where[6:]}" if where else ""
            for tid, key, kp, kcond, cp in plan.keyed:
                sub = f"SELECT {tid} AS term, {key} AS k FROM {src} AS t WHERE {kcond}{also}"  # noqa: S608
                parts.append(sub)
                kparams += kp + sparams + cp + wparams
            union = " UNION ALL ".join(parts)
            grouped = f"SELECT term, k, count(*) AS n FROM ({union}) AS u GROUP BY term, k"  # noqa: S608
            # one list of [term, key, count] triples (one aggregate: the three stay together
            # in every engine, where three lists' orders need not agree)
            triple = "list([CAST(term AS DOUBLE), CAST(k AS DOUBLE), CAST(n AS DOUBLE)])"
            selects.append(f"(SELECT {triple} FROM ({grouped}) AS g)")  # noqa: S608
            params = params + kparams
            fillers.append(plan.keyed_filler(len(selects) - 1))

        block = rnd.term_size
        if rnd.group_column is None:
            sql = f"SELECT {', '.join(selects)} FROM {src} AS t {where}"  # noqa: S608 - schema identifiers quoted, values are ? params
            row = self._exec(spec, sql, params + sparams + wparams, tag)[0]
            for fill in fillers:
                fill(row, out[:block])
            return out
        g = quote_ident(rnd.group_column)
        cond = f"{g} IS NOT NULL" + (f" AND ({where[6:]})" if where else "")
        sql = f"SELECT {g}, {', '.join(selects)} FROM {src} AS t WHERE {cond} GROUP BY {g}"  # noqa: S608 - schema identifiers quoted, values are ? params
        index = {v: i for i, v in enumerate(rnd.group_values)}
        other = len(rnd.group_values)
        rows = self._exec(spec, sql, params + sparams + wparams, tag)
        for r in rows:
            gi = index.get(r[0], other)
            if isinstance(r[0], bool) != isinstance(
                rnd.group_values[gi] if gi < other else r[0], bool
            ):
                gi = other  # True == 1 in Python; a bool group never matches an int value
            block_vec = np.zeros(block)
            for fill in fillers:
                fill(r[1:], block_vec)
            out[gi * block : (gi + 1) * block] += block_vec
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
        by = ", ".join(str(i + 1) for i in range(len(cols)))
        sql = f"SELECT {q}, count(*) FROM {src} AS t {wsql} GROUP BY {by}"  # noqa: S608 - schema identifiers quoted, values are ? params
        # sorted here, the same way whatever the engine (a database's collation would order
        # strings its own way): values ascending, nulls last, as DuckDB's ORDER BY
        rows = sorted(
            self._exec(spec, sql, sparams + wparams),
            key=lambda r: tuple((v is None, v if v is not None else 0) for v in r[:-1]),
        )
        return [tuple(r[:-1]) for r in rows], np.array([int(r[-1]) for r in rows], dtype=np.int64)

    def rows(
        self, dataset: str, columns: Sequence[str] | None = None, where: str | None = None
    ) -> pd.DataFrame:
        """This node's own rows of ``dataset`` (optionally some columns, filtered) as pandas."""
        spec = self.spec(dataset)
        cols = self._columns(spec, columns if columns is not None else list(spec.columns))
        wsql, wparams = where_clause(where, spec.schema)
        src, sparams = self._source(spec)
        q = ", ".join(quote_ident(c) for c in cols)
        sql = f"SELECT {q} FROM {src} AS t {wsql}"  # noqa: S608 - quoted names, ? values
        return self._frame(spec, sql, sparams + wparams, cols)

    def column_frame(self, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
        """Whole columns of ``dataset`` in the file's row order (every row, nulls kept), for
        the vertical jobs that need this node's rows aligned with other nodes'. The id column
        is readable here (only here) when the dataset declares one."""
        spec = self.spec(dataset)
        allowed = set(spec.schema.columns) | ({spec.id.column} if spec.id is not None else set())
        for c in columns:
            if c not in allowed:
                raise ConfigError(f"dataset {dataset!r}: no column {c!r}")
        src, sparams = self._source(spec)
        q = ", ".join(quote_ident(c) for c in columns)
        # DuckDB keeps the insertion (file) order of a plain scan (preserve_insertion_order is
        # on by default and never turned off here); a database or Spark has no row order, so
        # there the rows come in the order of the id column, the same at every call
        order = ""
        if spec.source is not None and spec.id is not None:
            order = f" ORDER BY {quote_ident(spec.id.column)} NULLS LAST"
        sql = f"SELECT {q} FROM {src} AS t{order}"  # noqa: S608 - quoted names
        return self._frame(spec, sql, sparams, columns)

    @staticmethod
    def _columns(spec: DatasetSpec, columns: Sequence[str]) -> list[str]:
        cols = [columns] if isinstance(columns, str) else list(columns)
        if not cols:
            raise ConfigError("expected at least one column")
        for c in cols:
            spec.schema.column_type(c, f"dataset {spec.name!r}")
        return cols


class _Plan:
    """The SELECT list of one round: aggregate expressions with their ``?`` parameters and a
    filler per term writing its entries; histogram-like terms become keyed counts."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self.selects: list[str] = []
        self.params: list[Any] = []
        self.fillers: list[_Filler] = []
        # (term id, key sql, key params, condition sql, condition params)
        self.keyed: list[tuple[int, str, list[Any], str, list[Any]]] = []
        self._keyed_fill: dict[
            int,
            Callable[
                [npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]], None
            ],
        ] = {}

    def agg(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.selects.append(sql)
        self.params.extend(params)
        return len(self.selects) - 1

    def keyed_filler(self, pos: int) -> _Filler:
        fills = self._keyed_fill

        def fill(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            triples = np.asarray(row[pos] or [], dtype=np.float64).reshape(-1, 3)
            term, key, cnt = triples[:, 0], triples[:, 1], triples[:, 2]
            for tid, f in fills.items():
                sel = term == tid
                f(key[sel], cnt[sel], out)

        return fill

    def add(self, t: Term, off: int) -> None:
        """Compile term ``t`` whose entries start at ``off`` of the block."""
        if t.kind == "moment":
            self._moment(t, off)
            return
        tid = len(self.keyed)
        if t.kind == "cells":
            self._cells(t, off, tid)
            return
        if t.kind == "marginal":
            self._marginal(t, off, tid)
            return
        col = t.columns[0]
        x = num_sql(col, self.schema, t.clamp)
        if t.kind == "octaves":
            # key = sign(x) * (floor(log2|x|) + 2000): no CASE (several times slower in
            # DuckDB); |floor(log2|x|)| <= 1075 keeps the sign recoverable. Clamping to the
            # term's exponent range and the zero count are done here, not per row.
            zeros = self.agg(f"count_if({x} = 0)")
            key = f"CAST(sign({x}) AS INTEGER) * (CAST(floor(log2(abs({x}))) AS INTEGER) + 2000)"
            self.keyed.append((tid, key, [], f"{x} <> 0", []))

            def fill_oct(
                k: npt.NDArray[np.float64], n: npt.NDArray[np.float64], out: npt.NDArray[np.float64]
            ) -> None:
                e = np.clip(np.abs(k) - 2000, OCTAVE_MIN_EXP, OCTAVE_MAX_EXP + 1)
                np.add.at(
                    out, off + OCTAVE_HALF + (np.sign(k) * (e + OCTAVE_OFFSET)).astype(np.int64), n
                )

            def fill_zero(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
                out[off + OCTAVE_HALF] = row[zeros] or 0

            self._keyed_fill[tid] = fill_oct
            self.fillers.append(fill_zero)
            return
        if t.kind == "grid":
            a, w, nb = t.start, t.width, t.nbins
            b = a + nb * w
            below = self.agg(f"count_if({x} < ?)", [a])
            above = self.agg(f"count_if({x} >= ?)", [b])
            self.keyed.append(
                (tid, f"floor(({x} - ?) * ?)", [a, 1.0 / w], f"{x} >= ? AND {x} < ?", [a, b])
            )

            def fill_grid(
                k: npt.NDArray[np.float64], n: npt.NDArray[np.float64], out: npt.NDArray[np.float64]
            ) -> None:
                np.add.at(out, off + 1 + np.clip(k, 0, nb - 1).astype(np.int64), n)

            self._keyed_fill[tid] = fill_grid
        else:  # bins: numpy.histogram semantics by exact comparisons (last bin closed)
            edges = t.edges
            nb = len(edges) - 1
            below = self.agg(f"count_if({x} < ?)", [edges[0]])
            above = self.agg(f"count_if({x} > ?)", [edges[-1]])
            idx = " + ".join(f"CAST({x} >= ? AS INTEGER)" for _ in edges[1:-1]) or "0"
            self.keyed.append(
                (tid, idx, list(edges[1:-1]), f"{x} >= ? AND {x} <= ?", [edges[0], edges[-1]])
            )

            def fill_bins(
                k: npt.NDArray[np.float64], n: npt.NDArray[np.float64], out: npt.NDArray[np.float64]
            ) -> None:
                np.add.at(out, off + 1 + np.minimum(k, nb - 1).astype(np.int64), n)

            self._keyed_fill[tid] = fill_bins

        def fill_outer(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            out[off] = row[below] or 0  # count_if over no rows is NULL
            out[off + nb + 1] = row[above] or 0

        self.fillers.append(fill_outer)

    def _cells(self, t: Term, off: int, tid: int) -> None:
        """A two-way table: the marginal of its two categorical columns (key = row level
        index * columns + column level index; rows with an unlisted or null value are not
        counted)."""
        self._marginal(Term.marginal(t.columns, t.levels, ((), ())), off, tid)

    def _marginal(self, t: Term, off: int, tid: int) -> None:
        """A 1- to 3-way table, row-major (the last column fastest): a categorical column's
        index by its levels (bound as ``?``), a numeric column's by comparisons with its cuts
        (numpy.histogram's bins, the last closed); rows outside any column's cells are not
        counted."""
        keys: list[str] = []
        kparams: list[Any] = []
        conds: list[str] = []
        cparams: list[Any] = []
        shape = t.shape
        for j, (col, levels, cuts) in enumerate(zip(t.columns, t.levels, t.cuts, strict=True)):
            stride = math.prod(shape[j + 1 :])
            q = quote_ident(col)
            if levels:
                whens = " ".join(f"WHEN {q} = ? THEN {i}" for i in range(len(levels)))
                keys.append(f"(CASE {whens} END) * {stride}")
                kparams += list(levels)
                conds.append(f"{q} IN ({', '.join('?' for _ in levels)})")
                cparams += list(levels)
            else:
                x = num_sql(col, self.schema)
                inner = cuts[1:-1]
                idx = " + ".join(f"CAST({x} >= ? AS INTEGER)" for _ in inner) or "0"
                keys.append(f"({idx}) * {stride}")
                kparams += list(inner)
                conds.append(f"{x} >= ? AND {x} <= ?")
                cparams += [cuts[0], cuts[-1]]
        size = t.size
        self.keyed.append((tid, " + ".join(keys), kparams, " AND ".join(conds), cparams))

        def fill_marginal(
            k: npt.NDArray[np.float64], n: npt.NDArray[np.float64], out: npt.NDArray[np.float64]
        ) -> None:
            idx = k.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= size):  # pragma: no cover - SQL keys
                raise DataError("a table cell's key is out of range")
            np.add.at(out, off + idx, n)

        self._keyed_fill[tid] = fill_marginal

    def _moment(self, t: Term, off: int) -> None:
        if not t.columns:
            pos = self.agg("count(*)")
        elif not any(t.powers):
            cond = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in t.columns)
            pos = self.agg(f"count_if({cond})")
        else:
            factors, params = [], []
            for c, p, center in zip(t.columns, t.powers, t.centers, strict=True):
                for _ in range(p):
                    factors.append(f"({num_sql(c, self.schema, t.clamp)} - ?)")
                    params.append(center)
            product = " * ".join(factors)
            # A NULL factor makes the product NULL (skipped by fsum); columns with power 0
            # still restrict the rows to those where they are non-null (pairwise complete).
            zero = [c for c, p in zip(t.columns, t.powers, strict=True) if p == 0]
            if zero:
                cond = " AND ".join(f"{quote_ident(c)} IS NOT NULL" for c in zero)
                product = f"CASE WHEN {cond} THEN {product} END"
            pos = self.agg(f"fsum({product})", params)

        def fill_one(row: tuple[Any, ...], out: npt.NDArray[np.float64]) -> None:
            out[off] = float(row[pos] or 0.0)  # fsum/count_if over no rows is NULL

        self.fillers.append(fill_one)
