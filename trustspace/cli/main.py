"""Entry point of the ``trustspace`` command: builds the parser and dispatches subcommands.

Each subcommand lives in its own module ``trustspace.cli.<name>`` exposing
``add_parser(subparsers) -> None`` and ``run(args) -> int``; ``COMMANDS`` lists them in the
order ``--help`` shows them. A ``TrustspaceError`` from ``run`` is printed as one line (exit 2
for a bad config or parameter, 1 otherwise), never as a traceback; a reader that closes our
output early (``| head -1``) ends the command quietly (exit 141, as for SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from trustspace import __version__
from trustspace.cli import (
    aggregator,
    anonymize,
    audit,
    ca,
    demo,
    health,
    node,
    query,
    synthesize,
    usage,
)
from trustspace.errors import TrustspaceError

COMMANDS = (demo, node, aggregator, ca, query, anonymize, synthesize, audit, usage, health)

EXIT_USAGE = 2  # argparse's own code for bad usage; also a bad config or parameter
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # what a shell reports for a reader gone (`| head -1`)


def _pipe_closed() -> int:
    """The reader of our stdout went away (``trustspace audit verify LOG | head -1``): stop
    quietly, as a program killed by SIGPIPE would; stdout goes to /dev/null so the
    interpreter's final flush raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return EXIT_PIPE_CLOSED


def _warning_line(command: str) -> Callable[..., str]:
    """How a warning is printed on stderr: one line naming the command, as errors are
    (``trustspace query: warning: count: some figures were suppressed ...``), not Python's
    ``FILE:LINE: UserWarning: ...`` with the line of source that raised it."""

    def formatwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        return f"trustspace {command}: warning: {message}\n"

    return formatwarning


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
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _warning_line(args.command)
    try:
        code: int = args._run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        return _pipe_closed()
    except TrustspaceError as exc:
        print(f"trustspace {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        print(f"trustspace {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
    return code


if __name__ == "__main__":
    sys.exit(main())
