"""The aggregator's configuration: ``trustspace aggregator CONFIG.toml`` validated into dataclasses.

Every error names the file, the key and the bad value. See ``docs/operations.md`` for every key;
the ``[tls]`` table is the same as a node's (``trustspace._config.TlsConfig``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trustspace._config import (
    AdminConfig,
    LoggingConfig,
    Table,
    TlsConfig,
    check_address,
    read_toml,
)
from trustspace.errors import ConfigError

__all__ = [
    "DEFAULT_AGGREGATOR_PORT",
    "AggregatorConfig",
    "NodeAddress",
    "TlsConfig",
    "load_aggregator_config",
]

DEFAULT_AGGREGATOR_PORT = 50050


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
    #: the witness log of the nodes' audit checkpoints (``[aggregator] witness_log``; default
    #: ``NAME-witness.jsonl`` beside the config file); None: kept in memory only
    witness_log: Path | None = None
    #: [logging]: the log file (JSON lines, rotated); default: stderr only
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: [admin]: the admin port (/healthz, /metrics, an overview page); None: no admin port
    admin: AdminConfig | None = None


def load_aggregator_config(path: str | os.PathLike[str]) -> AggregatorConfig:
    """Read and validate an aggregator config file.

    Raises:
        ConfigError: naming the file, the key and the bad value.
    """
    p, data = read_toml(path)
    root = Table(p, "", data)
    agg = root.table("aggregator", required=True)
    name = agg.get("name", str, "aggregator")
    listen = check_address(
        agg, "listen", agg.get("listen", str, f"0.0.0.0:{DEFAULT_AGGREGATOR_PORT}")
    )
    threshold = agg.get("threshold", int, 0) or None
    call_timeout = agg.get("call_timeout_s", (int, float), 60.0)
    paillier_timeout = agg.get("paillier_timeout_s", (int, float), 600.0)
    grace = agg.get("drain_grace_s", (int, float), 30.0)
    witness_log = (
        agg.path_value("witness_log", p.parent)
        if "witness_log" in agg.data
        else p.parent / f"{name}-witness.jsonl"
    )
    for key, val in (("call_timeout_s", call_timeout), ("paillier_timeout_s", paillier_timeout)):
        if val <= 0:
            raise ConfigError(f"{agg.where(key)} = {val}: must be positive")
    agg.check_unknown()
    tls = TlsConfig.parse(root.table("tls", required=True), p.parent)
    raw_nodes = root.get("nodes", list)
    nodes = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_nodes):
        nt = Table(p, f"nodes[{i}]", raw)
        n_name = nt.get("name", str)
        if n_name in seen:
            raise ConfigError(f"{nt.where('name')} = {n_name!r}: duplicate node name")
        seen.add(n_name)
        nodes.append(NodeAddress(n_name, check_address(nt, "address", nt.get("address", str))))
        nt.check_unknown()
    if not nodes:
        raise ConfigError(f"{p}: key nodes is empty; list the nodes as [[nodes]] tables")
    if threshold is not None and not 1 <= threshold <= len(nodes):
        raise ConfigError(
            f"{agg.where('threshold')} = {threshold}: must be between 1 and {len(nodes)} nodes"
        )
    logging = LoggingConfig.parse(root.table("logging"), p.parent)
    admin = AdminConfig.parse(root.table("admin"), listen) if "admin" in data else None
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
        witness_log=witness_log,
        logging=logging,
        admin=admin,
    )
