"""``trustspace aggregator CONFIG.toml``: run the aggregator (SIGTERM drains, exit 0)."""

from __future__ import annotations

import argparse
from typing import Any

from trustspace.cli._serve import serve_until_signal, setup_logging


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "aggregator",
        help="run the aggregator from its TOML config",
        description="Serve analysts over mutual TLS and drive the nodes listed in CONFIG. "
        "See docs/operations.md.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def run(args: argparse.Namespace) -> int:
    from trustspace.aggregator.config import load_aggregator_config
    from trustspace.aggregator.server import Aggregator

    setup_logging(args.log_level)
    config = load_aggregator_config(args.config)
    agg = Aggregator(config).start()
    ready = (
        f"aggregator {config.name}: serving on {agg.address} (mutual TLS) for "
        f"{len(config.nodes)} node(s): {', '.join(n.name for n in config.nodes)}"
    )
    if agg.admin is not None:
        ready += f"; admin port {agg.admin.url}"
    return serve_until_signal(agg, f"aggregator {config.name}", config.drain_grace_s, ready)
