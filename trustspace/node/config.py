"""Node and aggregator configuration: TOML files validated into frozen dataclasses.

Every error names the file, the key and the bad value. See ``docs/operations.md`` for every key.
The shared ``[tls]`` table is ``dir = "certs/NAME"`` (an identity directory made by
``trustspace ca issue``) or the three files ``ca``, ``cert`` and ``key``. Relative paths are
relative to the config file's directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustspace.errors import ConfigError

COLUMN_TYPES = ("int", "float", "str", "bool", "date")
FORMATS = ("csv", "parquet")
DEFAULT_NODE_PORT = 50051
DEFAULT_AGGREGATOR_PORT = 50050
ALL = "*"


class _Table:
    """A TOML table with its file and dotted key, for error messages naming both."""

    def __init__(self, path: Path, key: str, data: Any) -> None:
        self.path, self.key = path, key
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{key}] must be a table, got {data!r}")
        self.data: dict[str, Any] = data
        self._used: set[str] = set()

    def where(self, name: str) -> str:
        return f"{self.path}: key {self.key + '.' if self.key else ''}{name}"

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self._used.add(name)
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.where(name)} is missing")
            return default
        value = self.data[name]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.where(name)} = {value!r}: expected a number")
        if not isinstance(value, kind):
            names = (
                " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            )
            raise ConfigError(f"{self.where(name)} = {value!r}: expected {names}")
        return value

    def table(self, name: str, *, required: bool = False) -> _Table:
        self._used.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(f"{self.where(name)} is missing (a [{name}] table)")
            return _Table(self.path, self._sub(name), {})
        return _Table(self.path, self._sub(name), self.data[name])

    def _sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def str_list(self, name: str, default: list[str] | None = None) -> tuple[str, ...]:
        value = self.get(name, list, default if default is not None else ...)
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where(name)} = {value!r}: expected a list of strings")
        return tuple(value)

    def path_value(self, name: str, base: Path, default: Any = ...) -> Path:
        value = self.get(name, str, default)
        if value is None:
            raise ConfigError(f"{self.where(name)} is missing")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def check_unknown(self) -> None:
        extra = sorted(set(self.data) - self._used)
        if extra:
            raise ConfigError(
                f"{self.where(extra[0])}: unknown key (allowed here: "
                f"{', '.join(sorted(self._used)) or 'none'})"
            )


def _check_address(table: _Table, name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{table.where(name)} = {value!r}: expected HOST:PORT, e.g. 0.0.0.0:50051"
        )
    return value


@dataclass(frozen=True)
class TlsConfig:
    """Where this server's identity lives: CA certificate, certificate and private key."""

    ca: Path
    cert: Path
    key: Path
    #: refused peers: certificate names, or serial numbers as ``"serial:HEX"`` (a deny list)
    revoked: tuple[str, ...] = ()

    @classmethod
    def parse(cls, t: _Table, base: Path) -> TlsConfig:
        revoked = t.str_list("revoked", [])
        for r in revoked:
            if r.lower().startswith("serial:"):
                try:
                    int(r.split(":", 1)[1], 16)
                except ValueError:
                    raise ConfigError(
                        f"{t.where('revoked')}: {r!r} is not serial:HEX (e.g. serial:1f3a)"
                    ) from None
        if "dir" in t.data:
            d = t.path_value("dir", base)
            t.check_unknown()
            return cls(d / "ca.pem", d / "cert.pem", d / "key.pem", revoked)
        tls = cls(
            t.path_value("ca", base), t.path_value("cert", base), t.path_value("key", base), revoked
        )
        t.check_unknown()
        return tls


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset a node serves: file, format and column types (name -> type)."""

    name: str
    path: Path
    format: str
    columns: tuple[tuple[str, str], ...]
    delimiter: str = ","
    header: bool = True
    null_values: tuple[str, ...] = ("",)
    domains: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    bounds: tuple[tuple[str, tuple[float, float]], ...] = ()


@dataclass(frozen=True)
class Rule:
    """A policy rule: these analysts may run these operations on these datasets and columns.

    ``"*"`` in a list means "any".
    """

    analysts: tuple[str, ...]
    operations: tuple[str, ...]
    datasets: tuple[str, ...]
    columns: tuple[str, ...] = (ALL,)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per analyst: ``per_minute`` requests on average, ``burst`` at once."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ConfigError(f"rate limit must be positive, got {self}")


@dataclass(frozen=True)
class PolicyConfig:
    """The node's policy: rules, ``min_group_size``, row release and rate limit."""

    rules: tuple[Rule, ...]
    min_group_size: int = 10
    release_rows: bool = False
    rate_limit: RateLimit | None = None
    allow_two_party_anonymization: bool = False
    allow_base_histogram: bool = False


