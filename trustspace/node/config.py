"""A node's configuration: ``trustspace node CONFIG.toml`` validated into frozen dataclasses.

Every error names the file, the key and the bad value. See ``docs/operations.md`` for every key.
The ``[tls]`` table (``trustspace._config.TlsConfig``) is ``dir = "certs/NAME"`` (an identity
directory made by ``trustspace ca issue``) or the three files ``ca``, ``cert`` and ``key``.
Relative paths are relative to the config file's directory. Each ``[datasets.NAME]`` table
becomes a ``trustspace.engine.DatasetSpec``; the aggregator's config is
``trustspace.aggregator.config``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustspace._config import (
    AdminConfig,
    LoggingConfig,
    Table,
    TlsConfig,
    check_address,
    read_toml,
)
from trustspace.engine import ColumnType, DatasetSpec
from trustspace.errors import ConfigError
from trustspace.node.audit import CHECKPOINT_EVERY
from trustspace.stats import OPS as STAT_OPS

__all__ = [
    "ALL",
    "ANON_STEPS",
    "DEFAULT_NODE_PORT",
    "FORMATS",
    "OPERATIONS",
    "DPPolicy",
    "NodeConfig",
    "PolicyConfig",
    "RateLimit",
    "Rule",
    "TlsConfig",
    "load_node_config",
    "parse_policy",
    "policy_from_dict",
]

FORMATS = ("csv", "parquet")
SOURCES = ("file", "postgresql", "spark")
MIN_WATCH_S = 0.5  # [node] watch_s: polling a few files' mtimes faster than this is only noise
DEFAULT_NODE_PORT = 50051
ALL = "*"
_COLUMN_TYPES = tuple(t.value for t in ColumnType)  # the engine's types, for the messages
#: The steps of a federated anonymization a node checks its policy for (``anonymize.*``: all).
ANON_STEPS = ("anonymize.histogram", "anonymize.apply", "anonymize.release")
#: Every operation a ``[[policy.rules]]`` table may name: the statistics, the anonymization
#: steps, a family ``"anonymize.*"`` and ``"*"`` (any). Anything else is a typo that would
#: never match, so the config is refused.
#: The vertical operations: a private set intersection (``fed.intersect``).
VERTICAL_OPS = ("intersect",)
OPERATIONS = (*STAT_OPS, *ANON_STEPS, "anonymize.*", *VERTICAL_OPS, ALL)


def _check_operations(t: Table, ops: tuple[str, ...]) -> tuple[str, ...]:
    """``ops`` (key ``operations`` of rule table ``t``) if each is a known operation."""
    for op in ops:
        if op not in OPERATIONS:
            close = difflib.get_close_matches(op, OPERATIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{t.where('operations')}: {op!r} is not an operation; {hint}valid operations: "
                f"{', '.join(OPERATIONS)}"
            )
    return ops


@dataclass(frozen=True)
class Rule:
    """A policy rule: these analysts may run these operations on these datasets and columns.

    ``"*"`` in a list means "any".
    """

    analysts: tuple[str, ...]
    operations: tuple[str, ...]
    datasets: tuple[str, ...]
    columns: tuple[str, ...] = (ALL,)
    #: the purposes the analyst must declare (signed with the query); ``"*"``: any, or none
    purposes: tuple[str, ...] = (ALL,)
    #: under ``[policy.dp] required``: the requests this rule allows may have exact answers
    exact: bool = False


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per analyst: ``per_minute`` requests on average, ``burst`` at once."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ConfigError(f"rate limit must be positive, got {self}")


@dataclass(frozen=True)
class DPPolicy:
    """``[policy.dp]``: differential privacy at this node.

    ``epsilon``/``delta``: each analyst's budget per dataset (all queries composed, zCDP), with
    ``analysts.NAME = {epsilon, delta}`` overriding it for one analyst; ``required``: every
    statistic must be DP, except for the analysts listed in ``exact_analysts``;
    ``colluders``: how many other nodes may side with the analyst and subtract their own noise
    (this node then adds enough that ``t - colluders`` shares reach the target).
    """

    epsilon: float
    delta: float
    required: bool = False
    colluders: int = 0
    exact_analysts: tuple[str, ...] = ()
    analysts: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def budget_of(self, analyst: str) -> tuple[float, float]:
        """The (epsilon, delta) budget of ``analyst`` on each dataset."""
        return self.analysts.get(analyst, (self.epsilon, self.delta))


@dataclass(frozen=True)
class PolicyConfig:
    """The node's policy: rules, ``min_group_size``, row release and rate limit."""

    rules: tuple[Rule, ...]
    min_group_size: int = 10
    release_rows: bool = False
    rate_limit: RateLimit | None = None
    allow_two_party_anonymization: bool = False
    allow_base_histogram: bool = False
    #: the fewest nodes this node computes with: a secure sum over fewer is refused (with two,
    #: each node learns the other's aggregate by subtracting its own from the total)
    min_nodes: int = 3
    #: the smallest k of a k-anonymous release this node takes part in (0: no floor)
    min_k: int = 0
    #: the data space's members (node names) and whether an exact (non-DP) answer needs every
    #: one of them in the session: an answer over fewer, subtracted from an earlier answer
    #: over all, would give the missing member's aggregate (differencing by dropouts)
    members: tuple[str, ...] = ()
    exact_requires_all: bool = False
    #: ``[policy.dp]``; None: this node answers no differentially private query
    dp: DPPolicy | None = None
    #: ``glm_min_records_per_parameter``: a glm/ols model with fewer records per parameter is
    #: refused (DataSHIELD's nfilter.glm; a saturated model reproduces its records)
    glm_min_records_per_parameter: int = 10


