"""``trustspace ca ACTION``: the data space CA's lifecycle.

``init`` (the CA), ``request`` (at an organisation: its own key and a CSR), ``sign`` (at the
CA: check and sign a CSR), ``issue`` (at the CA: key and certificate in one step), ``list``
(the serial index), ``revoke`` and ``crl`` (the signed revocation list servers load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from trustspace.transport.ca import (
    CRL_VALID_DAYS,
    DEFAULT_VALID_DAYS,
    REASONS,
    ROLES,
    init_ca,
    issue,
    list_certificates,
    make_request,
    read_request,
    revoke,
    sign_request,
    write_crl,
)


def _hosts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address the server is reached at (repeatable; nodes and the "
        "aggregator only); NAME, localhost and 127.0.0.1 are always included",
    )


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ca",
        help="manage the data space's certificate authority",
        description="Create the data space CA, sign organisations' certificate requests, list "
        "and revoke certificates. See docs/operations.md, 'Certificate lifecycle'.",
    )
    sub = p.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create a new CA in DIR (ca.pem, ca-key.pem 0600)")
    init.add_argument("dir", metavar="DIR")
    named = init.add_mutually_exclusive_group(required=True)
    named.add_argument(
        "--data-space",
        metavar="NAME",
        help="the data space's name; the CA is named after it (signed queries are addressed "
        "to NAME/<CA fingerprint>)",
    )
    named.add_argument("--name", help="the CA's common name (the same as --data-space)")

    req = sub.add_parser(
        "request",
        help="at an organisation: make its own key (0600) and a certificate signing request",
    )
    req.add_argument("name", metavar="NAME", help="the identity (certificate common name)")
    req.add_argument("--role", required=True, choices=ROLES)
    _hosts(req)
    req.add_argument("--out", default=None, help="the identity directory (default ./NAME)")

    sign = sub.add_parser("sign", help="at the CA: check and sign a request (NAME.csr.pem)")
    sign.add_argument("dir", metavar="CA_DIR", help="the CA directory")
    sign.add_argument("csr", metavar="CSR", help="the request file")
    sign.add_argument("--days", type=int, default=DEFAULT_VALID_DAYS, help="validity in days")
    sign.add_argument(
        "--out", default=None, help="where cert.pem and ca.pem go (default: beside the CSR)"
    )
    sign.add_argument(
        "--replace",
        action="store_true",
        help="rotation: sign although NAME holds a valid certificate (revoke the old serial "
        "once the new one is installed)",
    )

    iss = sub.add_parser(
        "issue", help="at the CA: make key and certificate DIR/NAME/{cert.pem,key.pem,ca.pem}"
    )
    iss.add_argument("dir", metavar="DIR", help="the CA directory")
    iss.add_argument("name", metavar="NAME", help="the identity (certificate common name)")
    iss.add_argument("--role", required=True, choices=ROLES)
    _hosts(iss)
    iss.add_argument("--days", type=int, default=DEFAULT_VALID_DAYS, help="validity in days")
    iss.add_argument("--out", default=None, help="output directory (default DIR/NAME)")
    iss.add_argument(
        "--replace", action="store_true", help="rotation: issue although NAME holds a valid one"
    )

    ls = sub.add_parser("list", help="the certificates this CA issued, with their status")
    ls.add_argument("dir", metavar="CA_DIR")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")

    rev = sub.add_parser(
        "revoke", help="revoke every valid certificate of NAME, or one SERIAL; writes crl.pem"
    )
    rev.add_argument("dir", metavar="CA_DIR")
    rev.add_argument("target", metavar="NAME|SERIAL", help="a name, or a serial (HEX, serial:HEX)")
    rev.add_argument("--reason", default="unspecified", choices=tuple(REASONS))
    rev.add_argument(
        "--days", type=int, default=CRL_VALID_DAYS, help="the CRL's validity (next update)"
    )

    crl = sub.add_parser("crl", help="re-sign CA_DIR/crl.pem (new number and next update)")
    crl.add_argument("dir", metavar="CA_DIR")
    crl.add_argument(
        "--days", type=int, default=CRL_VALID_DAYS, help="the CRL's validity (next update)"
    )


def run(args: argparse.Namespace) -> int:
    cmd = args.ca_command
    if cmd == "init":
        name = args.data_space or args.name
        cert = init_ca(args.dir, name=name)
        from trustspace.transport.signing import data_space_name

        print(f"created CA {name!r}: {cert} (private key {cert.parent / 'ca-key.pem'}, 0600)")
        audience = data_space_name(cert.read_bytes())
        print(f"data space name (the audience of signed queries): {audience}")
        print("Keep ca-key.pem offline; give ca.pem to every participant.")
        return 0
    if cmd == "request":
        key, csr = make_request(args.name, args.role, hosts=tuple(args.host), out_dir=args.out)
        info = read_request(csr)
        print(f"wrote {key} (private key, 0600: it never leaves this machine) and {csr}")
        print(f"Send {csr} to the CA operator (it holds no secret). Key fingerprint (sha256),")
        print(f"to confirm by phone or a second channel: {info.fingerprint}")
        print(
            f"The operator runs `trustspace ca sign CA_DIR {csr.name}` and returns cert.pem and "
            f"ca.pem; put both into {key.parent}/ and point [tls] dir at it."
        )
        return 0
    if cmd == "sign":
        out = sign_request(
            args.dir, args.csr, days=args.days, out_dir=args.out, replace=args.replace
        )
        r = out.request
        print(
            f"signed {r.role} certificate for {r.name!r}: serial {out.serial}, valid until "
            f"{out.not_after:%Y-%m-%d}, hosts {', '.join(r.hosts)}"
        )
        print(f"key fingerprint (sha256, compare with the organisation's): {r.fingerprint}")
        print(f"wrote {out.out}/cert.pem and {out.out}/ca.pem; return both to {r.name}")
        if out.replaced:
            print(
                f"the replaced serial(s) {', '.join(out.replaced)} stay valid until you revoke "
                f"them: trustspace ca revoke {args.dir} serial:{out.replaced[0]} --reason "
                "superseded"
            )
        return 0
    if cmd == "issue":
        ident = issue(
            args.dir,
            args.name,
            args.role,
            hosts=tuple(args.host),
            days=args.days,
            out_dir=args.out,
            replace=args.replace,
        )
        print(
            f"issued {args.role} certificate for {args.name!r} in {ident}/ (cert.pem, key.pem "
            f"0600, ca.pem), valid {args.days} days"
        )
        return 0
    if cmd == "list":
        return _list(Path(args.dir), as_json=args.json)
    if cmd == "revoke":
        done = revoke(args.dir, args.target, reason=args.reason, days=args.days)
        for e in done:
            print(f"revoked {e.role} {e.name!r} serial {e.serial} ({e.reason})")
        print(
            f"wrote {Path(args.dir) / 'crl.pem'}: copy it to every node and the aggregator "
            "(their [tls] crl); they apply it within seconds, no restart"
        )
        return 0
    existed = (Path(args.dir) / "crl.pem").exists()
    path = write_crl(args.dir, days=args.days)
    verb = "re-signed" if existed else "signed the first revocation list"
    print(f"{verb} {path}, valid {args.days} days; copy it to every node and the aggregator")
    return 0


def _list(root: Path, *, as_json: bool) -> int:
    now = dt.datetime.now(dt.UTC)
    entries = list_certificates(root)
    if as_json:
        rows = [{**e.to_json(), "status": e.effective_status(now)} for e in entries]
        print(json.dumps(rows, indent=1))
        return 0
    header = ("SERIAL", "NAME", "ROLE", "NOT AFTER", "STATUS")
    rows2 = [
        (
            e.serial,
            e.name,
            e.role,
            f"{e.not_after:%Y-%m-%d %H:%M}",
            e.effective_status(now)
            + (f" {e.revoked_at:%Y-%m-%d} ({e.reason})" if e.revoked_at is not None else ""),
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in (header, *rows2)) for i in range(len(header))]
    for row in (header, *rows2):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
