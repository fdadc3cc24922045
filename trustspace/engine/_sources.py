"""Where a dataset lives when it is not a file: PostgreSQL and Spark, as read-only sources.

``PostgresSource`` / ``SparkSource`` are the declarations (``[datasets.NAME] source = ...`` in
a node config, see docs/operations.md); ``open_backend`` makes the live connection the engine
sends its pushed-down statements to. Only SELECT statements are ever sent (the engine builds
every statement; ``_dialect.translate`` writes them for the engine), so only aggregates and,
for anonymization and vertical jobs, the node's own columns come back.

Safety at the source:

- PostgreSQL: every session is read only twice over (the server option
  ``default_transaction_read_only=on`` and psycopg's ``read_only`` transactions), with a
  ``statement_timeout`` and ``lock_timeout``; connections come from a bounded pool
  (``psycopg_pool``, ``pool_size``); the password comes from a file or an environment variable
  named in the config, never from the config itself, and is never logged or audited (a
  ``dsn`` with a password in it is refused). Errors name the node's dataset and source (host,
  port, database, table: no password), never a data value (a data exception is named by its
  SQLSTATE only).
- Spark: one ``SparkSession`` per node process (the master from the config: ``local[*]`` in
  tests, a cluster URL in production); every statement runs under a job tag of its request
  (``trustspace-<request id>``), so ``cancel(tag)`` stops its jobs when the query is abandoned.

Running statements register with the current ``trustspace._cancel.CancelScope`` (one per gRPC
call, see ``transport.status.guard``), which cancels them when the call ends early (its
deadline, the client going away).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from trustspace._cancel import cancellable as _cancellable
from trustspace._cancel import current_tag
from trustspace.errors import ConfigError, DataError

log = logging.getLogger("trustspace.engine")

__all__ = [
    "Backend",
    "PostgresSource",
    "SparkSource",
    "open_backend",
]

#: the source types a declared column type accepts (PostgreSQL's information_schema names)
PG_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "int": ("smallint", "integer", "bigint"),
        "float": ("real", "double precision", "numeric", "smallint", "integer", "bigint"),
        "str": ("text", "character varying", "character", "name", "citext"),
        "bool": ("boolean",),
        "date": ("date",),
    }
)
#: ... and Spark's (``DataType.typeName()``)
SPARK_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "int": ("byte", "short", "integer", "long"),
        "float": ("float", "double", "decimal", "byte", "short", "integer", "long"),
        "str": ("string", "varchar", "char"),
        "bool": ("boolean",),
        "date": ("date",),
    }
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _table_parts(table: str, where: str) -> tuple[str, ...]:
    parts = tuple(table.split("."))
    if not 1 <= len(parts) <= 3 or not all(_IDENT.match(p) for p in parts):
        raise ConfigError(
            f"{where}: table = {table!r}: expected a table or view name, optionally qualified "
            "(schema.table; letters, digits, _ and $), not SQL"
        )
    return parts


# ------------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL table or view a dataset reads (read only).

    Args:
        table: ``table`` or ``schema.table`` (a view is fine: read-only views are the usual
            way to expose a curated part of a warehouse).
        dsn: a libpq connection string or URI *without* a password; or
        connection: libpq keywords (``host``, ``port``, ``dbname``, ``user``, ``sslmode``...).
        password_file: a file holding the password (its first line; must not be readable by
            group or others), or
        password_env: an environment variable holding it.
        statement_timeout_s: the longest one statement may run (PostgreSQL cancels it).
        pool_size: most connections this dataset keeps open.
        connect_timeout_s: the longest a connection attempt may take.
    """

    table: str
    dsn: str = ""
    connection: Mapping[str, str] = field(default_factory=dict)
    password_file: Path | None = None
    password_env: str | None = None
    statement_timeout_s: float = 60.0
    pool_size: int = 4
    connect_timeout_s: float = 10.0
    kind: Literal["postgresql"] = "postgresql"

    def __post_init__(self) -> None:
        where = "postgresql source"
        _table_parts(self.table, where)
        if bool(self.dsn) == bool(self.connection):
            raise ConfigError(f"{where}: give exactly one of dsn or connection (libpq keywords)")
        if self.password_file is not None and self.password_env is not None:
            raise ConfigError(f"{where}: give password_file or password_env, not both")
        if self.connection:
            bad = [k for k in self.connection if not _IDENT.match(k)]
            if bad:
                raise ConfigError(f"{where}: connection: {bad[0]!r} is not a libpq keyword")
            if "password" in self.connection:
                raise ConfigError(
                    f"{where}: connection.password: a password does not belong in a config "
                    "file; put it in a file named by password_file (mode 0600) or in an "
                    "environment variable named by password_env"
                )
            object.__setattr__(self, "connection", MappingProxyType(dict(self.connection)))
        if self.dsn and _dsn_has_password(self.dsn):
            raise ConfigError(
                f"{where}: dsn carries a password; a password does not belong in a config "
                "file: remove it and name a password_file (mode 0600) or password_env"
            )
        for name, value, low in (
            ("statement_timeout_s", self.statement_timeout_s, 0.001),
            ("connect_timeout_s", self.connect_timeout_s, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise ConfigError(f"{where}: {name} = {value!r}: expected seconds >= {low:g}")
        if (
            isinstance(self.pool_size, bool)
            or not isinstance(self.pool_size, int)
            or not (1 <= self.pool_size <= 64)
        ):
            raise ConfigError(f"{where}: pool_size = {self.pool_size!r}: expected 1..64")

    @property
    def parts(self) -> tuple[str, ...]:
        return _table_parts(self.table, "postgresql source")

    def conninfo(self) -> dict[str, str]:
        """The libpq keywords (without the password) this source connects with."""
        from psycopg.conninfo import conninfo_to_dict

        base = conninfo_to_dict(self.dsn) if self.dsn else dict(self.connection)
        return {k: str(v) for k, v in base.items()}

    def label(self) -> str:
        """Where the data is, for messages and the audit log: no password ever."""
        try:
            info = self.conninfo()
        except Exception:  # a malformed dsn is reported by connect; the label stays safe
            info = {}
        host = info.get("host", "localhost")
        port = info.get("port", "5432")
        db = info.get("dbname", info.get("user", "?"))
        return f"postgresql {host}:{port}/{db} table {self.table}"

    def password(self) -> str | None:
        """The password from its file or environment variable (None: libpq's own means,
        e.g. a client certificate or ~/.pgpass)."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"{self.label()}: password_env names {self.password_env!r}, which is not "
                    "set in the node's environment; set it (e.g. in the service's "
                    "EnvironmentFile) or use password_file"
                )
            return value
        if self.password_file is not None:
            p = Path(self.password_file)
            try:
                mode = p.stat().st_mode
                text = p.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"{self.label()}: password_file {p}: cannot be read ({exc.strerror}); "
                    "check the path and that the node's user may read it"
                ) from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"{self.label()}: password_file {p} is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {p}`"
                )
            return text.splitlines()[0] if text else ""
        return None


def _dsn_has_password(dsn: str) -> bool:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # checked again when connecting
        return "password" in dsn.lower() or re.search(r"://[^/@]*:[^/@]*@", dsn) is not None
    try:
        return "password" in conninfo_to_dict(dsn)
    except Exception as exc:
        raise ConfigError(
            f"postgresql source: dsn is not a libpq connection string ({exc})"
        ) from None


@dataclass(frozen=True)
class SparkSource:
    """A Spark SQL table, or a Parquet / Delta path read through a ``SparkSession``.

    Args:
        table: a table of the session's catalog (``db.table``), or
        path: a Parquet or Delta directory/file, read with ``format``.
        format: ``"parquet"`` or ``"delta"`` (for ``path``).
        master: the session's master (``local[*]``, ``spark://host:7077``, ``yarn``...).
        conf: more ``spark.*`` settings for the session (the node's first Spark dataset
            makes the session; every Spark dataset of a node must agree on master and conf).
    """

    table: str = ""
    path: Path | None = None
    format: Literal["parquet", "delta"] = "parquet"
    master: str = "local[*]"
    conf: Mapping[str, str] = field(default_factory=dict)
    kind: Literal["spark"] = "spark"

    def __post_init__(self) -> None:
        where = "spark source"
        if bool(self.table) == (self.path is not None):
            raise ConfigError(f"{where}: give exactly one of table or path")
        if self.table:
            _table_parts(self.table, where)
        if self.format not in ("parquet", "delta"):
            raise ConfigError(f"{where}: format = {self.format!r}: expected parquet or delta")
        if not isinstance(self.master, str) or not self.master:
            raise ConfigError(f"{where}: master: expected e.g. 'local[*]' or 'spark://host:7077'")
        bad = [k for k in self.conf if not str(k).startswith("spark.")]
        if bad:
            raise ConfigError(f"{where}: conf: {bad[0]!r} is not a spark.* setting")
        object.__setattr__(
            self, "conf", MappingProxyType({str(k): str(v) for k, v in self.conf.items()})
        )

    def label(self) -> str:
        what = f"table {self.table}" if self.table else f"{self.format} {self.path}"
        return f"spark ({self.master}) {what}"


Source = PostgresSource | SparkSource


# ------------------------------------------------------------------------ backends
class Backend(Protocol):
    """A live source: the engine sends it statements in its dialect."""

    @property
    def source(self) -> Source: ...

    def columns(self) -> dict[str, str]:
        """Source column name -> its type name at the source."""
        ...

    def query(
        self, sql: str, params: Sequence[Any], tag: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Every row of one SELECT statement."""
        ...

    def from_sql(self) -> str:
        """The statement's FROM source, in DuckDB's quoting (translated with the rest)."""
        ...

    def close(self) -> None: ...


def _quote(parts: Sequence[str]) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class PostgresBackend:
    def __init__(self, source: PostgresSource, where: str) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ConfigError(
                f"{where}: source = 'postgresql' needs psycopg and psycopg-pool: "
                "pip install 'trustspace[postgresql]'"
            ) from None
        self.source = source
        self.where = where
        self._psycopg = psycopg
        info = source.conninfo()
        password = source.password()
        timeout_ms = max(1, round(source.statement_timeout_s * 1000))
        options = (
            f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms} "
            f"-c lock_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}"
        )
        kwargs: dict[str, Any] = {
            **info,
            "options": (info.get("options", "") + " " + options).strip(),
            "connect_timeout": str(max(1, round(source.connect_timeout_s))),
            "application_name": "trustspace-node",
        }
        if password is not None:
            kwargs["password"] = password
        # one connection first: its error (unreachable, wrong password, no such database) is
        # the one to report; a pool would only time out
        try:
            probe = psycopg.connect(**kwargs)
        except psycopg.Error as exc:
            raise DataError(
                f"{where}: cannot connect to {source.label()}: {_pg_reason(exc)}"
            ) from None
        probe.close()

        def configure(conn: Any) -> None:
            conn.read_only = True

        self._pool = ConnectionPool(
            kwargs=kwargs,
            min_size=1,
            max_size=source.pool_size,
            timeout=source.connect_timeout_s + source.statement_timeout_s,
            configure=configure,
            open=True,
            name=f"trustspace-{hashlib.sha256(where.encode()).hexdigest()[:8]}",
        )

    def from_sql(self) -> str:
        return _quote(self.source.parts)

    def columns(self) -> dict[str, str]:
        parts = self.source.parts
        schema, table = (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[-1])
        head = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s"
        if schema:
            sql = head + " AND table_schema = %s ORDER BY ordinal_position"
        else:
            sql = head + " AND table_schema = ANY(current_schemas(false)) ORDER BY ordinal_position"
        rows = self._run(sql, [table, schema] if schema else [table], None)
        if not rows:
            raise DataError(
                f"{self.where}: {self.source.label()}: no such table or view (or the user may "
                "not see it); check table = ... and that the user has SELECT on it"
            )
        return {str(r[0]): str(r[1]) for r in rows}

    def query(
        self, sql: str, params: Sequence[Any], tag: str | None = None
    ) -> list[tuple[Any, ...]]:
        return self._run(sql, list(params), tag)

    def _run(self, sql: str, params: list[Any], tag: str | None) -> list[tuple[Any, ...]]:
        psycopg = self._psycopg
        try:
            with (
                self._pool.connection() as conn,
                _cancellable(conn.cancel_safe),
                conn.cursor() as cur,
            ):
                cur.execute(sql, params, prepare=False)
                return list(cur.fetchall())
        except psycopg.errors.QueryCanceled:
            raise DataError(
                f"{self.where}: {self.source.label()}: the statement was cancelled (its "
                f"statement_timeout_s of {self.source.statement_timeout_s:g} s passed, or the "
                "request was abandoned); raise statement_timeout_s or ask for less"
            ) from None
        except psycopg.Error as exc:
            raise DataError(f"{self.where}: {self.source.label()}: {_pg_reason(exc)}") from None
        except Exception as exc:  # psycopg_pool.PoolTimeout and the like
            raise DataError(
                f"{self.where}: {self.source.label()}: no connection within "
                f"{self.source.connect_timeout_s + self.source.statement_timeout_s:g} s "
                f"({type(exc).__name__}); the database is unreachable or every one of the "
                f"{self.source.pool_size} pooled connections is busy"
            ) from None

    def close(self) -> None:
        self._pool.close()


def _pg_reason(exc: Exception) -> str:
    """What went wrong, without data values: the server's primary message for connection,
    schema and privilege errors (they name identifiers), the SQLSTATE's name otherwise."""
    diag = getattr(exc, "diag", None)
    state = getattr(exc, "sqlstate", None) or ""
    name = type(exc).__name__
    if state[:2] in ("22", "23"):  # data exceptions may quote a value
        return f"{name} (SQLSTATE {state}); a value at the source does not fit its declaration"
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or (str(exc).strip().splitlines() or [name])[0]
    hint = {
        "28P01": "; check the user and the password (password_file / password_env)",
        "28000": "; check pg_hba.conf and the user",
        "42P01": "; check table = ...",
        "42703": "; check the declared columns against the table",
        "42501": "; GRANT SELECT on the table to the node's database user",
        "3D000": "; check dbname",
    }.get(state, "")
    if not state:  # a connection that failed: libpq's message says why
        low = text.lower()
        if "password" in low or "authentication" in low:
            hint = "; check the user and the password (password_file / password_env)"
        elif "does not exist" in low:
            hint = "; check dbname and user"
        else:
            hint = "; check host, port and that the server accepts connections"
    return f"{text}{hint}"


_SPARK_LOCK = threading.Lock()


class SparkBackend:
    def __init__(self, source: SparkSource, where: str) -> None:
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError(
                f"{where}: source = 'spark' needs pyspark (and Java 17+): "
                "pip install 'trustspace[spark]'"
            ) from None
        self.source = source
        self.where = where
        with _SPARK_LOCK:
            active = SparkSession.getActiveSession()
            builder = SparkSession.builder.master(source.master).appName("trustspace-node")
            settings = {
                "spark.ui.enabled": "false",
                "spark.sql.session.timeZone": "UTC",
                **source.conf,
            }
            for k, v in settings.items():
                builder = builder.config(k, v)
            try:
                self.spark = active if active is not None else builder.getOrCreate()
            except Exception as exc:
                raise DataError(
                    f"{where}: {source.label()}: cannot start a Spark session "
                    f"({_spark_reason(exc)}); check master and that Java 17+ is installed"
                ) from None
        master = self.spark.sparkContext.master
        if master != source.master:
            raise ConfigError(
                f"{where}: spark master {source.master!r}, but this node's Spark session runs "
                f"on {master!r}; every Spark dataset of a node shares one session"
            )
        if source.table:
            self._name = source.table
            self._from = _quote(_table_parts(source.table, where))
        else:
            view = (
                "trustspace_" + hashlib.sha256(f"{where}|{source.path}".encode()).hexdigest()[:16]
            )
            try:
                df = self.spark.read.format(source.format).load(str(source.path))
                df.createOrReplaceTempView(view)
            except Exception as exc:
                raise DataError(
                    f"{where}: {source.label()}: cannot be read ({_spark_reason(exc)}); check "
                    "path and format"
                ) from None
            self._name = view
            self._from = _quote([view])

    def from_sql(self) -> str:
        return self._from

    def columns(self) -> dict[str, str]:
        name = self._name
        try:
            schema = self.spark.table(name).schema
        except Exception as exc:
            raise DataError(
                f"{self.where}: {self.source.label()}: no such table ({_spark_reason(exc)}); "
                "check table = ..."
            ) from None
        return {f.name: f.dataType.typeName() for f in schema.fields}

    def query(
        self, sql: str, params: Sequence[Any], tag: str | None = None
    ) -> list[tuple[Any, ...]]:
        sc = self.spark.sparkContext
        job_tag = f"trustspace-{tag or current_tag() or secrets.token_hex(8)}"
        sc.addJobTag(job_tag)
        try:
            with _cancellable(lambda: sc.cancelJobsWithTag(job_tag)):
                rows = self.spark.sql(sql, args=list(params)).collect()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"{self.where}: {self.source.label()}: the Spark job failed "
                f"({_spark_reason(exc)}); see the node's log and the Spark UI for job tag "
                f"{job_tag}"
            ) from None
        finally:
            sc.removeJobTag(job_tag)
        return [tuple(r) for r in rows]

    def close(self) -> None:
        pass  # the session is the process's; it stops with it


def _spark_reason(exc: Exception) -> str:
    """A Spark error's class and condition, not its message (which may quote values)."""
    cond = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        condition = cond() if callable(cond) else None
    except Exception:
        condition = None
    first = (str(exc).strip().splitlines() or [""])[0]
    if condition and condition.startswith(
        ("TABLE_OR_VIEW_NOT_FOUND", "UNRESOLVED_COLUMN", "PATH_NOT_FOUND")
    ):
        return f"{condition}: {first[:300]}"
    return condition or type(exc).__name__


def open_backend(source: Source, where: str) -> Backend:
    """The live backend of ``source`` (connects; DataError naming what failed)."""
    if isinstance(source, PostgresSource):
        return PostgresBackend(source, where)
    return SparkBackend(source, where)