@dataclass(frozen=True)
class EngineConfig:
    """``[engine]``: the embedded DuckDB's limits (its file datasets; PostgreSQL and Spark
    sources run at their own servers).

    ``memory_limit`` (e.g. ``"1GB"``): DuckDB's own limit, past which it spills to
    ``temp_directory`` (out of core) rather than growing; ``threads``: its worker threads
    (default: every core); ``database``: a file for the loaded snapshots instead of memory.
    """

    memory_limit: str | None = None
    threads: int | None = None
    temp_directory: Path | None = None
    database: Path | None = None

    @classmethod
    def parse(cls, t: Table, base: Path) -> EngineConfig:
        limit = t.get("memory_limit", str, None)
        if limit is not None and not re.fullmatch(
            r"\s*\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", limit
        ):
            raise ConfigError(
                f"{t.where('memory_limit')} = {limit!r}: expected an amount such as '1GB' or "
                "'512MiB'"
            )
        threads = t.get("threads", int, None)
        if threads is not None and not 1 <= threads <= 1024:
            raise ConfigError(f"{t.where('threads')} = {threads}: expected 1..1024")
        tmp = t.path_value("temp_directory", base) if "temp_directory" in t.data else None
        db = t.path_value("database", base) if "database" in t.data else None
        t.check_unknown()
        return cls(limit, threads, tmp, db)


@dataclass(frozen=True)
class NodeConfig:
    """A node's whole configuration (``trustspace node CONFIG.toml``).

    ``datasets`` are the engine's own specs, one per ``[datasets.NAME]`` table.
    """

    name: str
    listen: str
    tls: TlsConfig
    datasets: tuple[DatasetSpec, ...]
    policy: PolicyConfig
    audit_path: Path
    source: Path = field(default=Path("<memory>"))
    session_timeout_s: float = 300.0
    drain_grace_s: float = 30.0
    output_dir: Path | None = None  # anonymized rows; None: audit folder/anonymized/<name>
    checkpoint_every: int = CHECKPOINT_EVERY  # [audit] checkpoint_every: sign at least this often
    #: [audit] dp_ledger: the DP budget ledger (SQLite); None: next to the audit log
    dp_ledger: Path | None = None
    #: [logging]: the log file (JSON lines, rotated); default: stderr only
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: [node] pid_file: where ``trustspace node`` keeps its pid (``trustspace node reload``
    #: signals it); None: next to the audit log, ``AUDIT.pid``
    pid_file: Path | None = None
    #: [node] watch_s: reload live when the config file (or a file it names for revocation)
    #: changes, checked every this many seconds; 0: only on SIGHUP / ``trustspace node reload``
    watch_s: float = 0.0

    @property
    def pid_path(self) -> Path:
        """Where ``trustspace node`` writes its pid."""
        if self.pid_file is not None:
            return self.pid_file
        return self.audit_path.with_name(self.audit_path.name + ".pid")

    #: [admin]: the admin port (operator console, /healthz, /metrics); None: no admin port
    admin: AdminConfig | None = None
    #: [engine]: the embedded DuckDB's memory limit, threads, spill directory
    engine: EngineConfig = field(default_factory=lambda: EngineConfig())

    @property
    def dp_ledger_path(self) -> Path:
        """Where this node keeps its DP budget ledger."""
        if self.dp_ledger is not None:
            return self.dp_ledger
        return self.audit_path.with_name(self.audit_path.name + ".dp.sqlite")

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_every, bool) or self.checkpoint_every < 1:
            raise ConfigError(
                f"{self.source}: key audit.checkpoint_every = {self.checkpoint_every!r}: must "
                "be at least 1 (lines between two signed audit checkpoints)"
            )


