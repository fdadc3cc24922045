"""``trustspace aggregator CONFIG.toml [--check]``: run (or check) the aggregator.

Serving: SIGTERM drains, exit 0; every node the config lists is probed at start and each one
unreachable or misconfigured is logged as a warning (not fatal: a node may come later).
``--check``: connect to every node, report each, exit 0 only if all are fine (creates no file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from trustspace.cli._serve import serve_until_signal, setup_logging

log = logging.getLogger("trustspace.aggregator")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "aggregator",
        help="run the aggregator from its TOML config",
        description="Serve analysts over mutual TLS and drive the nodes listed in CONFIG. "
        "See docs/operations.md.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--check",
        action="store_true",
        help="check config and credentials, connect to every node (names, roles, datasets, "
        "schemas), print one line per node and exit: 0 if all OK, 1 otherwise (creates no file)",
    )
    p.add_argument(
        "--analyst",
        metavar="IDENTITY_DIR",
        help="with --check: ask the nodes as this analyst (a signed status query), so datasets "
        "that only named analysts may use are checked too",
    )


def run(args: argparse.Namespace) -> int:
    from trustspace.aggregator.check import check_aggregator, probe_nodes
    from trustspace.aggregator.config import load_aggregator_config
    from trustspace.aggregator.server import Aggregator

    setup_logging(args.log_level)
    config = load_aggregator_config(args.config)
    if args.check:  # no side effect: the witness log is not opened
        from trustspace.transport.ca import Credentials

        analyst = (
            Credentials.from_dir(args.analyst, expected_role="analyst") if args.analyst else None
        )
        lines, ok = check_aggregator(config, analyst=analyst)
        for line in lines:
            print(f"aggregator {config.name}: {line}")
        return 0 if ok else 1
    setup_logging(
        args.log_level,
        config.logging,
        role="aggregator",
        name=config.name,
        where=str(config.source),
    )
    agg = Aggregator(config).start()
    try:
        bad = [c for c in probe_nodes(config, agg.credentials) if not c.ok]
    except BaseException:
        agg.stop(0)
        raise
    for c in bad:
        log.warning(
            "aggregator %s: node %s at %s is %s: %s (queries run without it until it answers)",
            config.name,
            c.name,
            c.address,
            "unreachable" if c.unreachable else "misconfigured",
            c.problem,
        )
    down = f"; {len(bad)} not answering: {', '.join(c.name for c in bad)}" if bad else ""
    ready = (
        f"aggregator {config.name}: serving on {agg.address} (mutual TLS) for "
        f"{len(config.nodes)} node(s): {', '.join(n.name for n in config.nodes)}{down}"
    )
    if agg.admin is not None:
        ready += f"; admin port {agg.admin.url}"
    what = f"aggregator {config.name}"

    def on_hup() -> None:  # the revocation list (tls.crl); a bad file keeps the old one
        changed = agg.revocations.reload(force=True)
        state = "reloaded" if changed else "unchanged"
        print(f"{what}: SIGHUP: revocation list {state}: {agg.revocations.describe()}",
              file=sys.stderr, flush=True)  # fmt: skip

    return serve_until_signal(agg, what, config.drain_grace_s, ready, on_hup=on_hup)
