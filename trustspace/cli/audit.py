"""``trustspace audit verify LOG [--witness FILE]``: check a node's audit log, chain and tail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trustspace.aggregator.witness import read_witness
from trustspace.errors import AuthenticationError
from trustspace.node.audit import (
    GENESIS,
    Checkpoint,
    VerifyReport,
    check_tail,
    checkpoint_path,
    read_checkpoint,
    verify,
)
from trustspace.transport.checkpoint import verify_checkpoint


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="verify a node's hash-chained audit log",
        description="Recompute the hash chain of an audit log and compare it with the node's "
        "signed checkpoints; exit 1 and say what failed if a line was edited, deleted, "
        "inserted or reordered, or the log is shorter than (or rewritten since) a checkpoint.",
    )
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser(
        "verify",
        help="verify LOG's hash chain and tail",
        description="The tail (lines cut from the end, the file emptied, the chain recomputed "
        "after dropping a line) is checked against the node's checkpoint file (LOG.checkpoint "
        "by default) and, with --witness, against the aggregator's witness log.",
    )
    v.add_argument("log", metavar="LOG")
    v.add_argument(
        "--witness",
        metavar="FILE",
        help="the aggregator's witness log ([aggregator] witness_log) to check the tail against",
    )
    v.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="the node's checkpoint file (default: LOG.checkpoint, if it exists)",
    )
    v.add_argument(
        "--node",
        metavar="NAME",
        help="the node whose log this is (default: the name in the checkpoint file)",
    )
    v.add_argument(
        "--ca",
        metavar="CA_PEM",
        help="the data space's CA certificate: also check the checkpoint file's signature",
    )


def _fail(log: str, problem: str) -> int:
    print(f"{log}: TAMPERED: {problem}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    log = args.log
    if not Path(log).is_file() and not (
        args.witness or args.checkpoint or checkpoint_path(log).is_file()
    ):  # nothing to verify; not evidence of tampering either
        print(
            f"trustspace audit verify: {log}: no such audit log (give the node's [audit] path)",
            file=sys.stderr,
        )
        return 1
    checks: list[tuple[str, Checkpoint]] = []
    node: str | None = args.node
    notes: list[str] = []
    cp_file = Path(args.checkpoint) if args.checkpoint else checkpoint_path(log)
    if args.checkpoint or cp_file.is_file():
        try:
            signed = read_checkpoint(cp_file)
        except ValueError as exc:
            print(f"trustspace audit verify: {exc}", file=sys.stderr)
            return 1
        if args.ca:
            try:
                ca_pem = Path(args.ca).read_bytes()
            except OSError as exc:
                print(f"trustspace audit verify: {args.ca}: {exc.strerror}", file=sys.stderr)
                return 1
            try:
                verify_checkpoint(ca_pem, signed, node=node, where=str(cp_file))
            except AuthenticationError as exc:
                return _fail(log, f"checkpoint file {cp_file} cannot be trusted: {exc}")
        else:
            notes.append(f"the signature in {cp_file} was not checked (give --ca CA_PEM)")
        if node is not None and signed.checkpoint.node != node:
            return _fail(log, f"{cp_file} is a checkpoint of node {signed.checkpoint.node}")
        node = signed.checkpoint.node
        checks.append((f"checkpoint file {cp_file}", signed.checkpoint))
    if args.witness:
        witnessed = list(read_witness(args.witness))
        nodes = {cp.node for cp in witnessed}
        if node is None and len(nodes) == 1:
            node = nodes.pop()
        if node is None:
            print(
                f"trustspace audit verify: {args.witness} holds checkpoints of "
                f"{len(nodes)} nodes ({', '.join(sorted(nodes)) or 'none'}); say which with "
                "--node NAME",
                file=sys.stderr,
            )
            return 1
        mine = [cp for cp in witnessed if cp.node == node]
        if not mine:
            notes.append(f"the witness log {args.witness} has no checkpoint of node {node}")
        checks += [(f"witness log {args.witness}", cp) for cp in mine]
    if Path(log).is_file():
        report = verify(log, at={cp.lines for _, cp in checks})
    else:  # deleted: as good as emptied, for the checkpoints
        report = VerifyReport(True, 0, GENESIS, heads={0: GENESIS})
        notes.append(f"{log} does not exist")
    if not report.ok:
        _fail(log, report.problem)
        print(f"the first {report.lines} lines are intact (head {report.head})", file=sys.stderr)
        return 1
    failed = [(src, cp, why) for src, cp in checks if (why := check_tail(report, cp, src))]
    if failed:
        # the checkpoint with the most lines says most about what is missing
        src, _, why = max(failed, key=lambda f: f[1].lines)
        _fail(log, f"behind its checkpoints: {why}")
        print(
            f"{len(failed)} of {len(checks)} checkpoint(s) fail; the log has {report.lines} "
            f"intact lines (head {report.head})",
            file=sys.stderr,
        )
        return 1
    print(f"{log}: OK, {report.lines} lines, head {report.head}")
    if checks:
        src, best = max(checks, key=lambda c: c[1].lines)
        print(
            f"tail checked against {len(checks)} checkpoint(s); the latest, from {src}, was "
            f"signed by node {best.node} at {best.time} at {best.lines} lines"
        )
    else:
        print(
            f"no checkpoint ({cp_file} is missing and no --witness was given): the tail cannot "
            "be checked; lines cut from the end, an emptied file or a recomputed chain would "
            "not be noticed"
        )
    for note in notes:
        print(f"note: {note}")
    return 0