def parse_policy(t: Table) -> PolicyConfig:
    """Parse a ``[policy]`` table (also used by ``Federation.local(policy=...)``)."""
    mgs = t.get("min_group_size", int, 10)
    if mgs < 1:
        raise ConfigError(f"{t.where('min_group_size')} = {mgs}: must be at least 1")
    release = t.get("release_rows", bool, False)
    two_party = t.get("allow_two_party_anonymization", bool, False)
    base_histogram = t.get("allow_base_histogram", bool, False)
    min_nodes = t.get("min_nodes", int, 3)
    if min_nodes < 2:
        raise ConfigError(
            f"{t.where('min_nodes')} = {min_nodes}: must be at least 2 (a secure sum of one "
            "node is that node's own aggregate)"
        )
    min_k = t.get("min_k", int, 0)
    if min_k < 0:
        raise ConfigError(f"{t.where('min_k')} = {min_k}: must be 0 (no floor) or more")
    members = t.str_list("members", [])
    exact_all = t.get("exact_requires_all", bool, False)
    if exact_all and not members:
        raise ConfigError(
            f"{t.where('exact_requires_all')} = true needs {t.where('members')}: list the data "
            "space's node names"
        )
    rate: RateLimit | None = None
    if "rate_limit" in t.data:
        rt = t.table("rate_limit")
        per_minute = rt.get("per_minute", (int, float))
        burst = rt.get("burst", int, max(1, int(per_minute)))
        if per_minute <= 0:
            raise ConfigError(f"{rt.where('per_minute')} = {per_minute}: must be positive")
        if burst < 1:
            raise ConfigError(f"{rt.where('burst')} = {burst}: must be at least 1")
        rt.check_unknown()
        rate = RateLimit(float(per_minute), burst)
    dp = _parse_dp(t.table("dp")) if "dp" in t.data else None
    glm_rpp = t.get("glm_min_records_per_parameter", int, 10)
    if glm_rpp < 1:
        raise ConfigError(
            f"{t.where('glm_min_records_per_parameter')} = {glm_rpp}: must be at least 1 "
            "(records of a regression model per parameter it estimates)"
        )
    raw_rules = t.get("rules", list, [])
    rules = []
    for i, raw in enumerate(raw_rules):
        rt = Table(t.path, f"{t.key}.rules[{i}]", raw)
        rules.append(
            Rule(
                analysts=rt.str_list("analysts"),
                operations=_check_operations(rt, rt.str_list("operations")),
                datasets=rt.str_list("datasets", [ALL]),
                columns=rt.str_list("columns", [ALL]),
                purposes=rt.str_list("purposes", [ALL]),
                exact=rt.get("exact", bool, False),
            )
        )
        rt.check_unknown()
    t.check_unknown()
    return PolicyConfig(
        tuple(rules),
        mgs,
        release,
        rate,
        two_party,
        base_histogram,
        min_nodes,
        min_k,
        tuple(members),
        exact_all,
        dp,
        glm_rpp,
    )


def _budget_pair(t: Table, eps_default: Any = ..., delta_default: Any = ...) -> tuple[float, float]:
    eps = t.get("epsilon", (int, float), eps_default)
    delta = t.get("delta", (int, float), delta_default)
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ConfigError(
            f"{t.where('epsilon')} = {eps!r}: must be a finite number > 0 (the total epsilon an "
            "analyst may spend on each dataset)"
        )
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigError(f"{t.where('delta')} = {delta!r}: must be in (0, 1), e.g. 1e-6")
    return float(eps), float(delta)


def _parse_dp(t: Table) -> DPPolicy:
    """Parse ``[policy.dp]`` (see ``DPPolicy``)."""
    eps, delta = _budget_pair(t)
    required = t.get("required", bool, False)
    colluders = t.get("colluders", int, 0)
    if colluders < 0:
        raise ConfigError(f"{t.where('colluders')} = {colluders}: must be 0 or more")
    exact = t.str_list("exact_analysts", [])
    analysts: dict[str, tuple[float, float]] = {}
    if "analysts" in t.data:
        at = t.table("analysts")
        for name in at.data:
            sub = at.table(name)
            analysts[name] = _budget_pair(sub, eps, delta)
            sub.check_unknown()
        at.check_unknown()
    t.check_unknown()
    return DPPolicy(eps, delta, required, colluders, exact, analysts)


def policy_from_dict(data: dict[str, Any], source: str = "<policy>") -> PolicyConfig:
    """A ``PolicyConfig`` from a dict shaped like the ``[policy]`` table."""
    return parse_policy(Table(Path(source), "policy", data))