@dataclass(frozen=True)
class NodeConfig:
    """A node's whole configuration (``trustspace node CONFIG.toml``)."""

    name: str
    listen: str
    tls: TlsConfig
    datasets: tuple[DatasetConfig, ...]
    policy: PolicyConfig
    audit_path: Path
    source: Path = field(default=Path("<memory>"))
    session_timeout_s: float = 300.0
    drain_grace_s: float = 30.0
    output_dir: Path | None = None  # anonymized rows; None: audit folder/anonymized/<name>


@dataclass(frozen=True)
class NodeAddress:
    """One node as the aggregator knows it: its certificate name and address."""

    name: str
    address: str


@dataclass(frozen=True)
class AggregatorConfig:
    """The aggregator's configuration (``trustspace aggregator CONFIG.toml``)."""

    name: str
    listen: str
    tls: TlsConfig
    nodes: tuple[NodeAddress, ...]
    threshold: int | None = None
    call_timeout_s: float = 60.0
    paillier_timeout_s: float = 600.0
    source: Path = field(default=Path("<memory>"))
    drain_grace_s: float = 30.0


def _read(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        with p.open("rb") as fh:
            return p, tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None


def parse_policy(t: _Table) -> PolicyConfig:
    """Parse a ``[policy]`` table (also used by ``Federation.local(policy=...)``)."""
    mgs = t.get("min_group_size", int, 10)
    if mgs < 1:
        raise ConfigError(f"{t.where('min_group_size')} = {mgs}: must be at least 1")
    release = t.get("release_rows", bool, False)
    two_party = t.get("allow_two_party_anonymization", bool, False)
    base_histogram = t.get("allow_base_histogram", bool, False)
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
    raw_rules = t.get("rules", list, [])
    rules = []
    for i, raw in enumerate(raw_rules):
        rt = _Table(t.path, f"{t.key}.rules[{i}]", raw)
        rules.append(
            Rule(
                analysts=rt.str_list("analysts"),
                operations=rt.str_list("operations"),
                datasets=rt.str_list("datasets", [ALL]),
                columns=rt.str_list("columns", [ALL]),
            )
        )
        rt.check_unknown()
    t.check_unknown()
    return PolicyConfig(tuple(rules), mgs, release, rate, two_party, base_histogram)


def policy_from_dict(data: dict[str, Any], source: str = "<policy>") -> PolicyConfig:
    """A ``PolicyConfig`` from a dict shaped like the ``[policy]`` table."""
    return parse_policy(_Table(Path(source), "policy", data))


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node config file.

    Raises:
        ConfigError: naming the file, the key and the bad value.
    """
    p, data = _read(path)
    base = p.parent
    root = _Table(p, "", data)
    node = root.table("node", required=True)
    name = node.get("name", str)
    listen = _check_address(node, "listen", node.get("listen", str, f"0.0.0.0:{DEFAULT_NODE_PORT}"))
    timeout = node.get("session_timeout_s", (int, float), 300.0)
    grace = node.get("drain_grace_s", (int, float), 30.0)
    out_dir = node.path_value("output_dir", base) if "output_dir" in node.data else None
    node.check_unknown()
    tls = TlsConfig.parse(root.table("tls", required=True), base)
    audit = root.table("audit", required=True)
    audit_path = audit.path_value("path", base)
    audit.check_unknown()
    ds_table = root.table("datasets", required=True)
    datasets = []
    for ds_name in ds_table.data:
        dt_ = ds_table.table(ds_name)
        fmt = dt_.get("format", str, "csv")
        if fmt not in FORMATS:
            raise ConfigError(f"{dt_.where('format')} = {fmt!r}: expected one of {FORMATS}")
        cols_t = dt_.table("columns", required=True)
        cols = []
        for col, typ in cols_t.data.items():
            if typ not in COLUMN_TYPES:
                raise ConfigError(
                    f"{cols_t.where(col)} = {typ!r}: expected one of {', '.join(COLUMN_TYPES)}"
                )
            cols.append((col, typ))
        if not cols:
            raise ConfigError(f"{cols_t.where('')}: no columns declared")
        delim = dt_.get("delimiter", str, ",")
        if len(delim) != 1:
            raise ConfigError(f"{dt_.where('delimiter')} = {delim!r}: expected one character")
        nulls = tuple(dt_.get("null_values", list, [""]))
        if not all(isinstance(v, str) for v in nulls):
            raise ConfigError(f"{dt_.where('null_values')} = {list(nulls)!r}: expected strings")
        dom_t = dt_.table("domains")
        domains = []
        for col, values in dom_t.data.items():
            if col not in dict(cols):
                raise ConfigError(f"{dom_t.where(col)}: no such column in {cols_t.key}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{dom_t.where(col)} = {values!r}: expected a list of values")
            domains.append((col, tuple(values)))
        bounds_t = dt_.table("bounds")
        bounds = []
        for col, pair in bounds_t.data.items():
            if col not in dict(cols):
                raise ConfigError(f"{bounds_t.where(col)}: no such column in {cols_t.key}")
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
                or not pair[0] <= pair[1]
            ):
                raise ConfigError(
                    f"{bounds_t.where(col)} = {pair!r}: expected [low, high] with low <= high"
                )
            bounds.append((col, (float(pair[0]), float(pair[1]))))
        datasets.append(
            DatasetConfig(
                name=ds_name,
                path=dt_.path_value("path", base),
                format=fmt,
                columns=tuple(cols),
                delimiter=delim,
                header=dt_.get("header", bool, True),
                null_values=nulls,
                domains=tuple(domains),
                bounds=tuple(bounds),
            )
        )
        dt_.check_unknown()
    if not datasets:
        raise ConfigError(f"{p}: [datasets] declares no dataset; add [datasets.NAME]")
    policy = parse_policy(root.table("policy", required=True))
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
    )


def load_aggregator_config(path: str | os.PathLike[str]) -> AggregatorConfig:
    """Read and validate an aggregator config file.

    Raises:
        ConfigError: naming the file, the key and the bad value.
    """
    p, data = _read(path)
    root = _Table(p, "", data)
    agg = root.table("aggregator", required=True)
    name = agg.get("name", str, "aggregator")
    listen = _check_address(
        agg, "listen", agg.get("listen", str, f"0.0.0.0:{DEFAULT_AGGREGATOR_PORT}")
    )
    threshold = agg.get("threshold", int, 0) or None
    call_timeout = agg.get("call_timeout_s", (int, float), 60.0)
    paillier_timeout = agg.get("paillier_timeout_s", (int, float), 600.0)
    grace = agg.get("drain_grace_s", (int, float), 30.0)
    for key, val in (("call_timeout_s", call_timeout), ("paillier_timeout_s", paillier_timeout)):
        if val <= 0:
            raise ConfigError(f"{agg.where(key)} = {val}: must be positive")
    agg.check_unknown()
    tls = TlsConfig.parse(root.table("tls", required=True), p.parent)
    raw_nodes = root.get("nodes", list)
    nodes = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_nodes):
        nt = _Table(p, f"nodes[{i}]", raw)
        n_name = nt.get("name", str)
        if n_name in seen:
            raise ConfigError(f"{nt.where('name')} = {n_name!r}: duplicate node name")
        seen.add(n_name)
        nodes.append(NodeAddress(n_name, _check_address(nt, "address", nt.get("address", str))))
        nt.check_unknown()
    if not nodes:
        raise ConfigError(f"{p}: key nodes is empty; list the nodes as [[nodes]] tables")
    if threshold is not None and not 1 <= threshold <= len(nodes):
        raise ConfigError(
            f"{agg.where('threshold')} = {threshold}: must be between 1 and {len(nodes)} nodes"
        )
    root.check_unknown()
    return AggregatorConfig(
        name=name,
        listen=listen,
        tls=tls,
        nodes=tuple(nodes),
        threshold=threshold,
        call_timeout_s=float(call_timeout),
        paillier_timeout_s=float(paillier_timeout),
        source=p,
        drain_grace_s=float(grace),
    )
