"""A node's local query engine over its own CSV/Parquet files (DuckDB, out of core).

Map:

- ``DatasetSpec(name, path, format="csv"|"parquet", columns, delimiter=",", header=True,
  null_values=("",), domains={}, bounds={})``: frozen, validated (ConfigError naming the key).
- ``Engine(specs, *, database=":memory:", load=True)``: ``validate()`` (start-up check:
  missing file, header, every value parses as its declared type (strictly: '4.5' is not an
  int), floats finite, declared bounds hold; DataError naming file, line and column; with
  ``load`` the typed read also loads a columnar snapshot that later rounds scan),
  ``schema(name) -> TableSchema``, ``compute(round) -> np.ndarray`` (float64 local vector of
  a ``trustspace.stats.Round``, ONE DuckDB statement per round, thread-safe),
  ``tuple_histogram(dataset, columns, where) -> (tuples, counts)`` and
  ``rows(dataset, columns, where) -> DataFrame`` for anonymization.
- ``parse_filter(text)`` (from ``trustspace.stats``) and ``compile_filter(ast, schema) ->
  (sql, params)``: the safe ``where=`` language; identifiers only from the schema (quoted),
  values only as ``?`` parameters. Never ``eval``, never SQL built from values.
- ``PostgresSource(table, dsn | connection, password_file | password_env, ...)`` and
  ``SparkSource(table | path, format, master, conf)``: a ``DatasetSpec``'s ``source`` when the
  rows live in PostgreSQL or Spark; the engine pushes each round down as one statement there
  (``_dialect.translate``), read only (``_sources``).
- ``ColumnType`` (re-exported from ``trustspace.stats``).
- ``LocalEngine``: the Protocol of what a node's handlers call (``schema``, ``compute``,
  ``tuple_histogram``, ``rows``); ``Engine`` implements it.

Example::

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "p.csv").write_text("age;sex\\n30;F\\n40;M\\n;M\\n")
    >>> eng = Engine({"p": DatasetSpec("p", d / "p.csv", columns={"age": "int", "sex": "str"},
    ...                                delimiter=";")})
    >>> eng.validate()
    >>> from trustspace.stats import Round, Term
    >>> eng.compute(Round("p", "sex = 'M'", (Term.rows(), Term.count("age")))).tolist()
    [2.0, 1.0]
"""

from __future__ import annotations

from trustspace.engine._engine import Engine
from trustspace.engine._protocol import LocalEngine
from trustspace.engine._sources import PostgresSource, SparkSource
from trustspace.engine._spec import DUCKDB_TYPES, DatasetSpec
from trustspace.engine._sql import compile_filter, quote_ident, where_clause
from trustspace.stats import ColumnType, parse_filter

__all__ = [
    "DUCKDB_TYPES",
    "ColumnType",
    "DatasetSpec",
    "Engine",
    "LocalEngine",
    "PostgresSource",
    "SparkSource",
    "compile_filter",
    "parse_filter",
    "quote_ident",
    "where_clause",
]
