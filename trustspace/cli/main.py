"""Entry point of the ``trustspace`` command: builds the parser and dispatches subcommands.

Each subcommand lives in its own module ``trustspace.cli.<name>`` exposing
``add_parser(subparsers) -> None`` and ``run(args) -> int``. A subcommand whose module is not
built yet is still listed; running it prints which capability is missing and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from trustspace import __version__
from trustspace.errors import TrustspaceError

# name -> (module, one-line help, the capability it needs when not built yet)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("trustspace.cli.demo", "run the multi-node demo on the Adult data set", "the demo"),
    "node": ("trustspace.cli.node", "run a node from its TOML config", "the node service"),
    "aggregator": (
        "trustspace.cli.aggregator",
        "run the aggregator from its TOML config",
        "the aggregator service",
    ),
    "ca": ("trustspace.cli.ca", "manage the data space's certificate authority", "the CA"),
    "query": ("trustspace.cli.query", "run a statistics query as an analyst", "analyst queries"),
    "anonymize": (
        "trustspace.cli.anonymize",
        "k-anonymize a CSV file (ARX-style hierarchies)",
        "k-anonymization",
    ),
    "audit": ("trustspace.cli.audit", "verify a node's hash-chained audit log", "the audit log"),
}

EXIT_USAGE = 2  # argparse's own code for bad usage; also "not available"


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


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
    for name, (module_name, help_text, capability) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            stub = sub.add_parser(name, help=f"{help_text} (not built yet)", add_help=True)
            stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            stub.set_defaults(_missing=capability, _name=name)
        else:
            module.add_parser(sub)
            sub.choices[name].set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    missing = getattr(args, "_missing", None)
    if missing is not None:
        print(
            f"trustspace {args._name}: {missing} is not built yet in trustspace {__version__}; "
            "see the issue tracker for its status.",
            file=sys.stderr,
        )
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
