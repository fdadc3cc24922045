"""DatasetSpec: where a node's dataset lives and what its columns are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from trustspace.errors import ConfigError
from trustspace.stats import ColumnType, GroupValue, TableSchema

if TYPE_CHECKING:
    from trustspace.engine._sources import PostgresSource, SparkSource
    from trustspace.vertical.ids import IdSpec

__all__ = ["DUCKDB_TYPES", "DatasetSpec"]

#: The DuckDB type each column type is read as (explicitly: no type sniffing).
DUCKDB_TYPES: Mapping[ColumnType, str] = MappingProxyType(
    {
        ColumnType.INT: "BIGINT",
        ColumnType.FLOAT: "DOUBLE",
        ColumnType.STR: "VARCHAR",
        ColumnType.BOOL: "BOOLEAN",
        ColumnType.DATE: "DATE",
    }
)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a node serves: a CSV or Parquet file, a PostgreSQL table or a Spark table,
    with declared column types.

    Args:
        name: the dataset name queries use.
        path: the file (for a file dataset; None when ``source`` is given).
        format: ``"csv"`` or ``"parquet"``.
        columns: column name -> ColumnType (or its name), in file order for CSV.
        delimiter: CSV field separator (one character).
        header: whether the CSV's first line names the columns (checked against ``columns``).
        null_values: CSV fields read as missing (default: the empty field only).
        domains: optional public group values per column (see ``TableSchema``).
        bounds: optional public ``(low, high)`` per numeric column; ``Engine.validate()``
            checks every value lies within (see ``TableSchema``).
        id: the identifier column for vertical jobs (``trustspace.vertical.ids.IdSpec``): it
            is read only to intersect with other nodes, never published in the schema nor
            usable in a statistic or filter.

    >>> spec = DatasetSpec("adult", "adult.csv", columns={"age": "int", "sex": "str"},
    ...                    delimiter=";")
    >>> spec.schema.columns["age"].value
    'int'
    >>> DatasetSpec("x", "x.csv", columns={"age": "integer"})
    Traceback (most recent call last):
    ...
    trustspace.errors.ConfigError: dataset 'x': columns.age: unknown column type 'integer'; ...
    """

    name: str
    path: Path | str | None = None
    format: Literal["csv", "parquet"] = "csv"
    columns: Mapping[str, ColumnType | str] = field(default_factory=dict)
    delimiter: str = ","
    header: bool = True
    null_values: tuple[str, ...] = ("",)
    domains: Mapping[str, tuple[GroupValue, ...]] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    id: IdSpec | None = None
    source: PostgresSource | SparkSource | None = None
    snapshot: bool = True

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"dataset name: expected a non-empty string, got {self.name!r}")
        if self.source is not None:
            if self.path is not None:
                raise ConfigError(
                    f"{where}: path is for a file dataset; a {self.source.kind} source names "
                    "its table (or its own path) instead"
                )
        elif not isinstance(self.path, str | Path) or not str(self.path):
            raise ConfigError(f"{where}: path: expected a file path, got {self.path!r}")
        else:
            object.__setattr__(self, "path", Path(self.path))
        if self.format not in ("csv", "parquet"):
            raise ConfigError(f"{where}: format: {self.format!r} is not 'csv' or 'parquet'")
        if (
            not isinstance(self.delimiter, str)
            or len(self.delimiter) != 1
            or self.delimiter in '\r\n"'
        ):
            raise ConfigError(f"{where}: delimiter: expected one character, got {self.delimiter!r}")
        if not isinstance(self.header, bool):
            raise ConfigError(f"{where}: header: expected true or false, got {self.header!r}")
        nulls = tuple(self.null_values)
        if not all(isinstance(v, str) for v in nulls):
            raise ConfigError(f"{where}: null_values: expected a list of strings")
        object.__setattr__(self, "null_values", nulls)
        if not isinstance(self.columns, Mapping) or not self.columns:
            raise ConfigError(f"{where}: columns: expected a non-empty table of name = type")
        try:
            schema = TableSchema(
                {k: ColumnType.parse(v, f"columns.{k}") for k, v in self.columns.items()},
                domains=self.domains,
                bounds=self.bounds,
            )
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        object.__setattr__(self, "columns", schema.columns)
        object.__setattr__(self, "domains", schema.domains)
        object.__setattr__(self, "bounds", schema.bounds)
        if self.id is not None:
            schema = self._public(schema, where)
        object.__setattr__(self, "_schema", schema)

    def _public(self, schema: TableSchema, where: str) -> TableSchema:
        """The schema without the identifier column (checked against its declaration)."""
        assert self.id is not None
        col = self.id.column
        typ = schema.columns.get(col)
        if typ is None:
            raise ConfigError(
                f"{where}: id_column {col!r} is not one of the declared columns "
                f"({', '.join(schema.columns)}); declare it under columns too"
            )
        if typ.value != self.id.type:
            raise ConfigError(
                f"{where}: id_column {col!r} is declared {self.id.type!r} but the column is "
                f"{typ.value!r}; make them agree (an identifier is 'str' or 'int')"
            )
        if col in schema.domains or col in schema.bounds:
            raise ConfigError(
                f"{where}: id_column {col!r} may not have domains or bounds: an identifier "
                "is never published"
            )
        rest = {c: t for c, t in schema.columns.items() if c != col}
        if not rest:
            raise ConfigError(f"{where}: the dataset has only its id_column; declare its columns")
        return TableSchema(rest, domains=schema.domains, bounds=schema.bounds)

    @property
    def kind(self) -> str:
        """``"file"``, ``"postgresql"`` or ``"spark"``."""
        return "file" if self.source is None else self.source.kind

    @property
    def file(self) -> Path:
        """The file of a file dataset (ConfigError for another source)."""
        if self.source is not None or self.path is None:
            raise ConfigError(f"dataset {self.name!r} is a {self.kind} source, not a file")
        return Path(self.path)

    @property
    def location(self) -> str:
        """Where the data is, for messages: the file, or the source's label (no secrets)."""
        return str(self.path) if self.source is None else self.source.label()

    @property
    def schema(self) -> TableSchema:
        """The public schema of this dataset."""
        schema: TableSchema = self.__dict__["_schema"]
        return schema

    @property
    def duckdb_columns(self) -> dict[str, str]:
        """Column name -> DuckDB type, in order."""
        return {k: DUCKDB_TYPES[ColumnType(v)] for k, v in self.columns.items()}