def _parse_dataset(parent: Table, name: str, base: Path) -> DatasetSpec:
    """The ``[datasets.NAME]`` table as a DatasetSpec; ConfigError naming file, key and value.

    The keys are checked here first, so that the common mistakes name their exact key;
    whatever ``DatasetSpec`` checks beyond (distinct domain values, bounds only on numeric
    columns, ...) is re-raised with the file and the dataset's key in front.
    """
    t = parent.table(name)
    kind = t.get("source", str, "file")
    if kind not in SOURCES:
        raise ConfigError(f"{t.where('source')} = {kind!r}: expected one of {SOURCES}")
    source = _parse_source(t, kind, base)
    fmt = t.get("format", str, "csv") if source is None else "csv"
    if fmt not in FORMATS:
        raise ConfigError(f"{t.where('format')} = {fmt!r}: expected one of {FORMATS}")
    cols_t = t.table("columns", required=True)
    cols: dict[str, str] = {}
    for col, typ in cols_t.data.items():
        if not isinstance(typ, str) or typ not in _COLUMN_TYPES:
            raise ConfigError(
                f"{cols_t.where(col)} = {typ!r}: expected one of {', '.join(_COLUMN_TYPES)}"
            )
        cols[col] = typ
    if not cols:
        raise ConfigError(f"{cols_t.where('')}: no columns declared")
    delim = t.get("delimiter", str, ",")
    if len(delim) != 1:
        raise ConfigError(f"{t.where('delimiter')} = {delim!r}: expected one character")
    nulls = tuple(t.get("null_values", list, [""]))
    if not all(isinstance(v, str) for v in nulls):
        raise ConfigError(f"{t.where('null_values')} = {list(nulls)!r}: expected strings")
    dom_t = t.table("domains")
    domains: dict[str, tuple[Any, ...]] = {}
    for col, values in dom_t.data.items():
        if col not in cols:
            raise ConfigError(f"{dom_t.where(col)}: no such column in {cols_t.key}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{dom_t.where(col)} = {values!r}: expected a list of values")
        domains[col] = tuple(values)
    bounds_t = t.table("bounds")
    bounds: dict[str, tuple[float, float]] = {}
    for col, pair in bounds_t.data.items():
        if col not in cols:
            raise ConfigError(f"{bounds_t.where(col)}: no such column in {cols_t.key}")
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
            or not pair[0] < pair[1]
        ):
            raise ConfigError(
                f"{bounds_t.where(col)} = {pair!r}: expected [low, high] with low < high"
            )
        bounds[col] = (float(pair[0]), float(pair[1]))
    path = t.path_value("path", base) if source is None else None
    header = t.get("header", bool, True)
    snapshot = t.get("snapshot", bool, True)
    if snapshot is False and source is not None:
        raise ConfigError(f"{t.where('snapshot')}: is for a file dataset, not a {kind} source")
    id_spec = _parse_id_column(t, cols)
    t.check_unknown()
    try:
        return DatasetSpec(
            name=name,
            path=path,
            format="parquet" if fmt == "parquet" else "csv",
            columns=cols,
            delimiter=delim,
            header=header,
            null_values=nulls,
            domains=domains,
            bounds=bounds,
            id=id_spec,
            source=source,
            snapshot=snapshot,
        )
    except ConfigError as exc:
        # DatasetSpec names the dataset and its key, not the file: put both in front
        detail = str(exc).removeprefix(f"dataset {name!r}: ")
        raise ConfigError(f"{parent.where(name)}: {detail}") from None


