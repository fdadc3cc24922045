"""``trustspace usage LOG...``: metered use per analyst, purpose or dataset, from audit logs."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "usage",
        help="report use per analyst, purpose or dataset from nodes' audit logs",
        description="Read one or more nodes' audit logs and report, per requester (or purpose "
        "or dataset): queries (request ids, not protocol stages), refusals, operations, "
        "epsilon spent, and the time the nodes spent on them.",
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="a node's audit log (JSON lines)")
    p.add_argument(
        "--by",
        choices=("analyst", "purpose", "dataset", "operation", "decision"),
        default="analyst",
        help="the grouping (default analyst); operation is the signed query's",
    )
    p.add_argument(
        "--queries",
        action="store_true",
        help="one row per query (request id) instead: time, analyst, purpose, operation, "
        "dataset, method, decision, nodes, steps, epsilon, rho, ms",
    )
    p.add_argument("--since", metavar="DATE", help="only lines at or after DATE (YYYY-MM-DD)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--format", choices=("table", "csv", "json"), default="table")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="JSON")


def run(args: argparse.Namespace) -> int:
    from trustspace.node.usage import queries, usage

    if args.queries:
        table = queries(args.logs, since=args.since)
    else:
        table = usage(args.logs, by=args.by, since=args.since)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    elif table.empty:
        print("no requests in the given logs" + (f" since {args.since}" if args.since else ""))
    else:
        print(table.to_string(index=False))
    return 0
