"""``trustspace ca init DIR`` and ``trustspace ca issue DIR NAME --role ROLE``."""

from __future__ import annotations

import argparse
from typing import Any

from trustspace.transport.ca import DEFAULT_VALID_DAYS, ROLES, init_ca, issue


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ca",
        help="manage the data space's certificate authority",
        description="Create the data space CA and issue node, aggregator and analyst identities.",
    )
    sub = p.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create a new CA in DIR (ca.pem, ca-key.pem 0600)")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--name", default="trustspace-ca", help="the CA's common name")
    iss = sub.add_parser(
        "issue", help="issue an identity DIR/NAME/{cert.pem,key.pem,ca.pem} with a role"
    )
    iss.add_argument("dir", metavar="DIR", help="the CA directory")
    iss.add_argument("name", metavar="NAME", help="the identity (certificate common name)")
    iss.add_argument("--role", required=True, choices=ROLES)
    iss.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address the server is reached at (repeatable); NAME, "
        "localhost and 127.0.0.1 are always included",
    )
    iss.add_argument("--days", type=int, default=DEFAULT_VALID_DAYS, help="validity in days")
    iss.add_argument("--out", default=None, help="output directory (default DIR/NAME)")


def run(args: argparse.Namespace) -> int:
    if args.ca_command == "init":
        cert = init_ca(args.dir, name=args.name)
        print(f"created CA {args.name!r}: {cert} (private key {cert.parent / 'ca-key.pem'}, 0600)")
        print("Keep ca-key.pem offline; give ca.pem to every participant.")
        return 0
    out = issue(
        args.dir, args.name, args.role, hosts=tuple(args.host), days=args.days, out_dir=args.out
    )
    print(
        f"issued {args.role} certificate for {args.name!r} in {out}/ (cert.pem, key.pem 0600, "
        f"ca.pem), valid {args.days} days"
    )
    return 0