def _parse_source(t: Table, kind: str, base: Path) -> Any:
    """The ``source = "postgresql" | "spark"`` keys of a dataset (None for a file), checked
    here so that each mistake names its key."""
    if kind == "file":
        return None
    from trustspace.engine import PostgresSource, SparkSource

    for key in ("delimiter", "header", "null_values"):
        if key in t.data:
            raise ConfigError(f"{t.where(key)}: is for a file dataset, not a {kind} source")
    try:
        if kind == "postgresql":
            for key in ("path", "format"):
                if key in t.data:
                    raise ConfigError(
                        f"{t.where(key)}: a postgresql source reads table = ..., not a file"
                    )
            conn = t.table("connection")
            params: dict[str, str] = {}
            for k, v in conn.data.items():
                if isinstance(v, bool) or not isinstance(v, str | int):
                    raise ConfigError(f"{conn.where(k)} = {v!r}: expected a string or a number")
                params[k] = str(v)
            return PostgresSource(
                table=t.get("table", str),
                dsn=t.get("dsn", str, ""),
                connection=params,
                password_file=(
                    t.path_value("password_file", base) if "password_file" in t.data else None
                ),
                password_env=t.get("password_env", str, None),
                statement_timeout_s=t.get("statement_timeout_s", (int, float), 60.0),
                pool_size=t.get("pool_size", int, 4),
                connect_timeout_s=t.get("connect_timeout_s", (int, float), 10.0),
            )
        conf = t.table("spark_conf")
        for k, v in conf.data.items():
            if not isinstance(v, str | int | float | bool):
                raise ConfigError(f"{conf.where(k)} = {v!r}: expected a string or a number")
        return SparkSource(
            table=t.get("table", str, ""),
            path=t.path_value("path", base) if "path" in t.data else None,
            format=t.get("format", str, "parquet"),
            master=t.get("master", str, "local[*]"),
            conf={
                k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in conf.data.items()
            },
        )
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith((f"{kind} source: ", "postgresql source: ", "spark source: ")):
            msg = f"{t.where('source')} = {kind!r}: " + msg.split(": ", 1)[1]
        raise ConfigError(msg) from None


def _parse_id_column(t: Table, cols: Mapping[str, str]) -> Any:
    """``id_column = "cid"`` or ``id_column = {column = "cid", case = "lower", ...}``: the
    identifier a vertical job intersects on (``trustspace.vertical.ids.IdSpec``)."""
    raw = t.get("id_column", (str, dict), None)
    if raw is None:
        return None
    from trustspace.vertical.ids import IdSpec

    table = {"column": raw} if isinstance(raw, str) else dict(raw)
    col = table.get("column")
    if isinstance(col, str) and col in cols and "type" not in table and cols[col] in ("str", "int"):
        table["type"] = cols[col]  # the identifier's type defaults to its column's
    return IdSpec.from_table(table, t.where("id_column"))


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node config file.

    Raises:
        ConfigError: naming the file, the key and the bad value.
    """
    p, data = read_toml(path)
    base = p.parent
    root = Table(p, "", data)
    node = root.table("node", required=True)
    name = node.get("name", str)
    listen = check_address(node, "listen", node.get("listen", str, f"0.0.0.0:{DEFAULT_NODE_PORT}"))
    timeout = node.get("session_timeout_s", (int, float), 300.0)
    grace = node.get("drain_grace_s", (int, float), 30.0)
    out_dir = node.path_value("output_dir", base) if "output_dir" in node.data else None
    pid_file = node.path_value("pid_file", base) if "pid_file" in node.data else None
    watch_s = node.get("watch_s", (int, float), 0)
    if not (math.isfinite(watch_s) and (watch_s == 0 or watch_s >= MIN_WATCH_S)):
        raise ConfigError(
            f"{node.where('watch_s')} = {watch_s!r}: must be 0 (reload only on SIGHUP or "
            f"`trustspace node reload`) or at least {MIN_WATCH_S:g} (seconds between checks)"
        )
    node.check_unknown()
    tls = TlsConfig.parse(root.table("tls", required=True), base)
    audit = root.table("audit", required=True)
    audit_path = audit.path_value("path", base)
    dp_ledger = (
        audit.path_value("dp_ledger", base)
        if "dp_ledger" in audit.data
        else audit_path.with_name(audit_path.name + ".dp.sqlite")
    )
    every = audit.get("checkpoint_every", int, CHECKPOINT_EVERY)
    if every < 1:
        raise ConfigError(f"{audit.where('checkpoint_every')} = {every}: must be at least 1")
    audit.check_unknown()
    ds_table = root.table("datasets", required=True)
    datasets = [_parse_dataset(ds_table, ds_name, base) for ds_name in ds_table.data]
    if not datasets:
        raise ConfigError(f"{p}: [datasets] declares no dataset; add [datasets.NAME]")
    policy = parse_policy(root.table("policy", required=True))
    logging = LoggingConfig.parse(root.table("logging"), base)
    admin = AdminConfig.parse(root.table("admin"), listen) if "admin" in data else None
    engine = EngineConfig.parse(root.table("engine"), base)
    root.check_unknown()
    return NodeConfig(
        name=name,
        listen=listen,
        tls=tls,
        datasets=tuple(datasets),
        policy=policy,
        audit_path=audit_path,
        source=p,
        session_timeout_s=float(timeout),
        drain_grace_s=float(grace),
        output_dir=out_dir,
        checkpoint_every=every,
        dp_ledger=dp_ledger,
        logging=logging,
        pid_file=pid_file,
        watch_s=float(watch_s),
        admin=admin,
        engine=engine,
    )
