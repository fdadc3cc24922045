"""``trustspace node CONFIG.toml``: run a node (checks its data first; SIGTERM drains, exit 0)."""

from __future__ import annotations

import argparse
from typing import Any

from trustspace.cli._serve import serve_until_signal, setup_logging


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "node",
        help="run a node from its TOML config",
        description="Serve this organisation's datasets to the data space's aggregator over "
        "mutual TLS, with the policy and audit log of CONFIG. See docs/operations.md.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--check", action="store_true", help="check config, certificate and data, then exit"
    )


def run(args: argparse.Namespace) -> int:
    from trustspace.node.config import load_node_config
    from trustspace.node.server import Node

    setup_logging(args.log_level)
    config = load_node_config(args.config)
    node = Node(config)
    if args.check:
        node.stop(0)
        print(f"node {config.name}: config, certificate and {len(config.datasets)} dataset(s) OK")
        return 0
    node.start()
    ready = (
        f"node {config.name}: serving {', '.join(d.name for d in config.datasets)} on "
        f"{node.address} (mutual TLS); audit log {config.audit_path}"
    )
    if node.admin is not None:
        ready += f"; admin console {node.admin.url}"
    return serve_until_signal(node, f"node {config.name}", config.drain_grace_s, ready)
