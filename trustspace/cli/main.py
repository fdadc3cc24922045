"""Entry point of the ``trustspace`` command: builds the parser and dispatches subcommands.

Each subcommand lives in its own module ``trustspace.cli.<name>`` exposing
``add_parser(subparsers) -> None`` and ``run(args) -> int``; ``COMMANDS`` lists them in the
order ``--help`` shows them. A ``TrustspaceError`` from ``run`` is printed as one line (exit 2
for a bad config or parameter, 1 otherwise), never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trustspace import __version__
from trustspace.cli import aggregator, anonymize, audit, ca, demo, node, query, usage
from trustspace.errors import TrustspaceError

COMMANDS = (demo, node, aggregator, ca, query, anonymize, audit, usage)

EXIT_USAGE = 2  # argparse's own code for bad usage; also a bad config or parameter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustspace",
        description=(
            "Privacy-preserving computation for trusted data spaces: secure aggregation, "
            "Paillier-encrypted statistics and k-anonymization across organisations."
        ),
    )
    parser.add_argument("--version", action="version", version=f"trustspace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
        sub.choices[module.__name__.rsplit(".", 1)[1]].set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args._run(args)
    except TrustspaceError as exc:
        print(f"trustspace {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        print(f"trustspace {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
