"""``trustspace audit verify LOG``: check a node's hash-chained audit log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trustspace.node.audit import verify


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="verify a node's hash-chained audit log",
        description="Recompute the hash chain of an audit log; exit 1 and name the first bad "
        "line if a line was edited, deleted, inserted or reordered.",
    )
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser("verify", help="verify LOG's hash chain")
    v.add_argument("log", metavar="LOG")


def run(args: argparse.Namespace) -> int:
    if not Path(args.log).is_file():  # nothing to verify; not evidence of tampering either
        print(
            f"trustspace audit verify: {args.log}: no such audit log (give the node's "
            "[audit] path)",
            file=sys.stderr,
        )
        return 1
    report = verify(args.log)
    if report.ok:
        print(f"{args.log}: OK, {report.lines} lines, head {report.head}")
        print(
            "(compare the head hash and line count with an anchor kept elsewhere to detect "
            "lines cut from the end)"
        )
        return 0
    print(f"{args.log}: TAMPERED: {report.problem}", file=sys.stderr)
    print(f"the first {report.lines} lines are intact (head {report.head})", file=sys.stderr)
    return 1
