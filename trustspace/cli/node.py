"""``trustspace node CONFIG.toml``: run a node (checks its data first; SIGTERM drains, exit 0;
SIGHUP reloads). ``trustspace node reload CONFIG.toml``: reload the running node, print what
changed."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from trustspace.cli._serve import serve_until_signal, setup_logging

if TYPE_CHECKING:
    from trustspace.node.reload import Watcher
    from trustspace.node.server import Node

RELOAD_TIMEOUT_S = 60.0  # validating large datasets again can take a while


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "node",
        help="run a node from its TOML config (or `node reload CONFIG`)",
        usage="trustspace node [-h] [--check] [--log-level LEVEL] CONFIG.toml\n"
        "       trustspace node reload [--timeout S] CONFIG.toml",
        description="Serve this organisation's datasets to the data space's aggregator over "
        "mutual TLS, with the policy and audit log of CONFIG. `trustspace node reload CONFIG` "
        "checks CONFIG, makes the running node reload it live (SIGHUP) and prints what "
        "changed, or why the node refused it (exit 1). See docs/operations.md.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("reload_config", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--check",
        action="store_true",
        help="check config, certificate, data and audit log, then exit (creates no file)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=RELOAD_TIMEOUT_S,
        help=f"node reload: seconds to wait for the node's answer (default {RELOAD_TIMEOUT_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    if args.reload_config is not None:
        if args.config != "reload":
            print(
                f"trustspace node: error: unexpected argument {args.reload_config!r}; "
                "use `trustspace node CONFIG` or `trustspace node reload CONFIG`",
                file=sys.stderr,
            )
            return 2
        return run_reload(args.reload_config, args.timeout)
    from trustspace.node.config import load_node_config
    from trustspace.node.reload import PidFile, Watcher, watched_files
    from trustspace.node.server import Node

    setup_logging(args.log_level)
    config = load_node_config(args.config)
    if args.check:  # no side effect: no audit log, ledger or directory is created
        from trustspace.node.check import check_node

        for line in check_node(config):
            print(f"node {config.name}: {line}")
        print(f"node {config.name}: config, certificate and {len(config.datasets)} dataset(s) OK")
        return 0
    # `node reload` may signal as soon as the pid file exists: a SIGHUP while the node starts
    # (checking its data can take a while) must not kill it; it reloads once serving
    early: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, _frame: early.append(signum))
    # refuses a second node on the same files, before it writes to (or rotates) their log file
    pid = PidFile(config.pid_path).acquire()
    try:
        setup_logging(  # after --check, which writes nothing, not even the log file
            args.log_level, config.logging, role="node", name=config.name, where=str(config.source)
        )
        node = Node(config)
        node.start()

        def reload(trigger: str) -> None:
            node.reload(trigger=trigger)  # the report is in the audit log and the log

        if early:
            reload("SIGHUP")

        watch = Watcher(
            lambda: watched_files(node.config),
            lambda: node.config.watch_s,
            lambda: reload("watch"),
        ).start()
        ready = (
            f"node {config.name}: serving {', '.join(d.name for d in config.datasets)} on "
            f"{node.address} (mutual TLS); audit log {config.audit_path}"
        )
        if node.admin is not None:
            ready += f"; admin console {node.admin.url}"
        return serve_until_signal(
            _Stopping(node, watch),
            f"node {config.name}",
            config.drain_grace_s,
            ready,
            on_hup=lambda: reload("SIGHUP"),
        )
    finally:
        pid.release()
        signal.signal(signal.SIGHUP, previous)


class _Stopping:
    """Stops the file watch before the node drains (no reload during the drain)."""

    def __init__(self, node: Node, watch: Watcher) -> None:
        self.node, self.watch = node, watch

    def stop(self, grace: float | None = None) -> None:
        self.watch.stop()
        self.node.stop(self.node.drain_grace_s if grace is None else grace)


def run_reload(path: str, timeout: float) -> int:
    """``trustspace node reload CONFIG``: check CONFIG here (as the node will), SIGHUP the
    node named by its pid file, wait for the node's ``config.reload`` audit line, print it."""
    from trustspace.node.config import load_node_config
    from trustspace.node.reload import (
        PidFile,
        audit_size,
        describe,
        wait_for_reload,
    )
    from trustspace.node.server import build_engine, load_credentials

    config = load_node_config(path)  # a ConfigError is printed by main (exit 2)
    load_credentials(config)
    build_engine(config).close()  # every dataset checked, exactly as at start-up
    print(
        f"{path}: config, certificate and {len(config.datasets)} dataset(s) OK",
        file=sys.stderr,
    )
    pid = PidFile.running(config.pid_path)
    offset = audit_size(config.audit_path)
    os.kill(pid, signal.SIGHUP)
    rec = wait_for_reload(config.audit_path, offset, timeout)
    where = f"node {config.name} (pid {pid})"
    if rec is None:
        print(
            f"trustspace node reload: error: {where} wrote no config.reload line to "
            f"{config.audit_path} within {timeout:g} s; see the node's log",
            file=sys.stderr,
        )
        return 1
    line = f"audit line {rec.get('seq')}"
    if rec.get("decision") != "allow":
        print(
            f"{where}: reload refused, the old configuration stays in force ({line}): "
            f"{rec.get('reason', '')}",
            file=sys.stderr,
        )
        return 1
    changed = rec.get("changed") or {}
    what = describe(changed) if changed else "nothing changed"
    print(f"{where}: reload applied ({line}): {what}")
    for note in rec.get("notes") or ():
        print(f"{where}: note: {note}", file=sys.stderr)
    return 0
