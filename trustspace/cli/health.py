"""``trustspace health ADDR -c IDENTITY_DIR``: the standard gRPC health check over mutual TLS.

For scripts and monitoring: one line on stdout, and the exit code says it all:

- 0: SERVING;
- 1: NOT_SERVING (the server answers, but reports the service not serving, as it does when a
  drain starts; gRPC closes the port soon after, and then the check gives 3);
- 2: usage or configuration error (bad address, our identity unusable, unknown ``--service``);
- 3: unreachable, or the TLS handshake failed (foreign CA, wrong name, expired certificate,
  our certificate refused).
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_TIMEOUT_S = 5.0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health",
        help="check that a node or aggregator is serving (gRPC health check, for scripts)",
        description="Run the standard gRPC health check against ADDR over mutual TLS and print "
        "one line. Exit 0: SERVING; 1: NOT_SERVING; 2: usage or config error; "
        "3: unreachable (also a server in the middle of a drain) or TLS failure.",
        epilog="example: trustspace health a.example.org:50051 -c certs/operator --name org-a",
    )
    p.add_argument("address", metavar="ADDR", help="HOST:PORT of the node or aggregator")
    p.add_argument(
        "-c",
        "--credentials",
        required=True,
        metavar="IDENTITY_DIR",
        help="an identity directory of the data space (ca.pem, cert.pem, key.pem)",
    )
    p.add_argument(
        "--name",
        default=None,
        metavar="EXPECTED",
        help="the name the server's certificate must carry (default: the host of ADDR)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="a fully qualified service, e.g. trustspace.proto.v1.NodeService (default: the "
        "whole server)",
    )


def run(args: argparse.Namespace) -> int:
    from trustspace.errors import AuthenticationError, ConfigError, TrustspaceError
    from trustspace.transport.ca import Credentials
    from trustspace.transport.health import health_check

    where = f"health {args.address}"
    if args.timeout <= 0:
        print(f"{where}: error: --timeout must be positive")
        return EXIT_USAGE
    try:
        creds = Credentials.from_dir(args.credentials)
    except TrustspaceError as exc:
        print(f"{where}: error: {args.credentials}: {exc}")
        return EXIT_USAGE
    try:
        state, peer = health_check(
            args.address, creds, name=args.name, service=args.service, timeout=args.timeout
        )
    except ConfigError as exc:
        print(f"{where}: error: {exc}")
        return EXIT_USAGE
    except AuthenticationError as exc:
        print(f"{where}: TLS FAILED: {exc}")
        return EXIT_UNREACHABLE
    except TrustspaceError as exc:
        print(f"{where}: UNREACHABLE: {exc}")
        return EXIT_UNREACHABLE
    who = f" ({peer})" if peer else ""
    if state == "SERVING":
        print(f"{where}{who}: SERVING")
        return EXIT_SERVING
    if state == "SERVICE_UNKNOWN":
        print(f"{where}{who}: error: the server has no service {args.service!r}")
        return EXIT_USAGE
    print(f"{where}{who}: {state}")
    return EXIT_NOT_SERVING
